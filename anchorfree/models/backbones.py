"""Backbones and necks shared by the families.

A backbone is a torchvision classification network cut into stages; it returns the feature maps C2, C3, C4, C5
(strides 4, 8, 16, 32). A neck turns them into what a head reads: the FPN P3-P7 for FCOS, one stride-4 map for
CenterNet (see `models/centernet.py`). ImageNet weights come through torchvision's own weights API, so they load
from its cache exactly as torchvision loads them.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.ops import DeformConv2d, FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "csp_small")
SCRATCH_BACKBONES = ("csp_small",)  # no ImageNet weights: built to train from scratch


class PretrainedWeightsUnavailable(OSError):
    """ImageNet weights were asked for but could not be downloaded or found in torchvision's cache.

    `weights_file` is the file torchvision looks for (e.g. mobilenet_v2-b0353104.pth) and `folder` the cache
    folder to put it in (torch.hub.get_dir()/checkpoints).
    """

    def __init__(self, message: str, weights_file: str, folder: Path) -> None:
        super().__init__(message)
        self.weights_file = weights_file
        self.folder = folder


# The first failure to fetch each weights file in this process (file name -> error). Offline, every attempt costs
# a DNS timeout and says nothing new: later requests for the same file fail at once, without calling torchvision.
_UNAVAILABLE_WEIGHTS: dict[str, PretrainedWeightsUnavailable] = {}
# Weights files whose unavailability has been warned about in this process: one warning, however many builds.
_WARNED_WEIGHTS: set[str] = set()


def forget_unavailable_weights() -> None:
    """Forget this process's failed weight fetches and warnings (tests; or after the network comes back)."""
    _UNAVAILABLE_WEIGHTS.clear()
    _WARNED_WEIGHTS.clear()


def warn_unavailable_once(error: PretrainedWeightsUnavailable, consequence: str) -> None:
    """Warn about missing ImageNet weights, and what the run does instead, once per weights file and process."""
    if error.weights_file in _WARNED_WEIGHTS:
        return
    _WARNED_WEIGHTS.add(error.weights_file)
    warnings.warn(f"{error}\n{consequence}", stacklevel=3)


def imagenet_weights_file(name: str) -> str:
    """The file name torchvision's weights API caches a backbone's ImageNet weights under (no network access).

    E.g. "mobilenet_v2-b0353104.pth": the last part of the weights URL, as torch.hub names the cached file.
    A backbone without torchvision weights gets its own name.
    """
    weights = {
        "resnet18": tv_models.ResNet18_Weights.IMAGENET1K_V1,
        "resnet34": tv_models.ResNet34_Weights.IMAGENET1K_V1,
        "resnet50": tv_models.ResNet50_Weights.IMAGENET1K_V1,
        "mobilenet_v2": tv_models.MobileNet_V2_Weights.IMAGENET1K_V1,
    }.get(name)
    return os.path.basename(urlparse(weights.url).path) if weights is not None else name


