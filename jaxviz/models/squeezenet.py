"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016), torchvision's architecture and module names.

torchvision's max-pools use ``ceil_mode=True``; the classifier is dropout, a 1x1 conv to 1000
class maps, ReLU and global average pooling, so ``classifier.2`` is already a class activation
map (CAM) and its spatial mean is the logit. The fire module is this family's own layer kind
(``Fire``: forward, geometry, incremental rule and cost in one class).
"""
from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models import layers
from jaxviz.models.incremental import Op, conv_valid, pointwise, spatial
from jaxviz.models.kinds import Conv, Dropout, GlobalAvgPool, Kind, MaxPool, ReLU, numel
from jaxviz.models.layers import Array

_EXPAND3x3 = Op(3, 1, ((1, 1), (1, 1)))


class FireBlock(nn.Module):
    """SqueezeNet's fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    squeeze: int
    expand1x1: int
    expand3x3: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = jax.nn.relu(layers.Conv(self.squeeze, (1, 1), name="squeeze")(x))
        e1 = jax.nn.relu(layers.Conv(self.expand1x1, (1, 1), name="expand1x1")(s))
        e3 = jax.nn.relu(layers.Conv(self.expand3x3, (3, 3), padding=layers.torch_padding(1), name="expand3x3")(s))
        return jnp.concatenate([e1, e3], axis=-1)


@dataclass(frozen=True)
class Fire(Kind):
    """A fire module stage. Its largest path: the 1x1 squeeze, then the 3x3 expand; channels
    [0, expand1x1) take the 1x1 expand and see only the squeeze's field."""

    squeeze: int
    expand1x1: int
    expand3x3: int

    kind = "fire"
    incremental = True

    def module(self) -> nn.Module:
        return FireBlock(self.squeeze, self.expand1x1, self.expand3x3, name=self.name)

    def ops(self, hw):
        return (None, _EXPAND3x3)

    @staticmethod
    def _squeeze(params, x: Array) -> Array:
        return jax.nn.relu(conv_valid(x, params["squeeze"]["kernel"], params["squeeze"]["bias"], 1))

    @staticmethod
    def _expand(params, region: Array) -> Array:
        """The two expands over a 1-padded squeeze region -> the concatenated output."""
        e1, e3 = params["expand1x1"], params["expand3x3"]
        return jnp.concatenate([jax.nn.relu(conv_valid(region[1:-1, 1:-1], e1["kernel"], e1["bias"], 1)),
                                jax.nn.relu(conv_valid(region, e3["kernel"], e3["bias"], 1))], axis=-1)

    def clean(self, params, x):
        padded = _EXPAND3x3.pad(self._squeeze(params, x))
        return self._expand(params, padded), {"pad": padded}

    def update(self, params, ctx, change, hw):
        change = pointwise(change, lambda v: self._squeeze(params, v))
        return spatial(_EXPAND3x3, ctx["pad"], change, hw, lambda r: self._expand(params, r))

    def flops(self, params, areas):
        expand = numel(params["expand1x1"]["kernel"]) + numel(params["expand3x3"]["kernel"])
        return 2.0 * (areas[0] * numel(params["squeeze"]["kernel"]) + areas[1] * expand)


# (squeeze, expand1x1, expand3x3) per fire module, in order.
_FIRES = [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
          (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]


def _classifier(num_classes: int) -> tuple[Kind, ...]:
    return (Dropout("classifier.0"), Conv("classifier.1", num_classes, 1),
            ReLU("classifier.2"), GlobalAvgPool("classifier.3"))


def squeezenet1_0(num_classes: int = 1000) -> tuple[Kind, ...]:
    f = iter(_FIRES)
    return (Conv("features.0", 96, 7, 2), ReLU("features.1"), MaxPool("features.2", 3, 2, True),
            Fire("features.3", *next(f)), Fire("features.4", *next(f)), Fire("features.5", *next(f)),
            MaxPool("features.6", 3, 2, True),
            Fire("features.7", *next(f)), Fire("features.8", *next(f)), Fire("features.9", *next(f)),
            Fire("features.10", *next(f)),
            MaxPool("features.11", 3, 2, True),
            Fire("features.12", *next(f))) + _classifier(num_classes)


def squeezenet1_1(num_classes: int = 1000) -> tuple[Kind, ...]:
    f = iter(_FIRES)
    return (Conv("features.0", 64, 3, 2), ReLU("features.1"), MaxPool("features.2", 3, 2, True),
            Fire("features.3", *next(f)), Fire("features.4", *next(f)),
            MaxPool("features.5", 3, 2, True),
            Fire("features.6", *next(f)), Fire("features.7", *next(f)),
            MaxPool("features.8", 3, 2, True),
            Fire("features.9", *next(f)), Fire("features.10", *next(f)),
            Fire("features.11", *next(f)), Fire("features.12", *next(f))) + _classifier(num_classes)


def fire_aliases(stages: tuple[Kind, ...]) -> dict[str, str]:
    """The paper's names: ``conv1``, ``fire2`` ... ``fire9``, ``conv10``; pools ``pool1..3`` in order."""
    aliases = {"conv1": "features.0", "relu1": "features.1", "conv10": "classifier.1",
               "relu10": "classifier.2"}
    fires = [s.name for s in stages if isinstance(s, Fire)]
    pools = [s.name for s in stages if isinstance(s, MaxPool)]
    aliases.update({f"fire{i + 2}": name for i, name in enumerate(fires)})
    aliases.update({f"pool{i + 1}": name for i, name in enumerate(pools)})
    return aliases
