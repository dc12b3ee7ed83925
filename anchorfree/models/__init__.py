"""Detector families. `MODELS` maps a family name to its builder: a plain dict, no registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from anchorfree.models.backbones import FrozenNorm
from anchorfree.models.centernet import CenterNet, CenterNetConfig, build_centernet
from anchorfree.models.cornernet import CornerNet, CornerNetConfig, build_cornernet
from anchorfree.models.fcos import FCOS, FCOSConfig, build_fcos

if TYPE_CHECKING:
    from anchorfree.config import ModelConfig

MODELS = {"fcos": build_fcos, "centernet": build_centernet, "cornernet": build_cornernet}


def build_model(model_config: ModelConfig, num_classes: int) -> nn.Module:
    """Build the family named by `model_config.name`, with its own section (e.g. `model_config.fcos`)."""
    if model_config.name not in MODELS:
        raise ValueError(f"unknown model {model_config.name!r}; available: {', '.join(MODELS)}")
    if model_config.num_classes and model_config.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes={model_config.num_classes} but the dataset has {num_classes} classes; "
            "set model.num_classes=0 to take it from the data"
        )
    return MODELS[model_config.name](
        num_classes,
        backbone=model_config.backbone,
        pretrained_backbone=model_config.pretrained_backbone,
        backbone_width=model_config.backbone_width,
        config=getattr(model_config, model_config.name),
    )


def with_pretrained_structure(model: nn.Module, model_config: ModelConfig) -> nn.Module:
    """`model` (built with pretrained_backbone=False) in the structure a pretrained backbone trains in.

    A checkpoint holds every weight, so loading or resuming one needs no ImageNet download, only the same
    modules: a pretrained backbone is wrapped in `FrozenNorm` (same state-dict keys under `backbone.body.`,
    frozen batch norm, and so the same trainable parameters for the optimizer).
    """
    if model_config.pretrained_backbone and not isinstance(model.backbone, FrozenNorm):
        model.backbone = FrozenNorm(model.backbone)
    return model


__all__ = ["CenterNet", "CenterNetConfig", "CornerNet", "CornerNetConfig", "FCOS", "FCOSConfig", "MODELS", "build_centernet", "build_cornernet", "build_fcos", "build_model", "with_pretrained_structure"]
