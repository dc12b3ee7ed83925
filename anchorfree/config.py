"""Typed configuration: dataclasses, named presets, and dotted `key=value` overrides.

A run is described by one `Config` (model, data, train). A preset is a function returning a complete
`Config`; a user picks one by name and overrides fields with dotted keys (`train.epochs=24`,
`model.fcos.head_convs=2`). Unknown keys fail with a suggestion, values are parsed with YAML's safe loader and
checked against the field's type, and the resolved config is saved with every run and checkpoint. Of the
family sections (`model.fcos`, `model.centernet`, `model.cornernet`) only the one `model.name` selects is part
of a run; a checkpoint can be loaded with other test-time settings (`apply_inference_overrides`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import yaml

from anchorfree.data.textfiles import safe_load_bounded
from anchorfree.data.transforms import RESIZE_MODES
from anchorfree.models.centernet import CenterNetConfig
from anchorfree.models import MODELS
from anchorfree.models.backbones import BACKBONE_NAMES
from anchorfree.models.cornernet import HOURGLASS_BACKBONES, CornerNetConfig
from anchorfree.models.fcos import FCOSConfig


@dataclass
class ModelConfig:
    """Which detector to build. `num_classes` 0 means: take it from the training data.

    Each family has its section (`fcos`, `centernet`, `cornernet`); only the one `name` selects is part of a run:
    the saved config holds it alone, and overriding another family's key is an error.
    """

    name: str = "fcos"  # a key of anchorfree.models.MODELS
    backbone: str = "resnet50"
    backbone_width: float = 1.0  # channel multiplier (mobilenet_v2)
    pretrained_backbone: bool = False  # fetch torchvision's ImageNet weights for the backbone (its weights API)
    # The backbone's batch norm frozen (wrapped in FrozenNorm), as torchvision's detectors train a pretrained
    # backbone: detection batches are too small to re-estimate ImageNet statistics. A structure, not weights:
    # loading a checkpoint rebuilds it from the saved config without fetching anything. An override of
    # model.pretrained_backbone alone sets this to the same value; set both to choose otherwise.
    freeze_backbone_norm: bool = False
    num_classes: int = 0
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    centernet: CenterNetConfig = field(default_factory=CenterNetConfig)
    cornernet: CornerNetConfig = field(default_factory=CornerNetConfig)


@dataclass
class DataConfig:
    """Where the data is and how images are prepared.

    A split is a COCO JSON file, a Pascal VOC folder, YOLO images (folder or list), or a dataset YAML; the
    format is detected (anchorfree.data.formats). `dataset` names a dataset YAML that gives both splits.
    """

    dataset: str = ""  # a dataset YAML (ours or Ultralytics'): fills train/val/names when they are empty
    train: str = ""
    val: str = ""
    format: str = ""  # coco | voc | yolo; detected when empty
    names: list[str] = field(default_factory=list)  # class names in label order (VOC, YOLO); found when empty
    images: str = ""  # image folder the JSON's file_names are relative to; found automatically when empty
    on_invalid: str = "skip"  # per-box problems and unusable images: skip with a counted warning, or error
    trust_image_size: bool = False  # a recorded image size that disagrees with the file: use the file's (else error)
    max_image_pixels: int = 89_478_485  # larger images are refused (decompression bombs); Pillow's default
    train_sizes: list[int] = field(default_factory=lambda: [800])  # shorter side (square side unless "shorter"), one picked per image
    val_size: int = 800
    max_size: int = 1333  # cap on the longer side ("shorter" only)
    # shorter: shorter side to the size (FCOS) | letterbox: longer side to the size, padded to a square |
    # crop: letterbox scale x a random factor, random square crop (CenterNet, CornerNet; evaluation letterboxes)
    resize: str = "shorter"
    scale_range: list[float] = field(default_factory=lambda: [0.6, 1.4])  # crop: the random factor's range
    min_box_size: float = 2.0  # px: boxes cut by a crop or a mosaic to a smaller side are dropped
    mosaic: float = 0.0  # probability of a 2x2 mosaic of four training images
    horizontal_flip: float = 0.5
    photometric: bool = True
    workers: int = 2
    cache_images: bool = False  # keep the decoded training images in memory (small datasets; refused above a share of free memory)


@dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: int = 12
    batch_size: int = 16
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    lr_schedule: str = "cosine"  # cosine | step
    final_lr_ratio: float = 0.01  # the cosine schedule ends at lr * final_lr_ratio
    lr_steps: list[int] = field(default_factory=list)  # epochs at which the step schedule multiplies lr by 0.1
    grad_clip: float = 10.0  # max gradient norm; 0 disables clipping
    ema_decay: float = 0.0  # > 0: evaluate and save as `best` a moving average of the weights with this decay
    amp: bool = False  # bf16 autocast (CPU and CUDA)
    channels_last: bool = True  # NHWC memory format: much faster convolutions on CPU, and on GPU tensor cores
    time_limit: float = 0.0  # minutes; > 0 stops training then, and the schedule runs on elapsed time
    eval_every: int = 1  # epochs
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    tensorboard: bool = False  # also log metrics.csv's scalars and the best epoch's val_predictions.png to <run>/tensorboard/
    project: str = "runs"
    name: str = ""  # run folder name; default <preset>, made unique with a suffix


@dataclass
class Config:
    preset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """The config as plain data (config.yaml, checkpoints); of the family sections, only the active one."""
        values = dataclasses.asdict(self)
        for family in MODELS:
            if family != self.model.name:
                del values["model"][family]
        return values


# --------------------------------------------------------------------------------------------------- presets


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 autocast is slower."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _demo_data() -> DataConfig:
    """The demo presets' input: the synthetic images (144-224 px) letterboxed to 192 x 192, so that square batches
    waste no padding, decoded once and kept in memory. No colour distortion: every object and background already
    has a random colour, and the distortion cost a third of each training step (docs/benchmarks.md, "The demo")."""
    return DataConfig(resize="letterbox", train_sizes=[192], val_size=192, max_size=192, photometric=False, workers=0, cache_images=True)


def _demo_train() -> TrainConfig:
    """The demo presets' schedule: from scratch, a high AdamW rate with warmup and cosine decay, batch 16 (on two
    cores, 1.6x the images per second of batch 8), bf16 where the CPU has it, and a moving average of the weights
    for evaluation. `anchorfree demo` caps it with train.time_limit (the schedule then runs on elapsed time)."""
    return TrainConfig(
        epochs=40, batch_size=16, optimizer="adamw", lr=6e-3, weight_decay=0.05, warmup_iters=50, warmup_factor=0.01,
        final_lr_ratio=0.02, ema_decay=0.995, amp=cpu_has_fast_bf16(), eval_every=2,
    )


def fcos_cpu() -> Config:
    """FCOS on ImageNet MobileNetV2 with a narrow head, ~300 px images: minutes on 2 CPU cores (the CLI default)."""
    return Config(
        preset="fcos_cpu",
        model=ModelConfig(
            name="fcos",
            backbone="mobilenet_v2",
            pretrained_backbone=True,
            freeze_backbone_norm=True,
            fcos=FCOSConfig(fpn_channels=64, head_convs=2, norm_groups=16, size_boundaries=[32.0, 64.0, 128.0, 256.0]),
        ),
        data=DataConfig(train_sizes=[288, 320, 352], val_size=320, max_size=448, workers=0),
        train=TrainConfig(
            epochs=6, batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_iters=100, warmup_factor=0.01,
            final_lr_ratio=0.02, amp=cpu_has_fast_bf16(), eval_every=2,
        ),
    )



def fcos_mobilenet_v2_cpu() -> Config:
    """FCOS on ImageNet MobileNetV2 for real photos on a CPU (384 px, FPN 128 channels)."""
    return Config(
        preset="fcos_mobilenet_v2_cpu",
        model=ModelConfig(
            name="fcos",
            backbone="mobilenet_v2",
            pretrained_backbone=True,
            freeze_backbone_norm=True,
            fcos=FCOSConfig(fpn_channels=128, head_convs=2, size_boundaries=[64.0, 128.0, 256.0, 512.0]),
        ),
        data=DataConfig(train_sizes=[288, 320, 352, 384], val_size=384, max_size=640, workers=0),
        train=TrainConfig(epochs=30, batch_size=4, optimizer="sgd", lr=0.01, warmup_iters=100, warmup_factor=0.001, amp=cpu_has_fast_bf16()),
    )


def fcos_r50_fpn_1x() -> Config:
    """The paper's FCOS R-50-FPN 1x schedule: 800 px, batch 16, SGD 0.01, 12 COCO epochs (90k iterations)."""
    return Config(
        preset="fcos_r50_fpn_1x",
        model=ModelConfig(name="fcos", backbone="resnet50", pretrained_backbone=True, freeze_backbone_norm=True, fcos=FCOSConfig()),
        data=DataConfig(train_sizes=[800], val_size=800, max_size=1333, workers=4),
        train=TrainConfig(epochs=12, batch_size=16, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=500),
    )


