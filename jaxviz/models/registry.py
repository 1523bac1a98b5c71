"""The model registry: a name maps to its architecture *and* its facts (input size, preprocessing,
labels, weight source, layer aliases) — one place to look, one way to list (as timm does).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.models import efficientnet, squeezenet, vgg
from jaxviz.models.network import ReceptiveField, SequentialNet, Stage, receptive_fields

Array = jax.Array


@dataclass(frozen=True)
class Preprocessing:
    """x_model = (x[..., order] * scale - mean) / std for RGB images x in [0, 1], NHWC."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    bgr: bool = False

    def __call__(self, images: Array) -> Array:
        """(N, H, W, 3) RGB in [0, 1] -> model input."""
        x = images[..., ::-1] if self.bgr else images
        return (x * self.scale - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)

    def invert(self, x: Array) -> Array:
        """Exact inverse: model input -> RGB in [0, 1] (not clipped)."""
        x = (x * jnp.asarray(self.std, x.dtype) + jnp.asarray(self.mean, x.dtype)) / self.scale
        return x[..., ::-1] if self.bgr else x

    def describe(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        rng = "0-255" if self.scale == 255 else "[0,1]"
        return f"{order} {rng}, mean {self.mean}, std {self.std}"


TORCHVISION = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CAFFE = Preprocessing(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True)
LITE = Preprocessing(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=255.0)


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about a model before its weights are loaded."""

    name: str
    description: str
    stages: tuple[Stage, ...]
    preprocessing: Preprocessing
    aliases: dict[str, str] = field(default_factory=dict)
    input_size: int = 224
    num_classes: int | None = 1000
    # The layer Grad-CAM and friends use by default: the last spatial feature map.
    feature_layer: str = ""
    # The layer whose channels are class maps / CAM features (None: no CAM for this model).
    cam_layer: str | None = None
    paper: str = ""

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def resolve_layer(self, name: str) -> str:
        """Canonical stage name for a canonical name or alias; a clear error with close names."""
        if name in self.layer_names:
            return name
        if name in self.aliases:
            return self.aliases[name]
        known = list(self.layer_names) + list(self.aliases)
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; `jaxviz layers {self.name}` lists them"
        raise JaxvizError(f"unknown layer {name!r} for model {self.name}{hint}")

    def receptive_fields(self, input_size: int | None = None) -> dict[str, ReceptiveField]:
        return receptive_fields(self.stages, input_size or self.input_size)

    def module(self, **activations: Callable) -> SequentialNet:
        """The Flax module; pass ``relu=``/``relu6=`` to inject other non-linearities."""
        return SequentialNet(self.stages, **activations)


def _squeezenet(name: str, stages_fn: Callable, paper_note: str) -> ModelSpec:
    stages = stages_fn()
    return ModelSpec(name=name, description=f"SqueezeNet {paper_note} (torchvision)", stages=stages,
                     preprocessing=TORCHVISION, aliases=squeezenet.fire_aliases(stages),
                     feature_layer="features.12", cam_layer="classifier.2",
                     paper="Iandola et al. 2016, SqueezeNet")


def _vgg(name: str, depth: int, preprocessing: Preprocessing, include_classifier: bool,
         description: str) -> ModelSpec:
    return ModelSpec(name=name, description=description,
                     stages=vgg.vgg(depth, include_classifier=include_classifier),
                     preprocessing=preprocessing, aliases=vgg.vgg_aliases(depth, include_classifier),
                     num_classes=1000 if include_classifier else None,
                     feature_layer=vgg.vgg_aliases(depth)["relu5_" + str(4 if depth == 19 else 3)],
                     paper="Simonyan & Zisserman 2015, Very deep convolutional networks")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in [
        _squeezenet("squeezenet1_1", squeezenet.squeezenet1_1, "1.1"),
        _squeezenet("squeezenet1_0", squeezenet.squeezenet1_0, "1.0"),
        ModelSpec(name="efficientnet_lite0", description="EfficientNet-Lite0 (ReLU6, no SE, TF SAME padding)",
                  stages=efficientnet.efficientnet_lite0(), preprocessing=LITE,
                  aliases={"features": "head"}, feature_layer="head", cam_layer="head",
                  paper="Tan & Le 2019, EfficientNet"),
        _vgg("vgg19_caffe", 19, CAFFE, False,
             "VGG19 convolutional part, original Simonyan-Zisserman weights (no classifier)"),
        _vgg("vgg16", 16, TORCHVISION, True, "VGG16 (torchvision)"),
        _vgg("vgg19", 19, TORCHVISION, True, "VGG19 with classifier (torchvision)"),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; a clear error listing close names otherwise."""
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(MODELS)}"
    raise JaxvizError(f"unknown model {name!r}; {hint}")


def list_models() -> list[str]:
    return list(MODELS)


@dataclass(frozen=True, eq=False)
class Model:
    """A spec, its Flax module and its (ported) parameters.

    ``model.apply(params, x, start=, stop=, capture=)`` is the pure ``apply_fn`` every technique
    takes; ``eq=False`` makes the model hashable by identity so bound methods can be static
    arguments of ``jax.jit``.
    """

    spec: ModelSpec
    params: dict
    module: SequentialNet

    @property
    def name(self) -> str:
        return self.spec.name

    def apply(self, params: dict, x: Array, start: str | None = None, stop: str | None = None,
              capture: tuple[str, ...] = ()) -> Array | tuple[Array, dict[str, Array]]:
        """Run the network: see ``SequentialNet.__call__``; layer names may be aliases."""
        resolve = self.spec.resolve_layer
        return self.module.apply(
            {"params": params}, x, start=resolve(start) if start else None,
            stop=resolve(stop) if stop else None, capture=tuple(resolve(c) for c in capture))

    def with_activations(self, **activations: Callable) -> "Model":
        """The same model and parameters with other non-linearities (guided backprop, deconvnet)."""
        return Model(self.spec, self.params, self.spec.module(**activations))

    def preprocess(self, images: Array) -> Array:
        return self.spec.preprocessing(images)

    def deprocess(self, x: Array) -> Array:
        return self.spec.preprocessing.invert(x)

    def layer_shapes(self, input_size: int | None = None) -> dict[str, tuple[int, ...]]:
        return layer_shapes(self.spec, input_size)


def layer_shapes(spec: ModelSpec, input_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every stage in order, by abstract evaluation (no FLOPs)."""
    size = input_size or spec.input_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def run(x):
        (_, acts), _ = spec.module().init_with_output(jax.random.key(0), x, capture=spec.layer_names)
        return acts

    acts = jax.eval_shape(run, x)
    return {name: tuple(acts[name].shape[1:]) for name in spec.layer_names}


def init_params(spec: ModelSpec, seed: int = 0, input_size: int | None = None) -> dict:
    """Random parameters of the right shapes (tests, porting checks, sanity checks)."""
    size = input_size or spec.input_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return spec.module().init(jax.random.key(seed), x)["params"]


def param_shapes(spec: ModelSpec) -> dict:
    """Shapes of every parameter, as a tree of tuples, without allocating them."""
    x = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3), jnp.float32)
    tree = jax.eval_shape(lambda: spec.module().init(jax.random.key(0), jnp.zeros(x.shape)))["params"]
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def flatten_params(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{'features.3': {'squeeze': {'kernel': a}}} -> {'features.3/squeeze/kernel': a}."""
    flat = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree
