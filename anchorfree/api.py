"""The Python API; the CLI is a thin layer over these functions.

    import anchorfree
    run = anchorfree.train("fcos_cpu", {"data.train": "train.json", "data.val": "val.json"})
    detector = anchorfree.load(run / "weights" / "best.safetensors")
    detections = detector.predict("image.jpg")
"""

from __future__ import annotations


import io
import itertools
import json
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.ops import nms
from tqdm import tqdm

from anchorfree.checkpoint import CheckpointError, check_state_dict, checkpoint_config, load_checkpoint
from anchorfree.config import Config, ConfigError, apply_inference_overrides, apply_overrides, get_preset
from anchorfree.data.cache import cache_dir
from anchorfree.data.dataset import scale_to_original
from anchorfree.data.images import IMAGE_SUFFIXES, MIN_IMAGE_SIDE, ImageLoadError, image_to_tensor, load_image
from anchorfree.data.splits import data_paths, read_split
from anchorfree.data.synth import VERSION as SYNTHETIC_VERSION, write_synthetic_dataset
from anchorfree.data.transforms import eval_transforms, make_sample
from anchorfree.drawing import draw_detections
from anchorfree.engine import autocast, evaluate, resolve_device
from anchorfree.engine import train as train_loop
from anchorfree.evaluation import EvaluationResult
from anchorfree.files import atomic_write_bytes, atomic_write_text
from anchorfree.models import build_model
from anchorfree.outputs import data_inputs, refuse_overwriting_inputs, renamed_note, unique_output_names
from anchorfree.plots import EVALUATION_PLOTS, write_evaluation_plots
from anchorfree.targets_view import select_images, write_targets

# Formats a drawn image is written in when its source has one of them (the suffix is kept); others become JPEG.
DRAWN_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
SHOWN_UNREADABLE = 3  # unreadable sources named in predict's error when none could be read
DEMO_PRESETS = {"fcos": "fcos_demo", "centernet": "centernet_demo", "cornernet": "cornernet_demo"}  # the preset each family's demo trains