def centernet_cpu() -> Config:
    """CenterNet on ImageNet MobileNetV2, FPN-P2 neck (stride 4), ~300 px images; 2 CPU cores."""
    return Config(
        preset="centernet_cpu",
        model=ModelConfig(
            name="centernet",
            backbone="mobilenet_v2",
            pretrained_backbone=True,
            freeze_backbone_norm=True,
            # NMS at 0.6: after minutes of training, large objects still have duplicate peaks (docs/benchmarks.md).
            centernet=CenterNetConfig(neck="fpn", fpn_channels=64, head_channels=64, nms_threshold=0.6),
        ),
        data=DataConfig(train_sizes=[288, 320, 352], val_size=320, max_size=448, workers=0),
        train=TrainConfig(
            epochs=6, batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_iters=100, warmup_factor=0.01,
            final_lr_ratio=0.02, amp=cpu_has_fast_bf16(), eval_every=2,
        ),
    )



def centernet_r18() -> Config:
    """The paper's ResNet-18 CenterNet (ResNet-DCN-18): 512 x 512, Adam 1.25e-4 per 32 images, 140 epochs, lr x0.1 at 90 and 120.

    The paper trains at batch 114 with lr 5e-4 (the released code's rule: 1.25e-4 per 32 images); scale
    `train.lr` with `train.batch_size`. Its augmentation as in the paper: random scale 0.6-1.4 of the
    letterboxed image and a random 512 x 512 crop, flip and colour; evaluation letterboxes to 512 x 512.
    """
    return Config(
        preset="centernet_r18",
        model=ModelConfig(
            name="centernet",
            backbone="resnet18",
            pretrained_backbone=True,
            freeze_backbone_norm=True,
            centernet=CenterNetConfig(neck="deconv", neck_channels=[256, 128, 64], deformable=True, head_channels=64),
        ),
        data=DataConfig(train_sizes=[512], val_size=512, max_size=512, resize="crop", scale_range=[0.6, 1.4], workers=4),
        train=TrainConfig(
            epochs=140, batch_size=32, optimizer="adamw", lr=1.25e-4, weight_decay=0.0, warmup_iters=0, lr_schedule="step",
            lr_steps=[90, 120], grad_clip=0.0, eval_every=5,
        ),
    )


