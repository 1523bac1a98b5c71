"""Models a researcher might bring: a flax.linen CNN with a residual add and BatchNorm, a flax.nnx
CNN, and a plain apply_fn. Small (16 px inputs work; any size does) and with random weights, so
tests of "works on any model" stay fast. Layer names a test can use:

- linen: ``stem``, ``block/conv1``, ``block/bn``, ``block/conv2``, ``block`` (after the add and
  ReLU), ``head``; the feature layer is ``block``.
- nnx: ``stem``, ``bn``, ``layers.0``, ``layers.1``, ``head``; the feature layer is ``layers.1``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxviz.interface import TORCHVISION, Model, from_apply_fn, from_linen, from_nnx

NUM_CLASSES = 5


class TwoConvCNN(nn.Module):
    """The smallest plain CNN: conv1 -> ReLU -> conv2 (stride 2) -> ReLU -> GAP -> dense ``head``."""
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="conv2")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean((1, 2)))


class ResidualBlock(nn.Module):
    features: int = 8

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.features, (3, 3), name="conv1")(x)
        y = nn.BatchNorm(use_running_average=True, name="bn")(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, (3, 3), name="conv2")(y)
        return nn.relu(y + x)  # the residual add


class LinenCNN(nn.Module):
    """stem (3x3 stride 2) -> ReLU -> residual block -> max-pool -> GAP -> dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="stem")(x))
        x = ResidualBlock(name="block")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(NUM_CLASSES, name="head")(x.mean((1, 2)))


def _randomise_batch_stats(variables: dict, seed: int) -> dict:
    # non-trivial running statistics, so that BatchNorm does something testable
    key = jax.random.key(seed)
    stats = variables["batch_stats"]["block"]["bn"]
    return {**variables, "batch_stats": {"block": {"bn": {
        "mean": 0.1 * jax.random.normal(key, stats["mean"].shape),
        "var": 1.0 + 0.5 * jax.random.uniform(jax.random.fold_in(key, 1), stats["var"].shape)}}}}


def linen_model(seed: int = 0) -> Model:
    module = LinenCNN()
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
    return from_linen(module, _randomise_batch_stats(dict(variables), seed), name="user_linen",
                      preprocessing=TORCHVISION)


class NnxCNN(nnx.Module):
    """stem conv -> BatchNorm -> ReLU -> two conv+ReLU layers in an nnx.List -> GAP -> linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.layers = nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.Conv(8, 8, (3, 3), rngs=rngs)])
        self.head = nnx.Linear(8, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem(x)))
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x.mean((1, 2)))


def nnx_model(seed: int = 0) -> Model:
    return from_nnx(NnxCNN(nnx.Rngs(seed)), name="user_nnx", preprocessing=TORCHVISION)


def apply_fn_model(seed: int = 0) -> Model:
    """A plain function of (params, x): a linear classifier on 4x4-pooled pixels (no layers)."""
    w = 0.1 * jax.random.normal(jax.random.key(seed), (48, NUM_CLASSES))

    def apply_fn(params, x):
        n, h, w_, c = x.shape
        pooled = jax.image.resize(x, (n, 4, 4, c), "linear").reshape(n, -1)
        return jnp.tanh(pooled) @ params
    return from_apply_fn(apply_fn, w, name="user_apply_fn", preprocessing=TORCHVISION)
