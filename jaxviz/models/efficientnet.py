"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile accelerators).

Lite drops squeeze-excitation, uses ReLU6 instead of swish and fixes the stem (32) and head
(1280) widths. Padding is TensorFlow's "SAME". Our stage names: ``stem``, ``blocks.0`` ...
``blocks.15``, ``head`` (1x1 conv to 1280 + BN + ReLU6: the CAM features), ``pool`` (global
average), ``classifier`` (the logits). Inner names follow the PyTorch port (``_expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0..2``) so its state dict maps one to one.
This family's layer kinds: ``ConvBNReLU6`` (stem, head) and ``MBConv`` (the blocks).
"""
from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax

from jaxviz.models import layers
from jaxviz.models.incremental import Op, conv_valid, frozen_bn, patched_region, pointwise, spatial, spatial_box
from jaxviz.models.kinds import Dense, Dropout, GlobalAvgPool, Kind, numel
from jaxviz.models.layers import Array, FrozenBatchNorm


def _same(hw, kernel: int, stride: int) -> Op:
    """TensorFlow "SAME" geometry of a kernel x kernel / stride op on an ``hw`` input."""
    return Op(kernel, stride, tuple(layers.same_padding(n, kernel, stride) for n in hw))


# ---------------------------------------------------------------- conv + BN + ReLU6 (stem, head)

class ConvBNAct(nn.Module):
    """Conv (no bias) + frozen BN + ReLU6 with TF "SAME" padding."""

    features: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pads = [layers.same_padding(s, self.kernel, self.stride) for s in x.shape[1:3]]
        x = layers.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, padding=pads,
                        use_bias=False, name="conv")(x)
        return jax.nn.relu6(FrozenBatchNorm(name="bn")(x))


@dataclass(frozen=True)
class ConvBNReLU6(Kind):
    features: int
    kernel: int
    stride: int

    kind = "conv_bn_relu6"
    incremental = True

    def module(self) -> nn.Module:
        return ConvBNAct(self.features, self.kernel, self.stride, name=self.name)

    def ops(self, hw):
        return (_same(hw, self.kernel, self.stride),)

    def _valid(self, params, region: Array) -> Array:
        return jax.nn.relu6(frozen_bn(conv_valid(region, params["conv"]["kernel"], None, self.stride), params["bn"]))

    def clean(self, params, x):
        padded = self.ops(x.shape[:2])[0].pad(x)
        return self._valid(params, padded), {"pad": padded}

    def update(self, params, ctx, change, hw):
        op = self.ops(hw)[0]
        return spatial(op, ctx["pad"], change, op.out_shape(*hw), lambda r: self._valid(params, r))

    def flops(self, params, areas):
        return 2.0 * areas[0] * numel(params["conv"]["kernel"])


# ---------------------------------------------------------------- mobile inverted bottleneck

class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite).

    expand 1x1 -> depthwise kxk (TF SAME) -> project 1x1, BN after each, ReLU6 after the first
    two; identity skip when the shape is kept.
    """

    in_features: int
    out_features: int
    expand_ratio: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        inputs = x
        hidden = self.in_features * self.expand_ratio
        if self.expand_ratio != 1:
            x = layers.Conv(hidden, (1, 1), use_bias=False, name="_expand_conv")(x)
            x = jax.nn.relu6(FrozenBatchNorm(name="_bn0")(x))
        pads = [layers.same_padding(s, self.kernel, self.stride) for s in x.shape[1:3]]
        x = layers.Conv(hidden, (self.kernel,) * 2, (self.stride,) * 2, padding=pads,
                        feature_group_count=hidden, use_bias=False, name="_depthwise_conv")(x)
        x = jax.nn.relu6(FrozenBatchNorm(name="_bn1")(x))
        x = layers.Conv(self.out_features, (1, 1), use_bias=False, name="_project_conv")(x)
        x = FrozenBatchNorm(name="_bn2")(x)
        if self.stride == 1 and self.in_features == self.out_features:
            x = x + inputs
        return x


@dataclass(frozen=True)
class MBConv(Kind):
    """An MBConv block stage: pointwise expand, the depthwise op (its geometry), pointwise project;
    the residual (stride 1, same width) adds the stage input on the output box."""

    in_features: int
    out_features: int
    expand_ratio: int
    kernel: int
    stride: int

    kind = "mbconv"
    incremental = True

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_features == self.out_features

    def module(self) -> nn.Module:
        return MBConvBlock(self.in_features, self.out_features, self.expand_ratio, self.kernel, self.stride,
                           name=self.name)

    def ops(self, hw):
        return (None, _same(hw, self.kernel, self.stride), None)

    def _expand(self, params, x: Array) -> Array:
        if self.expand_ratio == 1:
            return x
        return jax.nn.relu6(frozen_bn(conv_valid(x, params["_expand_conv"]["kernel"], None, 1), params["_bn0"]))

    def _rest(self, params, region: Array, residual: Array | None) -> Array:
        """Depthwise ("valid" over a padded region), project, and the residual add."""
        y = conv_valid(region, params["_depthwise_conv"]["kernel"], None, self.stride, groups=region.shape[-1])
        y = jax.nn.relu6(frozen_bn(y, params["_bn1"]))
        y = frozen_bn(conv_valid(y, params["_project_conv"]["kernel"], None, 1), params["_bn2"])
        return y + residual if residual is not None else y

    def clean(self, params, x):
        padded = self.ops(x.shape[:2])[1].pad(self._expand(params, x))
        return self._rest(params, padded, x if self.residual else None), {"in": x, "pad": padded}

    def update(self, params, ctx, change, hw):
        inputs = change
        change = pointwise(change, lambda v: self._expand(params, v))
        op = self.ops(hw)[1]
        oa, ob, box, start, size = spatial_box(op, change, op.out_shape(*hw))
        region = patched_region(ctx["pad"], op.pads, change, start, size)
        # a residual block has stride 1: the stage input (clean + change) on the output box
        res = patched_region(ctx["in"], ((0, 0), (0, 0)), inputs, (oa, ob), box) if self.residual else None
        return oa, ob, self._rest(params, region, res)

    def flops(self, params, areas):
        expand = areas[0] * numel(params["_expand_conv"]["kernel"]) if "_expand_conv" in params else 0
        rest = areas[1] * numel(params["_depthwise_conv"]["kernel"]) + areas[2] * numel(params["_project_conv"]["kernel"])
        return 2.0 * (expand + rest)


# (expand ratio, kernel, stride of the first block, output channels, repeats), per stage.
_LITE0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def efficientnet_lite0(num_classes: int = 1000) -> tuple[Kind, ...]:
    stages: list[Kind] = [ConvBNReLU6("stem", 32, 3, 2)]
    in_features, index = 32, 0
    for expand, kernel, stride, out_features, repeats in _LITE0:
        for r in range(repeats):
            stages.append(MBConv(f"blocks.{index}", in_features, out_features, expand, kernel,
                                 stride if r == 0 else 1))
            in_features, index = out_features, index + 1
    stages += [ConvBNReLU6("head", 1280, 1, 1), GlobalAvgPool("pool"), Dropout("dropout"),
               Dense("classifier", num_classes)]
    return tuple(stages)
