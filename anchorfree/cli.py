"""The `anchorfree` command: one subcommand per public function of `anchorfree.api`.

    anchorfree demo                                     # synthetic data -> train -> evaluate -> draw
    anchorfree train --preset fcos_cpu data.train=train.json data.val=val.json train.epochs=20
    anchorfree train --resume runs/fcos_cpu
    anchorfree val runs/fcos_cpu/weights/best.safetensors [--data val.json]
    anchorfree predict runs/fcos_cpu/weights/best.safetensors images/ --out runs/predict
    anchorfree data synth --out shapes --train 800 --val 200 --seed 0
    anchorfree presets [NAME]                           # list presets, or print one resolved
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anchorfree import api
from anchorfree.checkpoint import CheckpointError
from anchorfree.config import PRESETS, ConfigError, all_keys, dump_yaml, get_preset
from anchorfree.data.images import ImageLoadError
from anchorfree.data.records import InvalidAnnotation
from anchorfree.data.synth import write_synthetic_dataset
from anchorfree.engine import NonFiniteLoss, TrainingInterrupted

OVERRIDES_HELP = "dotted key=value settings, e.g. train.epochs=20 model.fcos.head_convs=2 (see `anchorfree presets NAME`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchorfree", description="Anchor-free object detection (FCOS, CenterNet, CornerNet) on PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="train and evaluate on the built-in synthetic dataset (~5 min on 2 CPU cores)")
    demo.add_argument("--model", default="fcos", choices=list(api.DEMO_PRESETS), help="detector family (default: fcos)")
    demo.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    train = commands.add_parser("train", help="train a detector on a COCO dataset")
    train.add_argument("--preset", default="fcos_cpu", help=f"one of: {', '.join(PRESETS)} (default: fcos_cpu)")
    train.add_argument("--resume", help="continue a run: its folder or its weights/last.safetensors")
    train.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    val = commands.add_parser("val", help="COCO metrics of a checkpoint on a split")
    val.add_argument("weights", help="a checkpoint (.safetensors) or run folder")
    val.add_argument("--data", help="COCO JSON of the split (default: the val split the model was trained with)")
    val.add_argument("--device", default="auto")
    val.add_argument("--save-json", help="also write the metrics to this JSON file")

    predict = commands.add_parser("predict", help="detect objects in images or folders")
    predict.add_argument("weights", help="a checkpoint (.safetensors) or run folder")
    predict.add_argument("sources", nargs="+", help="image files or folders")
    predict.add_argument("--out", default="runs/predict", help="output folder (predictions.json + drawn images)")
    predict.add_argument("--conf", type=float, default=0.3, help="score threshold (default: 0.3)")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--no-images", action="store_true", help="write predictions.json only")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_commands.add_parser("synth", help="write the synthetic shapes dataset (images + COCO JSON)")
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--train", type=int, default=800, help="training images (default: 800)")
    synth.add_argument("--val", type=int, default=200, help="validation images (default: 200)")
    synth.add_argument("--seed", type=int, default=0)

    presets = commands.add_parser("presets", help="list presets, or print one fully resolved")
    presets.add_argument("name", nargs="?")
    presets.add_argument("--keys", action="store_true", help="list every settable key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, InvalidAnnotation, ImageLoadError, CheckpointError, NonFiniteLoss, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupted:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        run_folder, result = api.demo(args.model, args.overrides)
        print(result.table())
        print(f"\nrun folder: {run_folder}  (weights/best.safetensors, metrics.csv, predictions/)")
        return 0
    if args.command == "train":
        run_folder = api.train(args.preset, args.overrides, resume=args.resume)
        print(f"run folder: {run_folder}")
        return 0
    if args.command == "val":
        result = api.val(args.weights, args.data, args.device)
        print(result.table())
        if args.save_json:
            Path(args.save_json).write_text(json.dumps(result.to_dict(), indent=2))
        return 0
    if args.command == "predict":
        out = api.predict(args.weights, args.sources, args.out, args.conf, args.device, save_images=not args.no_images)
        print(f"predictions: {out / 'predictions.json'}")
        return 0
    if args.command == "data" and args.data_command == "synth":
        folder = write_synthetic_dataset(args.out, args.train, args.val, args.seed)
        print(f"wrote {folder} (instances_train.json, instances_val.json, images/)")
        return 0
    if args.command == "presets":
        if args.name is None:
            for name, builder in PRESETS.items():
                print(f"{name:24s} {(builder.__doc__ or '').strip().splitlines()[0]}")
            return 0
        config = get_preset(args.name)
        print("\n".join(all_keys(config)) if args.keys else dump_yaml(config), end="")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