def cornernet_cpu() -> Config:
    """CornerNet on ImageNet MobileNetV2, FPN-P2 neck (stride 4), narrow corner modules; 2 CPU cores."""
    return Config(
        preset="cornernet_cpu",
        model=ModelConfig(
            name="cornernet",
            backbone="mobilenet_v2",
            pretrained_backbone=True,
            freeze_backbone_norm=True,
            # Soft-NMS as the paper does: +0.04-0.08 mAP over the plain pair decode after minutes of training
            # (docs/benchmarks.md).
            cornernet=CornerNetConfig(neck="fpn", fpn_channels=64, pool_channels=64, head_channels=64, soft_nms_sigma=0.5),
        ),
        data=DataConfig(train_sizes=[288, 320, 352], val_size=320, max_size=448, workers=0),
        train=TrainConfig(
            epochs=6, batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_iters=100, warmup_factor=0.01,
            final_lr_ratio=0.02, amp=cpu_has_fast_bf16(), eval_every=2,
        ),
    )



def cornernet_hg104() -> Config:
    """The paper's CornerNet: Hourglass-104 from scratch, 511 x 511 input (128 x 128 output), Adam 2.5e-4 at batch
    49, 250k iterations then 50k at 2.5e-5 (about 104 + 21 COCO epochs).

    The paper's augmentation: random scale 0.6-1.4 of the letterboxed image, a random 511 x 511 crop, flip and
    colour; evaluation letterboxes to 511 x 511 (padded to 512 by the model). Detections go through Gaussian
    soft-NMS (sigma 0.5), as in the released code.
    """
    return Config(
        preset="cornernet_hg104",
        model=ModelConfig(
            name="cornernet",
            backbone="hourglass104",
            pretrained_backbone=False,
            cornernet=CornerNetConfig(pool_channels=128, head_channels=256, soft_nms_sigma=0.5),
        ),
        data=DataConfig(train_sizes=[511], val_size=511, max_size=511, resize="crop", scale_range=[0.6, 1.4], workers=4),
        train=TrainConfig(
            epochs=125, batch_size=49, optimizer="adamw", lr=2.5e-4, weight_decay=0.0, warmup_iters=0, lr_schedule="step",
            lr_steps=[104], grad_clip=0.0, eval_every=5,
        ),
    )


