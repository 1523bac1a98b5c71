"""Layer kinds: one class per kind of stage of a bundled network, each defined in one place.

A stage of a ``SequentialNet`` is an instance of a kind (a frozen dataclass: its name, then its
hyper-parameters). The kind says everything the library needs to know about it:

- **forward** (``forward(x)``): the flax module(s) it builds, named after the stage, so every stage
  is a named submodule the model interface can read and replace (``jaxviz.interface.linen``);
- **geometry** (``ops(hw)``): the spatial ops along its path of largest receptive field (kernel,
  stride, padding: ``jaxviz.models.incremental.Op``; None for a pointwise op), from which
  ``network.receptive_fields`` composes receptive fields and ``out_hw`` the output size;
  ``sees_whole_input`` marks global pooling / dense stages;
- **incremental-occlusion rule** (``clean`` + ``update``, only where ``incremental`` is True): the
  clean pass of one image, keeping what the rule needs, and the map from a changed box of its input
  to the changed box of its output (``jaxviz.models.incremental``);
- **cost** (``flops(params, areas)``): 2 x multiply-adds, given how many output positions each op
  computes (``plan``), for ``jaxviz.occlusion.flop_saving``;
- **class head** (``select_outputs``, ``on_one_channel``): a stage linear per position (a 1x1
  convolution, a dense layer) computes only the output channels asked for, and a stage acting on
  each channel alone (ReLU, dropout, global average pooling) runs on that one channel, so a class's
  logit costs a dot product instead of the whole classifier (``BundledModel.selected_logits``).

A new kind is one subclass (in its family's module, e.g. ``squeezenet.Fire``), touching nothing
else; a kind without an incremental rule still works everywhere (incremental occlusion runs it and
everything after it in full). ``jaxviz.accel`` swaps faster forward implementations in by kind class
(``SequentialNet.overrides``), never by name.

Rules operate on ONE image: ``x`` (H, W, C) and params the stage's own subtree (``{}`` if none).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models import layers
from jaxviz.models.incremental import Change, Op, conv_valid, max_pool_valid, pointwise, spatial
from jaxviz.models.layers import Array, Lambda

PyTree = Any
HW = tuple[int, int]

def numel(shape: Sequence[int]) -> int:
    """Number of elements of an array or a shape."""
    return math.prod(shape.shape if hasattr(shape, "shape") else shape)


@dataclass(frozen=True)
class Kind:
    """A named stage of a sequential network (see the module docstring). Subclasses add their
    hyper-parameters as dataclass fields and override what differs from these defaults."""

    name: str

    kind: ClassVar[str] = ""          # short name shown in listings (``jaxviz layers``)
    pooling: ClassVar[bool] = False   # global pooling / dense: the spatial structure ends here
    incremental: ClassVar[bool] = False  # has an incremental-occlusion rule (clean + update)
    channelwise: ClassVar[bool] = False  # each output channel depends on its own input channel only

    # ---------------------------------------------------------------- forward

    def module(self) -> nn.Module:
        """The flax module of this stage, named ``self.name``."""
        raise NotImplementedError(f"{type(self).__name__} defines no module")

    def forward(self, x: Array) -> Array:
        """(N, H, W, C) -> the stage's output; called inside ``SequentialNet.__call__``."""
        return self.module()(x)

    # ---------------------------------------------------------------- geometry

    def ops(self, hw: HW) -> tuple[Op | None, ...]:
        """Spatial ops along the path of largest receptive field for an input of size ``hw``
        (None: a pointwise op)."""
        return (None,)

    def out_hw(self, hw: HW) -> HW:
        """Spatial size of the output for an input of size ``hw``."""
        for op in self.ops(hw):
            if op is not None:
                hw = op.out_shape(*hw)
        return hw

    def sees_whole_input(self, hw: HW) -> bool:
        """Whether every output unit depends on the whole input (global pooling, dense)."""
        return self.pooling

    def plan(self, hw: HW, box: HW | None = None) -> tuple[HW, HW, tuple[int, ...]]:
        """(output size, output box, positions computed per op) for an input of size ``hw`` whose
        box of static size ``box`` changed (None: the whole input, a full pass)."""
        full, areas = box is None, []
        box = hw if full else box
        for op in self.ops(hw):
            if op is not None:
                out = op.out_shape(*hw)
                box = out if full else op.out_box(box, out)
                hw = out
            areas.append(math.prod(box))
        return hw, box, tuple(areas)

    # ---------------------------------------------------------------- incremental occlusion

    def clean(self, params: PyTree, x: Array) -> tuple[Array, dict]:
        """Clean pass of one (H, W, C) image: (output, context arrays the rule needs)."""
        raise NotImplementedError(f"{type(self).__name__} has no incremental rule")

    def update(self, params: PyTree, ctx: dict, change: Change, hw: HW) -> Change:
        """The change of the output given the change of the input (input size ``hw``)."""
        raise NotImplementedError(f"{type(self).__name__} has no incremental rule")

    # ---------------------------------------------------------------- cost

    def flops(self, params: PyTree, areas: tuple[int, ...]) -> float:
        """2 x multiply-adds of convolutions / dense products (``areas`` from ``plan``)."""
        return 0.0

    # ---------------------------------------------------------------- class head

    def selects_outputs(self) -> bool:
        """Whether ``select_outputs`` can compute single output channels (a stage linear per position)."""
        return False

    def select_outputs(self, params: PyTree, x: Array, index: Array) -> Array:
        """Output channel ``index[n]`` of image n: (N, H, W, C) -> (N, H', W') or (N, C) -> (N,);
        ``params`` the stage's own subtree. Only where ``selects_outputs()``."""
        raise NotImplementedError(f"{type(self).__name__} cannot select output channels")

    def on_one_channel(self, x: Array, activations: dict) -> Array:
        """This stage applied to one channel per image, (N, H, W) or (N,), for a ``channelwise``
        stage; ``activations``: the ReLU functions of the model's backward rule
        (``jaxviz.interface.backward.ACTIVATIONS[rule]``)."""
        raise NotImplementedError(f"{type(self).__name__} does not act on each channel alone")