class ResNetBackbone(nn.Module):
    """ResNet stem + layer1..layer4, returning C2, C3, C4, C5 (outputs of layer1..layer4)."""

    def __init__(self, resnet: tv_models.ResNet) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.out_channels = [self._width(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        self.strides = [4, 8, 16, 32]

    @staticmethod
    def _width(layer: nn.Sequential) -> int:
        last_block = layer[-1]
        last_bn = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
        return last_bn.num_features

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.layer1(self.stem(images))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 `features` cut after the last block of strides 4, 8, 16 and 32 (C5 is the 1x1 expansion output)."""

    def __init__(self, mobilenet: tv_models.MobileNetV2) -> None:
        super().__init__()
        features = mobilenet.features
        # Blocks 0-3 end at stride 4, 4-6 at stride 8, 7-13 at stride 16, 14-18 at stride 32 (the final 1x1 conv
        # to 1280 x width). C2 is read inside stage3 so that the module names match torchvision's blocks.
        self.stage3 = features[:7]
        self.stage4 = features[7:14]
        self.stage5 = features[14:]
        self.c2_block = 3
        self.out_channels = [self._width(self.stage3[: self.c2_block + 1]), self._width(self.stage3), self._width(self.stage4), self._width(self.stage5)]
        self.strides = [4, 8, 16, 32]

    @staticmethod
    def _width(stage: nn.Sequential) -> int:
        convs = [module for module in stage.modules() if isinstance(module, nn.Conv2d)]
        return convs[-1].out_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images
        for index, block in enumerate(self.stage3):
            x = block(x)
            if index == self.c2_block:
                c2 = x
        c3 = x
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return [c2, c3, c4, c5]


def _conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """kernel_size x kernel_size conv (same padding, no bias) + BN + ReLU: the unit of `CSPSmallBackbone`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CSPBlock(nn.Module):
    """A cross-stage-partial block (Wang et al., CSPNet, 2019; YOLOv5's C3): half the width goes through
    `num_bottlenecks` residual 3x3 pairs, the other half skips them, and a 1x1 conv merges the two.

    Only half the channels pay for the 3x3 convs, and the skip half keeps a short gradient path: cheap and easy
    to train from random weights. (N, channels, H, W) -> (N, channels, H, W).
    """

    def __init__(self, channels: int, num_bottlenecks: int) -> None:
        super().__init__()
        hidden = channels // 2
        self.main = _conv_bn_act(channels, hidden, 1)
        self.skip = _conv_bn_act(channels, hidden, 1)
        self.bottlenecks = nn.ModuleList(
            nn.Sequential(_conv_bn_act(hidden, hidden, 3), _conv_bn_act(hidden, hidden, 3)) for _ in range(num_bottlenecks)
        )
        self.merge = _conv_bn_act(2 * hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.main(x)
        for bottleneck in self.bottlenecks:
            main = main + bottleneck(main)
        return self.merge(torch.cat([main, self.skip(x)], dim=1))  # (N, 2 * hidden, H, W) -> (N, channels, H, W)


class CSPSmallBackbone(nn.Module):
    """A compact CSP network made to train from scratch on a CPU in minutes ("csp_small", no ImageNet weights).

    Stem: two stride-2 3x3 convs (stride 4). Then four stages, each a stride-2 3x3 conv (except the first) and a
    `CSPBlock`; their outputs are C2, C3, C4, C5 at strides 4, 8, 16, 32. Batch norm everywhere and trained
    (never frozen): from random weights it is what keeps the activations in range at a high learning rate.
    Widths (32, 64, 128, 256) x `width_multiplier` (rounded to multiples of 8); ~1.3 M parameters at 1.0.
    """

    def __init__(self, width_multiplier: float = 1.0, depths: tuple[int, int, int, int] = (1, 1, 2, 1)) -> None:
        super().__init__()
        widths = [_scaled_width(width, width_multiplier) for width in (32, 64, 128, 256)]
        stem_width = _scaled_width(16, width_multiplier)
        self.stem = nn.Sequential(_conv_bn_act(3, stem_width, 3, stride=2), _conv_bn_act(stem_width, widths[0], 3, stride=2))
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for index, (width, depth) in enumerate(zip(widths, depths)):
            down: nn.Module = nn.Identity() if index == 0 else _conv_bn_act(in_channels, width, 3, stride=2)
            stages.append(nn.Sequential(down, CSPBlock(width, depth)))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths
        self.strides = [4, 8, 16, 32]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 3, H, W) -> [C2 (N, w0, H/4, W/4), C3 (H/8), C4 (H/16), C5 (N, w3, H/32, W/32)]."""
        x = self.stem(images)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class FrozenNorm(nn.Module):
    """Wraps a backbone whose batch norm layers stay frozen: ImageNet statistics and affine parameters, no grads.

    Plain `BatchNorm2d` layers kept in eval mode compute exactly what torchvision's `FrozenBatchNorm2d` does,
    but run the fused batch-norm kernel (about 25% faster training on CPU with channels_last).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.body = backbone
        self.out_channels = backbone.out_channels
        self.strides = backbone.strides
        for module in self.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenNorm":
        super().train(mode)
        for module in self.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.body(images)


def build_backbone(name: str, pretrained: bool = False, width_multiplier: float = 1.0, freeze_norm: bool | None = None) -> nn.Module:
    """A backbone returning [C2, C3, C4, C5] with `.out_channels` and `.strides` ([4, 8, 16, 32]).

    Args:
        name: one of BACKBONE_NAMES.
        pretrained: load torchvision's ImageNet weights (IMAGENET1K_V1) through its weights API.
            When the weights cannot be fetched, PretrainedWeightsUnavailable names the file and the cache folder;
            the failure is remembered, and later requests for that file in the process raise it again at once,
            without a new download attempt (`forget_unavailable_weights` clears the memo).
        width_multiplier: channel multiplier for mobilenet_v2 (1.0 only when pretrained).
        freeze_norm: keep batch norm frozen (wrap in `FrozenNorm`), as torchvision's detectors do with a
            pretrained backbone: detection batches are too small to re-estimate ImageNet statistics. None: frozen
            when `pretrained`. `build_model` sets the structure from `model.freeze_backbone_norm` itself.
    """
    weights_file = imagenet_weights_file(name)
    if pretrained and weights_file in _UNAVAILABLE_WEIGHTS:
        # Failed before in this process: fail fast, with the first failure's message, and no new download attempt.
        first = _UNAVAILABLE_WEIGHTS[weights_file]
        raise PretrainedWeightsUnavailable(str(first), first.weights_file, first.folder)
    try:
        backbone = _build_classifier_backbone(name, pretrained, width_multiplier)
    except OSError as error:  # torch.hub's download failed (no network, proxy, disk)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        unavailable = PretrainedWeightsUnavailable(
            f"cannot load ImageNet weights for {name} ({error}). Without network access, put torchvision's weights "
            f"file {weights_file} in {cache}, or train from scratch with model.pretrained_backbone=false model.freeze_backbone_norm=false",
            weights_file,
            cache,
        )
        _UNAVAILABLE_WEIGHTS[weights_file] = unavailable
        raise unavailable from error
    return FrozenNorm(backbone) if (pretrained if freeze_norm is None else freeze_norm) else backbone


def _build_classifier_backbone(name: str, pretrained: bool, width_multiplier: float) -> nn.Module:
    if name.startswith("resnet"):
        if width_multiplier != 1.0:
            raise ValueError(f"backbone {name!r} has no width multiplier (got {width_multiplier}); use mobilenet_v2")
        builder = {"resnet18": tv_models.resnet18, "resnet34": tv_models.resnet34, "resnet50": tv_models.resnet50}
        if name not in builder:
            raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
        weights = "IMAGENET1K_V1" if pretrained else None
        return ResNetBackbone(builder[name](weights=weights))
    if name == "csp_small":
        if pretrained:
            raise ValueError("csp_small has no ImageNet weights (it is made to train from scratch): set model.pretrained_backbone=false")
        return CSPSmallBackbone(width_multiplier)
    if name == "mobilenet_v2":
        if pretrained and width_multiplier != 1.0:
            raise ValueError(f"ImageNet weights exist for width 1.0 only (got width_multiplier={width_multiplier})")
        weights = "IMAGENET1K_V1" if pretrained else None
        return MobileNetV2Backbone(tv_models.mobilenet_v2(weights=weights, width_mult=width_multiplier))
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")


class FPN(nn.Module):
    """Feature pyramid P3-P7 on C3-C5 (Lin et al.), with P6 and P7 from stride-2 convs on P5 as FCOS does.

    Takes the widths of C3, C4, C5 and those three maps; returns five maps of `channels` channels at strides 8,
    16, 32, 64, 128.
    """

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        # torchvision's LastLevelP6P7 builds P6 from P5 when its in and out widths match (the FCOS choice).
        self.pyramid = FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelP6P7(channels, channels))
        self.strides = [8, 16, 32, 64, 128]
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        named = OrderedDict((str(index), feature) for index, feature in enumerate(features))
        return list(self.pyramid(named).values())