def _demo_of(base: Config, preset: str) -> Config:
    """`base`'s head on the compact csp_small backbone from scratch, with the demo's input and schedule.

    From scratch on purpose: the demo needs no download, and csp_small trains ~7x faster per image than
    MobileNetV2 on a CPU (docs/benchmarks.md, "The demo").
    """
    model = dataclasses.replace(base.model, backbone="csp_small", pretrained_backbone=False, freeze_backbone_norm=False)
    return dataclasses.replace(base, preset=preset, model=model, data=_demo_data(), train=_demo_train())


def fcos_demo() -> Config:
    """The FCOS demo preset: fcos_cpu's head on csp_small from scratch, 192 px; minutes on 2 CPU cores."""
    return _demo_of(fcos_cpu(), "fcos_demo")


def centernet_demo() -> Config:
    """The CenterNet demo preset: centernet_cpu's neck and heads on csp_small from scratch, 192 px; 2 CPU cores."""
    return _demo_of(centernet_cpu(), "centernet_demo")


def cornernet_demo() -> Config:
    """The CornerNet demo preset: cornernet_cpu's corner modules on csp_small from scratch, 192 px; 2 CPU cores."""
    return _demo_of(cornernet_cpu(), "cornernet_demo")


PRESETS: dict[str, Callable[[], Config]] = {
    "fcos_cpu": fcos_cpu,
    "fcos_demo": fcos_demo,
    "fcos_mobilenet_v2_cpu": fcos_mobilenet_v2_cpu,
    "fcos_r50_fpn_1x": fcos_r50_fpn_1x,
    "centernet_cpu": centernet_cpu,
    "centernet_demo": centernet_demo,
    "centernet_r18": centernet_r18,
    "cornernet_cpu": cornernet_cpu,
    "cornernet_demo": cornernet_demo,
    "cornernet_hg104": cornernet_hg104,
}


