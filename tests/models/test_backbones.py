"""Backbones: feature strides and widths, frozen batch norm for pretrained backbones, clear weight errors."""

from __future__ import annotations

import math
from typing import Callable

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


def test_csp_small_returns_c2_to_c5_at_strides_4_to_32_with_its_widths() -> None:
    backbone = build_backbone("csp_small", pretrained=False, width_multiplier=0.5).eval()
    features = backbone(torch.zeros(2, 3, 96, 128))
    assert [tuple(feature.shape[-2:]) for feature in features] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    assert backbone.strides == [4, 8, 16, 32]
    assert [feature.shape[1] for feature in features] == backbone.out_channels == [16, 32, 64, 128]
    assert all(feature.shape[0] == 2 for feature in features)


def test_csp_small_trains_its_batch_norm_and_has_no_imagenet_weights() -> None:
    backbone = build_backbone("csp_small")
    assert not isinstance(backbone, FrozenNorm)
    norms = [module for module in backbone.modules() if isinstance(module, nn.BatchNorm2d)]
    assert norms and all(norm.weight.requires_grad for norm in norms)
    before = norms[0].running_mean.clone()
    backbone.train()(torch.randn(2, 3, 64, 64) * 5 + 3)
    assert not torch.equal(norms[0].running_mean, before)
    with pytest.raises(ValueError, match="csp_small has no ImageNet weights"):
        build_backbone("csp_small", pretrained=True)


def test_fcos_on_csp_small_overfits_one_batch_from_scratch(overfit: Callable[..., list[float]]) -> None:
    from anchorfree.models.fcos import FCOSConfig, build_fcos

    torch.manual_seed(0)
    config = FCOSConfig(fpn_channels=32, head_convs=1, norm_groups=8, size_boundaries=[16.0, 32.0, 64.0, 128.0])
    model = build_fcos(3, backbone="csp_small", backbone_width=0.25, config=config)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 4.0, 60.0, 30.0], [2.0, 34.0, 22.0, 62.0]]), "labels": torch.tensor([0, 2])},
    ]
    losses = overfit(model, images, targets, torch.optim.AdamW(model.parameters(), lr=3e-3), 40)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0]
