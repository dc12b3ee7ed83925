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
    category_ids: [1, 3]    # optional: the dataset's id of each name (default 1..C), as convert keeps COCO's ids

A folder holding a `data.yaml` (or `dataset.yaml`), as `convert_dataset` writes one, is read through it. The
YAML is read with a size bound and its aliases may not expand it beyond a bound (`textfiles`).

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
from anchorfree.data.records import DetectionData, ImageRecord, InvalidAnnotation, join_inside
from anchorfree.data.textfiles import MAX_YAML_BYTES, read_text_limited, safe_load_bounded
from anchorfree.data.voc import read_voc, write_voc
from anchorfree.data.yolo import label_path, read_yolo, write_yolo

FORMATS = ("coco", "voc", "yolo")
SPLITS = ("train", "val", "test")
DATASET_YAML_NAMES = ("data.yaml", "dataset.yaml")  # the YAML a dataset folder is read through when it holds one


@dataclass
class DatasetSpec:
    """What a dataset YAML says: split paths (resolved), class names, format, COCO image folder."""

    source: Path
    splits: dict[str, Path]
    names: list[str] | None = None
    format: str = ""
    images: Path | None = None
    category_ids: list[int] | None = None  # the dataset's own id of each name (COCO ids kept through YOLO / VOC)