class ConfigError(ValueError):
    """A bad preset name, key or value."""


def check_data(data: DataConfig) -> None:
    """Raise ConfigError for `data.*` values the pipeline cannot use, before any data is read or trained on."""
    problems = _data_problems(data)
    if problems:
        raise ConfigError("; ".join(problems))


def validate(config: Config) -> None:
    """Raise one ConfigError listing every value of `config` outside its allowed range, before any file is read.

    Types are checked where values are set (`set_value`); this checks ranges and choices, so that a run which
    would fail after minutes of reading image headers (an unknown optimizer, `train.batch_size=0`) or train on
    nonsense (`train.lr=nan`) fails at once, naming each key, its value and what is allowed.
    """
    problems = _model_problems(config.model) + _data_problems(config.data) + _train_problems(config.train)
    if problems:
        raise ConfigError("; ".join(problems))


PATH_KEYS = ("data.dataset", "data.train", "data.val", "data.images", "train.project")


def with_absolute_paths(config: Config, base: str | os.PathLike[str] | None = None) -> Config:
    """A copy of `config` whose file and folder keys (`PATH_KEYS`) are absolute, relative ones taken from `base`
    (default: the working directory).

    The saved config must mean the same files wherever it is used later: `val`, `predict` and `--resume` run
    from any working directory. Empty values stay empty; `~` is expanded; symbolic links are kept as given.
    """
    config = _copy(config)
    root = os.path.abspath(base if base is not None else os.getcwd())
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value:
            setattr(getattr(config, section), name, os.path.normpath(os.path.join(root, os.path.expanduser(value))))
    return config


def _data_problems(data: DataConfig) -> list[str]:
    problems = []
    if data.format not in ("", "coco", "voc", "yolo"):
        problems.append(f"data.format must be coco, voc or yolo (or empty to detect it), got {data.format!r}")
    if data.on_invalid not in ("skip", "error"):
        problems.append(f"data.on_invalid must be 'skip' or 'error', got {data.on_invalid!r}")
    if data.max_image_pixels <= 0:
        problems.append(f"data.max_image_pixels must be positive, got {data.max_image_pixels!r}")
    if data.resize not in RESIZE_MODES:
        problems.append(f"data.resize must be one of {', '.join(RESIZE_MODES)}, got {data.resize!r}{_suggest(data.resize, RESIZE_MODES)}")
    if len(data.scale_range) != 2 or not all(map(math.isfinite, data.scale_range)) or not 0 < data.scale_range[0] <= data.scale_range[1]:
        problems.append(f"data.scale_range must be [low, high] with 0 < low <= high, e.g. [0.6, 1.4]; got {data.scale_range!r}")
    if not data.train_sizes or min(data.train_sizes) <= 0 or data.val_size <= 0:
        problems.append(f"data.train_sizes and data.val_size must be positive pixel sizes; got {data.train_sizes!r}, {data.val_size!r}")
    elif data.resize == "shorter" and data.max_size < max(*data.train_sizes, data.val_size):
        problems.append(
            f"data.max_size must be >= the largest of data.train_sizes and data.val_size ({max(*data.train_sizes, data.val_size)}) "
            f"with data.resize=shorter (it caps the longer side), got {data.max_size!r}"
        )
    if not math.isfinite(data.min_box_size) or data.min_box_size < 0:
        problems.append(f"data.min_box_size must be >= 0 pixels, got {data.min_box_size!r}")
    if not 0 <= data.mosaic <= 1:
        problems.append(f"data.mosaic is a probability in [0, 1], got {data.mosaic!r}")
    if not 0 <= data.horizontal_flip <= 1:
        problems.append(f"data.horizontal_flip is a probability in [0, 1], got {data.horizontal_flip!r}")
    if data.workers < 0:
        problems.append(f"data.workers must be >= 0 (0 reads data in the training process), got {data.workers!r}")
    return problems


