"""A network as an ordered list of named stages, run by one Flax module.

Stage names are the torchvision module paths (``features.0``, ``classifier.1``) for torchvision
architectures, so the same names work here, in Captum and in pytorch-grad-cam. One call gives the
logits and, on request, any named activations; ``start``/``stop`` split the network at a stage,
which is how techniques take gradients with respect to an intermediate activation (Grad-CAM,
DeepDream, inversion, style) purely and cheaply:

    acts = module.apply(v, x, stop="features.12")            # x -> activation
    logits = module.apply(v, acts, start="features.12")      # activation -> logits
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models import layers
from jaxviz.models.layers import Activation, Array

# One step along a stage's path of largest receptive field: (kernel, stride, padding), padding an
# int (symmetric, torch) or "same" (TensorFlow, resolved from the input size).
GeometryStep = tuple[int, int, Any]


@dataclass(frozen=True)
class Stage:
    """One named stage: ``kind`` selects the block, ``args`` its (hashable) hyper-parameters."""

    name: str
    kind: str
    args: tuple = ()
    geometry: tuple[GeometryStep, ...] = ()


def conv(name: str, features: int, kernel: int, stride: int = 1, padding: int = 0) -> Stage:
    return Stage(name, "conv", (features, kernel, stride, padding), ((kernel, stride, padding),))


def maxpool(name: str, kernel: int, stride: int, ceil_mode: bool = False) -> Stage:
    return Stage(name, "maxpool", (kernel, stride, ceil_mode), ((kernel, stride, 0),))


class SequentialNet(nn.Module):
    """Runs ``stages`` in order. ``relu``/``relu6`` are injectable (guided backprop, deconvnet)."""

    stages: tuple[Stage, ...]
    relu: Activation = jax.nn.relu
    relu6: Activation = jax.nn.relu6

    @nn.compact
    def __call__(self, x: Array, start: str | None = None, stop: str | None = None,
                 capture: tuple[str, ...] = ()) -> Array | tuple[Array, dict[str, Array]]:
        """Run from just after stage ``start`` (x is its activation) through stage ``stop``.

        Args:
          x: (N, H, W, 3) preprocessed images, or the activation of ``start``.
          start: name of the stage whose output ``x`` is; None runs from the input.
          stop: last stage to run; None runs to the logits (N, classes).
          capture: names of stages whose outputs to return as well.
        Returns:
          the output of ``stop`` (or logits), and with ``capture`` a dict name -> activation.
        """
        captured = {}
        running = start is None
        for stage in self.stages:
            if not running:
                running = stage.name == start
                continue
            x = self._run(stage, x)
            if stage.name in capture:
                captured[stage.name] = x
            if stage.name == stop:
                break
        return (x, captured) if capture else x

    def _run(self, stage: Stage, x: Array) -> Array:
        kind, a, name = stage.kind, stage.args, stage.name
        if kind == "conv":
            features, kernel, stride, padding = a
            return nn.Conv(features, (kernel, kernel), (stride, stride),
                           padding=layers.torch_padding(padding), name=name)(x)
        if kind == "relu":
            return self.relu(x)
        if kind == "maxpool":
            return layers.max_pool(x, *a)
        if kind == "dropout":  # inference only
            return x
        if kind == "fire":
            return layers.Fire(*a, relu=self.relu, name=name)(x)
        if kind == "global_avgpool":  # (N, H, W, C) -> (N, C)
            return x.mean(axis=(1, 2))
        if kind == "adaptive_avgpool":
            return layers.adaptive_avg_pool(x, a)
        if kind == "flatten_dense":  # torch flattens NCHW; the port permutes the weight to NHWC
            return nn.Dense(a[0], name=name)(x.reshape(x.shape[0], -1))
        if kind == "dense":
            return nn.Dense(a[0], name=name)(x)
        if kind == "conv_bn_relu6":
            return layers.ConvBNAct(*a, relu6=self.relu6, name=name)(x)
        if kind == "mbconv":
            return layers.MBConv(*a, relu6=self.relu6, name=name)(x)
        raise ValueError(f"unknown stage kind {kind!r}")


def stage_names(stages: tuple[Stage, ...]) -> tuple[str, ...]:
    return tuple(s.name for s in stages)


@dataclass(frozen=True)
class ReceptiveField:
    """Unit (i, j) of a layer sees input rows [offset + i*stride, offset + i*stride + size).

    ``offset`` may be negative (the box starts in the padding); clip to the image to crop.
    """

    size: int
    stride: int
    offset: int

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive, in input pixels, unclipped."""
        top, left = self.offset + i * self.stride, self.offset + j * self.stride
        return top, left, top + self.size, left + self.size


def receptive_fields(stages: tuple[Stage, ...], input_size: int) -> dict[str, ReceptiveField]:
    """Receptive field of every stage, composed from each stage's geometry.

    Standard recurrence: size += (k - 1) * jump; offset -= pad * jump; jump *= stride. Stages
    after a global pooling see the whole input.
    """
    size, jump, offset, spatial = 1, 1, 0, input_size
    fields = {}
    for stage in stages:
        if stage.kind in ("global_avgpool", "flatten_dense", "dense", "adaptive_avgpool") \
                and not (stage.kind == "adaptive_avgpool" and spatial == stage.args[0]):
            size, jump, offset = input_size, input_size, 0
        for kernel, stride, padding in stage.geometry:
            if padding == "same":
                padding = layers.same_padding(spatial, kernel, stride)[0]
                spatial = -(-spatial // stride)
            else:
                spatial = (spatial + 2 * padding - kernel) // stride + 1
            size += (kernel - 1) * jump
            offset -= padding * jump
            jump *= stride
        fields[stage.name] = ReceptiveField(size, jump, offset)
    return fields
