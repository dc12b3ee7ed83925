"""Train a preset for a fixed wall-clock budget on a dataset, then report COCO mAP, training images/s and
inference ms/image. Never run by CI; results go to docs/benchmarks.md.

    python benchmarks/train_eval.py --dataset raccoon --preset fcos_mobilenet_v2_cpu --minutes 20
    python benchmarks/train_eval.py --dataset synthetic --preset fcos_cpu --minutes 5
    python benchmarks/train_eval.py --dataset bccd --preset fcos_cpu --minutes 10 model.pretrained_backbone=false

Datasets: `synthetic` (the built-in one, made in the cache folder), `raccoon` and `bccd` from
../shared/datasets. ImageNet MobileNetV2 weights are taken from ../shared/weights through torchvision's hub
cache, as an online user would get them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

import anchorfree
from anchorfree.api import synthetic_dataset_path
from anchorfree.data.coco import read_coco
from anchorfree.data.images import load_image

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED = REPOSITORY.parent / "shared"


def dataset_paths(name: str) -> tuple[Path, Path]:
    if name == "synthetic":
        folder = synthetic_dataset_path()
        return folder / "instances_train.json", folder / "instances_val.json"
    folder = SHARED / "datasets" / name / "coco"
    if not folder.is_dir():
        sys.exit(f"{folder} not found: the shared datasets must sit beside the repository")
    return folder / "instances_train.json", folder / "instances_val.json"


def install_imagenet_weights() -> None:
    """Put torchvision's MobileNetV2 file where its weights API looks before downloading."""
    source = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    if source.is_file() and not (hub / source.name).is_file():
        shutil.copyfile(source, hub / source.name)


def inference_ms_per_image(detector: anchorfree.Detector, images: list[Path], repeats: int = 1) -> float:
    """Median wall time of `Detector.predict` per image (batch 1; preprocessing and box decoding included, JPEG decoding not)."""
    decoded = [load_image(path) for path in images]
    for image in decoded[:3]:
        detector.predict(image)  # warm-up
    times = []
    for _ in range(repeats):
        for image in decoded:
            start = time.perf_counter()
            detector.predict(image)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=["synthetic", "raccoon", "bccd"])
    parser.add_argument("--preset", default="fcos_cpu")
    parser.add_argument("--minutes", type=float, required=True, help="training budget (wall clock, evaluation excluded)")
    parser.add_argument("--out", default=str(REPOSITORY / "runs" / "benchmarks"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    install_imagenet_weights()
    train_json, val_json = dataset_paths(args.dataset)
    name = f"{args.dataset}_{args.preset}_{int(args.minutes)}min"
    overrides = [
        f"data.train={train_json}",
        f"data.val={val_json}",
        f"train.time_limit={args.minutes}",
        "train.epochs=1000",
        f"train.project={args.out}",
        f"train.name={name}",
        *args.overrides,
    ]
    start = time.perf_counter()
    run = anchorfree.train(args.preset, overrides)
    wall = time.perf_counter() - start
    best = run / "weights" / "best.safetensors"
    result = anchorfree.val(best)
    metrics_rows = (run / "metrics.csv").read_text().splitlines()
    header = metrics_rows[0].split(",")
    speeds = [float(row.split(",")[header.index("images_per_second")]) for row in metrics_rows[1:]]
    val_images = sorted(record.path for record in read_coco(val_json).records)[:30]
    report = {
        "dataset": args.dataset,
        "preset": args.preset,
        "overrides": args.overrides,
        "minutes": args.minutes,
        "epochs": len(metrics_rows) - 1,
        "wall_seconds_including_eval": round(wall, 1),
        "train_images_per_second": round(statistics.median(speeds), 2),
        "inference_ms_per_image": round(inference_ms_per_image(anchorfree.load(best, device="cpu"), val_images), 1),
        "metrics": result.to_dict(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "run": str(run),
    }
    print(result.table())
    print(json.dumps({key: value for key, value in report.items() if key != "metrics"}, indent=2))
    (run / "benchmark.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