def dataset_yaml_of(path: str | Path) -> Path | None:
    """The dataset YAML `path` is or holds (a folder's `data.yaml` or `dataset.yaml`, as `convert_dataset` writes
    it), or None: a folder with its own YAML is read through it, so its class names and splits apply."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return path
    if path.is_dir():
        return next((path / name for name in DATASET_YAML_NAMES if (path / name).is_file()), None)
    return None


def read_dataset_yaml(path: str | Path) -> DatasetSpec:
    """Parse a dataset YAML (ours or Ultralytics', or the one a folder holds) with YAML's safe loader, bounded in
    size (MAX_YAML_BYTES) and in alias expansion (`safe_load_bounded`); paths resolve against `path:` or the
    file's folder."""
    path = dataset_yaml_of(path) or Path(path)
    try:
        document = safe_load_bounded(read_text_limited(path, MAX_YAML_BYTES, "the dataset YAML"))
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
    category_ids = document.get("category_ids")
    if category_ids is not None:
        valid = isinstance(category_ids, list) and all(type(value) is int and value > 0 for value in category_ids)
        if not valid or names is None or len(category_ids) != len(names) or len(set(category_ids)) != len(category_ids):
            raise InvalidAnnotation(
                f"{path}: 'category_ids' is {category_ids!r}; it must list one distinct positive integer per class of 'names'"
            )
    return DatasetSpec(path, splits, names, data_format, images_path, category_ids)


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
    dataset_yaml = dataset_yaml_of(path)
    if dataset_yaml is not None:
        path = dataset_yaml
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
    category_ids = None
    if spec is not None:
        class_names = class_names or spec.names
        image_root = image_root or spec.images
        if spec.category_ids is not None and class_names is not None and list(class_names) == spec.names:
            category_ids = spec.category_ids
    if data_format == "coco":
        data = read_coco(split_path, image_root, on_invalid, trust_image_size, max_image_pixels)
        if class_names is not None and data.class_names and list(class_names) != data.class_names:
            raise InvalidAnnotation(f"{split_path}: categories {data.class_names} differ from the expected class names {list(class_names)}")
        return data
    if data_format == "voc":
        data = read_voc(split_path, split, class_names, image_root, on_invalid, trust_image_size, max_image_pixels)
    else:
        data = read_yolo(split_path, class_names, on_invalid, max_image_pixels)
    if category_ids is not None:  # VOC and YOLO number classes 1..C; the YAML keeps the ids they came with
        data.category_ids = list(category_ids)
    return data


def dataset_splits(path: str | Path, data_format: str = "") -> dict[str, tuple[Path, str]]:
    """The splits a path holds, as {split: (path, format)}: a YAML's splits, a folder's train/val/test, or the path
    itself as one split (named after a COCO file's `instances_<split>` stem, else "train")."""
    path = Path(path)
    if path.is_dir() and dataset_yaml_of(path) is not None:
        path, data_format = dataset_yaml_of(path), "yaml"  # a folder with its own YAML (as convert writes it)
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
    path = dataset_yaml_of(path) or Path(path)  # a folder holding a data.yaml is read through it
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    first: DetectionData | None = None
    for split, (split_path, split_format) in dataset_splits(path, "yaml" if is_yaml else data_format).items():
        names = class_names or (first.class_names if first is not None and split_format != "coco" else None)
        source, source_format = (path, data_format) if is_yaml else (split_path, split_format)
        data = read_dataset(source, split, source_format, names, on_invalid=on_invalid)
        if first is None or not first.class_names:
            first = data
        elif data.class_names:  # a split whose file could not be read at all (recorded under "report") has no classes to compare
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
    only read: every destination is checked before anything is written, and a conversion that would write
    outside `out`, over an input image, or two images to one place is refused (InvalidAnnotation). COCO images
    go to `images/<split>/` when two splits hold different images of the same name.

    The output reads back by its folder (`read_dataset(out, split)` goes through its `data.yaml`) with the same
    images, classes, category ids (kept in the YAML's `category_ids` when they are not 1..C) and boxes: YOLO's
    normalised coordinates are written with 10 decimals, so boxes come back within 1e-4 px for images up to
    100,000 px a side; VOC coordinates are written so that reading inverts writing exactly. Crowd boxes have
    no YOLO form and are left out with a warning.
    """
    if to not in FORMATS:
        raise InvalidAnnotation(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    if images not in ("copy", "symlink", "none"):
        raise InvalidAnnotation(f"images must be 'copy', 'symlink' or 'none', got {images!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidAnnotation(f"{out}: the output must be a new or empty folder, and this is a file; choose a new output folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new output folder")
    datasets = dict(iter_splits(source, data_format, class_names, on_invalid))
    first = next(iter(datasets.values()))
    # Every destination is decided, and checked against the inputs and each other, before anything is written.
    names = {split: [_output_image_name(record) for record in data.records] for split, data in datasets.items()}
    if to == "coco":
        # COCO keeps the images of every split in one folder; when two splits name different images alike
        # (images/train/0.jpg, images/val/0.jpg of a YOLO set), each split gets its own subfolder.
        owner_of: dict[str, Path] = {}
        shared = False
        for split, data in datasets.items():
            for record, name in zip(data.records, names[split]):
                shared = shared or owner_of.setdefault(name, record.path) != record.path
        if shared:
            names = {split: [f"{split}/{name}" for name in split_names] for split, split_names in names.items()}
        image_folders = {split: out / "images" for split in datasets}
        outputs = [out / "annotations" / f"instances_{split}.json" for split in datasets] + [out / "data.yaml"]
    elif to == "voc":
        # VOC keeps every image in one folder, named by its file name; names that repeat across subfolders
        # (images/train/0.jpg, images/val/0.jpg) take their folders into the name (train_0.jpg).
        all_names = [name for split_names in names.values() for name in split_names]
        flat = [Path(name).name for name in all_names]
        if len({Path(name).stem for name in flat}) < len(flat):
            flat = [name.replace("/", "_") for name in all_names]
        flat_names = iter(flat)
        names = {split: [next(flat_names) for _ in split_names] for split, split_names in names.items()}
        owners: dict[str, Path] = {}
        for split, data in datasets.items():
            for record, name in zip(data.records, names[split]):
                if Path(name).stem in owners and owners[Path(name).stem] != record.path:
                    raise InvalidAnnotation(f"{record.path} and {owners[Path(name).stem]} would share the VOC annotation {Path(name).stem}.xml")
                owners[Path(name).stem] = record.path
        image_folders = {split: out / "JPEGImages" for split in datasets}
        outputs = [out / "Annotations" / f"{stem}.xml" for stem in owners] + [out / "ImageSets" / "Main" / f"{split}.txt" for split in datasets]
        outputs.append(out / "data.yaml")
    else:
        image_folders = {split: out / "images" / split for split in datasets}
        outputs = [label_path(image_folders[split] / name) for split in datasets for name in names[split]] + [out / "data.yaml"]
    placements = [
        (record.path, join_inside(image_folders[split], name), name)
        for split, data in datasets.items()
        for record, name in zip(data.records, names[split])
    ]
    _check_outputs(out, placements, outputs, images)

    out.mkdir(parents=True, exist_ok=True)
    placed: set[Path] = set()
    for source_image, destination, _ in placements:
        if destination not in placed:  # an image two splits share is placed once
            _place_image(source_image, destination, images)
            placed.add(destination)
    renamed = {
        split: DetectionData(
            [replace(record, file_name=name) for record, name in zip(data.records, names[split])], data.class_names, data.category_ids, data.source
        )
        for split, data in datasets.items()
    }
    if to == "coco":
        (out / "annotations").mkdir()
        for split, data in renamed.items():
            (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data.coco_ground_truth()), encoding="utf-8")
        if len(datasets) == 1:
            return out / "annotations" / f"instances_{next(iter(datasets))}.json"
        _write_yaml(out / "data.yaml", {split: f"annotations/instances_{split}.json" for split in datasets}, first.class_names, "coco")
        return out / "data.yaml"
    if to == "voc":
        for split, data in renamed.items():
            write_voc(data, out, split=split)
        _write_yaml(out / "data.yaml", {split: "." for split in datasets}, first.class_names, "voc", first.category_ids)
        return out / "data.yaml"
    for split, data in renamed.items():
        write_yolo(data, image_folders[split])
    _write_yaml(out / "data.yaml", {split: f"images/{split}" for split in datasets}, first.class_names, "yolo", first.category_ids)
    return out / "data.yaml"


def _output_image_name(record: ImageRecord) -> str:
    """A record's `file_name` as a name below the output's image folder: an absolute one (a YOLO list file may
    give one) keeps its folders but loses its root, so it lands inside the output like the others."""
    name = Path(record.file_name)
    return Path(*name.parts[1:]).as_posix() if name.is_absolute() else name.as_posix()


def _check_outputs(out: Path, placements: list[tuple[Path, Path | None, str]], outputs: list[Path], images: str) -> None:
    """Refuse, before anything is written, a conversion that would write outside `out`, over one of its input
    images, or twice to one place (InvalidAnnotation naming both files)."""
    inputs = {Path(os.path.realpath(source_image)) for source_image, _, _ in placements}
    written: dict[Path, Path | str] = {}  # destination -> the source image placed there, or "annotations"
    for source_image, destination, name in placements:
        if destination is None:
            raise InvalidAnnotation(f"{source_image}: its file name {name!r} would place the converted image outside {out}; rename it")
        if images == "none":
            continue
        if Path(os.path.realpath(destination)) in inputs:
            raise InvalidAnnotation(f"{destination}: converting would write over the input image {source_image}; choose a new output folder")
        previous = written.setdefault(destination, source_image)
        if previous != source_image:
            raise InvalidAnnotation(f"{source_image} and {previous} would both be written to {destination}; rename one of them")
    for output in outputs:
        if join_inside(out, os.path.relpath(output, out)) is None:
            raise InvalidAnnotation(f"{output}: an annotation file would be written outside {out}; rename its image")
        if Path(os.path.realpath(output)) in inputs:
            raise InvalidAnnotation(f"{output}: converting would write over the input image of that name; choose a new output folder")
        previous = written.setdefault(output, "annotations")
        if previous != "annotations":
            raise InvalidAnnotation(f"{output}: an annotation file would be written over the converted image {previous}; rename the image")


def _place_image(source: Path, destination: Path, mode: str) -> None:
    if mode != "none":
        destination.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            shutil.copyfile(source, destination)
        else:
            os.symlink(source.resolve(), destination)


def _write_yaml(path: Path, splits: dict[str, str], names: list[str], data_format: str, category_ids: list[int] | None = None) -> None:
    # No `path:`: readers (ours and Ultralytics') then resolve the splits against the YAML's own folder.
    document = {**splits, "names": {index: name for index, name in enumerate(names)}, "format": data_format}
    if category_ids is not None and category_ids != list(range(1, len(names) + 1)):
        document["category_ids"] = list(category_ids)  # VOC and YOLO would renumber them 1..C on reading
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