def make_config(preset: str = "fcos_cpu", overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """A preset with dotted overrides applied (unknown keys raise ConfigError with a suggestion)."""
    return apply_overrides(get_preset(preset), overrides or {})


def train(preset: str = "fcos_cpu", overrides: dict[str, Any] | list[str] | None = None, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train a preset with overrides, e.g. `train("fcos_cpu", {"data.train": "a.json", "train.epochs": 5})`.

    With `resume` (a run folder or its `weights/last.safetensors`), the saved config is used and training
    continues where it stopped; only run-length and machine keys (train.epochs, train.time_limit, train.device,
    train.threads, data.workers) may be overridden. Returns the run folder.
    """
    if resume is not None:
        saved = load_checkpoint(resume)
        config = apply_overrides(checkpoint_config(saved), overrides or {})
        return train_loop(config, resume=saved.path, progress=progress)
    return train_loop(make_config(preset, overrides), progress=progress)


@dataclass
class Detector:
    """A trained detector ready for inference: the model, its preprocessing, and its classes."""

    model: torch.nn.Module
    config: Config
    class_names: list[str]
    category_ids: list[int]
    device: torch.device

    def __post_init__(self) -> None:
        # The evaluation preprocessing the model was trained with; built once, used for every image.
        self.transform = eval_transforms(self.config.data.val_size, self.config.data.max_size, resize=self.config.data.resize)

    @torch.no_grad()
    def predict(
        self, source: str | Path | Image.Image | torch.Tensor, score_threshold: float = 0.3, agnostic_nms: float | None = None
    ) -> dict[str, Any]:
        """Detect objects in one image (a path, a PIL image or a (3, H, W) uint8 tensor).

        The model's own NMS is per class, so two classes scoring on one object both survive it. `agnostic_nms`
        (an IoU in (0, 1]) runs one more NMS over all classes together (`torchvision.ops.nms`): of detections
        overlapping more than that, only the highest-scoring stays, whatever its class.

        A PIL image is read as `load_image` reads a file (EXIF orientation applied, 16-bit scaled by 65535, any mode
        to RGB), so a photo gives the same boxes whether it is passed by path or opened first. An image with a side
        below MIN_IMAGE_SIDE pixels (an empty one included) is a ValueError naming its shape.

        Returns {"boxes": (D, 4) float32 x1, y1, x2, y2 in the original image's pixels, "scores": (D,),
        "labels": (D,) contiguous class indices, "names": list of class names, "category_ids": the dataset's ids}.
        """
        if agnostic_nms is not None and not 0.0 < agnostic_nms <= 1.0:
            raise ValueError(f"agnostic_nms is an IoU threshold in (0, 1], got {agnostic_nms}")
        image = _as_uint8_tensor(source)
        height, width = image.shape[-2:]
        sample = self.transform(make_sample(image, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)))
        network_input = sample["image"].as_subclass(torch.Tensor).to(self.device)
        self.model.eval()
        with autocast(self.device, self.config.train.amp):
            detection = self.model([network_input])[0]
        keep = detection["scores"] >= score_threshold
        # input_size: the resized image without the letterbox's padding.
        boxes = scale_to_original(detection["boxes"][keep].float().cpu(), sample["input_size"], (height, width))
        scores = detection["scores"][keep].float().cpu()
        labels = detection["labels"][keep].cpu()
        if agnostic_nms is not None:
            kept = nms(boxes, scores, agnostic_nms)  # indices by decreasing score
            boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
        return {
            "boxes": boxes,
            "scores": scores,
            "labels": labels,
            "names": [self.class_names[label] for label in labels.tolist()],
            "category_ids": [self.category_ids[label] for label in labels.tolist()],
        }

    def draw(self, image: torch.Tensor, detections: dict[str, Any]) -> torch.Tensor:
        """(3, H, W) uint8 image with the detections of `predict` drawn as boxes in their class's colour (the
        colour `data show`, `targets` and the run's plots give the class), each labelled "name 0.87" on a filled
        background, labels inside the image and never on top of each other (`anchorfree.drawing.draw_detections`);
        the most confident detection's label gets the best place."""
        if len(detections["boxes"]) == 0:
            return image
        order = detections["scores"].argsort(descending=True).tolist()
        captions = [f"{detections['names'][index]} {detections['scores'][index].item():.2f}" for index in order]
        labels = [int(detections["labels"][index]) for index in order]
        return draw_detections(image, detections["boxes"][order], labels, captions)


def load(path: str | Path, device: str = "auto", overrides: dict[str, Any] | list[str] | None = None) -> Detector:
    """Load a checkpoint (`best.safetensors`, `last.safetensors` or a run folder) as a `Detector`.

    `overrides` changes test-time settings of the saved config before the model is built, e.g.
    `{"model.fcos.score_threshold": 0.1}` or `["data.val_size=640"]`: the active family's decode settings
    (`anchorfree.config.INFERENCE_SETTINGS`), data.val_size, data.max_size and train.amp. Any other key is a
    ConfigError naming it and listing what may be changed. `Detector.config` is the overridden config.
    """
    checkpoint = load_checkpoint(path)
    metadata = checkpoint.metadata
    metadata.require(checkpoint.path, "config", "class_names", "category_ids")
    config = checkpoint_config(checkpoint)
    if overrides:
        config = apply_inference_overrides(config, overrides, f"checkpoint {checkpoint.path}")
    class_names = list(metadata.class_names)
    # Every weight comes from the checkpoint: build without fetching ImageNet weights, in the structure the
    # saved config records (model.freeze_backbone_norm: the same modules, the same state-dict keys).
    try:
        model = build_model(replace(config.model, pretrained_backbone=False), len(class_names))
    except (ValueError, RuntimeError) as error:  # the builders' errors for a model section they cannot build
        raise CheckpointError(f"checkpoint {checkpoint.path}: its saved config does not build a model ({error})") from error
    check_state_dict(model, checkpoint.model_state, checkpoint.path, f"{config.model.name} on {config.model.backbone}")
    model.load_state_dict(checkpoint.model_state)
    torch_device = resolve_device(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Detector(model.to(torch_device).eval(), config, class_names, list(metadata.category_ids), torch_device)


def val(
    weights: str | Path,
    data: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    plots: str | Path | None = None,
    save_json: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> EvaluationResult:
    """COCO metrics of a checkpoint on a split in any supported format (default: the val split it was trained
    with). `data` is a COCO JSON file, a VOC or YOLO folder, or a dataset YAML (its val split is used).
    With `plots` (a folder), also write the evaluation's analysis there, as a run folder's plots/ holds it:
    per_class.csv, PR curves at IoU 0.5 and 0.5:0.95, the F1 curve, confusion matrices and sample predictions.
    With `save_json`, also write the metrics (`EvaluationResult.to_dict`) to that file. `overrides`: test-time
    settings, as `load` takes them (e.g. {"model.fcos.nms_threshold": 0.5}).

    Before evaluating, every file it will write is checked against the checkpoint and the split's files
    (OutputOverwritesInput if one would be replaced)."""
    detector = load(weights, device, overrides)
    config = detector.config
    split = str(data) if data is not None else (data_paths(config)[1])
    if not split or split == ".":
        raise ValueError("no validation data: pass data=path/to/instances_val.json (or a VOC/YOLO folder, or a dataset YAML)")
    split_data = read_split(config, split, "val", detector.class_names)
    if (split_data.category_ids, split_data.class_names) != (detector.category_ids, detector.class_names):
        raise ValueError(
            f"{split} has classes {list(zip(split_data.category_ids, split_data.class_names))} but the model was trained on "
            f"{list(zip(detector.category_ids, detector.class_names))}"
        )
    outputs = [Path(save_json)] if save_json is not None else []
    outputs += [Path(plots) / name for name in EVALUATION_PLOTS] if plots is not None else []
    refuse_overwriting_inputs(outputs, itertools.chain(_checkpoint_files(weights), [Path(split)], data_inputs(split_data)), "val")
    result, detections = evaluate(detector.model, split_data, config, detector.device, progress)
    if plots is not None:
        write_evaluation_plots(result, split_data.coco_ground_truth(), detections, split_data, plots)
    if save_json is not None:
        atomic_write_text(save_json, json.dumps(result.to_dict(), indent=2))
    return result


@dataclass
class PredictionSummary:
    """What `predict` did: how many images, what it found, and where the results are (the CLI prints `text()`)."""

    out: Path  # the output folder
    predictions_json: Path
    drawn: list[Path]  # the drawn images, in the output folder (none with save_images=False)
    images: int  # images predicted
    skipped: list[str]  # the sources that could not be read, each "path: why"
    detections_per_class: dict[str, int]  # class name -> detections, for the classes with any, in class order
    images_without_detections: int
    seconds: float  # wall clock of the prediction loop (reading, predicting, drawing, writing)
    score_threshold: float
    agnostic_nms: float | None

    def text(self) -> str:
        """The closing summary: images done and skipped, detections per class, where the results are."""
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        lines = [f"predicted {self.images} image(s) in {self.seconds:.1f} s ({rate:.1f} images/s)"]
        if self.skipped:
            lines[0] += f"; {len(self.skipped)} skipped (could not be read, named above)"
        total = sum(self.detections_per_class.values())
        nms_note = f", class-agnostic NMS at IoU {self.agnostic_nms:g}" if self.agnostic_nms is not None else ""
        lines.append(
            f"{total} detection(s) with score >= {self.score_threshold:g}{nms_note}; "
            f"{self.images_without_detections} image(s) with none"
        )
        name_width = max((len(name) for name in self.detections_per_class), default=0)
        lines += [f"  {name:<{name_width}}  {count}" for name, count in self.detections_per_class.items()]
        lines.append(f"predictions: {self.predictions_json}")
        if self.drawn:
            lines.append(f"drawn images: {self.out}{os.sep} ({len(self.drawn)} file(s))")
        return "\n".join(lines)


def predict(
    weights: str | Path,
    sources: list[str | Path],
    out: str | Path = "runs/predict",
    score_threshold: float = 0.3,
    device: str = "auto",
    save_images: bool = True,
    agnostic_nms: float | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | list[str] | None = None,
) -> PredictionSummary:
    """Detect objects in images and folders of images; write `predictions.json` (COCO results; each record's
    `file_name` is its source's path) and, with `save_images`, each image with its detections drawn
    (`Detector.draw`). `agnostic_nms` (an IoU) keeps one detection per object whatever its class (see
    `Detector.predict`). A progress bar with images/s runs on a terminal (not with `progress=False`). Returns a
    `PredictionSummary` (its `out` is the output folder).

    A drawn image keeps its source's name and suffix, in that format (x.png -> x.png; a format Pillow cannot
    write becomes JPEG with ".jpg" appended); sources with the same name from different folders get a counter
    (x_2.jpg), said in one warning at the end. Before anything is written, every output is checked against every
    source and the checkpoint (OutputOverwritesInput): `--out` may be the sources' folder only where no source
    would be replaced. A source that cannot be read is skipped with a warning naming it and why; when none can be
    read, ImageLoadError names the first few. `overrides`: test-time settings, as `load` takes them (e.g.
    {"model.fcos.score_threshold": 0.1}; `score_threshold` still filters what the model returns).
    """
    paths = _expand_sources(sources)
    out = Path(out)
    drawn_paths, renamed = unique_output_names(paths, out, _drawn_suffix, reserved=["predictions.json"]) if save_images else ([], [])
    refuse_overwriting_inputs([out / "predictions.json", *drawn_paths], itertools.chain(_checkpoint_files(weights), paths), "predict --out")
    if agnostic_nms is not None and not 0.0 < agnostic_nms <= 1.0:
        raise ValueError(f"agnostic_nms is an IoU threshold in (0, 1], got {agnostic_nms}")
    detector = load(weights, device, overrides)
    results = []
    unreadable: list[str] = []
    counts = [0] * len(detector.class_names)  # detections per class index
    written: list[Path] = []
    images_without_detections = 0
    start = time.perf_counter()
    # disable=None: tqdm shows the bar on a terminal only (not in logs or pipes).
    for image_id, path in enumerate(tqdm(paths, desc="predict", unit="img", disable=None if progress else True, dynamic_ncols=True), start=1):
        try:
            image = load_image(path)
        except ImageLoadError as error:
            warnings.warn(f"skipped {error}", stacklevel=2)  # the message starts with the path
            unreadable.append(str(error))
            continue
        detections = detector.predict(image, score_threshold, agnostic_nms)
        for label in detections["labels"].tolist():
            counts[label] += 1
        images_without_detections += len(detections["labels"]) == 0
        for box, score, category_id in zip(detections["boxes"].tolist(), detections["scores"].tolist(), detections["category_ids"]):
            results.append(
                {
                    "image_id": image_id,
                    "file_name": str(path),
                    "category_id": category_id,
                    "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)],
                    "score": round(score, 5),
                }
            )
        if save_images:
            drawn_path = drawn_paths[image_id - 1]
            atomic_write_bytes(drawn_path, _encode_image(detector.draw(image, detections), _drawn_format(drawn_path)))
            written.append(drawn_path)
    if len(unreadable) == len(paths):
        more = len(unreadable) - SHOWN_UNREADABLE
        shown = "; ".join(unreadable[:SHOWN_UNREADABLE]) + (f"; and {more} more" if more > 0 else "")
        raise ImageLoadError(f"none of the {len(paths)} image(s) could be read: {shown}")
    atomic_write_text(out / "predictions.json", json.dumps(results))
    if unreadable:
        warnings.warn(f"{len(unreadable)} of {len(paths)} image(s) could not be read and were skipped (named above)", stacklevel=2)
    if renamed:
        warnings.warn(renamed_note(renamed, "drawn image(s)"), stacklevel=2)
    return PredictionSummary(
        out=out,
        predictions_json=out / "predictions.json",
        drawn=written,
        images=len(paths) - len(unreadable),
        skipped=unreadable,
        detections_per_class={name: count for name, count in zip(detector.class_names, counts) if count},
        images_without_detections=images_without_detections,
        seconds=time.perf_counter() - start,
        score_threshold=score_threshold,
        agnostic_nms=agnostic_nms,
    )


def targets(
    data: str | Path | None = None,
    preset_or_weights: str | Path = "fcos_cpu",
    images: list[int | str] | None = None,
    out: str | Path = "runs/targets",
    split: str = "train",
    count: int = 4,
    overrides: dict[str, Any] | list[str] | None = None,
    device: str = "auto",
    score_threshold: float = 0.3,
) -> list[Path]:
    """Draw what a family is trained to predict on dataset images, one PNG each: `<out>/<image stem>_<family>.png`.

    `preset_or_weights` is a preset name (targets only: the model is built untrained, with
    model.pretrained_backbone=false) or a checkpoint / run folder (its config; its predicted maps and detections
    are drawn beside the targets). `data` is any dataset path (COCO JSON, VOC or YOLO folder, dataset YAML, or a
    folder holding them); None takes the config's data.train / data.val for `split`. `images` are indices or file
    names in the split (default: its first `count`). The image is the config's evaluation input (see
    `anchorfree.targets_view`). `overrides` are a preset's dotted settings, or with a checkpoint its test-time
    settings (`load`'s: e.g. model.centernet.score_threshold). Returns the written paths.
    """
    weights = Path(preset_or_weights)
    class_names = None
    if weights.exists():  # a checkpoint or a run folder
        detector = load(weights, device, overrides)
        config, model, class_names = detector.config, detector.model, detector.class_names
    elif weights.suffix == ".safetensors" or len(weights.parts) > 1:
        raise FileNotFoundError(f"{weights}: no such checkpoint or run folder")
    else:
        config = apply_overrides(make_config(str(preset_or_weights), overrides), {"model.pretrained_backbone": False})
    train_path, val_path = data_paths(config)
    path = str(data) if data is not None else (train_path if split == "train" else val_path)
    if not path:
        raise FileNotFoundError(f"no data for the {split!r} split: pass a dataset (a COCO JSON, a VOC or YOLO folder, or a dataset YAML)")
    split_data = read_split(config, path, split, class_names)
    indices = select_images(split_data, images, count)
    if class_names is None:
        model = build_model(config.model, len(split_data.class_names)).to(resolve_device(device))
    elif split_data.class_names != class_names:
        raise ConfigError(f"{path} has classes {split_data.class_names} but {weights} was trained on {class_names}")
    return write_targets(model, config, split_data, indices, out, predictions=class_names is not None, score_threshold=score_threshold)


def demo(model: str = "fcos", overrides: dict[str, Any] | list[str] | None = None, progress: bool = True) -> tuple[Path, EvaluationResult]:
    """The built-in job: make the synthetic dataset (cached), train the family's CPU preset, evaluate, and draw."""
    if model not in DEMO_PRESETS:
        raise ValueError(f"unknown model {model!r} for the demo; available: {', '.join(DEMO_PRESETS)}")
    dataset = synthetic_dataset_path()
    config = make_config(
        DEMO_PRESETS[model],
        {
            "data.train": str(dataset / "instances_train.json"),
            "data.val": str(dataset / "instances_val.json"),
            "train.name": f"demo_{model}",
            "train.time_limit": 4.0,  # training minutes: with the dataset, evaluations and drawing, under five minutes on 2 CPU cores
        },
    )
    config = apply_overrides(config, overrides or {})
    # Offline with an empty torchvision cache, training warns once and goes on from scratch (engine.train).
    run_folder = train_loop(config, progress=progress)
    result = val(run_folder / "weights" / "best.safetensors", progress=progress)
    val_images = sorted((dataset / "images" / "val").glob("*.jpg"))[:8]
    predict(run_folder / "weights" / "best.safetensors", val_images, run_folder / "predictions", score_threshold=0.3)
    return run_folder, result


def synthetic_dataset_path(num_train: int = 3000, num_val: int = 200, seed: int = 0) -> Path:
    """The built-in dataset in the cache folder ($ANCHORFREE_CACHE or ~/.cache/anchorfree), made on first use."""
    cache = cache_dir()
    folder = cache / f"synthetic-shapes-v{SYNTHETIC_VERSION}-{num_train}-{num_val}-seed{seed}"
    if not (folder / "instances_val.json").is_file():
        write_synthetic_dataset(folder, num_train, num_val, seed)
    return folder


def _expand_sources(sources: list[str | Path]) -> list[Path]:
    """The image files of `sources` (files as given, folders' images in name order), each once."""
    paths: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            paths += sorted(path for path in source.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
        elif source.is_file():
            paths.append(source)
        else:
            raise FileNotFoundError(f"{source}: no such image or folder")
    if not paths:
        raise FileNotFoundError(f"no images found in {[str(source) for source in sources]} (looked for {', '.join(IMAGE_SUFFIXES)})")
    # A file named twice (`photos/ photos/x.jpg`) is predicted once: its drawn image would be written twice.
    unique: dict[str, Path] = {}
    for path in paths:
        unique.setdefault(os.path.normcase(os.path.abspath(path)), path)
    return list(unique.values())


def _checkpoint_files(weights: str | Path) -> list[Path]:
    """The files a checkpoint argument stands for: the file and its .json mirror, or a run folder's weights."""
    weights = Path(weights)
    if weights.is_dir():
        return sorted((weights / "weights").glob("*"))
    return [weights, weights.with_suffix(".json")]


def _as_uint8_tensor(source: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 RGB from a path, a PIL image (read as `load_image` reads a file) or such a tensor."""
    if isinstance(source, (str, Path)):
        return load_image(source)
    if isinstance(source, Image.Image):
        image = image_to_tensor(source)
    elif isinstance(source, torch.Tensor):
        if source.dtype != torch.uint8 or source.dim() != 3 or source.shape[0] != 3:
            raise TypeError(f"a tensor image must be (3, H, W) uint8 RGB, got {source.dtype} {tuple(source.shape)}")
        image = source
    else:
        raise TypeError(f"cannot read an image from {type(source).__name__}; pass a path, a PIL image or a uint8 tensor")
    if min(image.shape[1:]) < MIN_IMAGE_SIDE:
        what = f"PIL image of size {source.size}" if isinstance(source, Image.Image) else f"tensor of shape {tuple(source.shape)}"
        raise ValueError(f"a {what} is too small to detect in: each side must be at least {MIN_IMAGE_SIDE} px")
    return image


def _drawn_suffix(source: Path) -> str:
    """The suffix of a source's drawn image: its own when Pillow writes that format, else the source's plus .jpg."""
    image_format = Image.registered_extensions().get(source.suffix.lower())
    if image_format in DRAWN_FORMATS and image_format in Image.SAVE:
        return source.suffix
    return f"{source.suffix}.jpg"


def _drawn_format(drawn_path: Path) -> str:
    """The Pillow format a drawn image is encoded in: the one its suffix names (see `_drawn_suffix`)."""
    return Image.registered_extensions()[drawn_path.suffix.lower()]


def _encode_image(image: torch.Tensor, image_format: str = "JPEG") -> bytes:
    """A (3, H, W) uint8 image encoded in a Pillow format (JPEG at quality 90, the others losslessly)."""
    buffer = io.BytesIO()
    options = {"quality": 90} if image_format == "JPEG" else {"lossless": True} if image_format == "WEBP" else {}
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format=image_format, **options)  # (3, H, W) -> (H, W, 3)
    return buffer.getvalue()
