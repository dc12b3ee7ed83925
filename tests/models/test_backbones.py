"""Backbones: feature strides and widths, frozen batch norm for pretrained backbones, clear weight errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anchorfree.models import backbones
from anchorfree.models.backbones import FPN, FrozenNorm, PretrainedWeightsUnavailable, build_backbone


@pytest.mark.parametrize("name, width", [("resnet18", 1.0), ("mobilenet_v2", 0.25)])
def test_backbone_returns_c2_to_c5_at_strides_4_to_32(name: str, width: float) -> None:
    backbone = build_backbone(name, pretrained=False, width_multiplier=width).eval()
    features = backbone(torch.zeros(1, 3, 96, 128))
    assert [tuple(feature.shape[-2:]) for feature in features] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    assert backbone.strides == [4, 8, 16, 32]
    assert [feature.shape[1] for feature in features] == backbone.out_channels


def test_fpn_gives_five_levels_of_equal_width() -> None:
    backbone = build_backbone("resnet18").eval()
    neck = FPN(backbone.out_channels[-3:], 32).eval()
    levels = neck(backbone(torch.zeros(1, 3, 128, 128))[-3:])
    assert [tuple(level.shape[1:]) for level in levels] == [(32, 16, 16), (32, 8, 8), (32, 4, 4), (32, 2, 2), (32, 1, 1)]


def test_frozen_norm_keeps_batch_norm_statistics_and_parameters_fixed() -> None:
    wrapped = FrozenNorm(build_backbone("resnet18"))
    wrapped.train()
    norms = [module for module in wrapped.modules() if isinstance(module, nn.BatchNorm2d)]
    assert norms and all(not norm.training for norm in norms)
    assert all(not norm.weight.requires_grad and not norm.bias.requires_grad for norm in norms)
    before = norms[0].running_mean.clone()
    wrapped(torch.randn(2, 3, 64, 64) * 5 + 3)
    assert torch.equal(norms[0].running_mean, before)
    # Convolutions still train.
    assert any(parameter.requires_grad for parameter in wrapped.parameters())


def test_missing_imagenet_weights_give_an_error_naming_the_cache_and_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(backbones, "_build_classifier_backbone", offline)
    with pytest.raises(PretrainedWeightsUnavailable, match="model.pretrained_backbone=false") as error:
        build_backbone("mobilenet_v2", pretrained=True)
    assert "checkpoints" in str(error.value)


def test_width_multiplier_is_refused_for_resnets() -> None:
    with pytest.raises(ValueError, match="no width multiplier"):
        build_backbone("resnet18", width_multiplier=0.5)
