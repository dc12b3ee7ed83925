"""One way to point at data: a COCO JSON file, a VOC or YOLO folder, or a dataset YAML; the format is detected.

    read_dataset("instances_train.json")                 # COCO
    read_dataset("VOCdevkit/VOC2007", split="trainval")  # Pascal VOC (devkit root, or any folder of XML files)
    read_dataset("shapes/images/train")                  # YOLO (labels/ found beside images/)
    read_dataset("data.yaml", split="val")               # a dataset YAML: ours or Ultralytics'

A dataset YAML names its splits and, optionally, its classes and format (safe YAML only):

    path: /data/shapes      # optional root for the paths below (default: the YAML's folder)
    train: images/train     # a COCO JSON file, a VOC folder or split file, or YOLO images (folder or list file)
    val: images/val
    names: [circle, square] # or {0: circle, 1: square}; required for YOLO without a classes.txt
    format: yolo            # optional: coco | voc | yolo (detected when absent)
    images: images          # optional (COCO): the folder file_names are relative to

`convert_dataset` writes any of them in any other format; `read_dataset` on the result gives the same samples,
up to the target format's precision.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from anchorfree.data.coco import read_coco
from anchorfree.data.images import MAX_IMAGE_PIXELS
from anchorfree.data.records import DetectionData, InvalidAnnotation
from anchorfree.data.voc import read_voc, write_voc
from anchorfree.data.yolo import label_path, read_yolo, write_yolo

FORMATS = ("coco", "voc", "yolo")
SPLITS = ("train", "val", "test")


@dataclass
class DatasetSpec:
    """What a dataset YAML says: split paths (resolved), class names, format, COCO image folder."""

    source: Path
    splits: dict[str, Path]
    names: list[str] | None = None
    format: str = ""
    images: Path | None = None


def read_dataset_yaml(path: str | Path) -> DatasetSpec:
    """Parse a dataset YAML (ours or Ultralytics') with YAML's safe loader; paths resolve against `path:` or the file's folder."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidAnnotation(f"{path}: dataset YAML not found") from None
    except yaml.YAMLError as error:
        raise InvalidAnnotation(f"{path}: not valid YAML ({error})") from error
    if not isinstance(document, dict):
        raise InvalidAnnotation(f"{path}: a dataset YAML is a mapping with 'train', 'val' and optionally 'names', 'format', 'path'")
    root = path.parent
    if document.get("path"):
        root = Path(str(document["path"]))
        root = root if root.is_absolute() else path.parent / root
    splits = {}
    for split in SPLITS:
        value = document.get(split)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InvalidAnnotation(f"{path}: '{split}' must be one path, got {value!r}")
        split_path = Path(value)
        splits[split] = split_path if split_path.is_absolute() else root / split_path
    if "train" not in splits and "val" not in splits:
        raise InvalidAnnotation(f"{path}: no 'train' or 'val' path")
    names = document.get("names")
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise InvalidAnnotation(f"{path}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [str(names[key]) for key in keys]
    elif isinstance(names, list):
        names = [str(name) for name in names]
    elif names is not None:
        raise InvalidAnnotation(f"{path}: 'names' must be a list or a {{index: name}} mapping, got {names!r}")
    if names is not None and "nc" in document and int(document["nc"]) != len(names):
        raise InvalidAnnotation(f"{path}: nc={document['nc']} but 'names' lists {len(names)} classes")
    if len(set(names or [])) != len(names or []):
        raise InvalidAnnotation(f"{path}: 'names' repeats a class: {names}")
    data_format = str(document.get("format", "") or "")
    if data_format and data_format not in FORMATS:
        raise InvalidAnnotation(f"{path}: format {data_format!r} is not one of {', '.join(FORMATS)}")
    images = document.get("images")
    images_path = None if not images else (Path(images) if Path(images).is_absolute() else root / images)
    return DatasetSpec(path, splits, names, data_format, images_path)


def detect_format(path: str | Path) -> str:
    """'coco', 'voc', 'yolo' or 'yaml' (a dataset YAML) for a path, from what it holds."""
    path = Path(path)
    if not path.exists():
        raise InvalidAnnotation(f"{path}: no such file or folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yaml"
        if suffix == ".txt":
            return "voc" if path.parent.name == "Main" or path.parent.parent.name == "ImageSets" else "yolo"
        raise InvalidAnnotation(f"{path}: cannot tell the dataset format of a {suffix or 'suffix-less'} file (expected .json, .yaml, or a folder)")
    if (path / "Annotations").is_dir() or next(path.glob("*.xml"), None) is not None:
        return "voc"
    labels_folder = label_path(path / "x.jpg").parent  # .../images/train -> .../labels/train
    if (path / "labels").is_dir() or (labels_folder != path and labels_folder.is_dir()):
        return "yolo"
    if _coco_files(path):
        return "coco"
    raise InvalidAnnotation(
        f"{path}: cannot tell the dataset format: no COCO .json, no VOC Annotations/ or .xml files, no YOLO labels/ folder; "
        "point at the annotation file or folder itself, or write a dataset YAML with 'format:'"
    )


def _coco_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) + sorted(folder.glob("annotations/*.json")) + sorted(folder.glob("coco/*.json"))


def resolve_split(path: str | Path, split: str | None, data_format: str = "") -> tuple[Path, str, DatasetSpec | None]:
    """(path of the split's annotations, its format, the dataset YAML when there is one) for `path` and `split`."""
    path = Path(path)
    spec = None
    if path.suffix.lower() in (".yaml", ".yml"):
        spec = read_dataset_yaml(path)
        split = split or "train"
        if split not in spec.splits:
            raise InvalidAnnotation(f"{path}: no '{split}' split (it has {', '.join(spec.splits)})")
        path = spec.splits[split]
        data_format = data_format or spec.format
    data_format = data_format or detect_format(path)
    if data_format == "coco" and path.is_dir():
        files = _coco_files(path)
        matching = [file for file in files if split is not None and file.stem in (split, f"instances_{split}")]
        if len(matching) == 1:
            path = matching[0]
        elif len(files) == 1:
            path = files[0]
        else:
            raise InvalidAnnotation(f"{path}: {len(files)} JSON files and none is the '{split}' split; point at the JSON file itself")
    elif data_format == "yolo" and path.is_dir() and split is not None:
        images = path / "images" if (path / "images").is_dir() else path
        if (images / split).is_dir():
            path = images / split
    if data_format not in FORMATS:
        raise InvalidAnnotation(f"{path}: format {data_format!r} is not one of {', '.join(FORMATS)}")
    return path, data_format, spec


def read_dataset(
    path: str | Path,
    split: str | None = None,
    data_format: str = "",
    class_names: list[str] | None = None,
    image_root: str | Path | None = None,
    on_invalid: str = "skip",
    trust_image_size: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> DetectionData:
    """Read one split of a dataset in any supported format into `DetectionData`.

    Args:
        path: a COCO JSON file, a VOC folder or split file, YOLO images (folder or list file), a dataset YAML, or a
            folder holding one of them.
        split: which split to read from a YAML or a folder holding several (train, val, test).
        data_format: "coco", "voc" or "yolo"; detected when empty.
        class_names: the classes in label order (VOC and YOLO; checked against COCO's categories). Default: the
            YAML's `names`, a YOLO `classes.txt`, or the sorted VOC names.
        image_root, on_invalid, trust_image_size, max_image_pixels: as for `read_coco`.
    """
    split_path, data_format, spec = resolve_split(path, split, data_format)
    if spec is not None:
        class_names = class_names or spec.names
        image_root = image_root or spec.images
    if data_format == "coco":
        data = read_coco(split_path, image_root, on_invalid, trust_image_size, max_image_pixels)
        if class_names is not None and list(class_names) != data.class_names:
            raise InvalidAnnotation(f"{split_path}: categories {data.class_names} differ from the expected class names {list(class_names)}")
        return data
    if data_format == "voc":
        return read_voc(split_path, split, class_names, image_root, on_invalid, trust_image_size, max_image_pixels)
    return read_yolo(split_path, class_names, on_invalid, max_image_pixels)


def dataset_splits(path: str | Path, data_format: str = "") -> dict[str, tuple[Path, str]]:
    """The splits a path holds, as {split: (path, format)}: a YAML's splits, a folder's train/val/test, or the path
    itself as one split (named after a COCO file's `instances_<split>` stem, else "train")."""
    path = Path(path)
    data_format = data_format or detect_format(path)
    if data_format == "yaml":
        spec = read_dataset_yaml(path)
        return {split: (split_path, spec.format or detect_format(split_path)) for split, split_path in spec.splits.items()}
    if path.is_dir():
        found = {}
        for split in SPLITS:
            try:
                split_path, split_format, _ = resolve_split(path, split, data_format)
            except InvalidAnnotation:
                continue
            # A devkit's splits share its root and differ by their ImageSets/Main/<split>.txt.
            listed = split_format == "voc" and (path / "ImageSets" / "Main" / f"{split}.txt").is_file()
            if listed or (split_path != path and split_path not in [value[0] for value in found.values()]):
                found[split] = (split_path, split_format)
        if found:
            return found
    name = path.stem.removeprefix("instances_") if data_format == "coco" else "train"
    return {name if name in SPLITS else "train": (path, data_format)}


def check_same_classes(reference: DetectionData, other: DetectionData) -> None:
    """Raise InvalidAnnotation, naming the (id, name) pairs only one has, when two splits disagree on their classes."""
    if (other.category_ids, other.class_names) != (reference.category_ids, reference.class_names):
        differences = sorted(set(zip(reference.category_ids, reference.class_names)) ^ set(zip(other.category_ids, other.class_names)))
        raise InvalidAnnotation(
            f"{reference.source} and {other.source} disagree on categories: (id, name) pairs in only one of them: {differences}"
        )


def iter_splits(
    path: str | Path, data_format: str = "", class_names: list[str] | None = None, on_invalid: str = "skip"
) -> Iterator[tuple[str, DetectionData]]:
    """(split, its data) for every split at `path` (`dataset_splits`), in train, val, test order, read lazily.

    VOC and YOLO splits after the first are read with the first one's classes (as training reads val), so a class
    only one split has is an error naming it; COCO splits must agree on their categories (`check_same_classes`).
    A dataset YAML is read through itself, so its `names` and `images` apply (a given format is its splits').
    """
    is_yaml = Path(path).suffix.lower() in (".yaml", ".yml")
    first: DetectionData | None = None
    for split, (split_path, split_format) in dataset_splits(path, "yaml" if is_yaml else data_format).items():
        names = class_names or (first.class_names if first is not None and split_format != "coco" else None)
        source, source_format = (path, data_format) if is_yaml else (split_path, split_format)
        data = read_dataset(source, split, source_format, names, on_invalid=on_invalid)
        if first is None:
            first = data
        else:
            check_same_classes(first, data)
        yield split, data


def convert_dataset(
    source: str | Path,
    to: str,
    out: str | Path,
    images: str = "copy",
    data_format: str = "",
    class_names: list[str] | None = None,
    on_invalid: str = "skip",
) -> Path:
    """Write the dataset at `source` (every split it holds) in format `to` under `out`; returns the file to point
    training at (a dataset YAML for YOLO and VOC, the train JSON for COCO when it is the only split).

    Layouts written: COCO `annotations/instances_<split>.json` + `images/`; VOC `Annotations/`, `JPEGImages/`,
    `ImageSets/Main/<split>.txt` + `data.yaml`; YOLO `images/<split>/`, `labels/<split>/`, `data.yaml`.
    `images` is "copy", "symlink" or "none" (annotations only). `out` must not exist or be empty; the source is
    only read.
    """
    if to not in FORMATS:
        raise InvalidAnnotation(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    if images not in ("copy", "symlink", "none"):
        raise InvalidAnnotation(f"images must be 'copy', 'symlink' or 'none', got {images!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new output folder")
    datasets = dict(iter_splits(source, data_format, class_names, on_invalid))
    first = next(iter(datasets.values()))
    out.mkdir(parents=True, exist_ok=True)
    if to == "coco":
        (out / "annotations").mkdir()
        for split, data in datasets.items():
            ground_truth = data.coco_ground_truth()
            for image, record in zip(ground_truth["images"], data.records):
                image["file_name"] = _place_image(record.path, out / "images" / record.file_name, images)
            (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(ground_truth), encoding="utf-8")
        if len(datasets) == 1:
            return out / "annotations" / f"instances_{next(iter(datasets))}.json"
        _write_yaml(out / "data.yaml", {split: f"annotations/instances_{split}.json" for split in datasets}, first.class_names, "coco")
        return out / "data.yaml"
    if to == "voc":
        # VOC keeps every image in one folder, named by its file name; names that repeat across subfolders
        # (images/train/0.jpg, images/val/0.jpg) take their folders into the name (train_0.jpg).
        all_records = [record for data in datasets.values() for record in data.records]
        names = [Path(record.file_name).name for record in all_records]
        if len({Path(name).stem for name in names}) < len(names):
            names = [record.file_name.replace("/", "_") for record in all_records]
        owners: dict[str, Path] = {}
        for record, name in zip(all_records, names):
            if Path(name).stem in owners and owners[Path(name).stem] != record.path:
                raise InvalidAnnotation(f"{record.path} and {owners[Path(name).stem]} would share the VOC annotation {Path(name).stem}.xml")
            owners[Path(name).stem] = record.path
        flat_names = iter(names)
        for split, data in datasets.items():
            flat = [next(flat_names) for _ in data.records]
            for record, name in zip(data.records, flat):
                _place_image(record.path, out / "JPEGImages" / name, images)
            renamed = DetectionData(
                [replace(record, file_name=name) for record, name in zip(data.records, flat)], data.class_names, data.category_ids, data.source
            )
            write_voc(renamed, out, split=split)
        _write_yaml(out / "data.yaml", {split: "." for split in datasets}, first.class_names, "voc")
        return out / "data.yaml"
    for split, data in datasets.items():
        for record in data.records:
            _place_image(record.path, out / "images" / split / record.file_name, images)
        write_yolo(data, out / "images" / split)
    _write_yaml(out / "data.yaml", {split: f"images/{split}" for split in datasets}, first.class_names, "yolo")
    return out / "data.yaml"




def _place_image(source: Path, destination: Path, mode: str) -> str:
    if mode != "none":
        destination.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            shutil.copyfile(source, destination)
        else:
            os.symlink(source.resolve(), destination)
    return _relative_name(destination)


def _relative_name(destination: Path) -> str:
    """The part of `destination` below its `images` / `JPEGImages` folder."""
    parts = destination.parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in ("images", "JPEGImages"):
            return Path(*parts[index + 1 :]).as_posix()
    return destination.name


def _write_yaml(path: Path, splits: dict[str, str], names: list[str], data_format: str) -> None:
    # No `path:`: readers (ours and Ultralytics') then resolve the splits against the YAML's own folder.
    document = {**splits, "names": {index: name for index, name in enumerate(names)}, "format": data_format}
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


