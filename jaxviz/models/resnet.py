"""ResNet-18 and ResNet-50 (He et al. 2016, Deep residual learning), torchvision's layout and names.

Stages: ``conv1`` (7x7/2, pad 3, no bias), ``bn1``, ``relu``, ``maxpool`` (3x3/2, pad 1),
``layer1.0`` ... ``layer4.1`` (ResNet-18: BasicBlock) or ``layer4.2`` (ResNet-50: Bottleneck,
stride on the 3x3 conv as torchvision's "V1.5"), ``avgpool`` (global average), ``fc`` (the
logits). Inside a block: ``conv1``/``bn1`` ... ``conv3``/``bn3`` and the 1x1 shortcut
``downsample.0`` (conv) / ``downsample.1`` (BN), so a torchvision state dict maps one to one
(``layer2.0.downsample.1.running_mean`` <-> ``layer2.0/downsample.1/mean``). BatchNorm is in
inference mode (eps 1e-5) with its statistics in ``params``, as every bundled network keeps them.

This family's kinds: ``BiasFreeConv`` (the stem conv), ``BatchNorm`` and the residual blocks
``BasicBlock`` / ``Bottleneck`` (forward, geometry, incremental rule and cost in one class each).
A block's receptive field is its main path's: the shortcut reads the centre tap of the main
path's first spatial op, so it sees a subset of what the main path sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax

from jaxviz.models import layers
from jaxviz.models.incremental import Op, conv_valid, frozen_bn, patched_region, pointwise, spatial
from jaxviz.models.kinds import Conv, Dense, GlobalAvgPool, Kind, MaxPool, ReLU, numel
from jaxviz.models.layers import Array, FrozenBatchNorm

EPS = 1e-5  # torch.nn.BatchNorm2d's default
_NO_PAD = ((0, 0), (0, 0))


# ---------------------------------------------------------------- stem kinds

@dataclass(frozen=True)
class BiasFreeConv(Conv):
    """``torch.nn.Conv2d(..., bias=False)``: ``Conv`` without the bias (geometry, rule and cost
    are ``Conv``'s)."""

    kind = "conv_nobias"

    def module(self) -> nn.Module:
        k, s = (self.kernel,) * 2, (self.stride,) * 2
        return layers.Conv(self.features, k, s, padding=layers.torch_padding(self.padding), use_bias=False,
                           name=self.name)

    def _valid(self, params, region: Array) -> Array:
        return conv_valid(region, params["kernel"], None, self.stride)


@dataclass(frozen=True)
class BatchNorm(Kind):
    """``torch.nn.BatchNorm2d`` in inference mode: a per-channel affine map (pointwise)."""

    eps: float = EPS

    kind = "batchnorm"
    incremental = True

    def module(self) -> nn.Module:
        return FrozenBatchNorm(self.eps, name=self.name)

    def clean(self, params, x):
        return frozen_bn(x, params, self.eps), {}

    def update(self, params, ctx, change, hw):
        return pointwise(change, lambda v: frozen_bn(v, params, self.eps))


# ---------------------------------------------------------------- residual blocks

@dataclass(frozen=True)
class Step:
    """One conv (no bias) + BN (+ ReLU) of a block's main path; torch padding kernel // 2."""

    conv: str
    bn: str
    features: int
    kernel: int
    stride: int
    relu: bool

    @property
    def op(self) -> Op | None:
        """Its spatial geometry (None: a 1x1 / stride-1 conv, pointwise)."""
        if self.kernel == 1 and self.stride == 1:
            return None
        p = self.kernel // 2
        return Op(self.kernel, self.stride, ((p, p), (p, p)))

    def apply(self, params, x: Array) -> Array:
        """(H, W, C) -> the step's output, the conv "valid" (the caller pads)."""
        y = frozen_bn(conv_valid(x, params[self.conv]["kernel"], None, self.stride), params[self.bn], EPS)
        return jax.nn.relu(y) if self.relu else y


class ResidualBlock(nn.Module):
    """relu(main(x) + shortcut(x)); main = the steps in order; shortcut = identity, or a 1x1
    conv of stride ``stride`` + BN (``downsample.0`` / ``downsample.1``) to ``downsample`` channels."""

    steps: tuple[Step, ...]
    stride: int
    downsample: int | None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = x
        for st in self.steps:
            y = layers.Conv(st.features, (st.kernel,) * 2, (st.stride,) * 2,
                            padding=layers.torch_padding(st.kernel // 2), use_bias=False, name=st.conv)(y)
            y = FrozenBatchNorm(EPS, name=st.bn)(y)
            if st.relu:
                y = jax.nn.relu(y)
        shortcut = x
        if self.downsample is not None:
            shortcut = layers.Conv(self.downsample, (1, 1), (self.stride,) * 2, padding=_NO_PAD, use_bias=False,
                                   name="downsample.0")(x)
            shortcut = FrozenBatchNorm(EPS, name="downsample.1")(shortcut)
        return jax.nn.relu(y + shortcut)


@dataclass(frozen=True)
class _Block(Kind):
    """A residual block stage (``BasicBlock`` / ``Bottleneck``): its main path is ``steps``.

    Incremental rule: the changed box goes through the main path (``spatial`` for the 3x3 conv,
    ``pointwise`` for 1x1 convs); the shortcut is recomputed on the main path's output box. That
    box is the union of both paths' output boxes: the shortcut's output (r, c) reads input
    (r s, c s), the centre tap of the main path's 3x3 / stride-s conv (padding 1) at (r, c), so every
    output the shortcut can change the main path can change too.
    """

    in_features: int
    planes: int
    stride: int = 1

    expansion: ClassVar[int] = 1
    incremental = True

    @property
    def out_features(self) -> int:
        return self.planes * self.expansion

    @property
    def downsample(self) -> bool:
        return self.stride != 1 or self.in_features != self.out_features

    @property
    def steps(self) -> tuple[Step, ...]:
        raise NotImplementedError

    def module(self) -> nn.Module:
        return ResidualBlock(self.steps, self.stride, self.out_features if self.downsample else None,
                             name=self.name)

    def ops(self, hw):
        return tuple(st.op for st in self.steps)

    def _shortcut(self, params, region: Array) -> Array:
        """The shortcut over an input region (H, W, C): the region itself, or 1x1 conv / stride + BN."""
        if not self.downsample:
            return region
        return frozen_bn(conv_valid(region, params["downsample.0"]["kernel"], None, self.stride),
                         params["downsample.1"], EPS)

    def clean(self, params, x):
        y, pads = x, []
        for st in self.steps:
            if st.op is not None:
                y = st.op.pad(y)
                pads.append(y)
            y = st.apply(params, y)
        return jax.nn.relu(y + self._shortcut(params, x)), {"in": x, "pads": tuple(pads)}

    def update(self, params, ctx, change, hw):
        inputs, pads = change, iter(ctx["pads"])
        for st in self.steps:
            if st.op is None:
                change = pointwise(change, lambda v, st=st: st.apply(params, v))
            else:
                full_out = st.op.out_shape(*hw)
                change = spatial(st.op, next(pads), change, full_out, lambda r, st=st: st.apply(params, r))
                hw = full_out
        oa, ob, main = change
        # the shortcut over the same output box: stride-s samples of the (changed) input
        h, w = main.shape[:2]
        s = self.stride
        region = patched_region(ctx["in"], _NO_PAD, inputs, (oa * s, ob * s), ((h - 1) * s + 1, (w - 1) * s + 1))
        return oa, ob, jax.nn.relu(main + self._shortcut(params, region))

    def flops(self, params, areas):
        total = sum(a * numel(params[st.conv]["kernel"]) for st, a in zip(self.steps, areas))
        if self.downsample:
            total += areas[-1] * numel(params["downsample.0"]["kernel"])  # on the block's output box
        return 2.0 * total


@dataclass(frozen=True)
class BasicBlock(_Block):
    """ResNet-18/34's block: 3x3 (stride) + BN + ReLU, 3x3 + BN; add; ReLU."""

    kind = "basic_block"
    expansion = 1

    @property
    def steps(self):
        return (Step("conv1", "bn1", self.planes, 3, self.stride, True),
                Step("conv2", "bn2", self.planes, 3, 1, False))


@dataclass(frozen=True)
class Bottleneck(_Block):
    """ResNet-50's block (torchvision V1.5: the stride on the 3x3): 1x1 + BN + ReLU,
    3x3 (stride) + BN + ReLU, 1x1 to 4 x planes + BN; add; ReLU."""

    kind = "bottleneck"
    expansion = 4

    @property
    def steps(self):
        return (Step("conv1", "bn1", self.planes, 1, 1, True),
                Step("conv2", "bn2", self.planes, 3, self.stride, True),
                Step("conv3", "bn3", self.out_features, 1, 1, False))


# ---------------------------------------------------------------- networks

_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}


def resnet(depth: int, num_classes: int = 1000) -> tuple[Kind, ...]:
    """The stages of torchvision's ``resnet{depth}`` (18 or 50)."""
    block, counts = _DEPTHS[depth]
    stages: list[Kind] = [BiasFreeConv("conv1", 64, 7, 2, 3), BatchNorm("bn1"), ReLU("relu"),
                          MaxPool("maxpool", 3, 2, padding=1)]
    in_features = 64
    for i, (count, planes) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
        for j in range(count):
            stages.append(block(f"layer{i}.{j}", in_features, planes, 2 if j == 0 and i > 1 else 1))
            in_features = planes * block.expansion
    return tuple(stages) + (GlobalAvgPool("avgpool"), Dense("fc", num_classes))


def resnet18(num_classes: int = 1000) -> tuple[Kind, ...]:
    return resnet(18, num_classes)


def resnet50(num_classes: int = 1000) -> tuple[Kind, ...]:
    return resnet(50, num_classes)


def resnet_aliases(stages: tuple[Kind, ...]) -> dict[str, str]:
    """``layer1`` ... ``layer4`` -> the last block of that layer (torchvision's ``net.layer4``
    module's output), and ``features`` -> the last block of ``layer4``."""
    aliases = {}
    for stage in stages:
        if isinstance(stage, _Block):
            aliases[stage.name.split(".")[0]] = stage.name  # later blocks overwrite earlier ones
    aliases["features"] = aliases["layer4"]
    return aliases


def feature_layer(stages: tuple[Kind, ...]) -> str:
    """The last block of ``layer4``: the last spatial map, and the CAM layer (weights = fc kernel)."""
    return resnet_aliases(stages)["layer4"]
