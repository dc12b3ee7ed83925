"""The configured data: which files `data.*` names, read how, and as which dataset the loops see them.

    train_data, val_data = read_splits(config)            # data.train / data.val, or data.dataset's splits
    dataset = training_dataset(config, train_data)         # augmentation and mosaic, seeded by train.seed
    evaluation_dataset(config, val_data)[0]                # the deterministic resize evaluation and `targets` use

Training, `val`, `targets` and the benchmarks all go through these, so a split means the same images, boxes
and network inputs wherever it is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anchorfree.data.dataset import DetectionDataset
from anchorfree.data.formats import check_same_classes, read_dataset, read_dataset_yaml
from anchorfree.data.records import DetectionData, InvalidAnnotation
from anchorfree.data.transforms import eval_transforms, largest_input, train_transforms

if TYPE_CHECKING:
    from anchorfree.config import Config


def read_split(config: Config, path: str, split: str, class_names: list[str] | None = None) -> DetectionData:
    """One split of the configured data, in whatever format it is, with the data settings applied."""
    data = config.data
    return read_dataset(
        path,
        split,
        data.format,
        class_names or data.names or None,
        data.images or None,
        data.on_invalid,
        data.trust_image_size,
        data.max_image_pixels,
    )


def data_paths(config: Config) -> tuple[str, str]:
    """(train, val) paths: `data.train` / `data.val`, or the splits of the `data.dataset` YAML."""
    train, val = config.data.train, config.data.val
    if config.data.dataset:
        splits = read_dataset_yaml(config.data.dataset).splits
        train = train or (str(config.data.dataset) if "train" in splits else "")
        val = val or (str(config.data.dataset) if "val" in splits else "")
    return train, val


def read_splits(config: Config) -> tuple[DetectionData, DetectionData | None]:
    """Read the train and (optional) val splits and check they agree on the classes, before any training."""
    train_path, val_path = data_paths(config)
    if not train_path:
        raise InvalidAnnotation(
            "no training data: set data.train (a COCO JSON file, a VOC or YOLO folder) or data.dataset (a dataset YAML)"
        )
    train_data = read_split(config, train_path, "train")
    if not val_path:
        return train_data, None
    # VOC and YOLO name classes, not ids: the val split is read with the train split's classes, so a class that
    # only val has is an error naming it. COCO splits carry their own categories, compared below.
    val_data = read_split(config, val_path, "val", None if train_data.format == "coco" else train_data.class_names)
    check_same_classes(train_data, val_data)
    return train_data, val_data


def training_dataset(config: Config, data: DetectionData) -> DetectionDataset:
    """The training split as the loop sees it: `data.*`'s resize mode, augmentation and mosaic, seeded by `train.seed`."""
    data_config = config.data
    size = max(data_config.train_sizes)
    return DetectionDataset(
        data,
        train_transforms(
            data_config.train_sizes, data_config.max_size, data_config.horizontal_flip, data_config.photometric,
            resize=data_config.resize, scale_range=data_config.scale_range, min_box_size=data_config.min_box_size,
        ),
        largest_input(size, data_config.max_size, data_config.resize, data_config.scale_range),
        seed=config.train.seed,
        mosaic_probability=data_config.mosaic,
        mosaic_size=size,
        min_box_size=data_config.min_box_size,
        cache_images=data_config.cache_images,
    )


def evaluation_dataset(config: Config, data: DetectionData) -> DetectionDataset:
    """A split as evaluation sees it: the config's deterministic resize (`data.val_size`, `data.resize`), no augmentation."""
    size, max_size, resize = config.data.val_size, config.data.max_size, config.data.resize
    return DetectionDataset(data, eval_transforms(size, max_size, resize=resize), largest_input(size, max_size, resize))
