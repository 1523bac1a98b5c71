"""A network as an ordered list of named stages, run by one Flax module.

Stage names are the torchvision module paths (``features.0``, ``classifier.1``) for torchvision
architectures, so the same names work here, in Captum and in pytorch-grad-cam. Every stage is a
submodule of that name, so the model interface (``jaxviz.interface.linen``) reads and replaces
any stage's output like any user module's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.interface.geometry import ReceptiveField
from jaxviz.models import layers
from jaxviz.models.layers import Array

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


class Lambda(nn.Module):
    """A parameter-free stage (ReLU, pooling, dropout) as a named module, so that it is a layer
    the model interface can read and replace like any other."""

    fn: Callable[[Array], Array]

    def __call__(self, x: Array) -> Array:
        return self.fn(x)


def _identity(x: Array) -> Array:  # dropout at inference
    return x


def _global_avgpool(x: Array) -> Array:  # (N, H, W, C) -> (N, C)
    return x.mean(axis=(1, 2))


class SequentialNet(nn.Module):
    """Runs ``stages`` in order; every stage is a submodule named after it."""

    stages: tuple[Stage, ...]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(N, H, W, 3) preprocessed images -> the last stage's output (logits for a classifier)."""
        for stage in self.stages:
            x = self._run(stage, x)
        return x

    def _run(self, stage: Stage, x: Array) -> Array:
        kind, a, name = stage.kind, stage.args, stage.name
        if kind == "conv":
            features, kernel, stride, padding = a
            return nn.Conv(features, (kernel, kernel), (stride, stride),
                           padding=layers.torch_padding(padding), name=name)(x)
        if kind == "relu":
            return Lambda(jax.nn.relu, name=name)(x)
        if kind == "maxpool":
            return Lambda(functools.partial(layers.max_pool, kernel=a[0], stride=a[1], ceil_mode=a[2]),
                          name=name)(x)
        if kind == "dropout":
            return Lambda(_identity, name=name)(x)
        if kind == "fire":
            return layers.Fire(*a, name=name)(x)
        if kind == "global_avgpool":
            return Lambda(_global_avgpool, name=name)(x)
        if kind == "adaptive_avgpool":
            return Lambda(functools.partial(layers.adaptive_avg_pool, output_size=a), name=name)(x)
        if kind == "flatten_dense":  # torch flattens NCHW; the port permutes the weight to NHWC
            return nn.Dense(a[0], name=name)(x.reshape(x.shape[0], -1))
        if kind == "dense":
            return nn.Dense(a[0], name=name)(x)
        if kind == "conv_bn_relu6":
            return layers.ConvBNAct(*a, name=name)(x)
        if kind == "mbconv":
            return layers.MBConv(*a, name=name)(x)
        raise ValueError(f"unknown stage kind {kind!r}")


def stage_names(stages: tuple[Stage, ...]) -> tuple[str, ...]:
    return tuple(s.name for s in stages)


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
