"""Run `anchorfree demo` end to end as a new user would, and report its mAP, AP50 and wall-clock time.

    python benchmarks/demo.py                      # FCOS
    python benchmarks/demo.py --model centernet
    python benchmarks/demo.py --model cornernet train.time_limit=2   # extra args: the demo's dotted overrides

A new user has no cache and maybe no network: the demo runs in a fresh temporary folder with a fresh
ANCHORFREE_CACHE (so the synthetic dataset is generated inside the timed run) and TORCH_HOME pointed at an empty
folder (no ImageNet weights anywhere; torch's hub would have to download them). The wall clock runs from the
command's start to its exit: dataset generation, training, the final evaluation and the drawn predictions all
count. Never run by CI; results go to docs/benchmarks.md ("The demo").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcos", choices=["fcos", "centernet", "cornernet"])
    parser.add_argument("--keep", type=Path, help="write the run here (default: a temporary folder, removed afterwards)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides passed to `anchorfree demo`")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="anchorfree-demo-") as scratch:
        work = args.keep or Path(scratch) / "work"
        work.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ,
            "ANCHORFREE_CACHE": str(Path(scratch) / "cache"),  # nothing cached: the dataset is made in the timed run
            "TORCH_HOME": str(Path(scratch) / "torch"),  # an empty hub cache: no ImageNet weights file anywhere
        }
        command = [sys.executable, "-m", "anchorfree.cli", "demo", "--model", args.model, *args.overrides]
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=work, env=environment, stdout=subprocess.PIPE, text=True)
        wall_seconds = time.perf_counter() - start
        print(completed.stdout)
        if completed.returncode != 0:
            print(f"`{' '.join(command)}` failed with exit status {completed.returncode}", file=sys.stderr)
            return completed.returncode
        best = json.loads((work / "runs" / f"demo_{args.model}" / "weights" / "best.json").read_text(encoding="utf-8"))
        metrics = best["metrics"]["stats"]
        config = best["config"]
        rows = sorted(Path(work, "runs", f"demo_{args.model}").glob("metrics.csv"))
        epochs = len(rows[0].read_text(encoding="utf-8").splitlines()) - 1 if rows else 0
        report = {
            "model": args.model,
            "preset": config["preset"],
            "backbone": config["model"]["backbone"],
            "pretrained_backbone": config["model"]["pretrained_backbone"],
            "overrides": args.overrides,
            "mAP": round(metrics["mAP"], 4),
            "AP50": round(metrics["AP50"], 4),
            "AP75": round(metrics["AP75"], 4),
            "AP_small_medium_large": [round(metrics[name], 4) if metrics[name] is not None else None for name in ("AP_small", "AP_medium", "AP_large")],
            "best_epoch": best["epoch"],
            "epochs": epochs,
            "wall_seconds": round(wall_seconds, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        }
        print(json.dumps(report, indent=2))
        print(f"demo --model {args.model}: mAP {report['mAP']:.3f}  AP50 {report['AP50']:.3f}  wall {int(wall_seconds // 60)} min {wall_seconds % 60:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
