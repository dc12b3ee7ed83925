"""The `anchorfree` command: one subcommand per public function of `anchorfree.api`.

    anchorfree demo                                     # synthetic data -> train -> evaluate -> draw
    anchorfree train --preset fcos_cpu data.train=train.json data.val=val.json train.epochs=20
    anchorfree train --resume runs/fcos_cpu
    anchorfree val runs/fcos_cpu/weights/best.safetensors [--data val.json] [--plots runs/val_plots] [model.fcos.nms_threshold=0.5]
    anchorfree predict runs/fcos_cpu/weights/best.safetensors images/ --out runs/predict [--conf 0.3] [--agnostic-nms] [data.val_size=416]
    anchorfree data synth --out shapes --train 3000 --val 200 --seed 0
    anchorfree data check coco/ [--strict] [--decode] [--json runs/data_check/dataset_report.json]
    anchorfree data convert coco/ --to yolo --out shapes_yolo [--images copy|symlink|none]
    anchorfree data show coco/ [--split val] [--out runs/data_show/val.png] [--count 16] [--seed 0]
    anchorfree targets coco/ [--model fcos | --preset P | --weights W] [--split val] [--images 0 3 name.jpg] [--count 4]
    anchorfree presets [NAME]                           # list presets, or print one resolved

Every error a user can cause (a bad setting, dataset, image or checkpoint, a file that cannot be written) ends in
one `error: ...` line on stderr and exit status 2; `anchorfree --debug COMMAND ...` shows the traceback instead.
Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from anchorfree import api
from anchorfree.checkpoint import CheckpointError
from anchorfree.config import PRESETS, ConfigError, all_keys, dump_yaml, get_preset
from anchorfree.data.formats import FORMATS, convert_dataset
from anchorfree.data.images import ImageLoadError
from anchorfree.data.records import InvalidAnnotation
from anchorfree.data.report import dataset_report, format_report, show_dataset
from anchorfree.data.synth import write_synthetic_dataset
from anchorfree.engine import NonFiniteLoss, TrainingInterrupted
from anchorfree.files import TEMPORARY_NAME, atomic_write_text
from anchorfree.outputs import OutputOverwritesInput, dataset_inputs, refuse_overwriting_inputs
from anchorfree.targets_view import split_override_tokens

# What to do about an OSError a user can cause, by errno.
OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: choose a writable output path",
    errno.EACCES: "permission denied: choose a path you may read or write",
    errno.EPERM: "operation not permitted: choose a path you may read or write",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter path",
    errno.EFBIG: "the file is too large for this file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder, not a file",
}
# Raised on user input by the project's readers, config and checkpoint code; OSError and ValueError also cover
# what the standard library raises for a bad path or value (ConfigError, InvalidAnnotation, ImageLoadError and
# CheckpointError are ValueErrors; PretrainedWeightsUnavailable is an OSError).
USER_ERRORS = (
    ConfigError, InvalidAnnotation, ImageLoadError, CheckpointError, OutputOverwritesInput, NonFiniteLoss, OSError, ValueError, TypeError
)

OVERRIDES_HELP = "dotted key=value settings, e.g. train.epochs=20 model.fcos.head_convs=2 (see `anchorfree presets NAME`)"
TEST_TIME_HELP = (
    "test-time key=value settings of the checkpoint, e.g. model.fcos.score_threshold=0.1 data.val_size=640: the family's decode "
    "settings, data.val_size, data.max_size, train.amp"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchorfree", description="Anchor-free object detection (FCOS, CenterNet, CornerNet) on PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error instead of the one `error:` line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="train and evaluate on the built-in synthetic dataset (~5 min on 2 CPU cores)")
    demo.add_argument("--model", default="fcos", choices=list(api.DEMO_PRESETS), help="detector family (default: fcos)")
    demo.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    train = commands.add_parser("train", help="train a detector (data.train=COCO JSON, VOC or YOLO folder, or data.dataset=a dataset YAML)")
    train.add_argument("--preset", default="fcos_cpu", help=f"one of: {', '.join(PRESETS)} (default: fcos_cpu)")
    train.add_argument("--resume", help="continue a run: its folder or its weights/last.safetensors")
    train.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    val = commands.add_parser("val", help="COCO metrics of a checkpoint on a split")
    val.add_argument("weights", help="a checkpoint (.safetensors) or run folder")
    val.add_argument("overrides", nargs="*", help=TEST_TIME_HELP)
    val.add_argument("--data", help="the split: a COCO JSON, a VOC or YOLO folder, or a dataset YAML (default: the val split the model was trained with)")
    val.add_argument("--device", default="auto")
    val.add_argument("--save-json", help="also write the metrics to this JSON file")
    val.add_argument("--plots", metavar="DIR", help="also write per_class.csv, PR/F1 curves, confusion matrices, sample predictions here")

    predict = commands.add_parser("predict", help="detect objects in images or folders")
    predict.add_argument("weights", help="a checkpoint (.safetensors) or run folder")
    predict.add_argument("sources", nargs="+", help=f"image files or folders, and {TEST_TIME_HELP}")
    predict.add_argument("--out", default="runs/predict", help="output folder (predictions.json + drawn images)")
    predict.add_argument("--conf", type=float, default=0.3, help="score threshold (default: 0.3)")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--no-images", action="store_true", help="write predictions.json only")
    predict.add_argument(
        "--agnostic-nms", action="store_true", help="keep one detection per object whatever its class (class-agnostic NMS after the model's own)"
    )
    predict.add_argument("--agnostic-iou", type=float, default=0.7, metavar="IOU", help="IoU above which --agnostic-nms keeps only the best detection (default: 0.7)")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_commands.add_parser("synth", help="write the synthetic shapes dataset (images + COCO JSON)")
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--train", type=int, default=3000, help="training images (default: 3000, as the demo)")
    synth.add_argument("--val", type=int, default=200, help="validation images (default: 200)")
    synth.add_argument("--seed", type=int, default=0)
    check = data_commands.add_parser(
        "check",
        help="statistics and every problem of every split of a dataset (exit 2 if training would refuse it, 1 if it would skip some, 0 if clean)",
    )
    check.add_argument("path", help="a COCO JSON, a VOC or YOLO folder, a dataset YAML, or a folder holding them")
    check.add_argument("--strict", action="store_true", help="stop at the first problem with an error (on_invalid=error; exit 2)")
    check.add_argument("--decode", action="store_true", help="also decode every image in full (slower; finds corrupt image data)")
    check.add_argument("--json", default="runs/data_check/dataset_report.json", help="report file (default: %(default)s)")
    convert = data_commands.add_parser("convert", help="write a dataset (every split) in another format; the source is only read")
    convert.add_argument("path", help="a COCO JSON, a VOC or YOLO folder, a dataset YAML, or a folder holding them")
    convert.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    convert.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    convert.add_argument("--images", default="copy", choices=("copy", "symlink", "none"), help="copy, symlink or none (default: copy)")
    show = data_commands.add_parser("show", help="draw the ground-truth boxes of sample images on one PNG grid")
    show.add_argument("path", help="a COCO JSON, a VOC or YOLO folder, a dataset YAML, or a folder holding them")
    show.add_argument("--split", help="train, val or test (default: train, else the first split)")
    show.add_argument("--out", help="the PNG to write (default: runs/data_show/<split>.png)")
    show.add_argument("--count", type=int, default=16, help="images to draw (default: 16)")
    show.add_argument("--seed", type=int, default=0, help="seed of the image sample (default: 0)")
    for command in (check, convert, show):
        command.add_argument("--format", default="", choices=FORMATS, help="the source format (default: detected)")
        command.add_argument("--names", nargs="+", help="class names in label order (VOC, YOLO; checked against COCO categories)")

    targets = commands.add_parser("targets", help="draw a family's training targets (and, with --weights, its predictions) on dataset images")
    targets.add_argument("data", help="a COCO JSON, a VOC or YOLO folder, a dataset YAML, or a folder holding them")
    family = targets.add_mutually_exclusive_group()
    family.add_argument("--preset", help=f"the model config of a preset: one of {', '.join(PRESETS)} (default: the --model demo preset)")
    family.add_argument("--weights", help="a checkpoint (.safetensors) or run folder: its config, and its predictions beside the targets")
    targets.add_argument("--model", default="fcos", choices=list(api.DEMO_PRESETS), help="family of the default preset (default: fcos)")
    targets.add_argument("--split", default="train", choices=("train", "val", "test"), help="default: train")
    targets.add_argument("--images", nargs="+", default=[], help="image indices or file names in the split (default: the first --count)")
    targets.add_argument("--count", type=int, default=4, help="images to draw without --images (default: 4)")
    targets.add_argument("--out", default="runs/targets", help="output folder: <image stem>_<family>.png (default: runs/targets)")
    targets.add_argument("--conf", type=float, default=0.3, help="score threshold of the drawn detections (default: 0.3)")
    targets.add_argument("--device", default="auto")
    targets.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    presets = commands.add_parser("presets", help="list presets, or print one fully resolved")
    presets.add_argument("name", nargs="?")
    presets.add_argument("--keys", action="store_true", help="list every settable key")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "predict":
        # `predict W a.jpg key=value`: the sources list takes the test-time settings too.
        args.sources, args.overrides = split_override_tokens(args.sources)
        if not args.sources:
            parser.error("predict needs at least one image file or folder before its key=value settings")
    if extra:
        # `targets DATA --preset P key=value`, `val W --data D key=value`: argparse leaves positionals after an
        # option unclaimed; they are overrides.
        settings_only = args.command in ("val", "predict") and not split_override_tokens(extra)[0]
        if (args.command != "targets" and not settings_only) or any(token.startswith("-") for token in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return _run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupted:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130


def describe_error(error: BaseException) -> str:
    """The `error:` line's text: the project's own message, or for an OSError the path, the system's reason and
    what to do (`[Errno 28] No space left on device: 'runs/x/.last.safetensors.k3j.tmp'` becomes
    `runs/x/last.safetensors: No space left on device (errno ENOSPC): the disk is full: ...`)."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        path = Path(str(error.filename))
        temporary = TEMPORARY_NAME.match(path.name)  # an atomic write's temporary names its file
        target = path.with_name(temporary["name"]) if temporary else path
        second = f" -> {error.filename2}" if error.filename2 is not None else ""
        code = f" (errno {errno.errorcode.get(error.errno, error.errno)})" if error.errno is not None else ""
        hint = OS_ERROR_HINTS.get(error.errno or 0)
        return f"{target}{second}: {error.strerror}{code}" + (f": {hint}" if hint else "")
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}{': ' + OS_ERROR_HINTS[error.errno] if error.errno in OS_ERROR_HINTS else ''}"
    text = str(error) or type(error).__name__
    return text if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {text}"


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
        result = api.val(args.weights, args.data, args.device, plots=args.plots, save_json=args.save_json, overrides=args.overrides)
        print(result.table())
        if args.plots:
            print(f"plots: {args.plots}")
        return 0
    if args.command == "predict":
        summary = api.predict(
            args.weights, args.sources, args.out, args.conf, args.device, save_images=not args.no_images,
            agnostic_nms=args.agnostic_iou if args.agnostic_nms else None, overrides=args.overrides,
        )
        print(summary.text())
        return 0
    if args.command == "data" and args.data_command == "synth":
        folder = write_synthetic_dataset(args.out, args.train, args.val, args.seed)
        print(f"wrote {folder} (instances_train.json, instances_val.json, images/)")
        return 0
    if args.command == "data" and args.data_command == "check":
        refuse_overwriting_inputs([args.json], dataset_inputs(args.path, args.format), "data check --json")
        report = dataset_report(args.path, args.format, args.names, "error" if args.strict else "report", decode=args.decode)
        print(format_report(report))
        atomic_write_text(args.json, json.dumps(report, indent=2))
        print(f"report: {args.json}")
        # 2: training would refuse the dataset; 1: training would skip some annotations or images; 0: clean.
        return 2 if report["structural"] else 0 if report["ok"] else 1
    if args.command == "data" and args.data_command == "convert":
        target = convert_dataset(args.path, args.to, args.out, args.images, args.format, args.names)
        key = "data.dataset" if target.suffix == ".yaml" else "data.train"
        print(f"wrote {args.out} ({args.to}); train with: anchorfree train {key}={target}")
        return 0
    if args.command == "data" and args.data_command == "show":
        out = args.out or Path("runs/data_show") / f"{args.split or 'train'}.png"
        out = show_dataset(args.path, out, args.split, args.count, seed=args.seed, data_format=args.format, class_names=args.names)
        print(f"wrote {out}")
        return 0
    if args.command == "targets":
        images, overrides = split_override_tokens(args.images)  # `--images 0 3 key=value`: the list takes the overrides too
        source = args.weights or args.preset or api.DEMO_PRESETS[args.model]
        written = api.targets(
            args.data, source, images, args.out, args.split, args.count, [*args.overrides, *overrides], args.device, args.conf
        )
        for path in written:
            print(path)
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