def _model_problems(model: ModelConfig) -> list[str]:
    problems = []
    if model.name not in MODELS:
        problems.append(f"model.name must be one of {', '.join(MODELS)}, got {model.name!r}{_suggest(model.name, MODELS)}")
    backbones = [*BACKBONE_NAMES, *(HOURGLASS_BACKBONES if model.name == "cornernet" else [])]
    if model.backbone not in backbones:
        problems.append(f"model.backbone must be one of {', '.join(backbones)} for model.name={model.name!r}, got {model.backbone!r}{_suggest(model.backbone, backbones)}")
    if not math.isfinite(model.backbone_width) or model.backbone_width <= 0:
        problems.append(f"model.backbone_width must be a positive multiplier, got {model.backbone_width!r}")
    if model.num_classes < 0:
        problems.append(f"model.num_classes must be >= 0 (0 takes it from the data), got {model.num_classes!r}")
    if model.freeze_backbone_norm and model.backbone in HOURGLASS_BACKBONES:
        problems.append(
            f"model.freeze_backbone_norm must be false with model.backbone={model.backbone} (it has no ImageNet weights and trains its "
            f"batch norm from scratch), got {model.freeze_backbone_norm!r}"
        )
    return problems


def _train_problems(train: TrainConfig) -> list[str]:
    problems = []

    def require(key: str, value: float, allowed: str, holds: bool) -> None:
        if not holds:
            problems.append(f"train.{key} must be {allowed}, got {value!r}")

    require("epochs", train.epochs, ">= 1", train.epochs >= 1)
    require("batch_size", train.batch_size, ">= 1", train.batch_size >= 1)
    if train.optimizer not in ("sgd", "adamw"):
        problems.append(f"train.optimizer must be 'sgd' or 'adamw', got {train.optimizer!r}{_suggest(train.optimizer, ['sgd', 'adamw'])}")
    require("lr", train.lr, "a finite number > 0", math.isfinite(train.lr) and train.lr > 0)
    require("momentum", train.momentum, "in [0, 1)", 0 <= train.momentum < 1)
    require("weight_decay", train.weight_decay, "a finite number >= 0", math.isfinite(train.weight_decay) and train.weight_decay >= 0)
    require("warmup_iters", train.warmup_iters, ">= 0 steps", train.warmup_iters >= 0)
    require("warmup_factor", train.warmup_factor, "in (0, 1] (the first step's fraction of train.lr)", 0 < train.warmup_factor <= 1)
    if train.lr_schedule not in ("cosine", "step"):
        problems.append(f"train.lr_schedule must be 'cosine' or 'step', got {train.lr_schedule!r}")
    require("final_lr_ratio", train.final_lr_ratio, "in [0, 1]", 0 <= train.final_lr_ratio <= 1)
    require("lr_steps", train.lr_steps, "epochs >= 1 in increasing order", all(step >= 1 for step in train.lr_steps) and train.lr_steps == sorted(train.lr_steps))
    require("ema_decay", train.ema_decay, "in [0, 1) (0: no average)", 0 <= train.ema_decay < 1)
    require("grad_clip", train.grad_clip, "a finite number >= 0 (0 disables clipping)", math.isfinite(train.grad_clip) and train.grad_clip >= 0)
    require("time_limit", train.time_limit, "a finite number of minutes >= 0 (0: no limit)", math.isfinite(train.time_limit) and train.time_limit >= 0)
    require("eval_every", train.eval_every, ">= 1 epochs", train.eval_every >= 1)
    require("threads", train.threads, ">= 0 (0 keeps torch's default)", train.threads >= 0)
    require("seed", train.seed, ">= 0", train.seed >= 0)
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", train.device):
        problems.append(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {train.device!r}")
    if not train.project.strip():
        problems.append("train.project must name a folder for the run folders, got ''")
    name = train.name
    if name and (name in (".", "..") or "/" in name or "\\" in name or os.sep in name or os.path.isabs(name) or "\0" in name):
        problems.append(f"train.name must be a plain folder name inside train.project (no path separators, '.' or '..'), got {name!r}")
    return problems


def get_preset(name: str) -> Config:
    """A fresh Config for a preset name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


# ------------------------------------------------------------------------------------------------- overrides


def apply_overrides(config: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Set dotted keys on a copy of `config`, e.g. ["train.epochs=24", "model.fcos.head_convs=2"].

    Values in "key=value" strings are parsed with `yaml.safe_load` ("0.01" -> float, "[1, 2]" -> list,
    "true" -> bool); numbers and booleans given as strings (also in a dict) are parsed for numeric and boolean
    fields ("1e-3" -> 0.001). Values must match the field's type. Raises ConfigError for unknown keys (with a suggestion) or bad values.
    A family's keys apply only to the family the call ends with: `model.name=centernet model.centernet.nms_threshold=0.5`
    works in either order, `model.centernet.nms_threshold=0.5` on an FCOS config is an error.
    """
    config = _copy(config)
    _set_all(config, _override_items(overrides))
    return config


# The family settings a trained model may be evaluated with (`anchorfree.load(path, overrides=...)`, and `val`,
# `predict`, `targets` with a checkpoint): decoding only. None changes a weight's shape or what the weights were
# trained to predict (architecture, targets and losses stay the checkpoint's).
INFERENCE_SETTINGS: dict[str, tuple[str, ...]] = {
    "fcos": ("score_threshold", "pre_nms_top_k", "nms_threshold", "max_detections"),
    "centernet": ("score_threshold", "max_detections", "peak_kernel", "nms_threshold", "soft_nms_sigma", "flip_test"),
    "cornernet": (
        "score_threshold", "max_detections", "peak_kernel", "corners_top_k", "embedding_threshold", "nms_threshold", "soft_nms_sigma",
        "exportable_pooling",  # the same corner pools computed with ONNX-friendly ops
    ),
}
INFERENCE_KEYS = ("data.val_size", "data.max_size", "train.amp")  # the evaluation input's size, and bf16 autocast


def inference_keys(config: Config) -> list[str]:
    """The dotted keys a checkpoint of `config` may be loaded with other values of: the active family's
    `INFERENCE_SETTINGS`, then `INFERENCE_KEYS`."""
    family = config.model.name
    return [*(f"model.{family}.{name}" for name in INFERENCE_SETTINGS.get(family, ())), *INFERENCE_KEYS]


def apply_inference_overrides(config: Config, overrides: list[str] | dict[str, Any], source: str = "a checkpoint") -> Config:
    """`config` (a checkpoint's) with test-time settings changed, e.g. {"model.fcos.score_threshold": 0.1}.

    Only `inference_keys(config)` may change; any other key (one that changes the weights' shapes or their
    training, another family's, or a typo) is a ConfigError naming the key, `source` and what may be changed.
    The result is range-checked (`validate`).
    """
    allowed = inference_keys(config)
    items = _override_items(overrides)
    for key, _ in items:
        if key not in allowed:
            raise ConfigError(
                f"{key} cannot be changed when loading {source}: only test-time settings can ({', '.join(allowed)}){_suggest(key, allowed)}"
            )
    config = _copy(config)
    _set_all(config, items)
    validate(config)
    return config


def set_value(config: Any, key: str, value: Any) -> None:
    """Set one dotted key on a config dataclass in place."""
    *parents, leaf = key.split(".")
    node, path = config, []
    for part in [*parents, leaf]:
        names = {f.name: f for f in dataclasses.fields(node)}
        if part not in names:
            full_keys = all_keys(config)
            attempted = ".".join([*path, part]) if path else part
            raise ConfigError(f"unknown key {key!r}{_suggest(key, full_keys) or _suggest(attempted, full_keys)}")
        path.append(part)
        if part == leaf:
            setattr(node, part, _coerce(key, value, _field_type(node, part)))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"{'.'.join(path)!r} is a value, not a section: cannot set {key!r}")


