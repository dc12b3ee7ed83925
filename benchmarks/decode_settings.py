"""Re-evaluate a trained CenterNet or CornerNet with other test-time settings: NMS after the decode, and
(CenterNet) flip test.

Training is untouched by these settings, so one checkpoint answers for all of them. Never run by CI; results go
to docs/benchmarks.md.

    python benchmarks/decode_settings.py runs/benchmarks/cn_raccoon_imagenet --dataset raccoon
    python benchmarks/decode_settings.py runs/benchmarks/cn_bccd_imagenet --dataset bccd --nms 0 0.5 0.6
    python benchmarks/decode_settings.py runs/benchmarks/cc_raccoon_imagenet --dataset raccoon --flip off --nms 0 0.5 --soft-nms 0.5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import anchorfree
from anchorfree.data.coco import read_coco
from anchorfree.engine import evaluate
from train_eval import dataset_paths, inference_ms_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a CenterNet or CornerNet run folder (its weights/best.safetensors is evaluated)")
    parser.add_argument("--dataset", required=True, choices=["synthetic", "raccoon", "bccd"])
    parser.add_argument("--nms", type=float, nargs="+", default=[0.0, 0.6], help="NMS IoU thresholds to try (0 = none)")
    parser.add_argument("--soft-nms", type=float, nargs="*", default=[], help="CornerNet: Gaussian soft-NMS sigmas to try as well")
    parser.add_argument("--flip", choices=["off", "on", "both"], default="both")
    args = parser.parse_args()

    weights = args.run / "weights" / "best.safetensors"
    family = anchorfree.load(weights, device="cpu").config.model.name
    if family not in ("centernet", "cornernet"):
        raise SystemExit(f"{args.run} is a {family} run; only CenterNet and CornerNet have these test-time settings")
    _, val_json = dataset_paths(args.dataset)
    data = read_coco(val_json)
    val_images = sorted(record.path for record in data.records)[:30]
    flips = {"off": [False], "on": [True], "both": [False, True]}[args.flip]
    if family == "cornernet" and flips != [False]:
        raise SystemExit("CornerNet has no flip test: pass --flip off")
    if family == "centernet" and args.soft_nms:
        raise SystemExit("--soft-nms is a CornerNet setting")
    settings = [(nms_threshold, 0.0) for nms_threshold in args.nms] + [(0.0, sigma) for sigma in args.soft_nms]
    rows = []
    for flip_test in flips:
        for nms_threshold, soft_nms_sigma in settings:
            # The same weights, loaded with these test-time settings (the checkpoint's others unchanged).
            overrides = {f"model.{family}.nms_threshold": nms_threshold}
            if family == "centernet":
                overrides["model.centernet.flip_test"] = flip_test
            else:
                overrides["model.cornernet.soft_nms_sigma"] = soft_nms_sigma
            detector = anchorfree.load(weights, device="cpu", overrides=overrides)
            result, _ = evaluate(detector.model, data, detector.config, torch.device("cpu"), progress=False)
            row = {
                "nms_threshold": nms_threshold,
                "soft_nms_sigma": soft_nms_sigma,
                "flip_test": flip_test,
                "mAP": round(result.stats["mAP"], 4),
                "AP50": round(result.stats["AP50"], 4),
                "AP75": round(result.stats["AP75"], 4),
                "inference_ms_per_image": round(inference_ms_per_image(detector, val_images), 1),
            }
            rows.append(row)
            print(json.dumps(row))
    (args.run / "decode_settings.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