def _rows(values, index: Array) -> Array:
    """``values[index]`` along axis 0 for a traced ``index`` (values may be numpy, as loaded), with
    reading the whole output's semantics: a negative index counts from the end, one out of range
    gives NaN."""
    return jnp.take(jnp.asarray(values), index, axis=0, mode="fill", fill_value=jnp.nan)


# ---------------------------------------------------------------- pointwise kinds

class Pointwise(Kind):
    """An elementwise, parameter-free stage: its rule maps the changed box through ``apply``."""

    incremental = True
    channelwise = True

    def apply(self, x: Array) -> Array:
        raise NotImplementedError

    def on_one_channel(self, x: Array, activations: dict) -> Array:
        return self.apply(x)

    def module(self) -> nn.Module:
        return Lambda(self.apply, name=self.name)

    def clean(self, params, x):
        return self.apply(x), {}

    def update(self, params, ctx, change, hw):
        return pointwise(change, self.apply)


@dataclass(frozen=True)
class ReLU(Pointwise):
    kind = "relu"

    def apply(self, x: Array) -> Array:
        return jax.nn.relu(x)

    def on_one_channel(self, x: Array, activations: dict) -> Array:
        return activations["relu"](x)


@dataclass(frozen=True)
class Dropout(Pointwise):
    """Dropout at inference: the identity."""

    kind = "dropout"

    def apply(self, x: Array) -> Array:
        return x


# ---------------------------------------------------------------- spatial kinds

