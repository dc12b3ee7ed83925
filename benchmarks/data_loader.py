"""How fast the training data pipeline delivers batches, against how fast the model consumes them.

For a dataset and a preset, builds the training dataset exactly as `anchorfree train` does (reader, augmentation,
collate) and times the DataLoader alone for each worker count, then times training steps of the preset's model on
already-loaded batches. The data wait of a training step is about loader time / (loader time + step time) with
`data.workers=0` (loading runs in the training process) and about max(0, loader - step) / step with workers. Never
run by CI; results go to docs/benchmarks.md.

    python benchmarks/data_loader.py --dataset raccoon --preset fcos_mobilenet_v2_cpu data.train_sizes=[288,320,352,384] data.max_size=640
    python benchmarks/data_loader.py --dataset bccd --preset centernet_cpu --workers 0 1 2 --batches 20
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from anchorfree.config import apply_overrides, get_preset
from anchorfree.data.dataset import DetectionDataset, EpochSampler, make_loader
from anchorfree.data.formats import read_dataset
from anchorfree.data.splits import training_dataset
from anchorfree.models import build_model
from train_eval import dataset_paths, install_imagenet_weights


def time_loader(dataset: DetectionDataset, batch_size: int, workers: int, batches: int) -> float:
    """Seconds per image of the DataLoader alone (first batch excluded: worker start-up)."""
    loader = make_loader(dataset, batch_size, workers, EpochSampler(len(dataset), seed=0, epoch=0))
    iterator = iter(loader)
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch_images, _ = next(iterator)
        except StopIteration:
            iterator = iter(make_loader(dataset, batch_size, workers, EpochSampler(len(dataset), seed=0, epoch=1)))
            batch_images, _ = next(iterator)
        images += len(batch_images)
    return (time.perf_counter() - start) / images


def time_training_steps(config, num_classes: int, dataset: DetectionDataset, steps: int) -> float:
    """Seconds per image of forward + backward + optimizer step on pre-loaded batches."""
    model = build_model(config.model, num_classes)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = make_loader(dataset, config.train.batch_size, 0, EpochSampler(len(dataset), seed=0, epoch=0))
    batches = [batch for batch, _ in zip(loader, range(steps + 1))]
    model.train()
    elapsed, images = 0.0, 0
    for index, (batch_images, targets) in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.amp):
            losses = model(batch_images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if index > 0:  # the first step warms up the kernels
            elapsed += time.perf_counter() - start
            images += len(batch_images)
    return elapsed / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=["synthetic", "raccoon", "bccd"])
    parser.add_argument("--preset", default="fcos_mobilenet_v2_cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=15, help="batches timed per worker count")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed (0 skips the model)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    install_imagenet_weights()
    config = apply_overrides(get_preset(args.preset), args.overrides)
    train_json, _ = dataset_paths(args.dataset)
    data = read_dataset(train_json)
    dataset = training_dataset(config, data)
    result = {"dataset": args.dataset, "preset": args.preset, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    for workers in args.workers:
        seconds = time_loader(dataset, config.train.batch_size, workers, args.batches)
        result[f"loader_images_per_s_workers{workers}"] = round(1 / seconds, 1)
        print(f"workers={workers}: {1 / seconds:.1f} images/s ({1000 * seconds:.1f} ms/image)")
    if args.steps > 0:
        step = time_training_steps(config, len(data.class_names), dataset, args.steps)
        load = 1 / result["loader_images_per_s_workers0"]
        result["train_images_per_s_preloaded"] = round(1 / step, 1)
        result["data_wait_fraction_workers0"] = round(load / (load + step), 3)
        print(f"training steps alone: {1 / step:.1f} images/s; with workers=0 loading takes {100 * load / (load + step):.0f}% of a step")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