# ----------------------------------------------------------------------------------- stride-4 necks (keypoints)


class ModulatedDeformConv(nn.Module):
    """A 3x3 deformable convolution v2 (Zhu et al., 2019): per-tap offsets and sigmoid modulation predicted from the input.

    torchvision's `DeformConv2d` does the sampling. The offset/mask predictor starts at zero, as in the released
    DCNv2 code: no offsets, and every tap modulated by sigmoid(0) = 0.5.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.offsets_and_mask = nn.Conv2d(in_channels, 3 * 9, 3, padding=1)  # 2 offsets + 1 mask per 3x3 tap
        nn.init.zeros_(self.offsets_and_mask.weight)
        nn.init.zeros_(self.offsets_and_mask.bias)
        self.conv = DeformConv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset_y_x, mask = self.offsets_and_mask(x).split([2 * 9, 9], dim=1)
        # torchvision's kernel wants contiguous float inputs of one dtype (it has no channels-last or bf16 path).
        dtype = self.conv.weight.dtype
        return self.conv(x.contiguous().to(dtype), offset_y_x.contiguous().to(dtype), mask.sigmoid().contiguous().to(dtype))


def bilinear_upsampling_(deconvolution: nn.ConvTranspose2d) -> None:
    """Initialise a stride-2, 4x4 transposed convolution as per-channel bilinear 2x upsampling."""
    kernel_size = deconvolution.kernel_size[0]
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    steps = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (steps - center).abs() / factor  # (k,)
    kernel = profile[:, None] * profile[None, :]  # (k, k)
    with torch.no_grad():
        deconvolution.weight.zero_()
        channels = min(deconvolution.in_channels, deconvolution.out_channels)
        deconvolution.weight[torch.arange(channels), torch.arange(channels)] = kernel


class UpsamplingNeck(nn.Module):
    """CenterNet's ResNet neck ("Simple Baselines", Xiao et al., 2018): C5 (stride 32) up to stride 4.

    Three stages, each a 3x3 conv (deformable in the paper's ResNet-DCN models) + BN + ReLU, then a 4x4
    stride-2 transposed conv initialised as bilinear upsampling + BN + ReLU. Widths (256, 128, 64) in the paper.
    """

    def __init__(self, in_channels: int, channels: list[int], deformable: bool = False) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        for width in channels:
            conv = ModulatedDeformConv(in_channels, width) if deformable else nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
            deconvolution = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1, bias=False)
            bilinear_upsampling_(deconvolution)
            stages.append(
                nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), deconvolution, nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            )
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.out_channels = channels[-1]
        self.stride = 32 // 2 ** len(channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: the backbone's [C2, C3, C4, C5]; returns (N, out_channels, H/4, W/4) for three stages."""
        return self.stages(features[-1])


class PyramidP2Neck(nn.Module):
    """An FPN on C2-C5 whose finest level P2 (stride 4) is the output: multi-scale features at keypoint resolution."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.pyramid = FeaturePyramidNetwork(in_channels, channels)
        self.out_channels = channels
        self.stride = 4

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: the backbone's [C2, C3, C4, C5]; returns P2, (N, channels, H/4, W/4)."""
        named = OrderedDict((str(index), feature) for index, feature in enumerate(features))
        return self.pyramid(named)["0"]


# ----------------------------------------------------------------------------------- Hourglass (CornerNet)
#
# The hourglass network of "CornerNet: Detecting Objects as Paired Keypoints" (Law & Deng, ECCV 2018, section
# 4.1), itself a variant of "Stacked Hourglass Networks for Human Pose Estimation" (Newell et al., ECCV 2016).
# CornerNet's changes to Newell et al.: stride-2 residual blocks instead of max-pooling to go down, five
# downsamplings after which the widths are (256, 384, 384, 384, 512), 4 residual blocks of 512 channels at the
# bottom, two residual blocks on every skip and before every nearest-neighbour upsampling, and intermediate
# supervision whose predictions are not added back into the network (only the features are, through 1x1 conv-BN
# and a residual block). Hourglass-104 stacks two such modules; Hourglass-52 is one (Duan et al.'s CenterNet, 2019).


def _scaled_width(channels: int, width_multiplier: float) -> int:
    """`channels` x `width_multiplier`, rounded to a multiple of 8 and at least 8."""
    return max(8, int(round(channels * width_multiplier / 8)) * 8)


class Residual(nn.Module):
    """A basic residual block: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus a skip (1x1 conv-BN when the shape changes), ReLU.

    (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(residual + self.skip(x))


def _residual_stack(
    in_channels: int, out_channels: int, num_blocks: int, stride: int = 1, change_width_first: bool = True
) -> nn.Sequential:
    """`num_blocks` residual blocks from `in_channels` to `out_channels`; only the first block has `stride`.

    The width changes in the first block (`change_width_first`, going down) or in the last one (going back up),
    so that the blocks at each resolution run at that level's width.
    """
    if change_width_first:
        widths = [in_channels] + [out_channels] * num_blocks
    else:
        widths = [in_channels] * num_blocks + [out_channels]
    blocks = [Residual(widths[index], widths[index + 1], stride if index == 0 else 1) for index in range(num_blocks)]
    return nn.Sequential(*blocks)


class HourglassModule(nn.Module):
    """One hourglass, defined recursively over its levels: (N, dims[0], H, W) -> (N, dims[0], H, W).

    Level 0 keeps the input resolution. Its upper branch (the skip) is `modules_per_level[0]` residual blocks at
    dims[0]. Its lower branch goes down with `modules_per_level[0]` residual blocks to dims[1] (the first with
    stride 2), runs the hourglass of the remaining levels (or, at the bottom, `modules_per_level[-1]` blocks at
    dims[-1]), comes back to dims[0] with `modules_per_level[0]` blocks, and is upsampled 2x by nearest neighbour.
    The branches are summed. So entry i of `modules_per_level` counts the blocks of each path at level i, and the
    last entry the blocks at the bottom. H and W must be divisible by 2 ** (len(dims) - 1).
    """

    def __init__(self, dims: list[int], modules_per_level: list[int]) -> None:
        super().__init__()
        width, lower_width = dims[0], dims[1]
        self.upper = _residual_stack(width, width, modules_per_level[0])
        self.down = _residual_stack(width, lower_width, modules_per_level[0], stride=2)
        self.inner: nn.Module
        if len(dims) > 2:
            self.inner = HourglassModule(dims[1:], modules_per_level[1:])
        else:  # the bottom of the hourglass (the paper's 4 blocks of 512 channels)
            self.inner = _residual_stack(lower_width, lower_width, modules_per_level[1])
        self.up = _residual_stack(lower_width, width, modules_per_level[0], change_width_first=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lower = self.up(self.inner(self.down(x)))  # (N, dims[0], H/2, W/2)
        return self.upper(x) + nn.functional.interpolate(lower, scale_factor=2.0, mode="nearest")


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """kernel_size x kernel_size conv (same padding, no bias) + BN (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HourglassNetwork(nn.Module):
    """Stacked hourglasses (CornerNet): images (N, 3, H, W) -> `num_stacks` maps (N, out_channels, H/4, W/4).

    Stem: 7x7 conv stride 2 (`stem_channels`) + BN + ReLU, then a stride-2 residual block to dims[0]: stride 4.
    Each stack is an `HourglassModule` followed by a 3x3 conv-BN-ReLU, whose result is that stack's output.
    Between stacks, as in CornerNet, the stack's input and its output each go through a 1x1 conv-BN; they are
    summed, passed through a ReLU and one residual block, and feed the next stack. The last output is the one a
    detector reads at test time; the earlier ones are for intermediate supervision (the same head, its own loss).

    Args:
        num_stacks: number of hourglass modules (2 for Hourglass-104).
        dims: widths of the levels, from stride 4 downwards; len(dims) - 1 downsamplings per hourglass.
        modules_per_level: residual blocks on each path of each level, one entry per entry of `dims`; the last
            entry is the number of blocks at the bottom (see `HourglassModule`).
        stem_channels: width of the 7x7 stem convolution.

    H and W must be multiples of 4 * 2 ** (len(dims) - 1) (128 for the paper's configurations).
    """

    def __init__(self, num_stacks: int, dims: list[int], modules_per_level: list[int], stem_channels: int = 128) -> None:
        super().__init__()
        if num_stacks < 1:
            raise ValueError(f"num_stacks must be at least 1, got {num_stacks}")
        if len(dims) < 2 or len(dims) != len(modules_per_level):
            raise ValueError(f"dims and modules_per_level need one entry per level (at least 2); got {dims} and {modules_per_level}")
        if min(modules_per_level) < 1:
            raise ValueError(f"every level needs at least one residual block, got modules_per_level={modules_per_level}")
        width = dims[0]
        self.num_stacks = num_stacks
        self.out_channels = width
        self.stride = 4
        self.num_downsamplings = len(dims) - 1
        self.size_multiple = self.stride * 2**self.num_downsamplings
        self.stem = nn.Sequential(_conv_bn(3, stem_channels, 7, stride=2), Residual(stem_channels, width, stride=2))
        self.hourglasses = nn.ModuleList(HourglassModule(dims, modules_per_level) for _ in range(num_stacks))
        self.output_convs = nn.ModuleList(_conv_bn(width, width, 3) for _ in range(num_stacks))
        # Links from stack k to stack k + 1 (none after the last stack).
        self.input_projections = nn.ModuleList(_conv_bn(width, width, 1, relu=False) for _ in range(num_stacks - 1))
        self.output_projections = nn.ModuleList(_conv_bn(width, width, 1, relu=False) for _ in range(num_stacks - 1))
        self.merge_blocks = nn.ModuleList(Residual(width, width) for _ in range(num_stacks - 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 3, H, W) -> [output of stack 1, ..., output of the last stack], each (N, out_channels, H/4, W/4)."""
        height, width = images.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"HourglassNetwork needs an image height and width that are multiples of {self.size_multiple} "
                f"(stride {self.stride} x 2**{self.num_downsamplings} hourglass downsamplings); got {height}x{width}"
            )
        x = self.stem(images)  # (N, dims[0], H/4, W/4)
        outputs: list[torch.Tensor] = []
        for stack, (hourglass, output_conv) in enumerate(zip(self.hourglasses, self.output_convs)):
            output = output_conv(hourglass(x))
            outputs.append(output)
            if stack < self.num_stacks - 1:
                merged = self.input_projections[stack](x) + self.output_projections[stack](output)
                x = self.merge_blocks[stack](nn.functional.relu(merged))
        return outputs


def hourglass104(width_multiplier: float = 1.0) -> HourglassNetwork:
    """CornerNet's Hourglass-104: two stacks, widths (256, 256, 384, 384, 384, 512), 4 blocks at the bottom.

    `width_multiplier` scales every width (rounded to a multiple of 8, at least 8), for small CPU models.
    """
    return _hourglass(2, width_multiplier)


def hourglass52(width_multiplier: float = 1.0) -> HourglassNetwork:
    """Hourglass-52: one stack of Hourglass-104's module (the smaller backbone of Duan et al.'s CenterNet, 2019).

    `width_multiplier` scales every width as in `hourglass104`.
    """
    return _hourglass(1, width_multiplier)


def _hourglass(num_stacks: int, width_multiplier: float) -> HourglassNetwork:
    dims = [_scaled_width(width, width_multiplier) for width in (256, 256, 384, 384, 384, 512)]
    return HourglassNetwork(num_stacks, dims, modules_per_level=[2, 2, 2, 2, 2, 4], stem_channels=_scaled_width(128, width_multiplier))
