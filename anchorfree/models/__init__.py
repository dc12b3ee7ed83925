"""Detector families. `MODELS` maps a family name to its builder: a plain dict, no registry."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from torch import nn

from anchorfree.models.backbones import FrozenNorm
from anchorfree.models.centernet import CenterNet, CenterNetConfig, build_centernet
from anchorfree.models.cornernet import HOURGLASS_BACKBONES, CornerNet, CornerNetConfig, build_cornernet
from anchorfree.models.fcos import FCOS, FCOSConfig, build_fcos

if TYPE_CHECKING:
    from anchorfree.config import ModelConfig

MODELS = {"fcos": build_fcos, "centernet": build_centernet, "cornernet": build_cornernet}


def family_config(model_config: ModelConfig) -> FCOSConfig | CenterNetConfig | CornerNetConfig:
    """The active family's settings: `model_config.fcos`, `.centernet` or `.cornernet`, as `model_config.name` says."""
    if model_config.name not in MODELS:
        raise ValueError(f"unknown model {model_config.name!r}; available: {', '.join(MODELS)}")
    return getattr(model_config, model_config.name)


def build_model(model_config: ModelConfig, num_classes: int) -> nn.Module:
    """Build the family named by `model_config.name` with (a copy of) its own section, `family_config(model_config)`.

    `model_config.pretrained_backbone` fetches torchvision's ImageNet weights for the backbone;
    `model_config.freeze_backbone_norm` wraps the backbone in `FrozenNorm` (`with_frozen_norm`). A checkpoint holds
    every weight: loading or resuming one builds with pretrained_backbone=False and the saved freeze_backbone_norm,
    so the same modules and state-dict keys come back without a download. The model's settings are its own copy:
    changing them means building another model (e.g. `anchorfree.load(path, overrides=...)`).
    """
    settings = family_config(model_config)
    if model_config.num_classes and model_config.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes={model_config.num_classes} but the dataset has {num_classes} classes; "
            "set model.num_classes=0 to take it from the data"
        )
    if model_config.freeze_backbone_norm and model_config.backbone in HOURGLASS_BACKBONES:
        raise ValueError(f"{model_config.backbone} trains its batch norm from scratch: set model.freeze_backbone_norm=false")
    model = MODELS[model_config.name](
        num_classes,
        backbone=model_config.backbone,
        pretrained_backbone=model_config.pretrained_backbone,
        backbone_width=model_config.backbone_width,
        config=copy.deepcopy(settings),
    )
    return with_frozen_norm(model, model_config.freeze_backbone_norm)


def with_frozen_norm(model: nn.Module, frozen: bool) -> nn.Module:
    """`model` with its backbone's batch norm frozen (the backbone wrapped in `FrozenNorm`) or not (unwrapped).

    The family builders wrap a backbone whose ImageNet weights they fetched; `model.freeze_backbone_norm` decides
    instead. The wrapper puts the backbone's state-dict keys under `backbone.body.` and takes its batch norm's
    affine parameters out of training, so a checkpoint loads (and its optimizer state fits) only in the structure
    it was trained in.
    """
    if frozen and not isinstance(model.backbone, FrozenNorm):
        model.backbone = FrozenNorm(model.backbone)
    elif not frozen and isinstance(model.backbone, FrozenNorm):
        model.backbone = model.backbone.body
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(True)
                module.bias.requires_grad_(True)
    return model


__all__ = [
    "CenterNet", "CenterNetConfig", "CornerNet", "CornerNetConfig", "FCOS", "FCOSConfig", "MODELS", "build_centernet", "build_cornernet", "build_fcos",
    "build_model", "family_config", "with_frozen_norm",
]