def all_keys(config: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config dataclass; of the family sections, the active family's only."""
    keys = []
    for item in dataclasses.fields(config):
        if isinstance(config, ModelConfig) and item.name in MODELS and item.name != config.name:
            continue
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{item.name}.")
        else:
            keys.append(f"{prefix}{item.name}")
    return keys


# Keys older versions saved that no longer exist: dropped when a saved config is read (`config_from_dict`), so
# old runs and checkpoints still load, while an override of one is an unknown key.
REMOVED_KEYS = ("train.log_every",)  # read by nothing: metrics.csv has one row per epoch


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (a saved run or checkpoint), checking every key.

    Older saves read the same: the sections of inactive families (saved before only the active one was) and
    `REMOVED_KEYS` are ignored, and a model section without `freeze_backbone_norm` gets its `pretrained_backbone`
    value (as any `model.pretrained_backbone` set alone does), the structure such a run trained in.
    """
    config = Config()
    flat = {key: value for key, value in flatten(values).items() if key not in REMOVED_KEYS}
    name = flat.get("model.name", config.model.name)
    _set_all(config, [(key, value) for key, value in flat.items() if _family_of(key) in (None, name)])
    return config


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _override_items(overrides: list[str] | dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, value) pairs of a dict or of "key=value" strings, in order."""
    return list(overrides.items()) if isinstance(overrides, dict) else [_split(item) for item in overrides]


def _family_of(key: str) -> str | None:
    """The family whose section a dotted key is in ("model.centernet.nms_threshold" -> "centernet"), or None."""
    parts = key.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "model" and parts[1] in MODELS else None


def _set_all(config: Config, items: list[tuple[str, Any]]) -> None:
    """Set `items` on `config` in place, `model.name` first: every family key is then checked against the family
    the whole list selects, whatever the order the keys came in (and suggestions offer that family's keys).

    `model.pretrained_backbone` without `model.freeze_backbone_norm` in the same list sets both: ImageNet
    weights train with frozen batch norm, a backbone from scratch with batch norm training (and a saved config
    from before the structure had its own key reads as the run trained)."""
    names = [item for item in items if item[0] == "model.name"]
    structure_given = any(key == "model.freeze_backbone_norm" for key, _ in items)
    for key, value in [*names, *(item for item in items if item[0] != "model.name")]:
        family = _family_of(key)
        if family is not None and family != config.model.name and config.model.name in MODELS:
            raise ConfigError(f"{key} does not apply to model.name={config.model.name} (its settings are model.{config.model.name}.*)")
        set_value(config, key, value)
        if key == "model.pretrained_backbone" and not structure_given:
            config.model.freeze_backbone_norm = config.model.pretrained_backbone


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must be key=value, e.g. train.epochs=24")
    key, text = item.split("=", 1)
    try:
        value = safe_load_bounded(text) if text.strip() else ""  # aliases may not expand a value without bound
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse the value of {key!r}: {text!r} ({error})") from error
    return key.strip(), value


def _field_type(node: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(node))
    return hints[name]


def _coerce(key: str, value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if isinstance(value, str) and expected in (bool, int, float):
        # "1e-3" is a string to YAML (its float syntax needs a dot); Python's own parsers read it as a number.
        value = _parse_scalar(value)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(key, item, item_type) for item in value]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union-typed fields are not supported")
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} expects true or false, got {value!r}")
    if expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} expects an integer, got {value!r}")
    if expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} expects a number, got {value!r}")
    if expected is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} expects a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {expected}")


def _parse_scalar(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    lowered = text.strip().lower()
    return {"true": True, "false": False}.get(lowered, text)


def _suggest(word: str, candidates: Any) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _copy(config: Config) -> Config:
    # Every section, the inactive families' too: `model.name=...` may switch to one of them.
    return copy.deepcopy(config)
