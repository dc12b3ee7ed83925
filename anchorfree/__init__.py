"""anchorfree: anchor-free object detectors (FCOS, CenterNet, CornerNet) in pure PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

from anchorfree.api import Detector, demo, load, make_config, predict, train, val  # noqa: E402

__all__ = ["Detector", "__version__", "demo", "load", "make_config", "predict", "train", "val"]