@dataclass(frozen=True)
class Conv(Kind):
    """``torch.nn.Conv2d(features, kernel, stride, padding)`` with bias (symmetric zero padding)."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0

    kind = "conv"
    incremental = True

    def module(self) -> nn.Module:
        k, s = (self.kernel,) * 2, (self.stride,) * 2
        return layers.Conv(self.features, k, s, padding=layers.torch_padding(self.padding), name=self.name)

    def ops(self, hw):
        p = self.padding
        return (Op(self.kernel, self.stride, ((p, p), (p, p))),)

    def _valid(self, params, region: Array) -> Array:
        return conv_valid(region, params["kernel"], params["bias"], self.stride)

    def clean(self, params, x):
        padded = self.ops(x.shape[:2])[0].pad(x)
        return self._valid(params, padded), {"pad": padded}

    def update(self, params, ctx, change, hw):
        op = self.ops(hw)[0]
        return spatial(op, ctx["pad"], change, op.out_shape(*hw), lambda r: self._valid(params, r))

    def flops(self, params, areas):
        return 2.0 * areas[0] * numel(params["kernel"])

    def selects_outputs(self):
        return self.kernel == 1 and self.stride == 1 and self.padding == 0

    def select_outputs(self, params, x, index):
        out = jnp.einsum("nhwc,nc->nhw", x, _rows(params["kernel"][0, 0].T, index))
        return out + _rows(params["bias"], index)[:, None, None] if "bias" in params else out


@dataclass(frozen=True)
class MaxPool(Kind):
    """``torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=...)``: -inf padding, ``padding``
    on both sides plus the ceil-mode overhang after."""

    kernel: int
    stride: int
    ceil_mode: bool = False
    padding: int = 0

    kind = "maxpool"
    incremental = True

    def pool(self, x: Array) -> Array:
        return layers.max_pool(x, self.kernel, self.stride, self.ceil_mode, self.padding)

    def module(self) -> nn.Module:
        return Lambda(self.pool, name=self.name)

    def ops(self, hw):
        pads = tuple(layers.pool_padding(n, self.kernel, self.stride, self.ceil_mode, self.padding) for n in hw)
        return (Op(self.kernel, self.stride, pads, -jnp.inf),)

    def clean(self, params, x):
        padded = self.ops(x.shape[:2])[0].pad(x)
        return max_pool_valid(padded, self.kernel, self.stride), {"pad": padded}

    def update(self, params, ctx, change, hw):
        op = self.ops(hw)[0]
        return spatial(op, ctx["pad"], change, op.out_shape(*hw),
                       lambda r: max_pool_valid(r, self.kernel, self.stride))


# ---------------------------------------------------------------- global pooling and dense kinds

def _global_avgpool(x: Array) -> Array:  # (N, H, W, C) -> (N, C)
    return x.mean(axis=(1, 2))


@dataclass(frozen=True)
class GlobalAvgPool(Kind):
    kind = "global_avgpool"
    pooling = True
    channelwise = True

    def module(self) -> nn.Module:
        return Lambda(_global_avgpool, name=self.name)

    def out_hw(self, hw):
        return (1, 1)

    def on_one_channel(self, x, activations):
        return x.mean(axis=(1, 2))


@dataclass(frozen=True)
class AdaptiveAvgPool(Kind):
    """``torch.nn.AdaptiveAvgPool2d(output_size)``; the identity when the input already has it."""

    output_size: tuple[int, int]

    kind = "adaptive_avgpool"
    pooling = True

    def module(self) -> nn.Module:
        return Lambda(functools.partial(layers.adaptive_avg_pool, output_size=tuple(self.output_size)),
                      name=self.name)

    def out_hw(self, hw):
        return tuple(self.output_size)

    def sees_whole_input(self, hw):
        # known approximation: a bin of a real (non-identity) adaptive pool sees part of the input
        return tuple(hw) != tuple(self.output_size)


@dataclass(frozen=True)
class Dense(Kind):
    """``torch.nn.Linear`` on (N, C) features."""

    features: int

    kind = "dense"
    pooling = True

    def module(self) -> nn.Module:
        return layers.Dense(self.features, name=self.name)

    def out_hw(self, hw):
        return (1, 1)

    def flops(self, params, areas):
        return 2.0 * numel(params["kernel"])

    def selects_outputs(self):
        return True

    def select_outputs(self, params, x, index):
        out = jnp.einsum("nc,nc->n", x, _rows(params["kernel"].T, index))
        return out + _rows(params["bias"], index) if "bias" in params else out


@dataclass(frozen=True)
class FlattenDense(Dense):
    """``torch.flatten`` + ``nn.Linear`` (VGG's classifier.0). torch flattens NCHW; the port
    permutes the weight so that flattening NHWC here agrees."""

    kind = "flatten_dense"

    def forward(self, x: Array) -> Array:
        return self.module()(x.reshape(x.shape[0], -1))

    def select_outputs(self, params, x, index):
        return super().select_outputs(params, x.reshape(x.shape[0], -1), index)
