"""Hourglass (CornerNet): one stride-4 map per stack, the paper's size, a clear size error, gradients to the stem."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from anchorfree.models.backbones import HourglassNetwork, hourglass52, hourglass104


@pytest.mark.parametrize("builder, num_stacks", [(hourglass52, 1), (hourglass104, 2)])
def test_each_stack_gives_a_stride_4_map(builder: Callable[..., HourglassNetwork], num_stacks: int) -> None:
    network = builder(width_multiplier=0.125).eval()
    with torch.no_grad():
        outputs = network(torch.randn(2, 3, 128, 128))
    assert network.num_stacks == num_stacks and len(outputs) == num_stacks
    assert network.out_channels == 32 and network.stride == 4  # 256 x 0.125
    assert [tuple(output.shape) for output in outputs] == [(2, 32, 32, 32)] * num_stacks
    assert all(torch.isfinite(output).all() for output in outputs)


def test_full_width_hourglass104_has_the_size_of_cornernets_backbone() -> None:
    # CornerNet's whole Hourglass-104 detector has roughly 190-200M parameters. Its prediction modules (per corner
    # type and stack: a corner pooling module of ~1.5M and three heads with a 3x3 256->256 conv each, ~1.8M; two
    # corner types on each of two stacks) hold about 13M, which leaves roughly 175-190M for the backbone. This
    # one has 187.7M (two hourglasses of 92.1M, a 0.9M stem, 1.3M of links and 1.2M of output convs); the band
    # leaves room for small differences in where blocks change width, and catches a missing or doubled level.
    # Built on the meta device: shapes only, no memory and no initialisation.
    with torch.device("meta"):
        full = hourglass104()
        single = hourglass52()
    num_parameters = sum(parameter.numel() for parameter in full.parameters())
    assert 175e6 < num_parameters < 200e6
    # One stack is a little over half: the stem and the links between stacks are shared or absent.
    single_parameters = sum(parameter.numel() for parameter in single.parameters())
    assert 0.48 < single_parameters / num_parameters < 0.52
    assert full.out_channels == 256


def test_a_size_that_is_not_a_multiple_of_128_is_refused_with_the_multiple() -> None:
    network = hourglass52(width_multiplier=0.125)
    with pytest.raises(ValueError, match=r"multiples of 128.*got 96x128"):
        network(torch.zeros(1, 3, 96, 128))


def test_gradients_reach_the_stem() -> None:
    network = hourglass104(width_multiplier=0.125).train()
    # Batch 2: the bottom of the hourglass is 1x1 at this size, and training-mode batch norm needs > 1 value.
    outputs = network(torch.randn(2, 3, 128, 128))
    sum(output.sum() for output in outputs).backward()
    first_conv = network.stem[0][0]
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.kernel_size == (7, 7)
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
