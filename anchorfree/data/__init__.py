"""Data: readers into `DetectionData`, the synthetic dataset, transforms, and the torch Dataset."""
