"""The model registry: a name maps to its architecture *and* its facts (input size, preprocessing,
labels, weight source, layer aliases) — one place to look, one way to list (as timm does).
``jaxviz.models.bundled.bundled_model(spec, params)`` turns a spec and its weights into a
``jaxviz.interface.Model``.
"""
from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError
from jaxviz.interface.geometry import ReceptiveField
from jaxviz.interface.preprocessing import (CAFFE, LITE, LITE_EVAL, TORCHVISION, TORCHVISION_EVAL,
                                            EvalTransform, Preprocessing)
from jaxviz.models import efficientnet, resnet, squeezenet, vgg
from jaxviz.models.kinds import Kind
from jaxviz.models.network import SequentialNet, receptive_fields
from jaxviz.trees import unflatten

Array = jax.Array


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about a model before its weights are loaded."""

    name: str
    description: str
    stages: tuple[Kind, ...]  # the layer kinds in order (jaxviz.models.kinds)
    preprocessing: Preprocessing
    aliases: dict[str, str] = field(default_factory=dict)
    input_size: int = 224
    num_classes: int | None = 1000
    # The layer Grad-CAM and friends use by default: the last spatial feature map.
    feature_layer: str = ""
    # The layer whose channels are class maps / CAM features (None: no CAM for this model).
    cam_layer: str | None = None
    paper: str = ""
    # the standard evaluation transform of its reference implementation
    eval_transform: EvalTransform = TORCHVISION_EVAL

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

    def receptive_fields(self, input_size: int | tuple[int, int] | None = None) -> dict[str, ReceptiveField]:
        return receptive_fields(self.stages, input_size or self.input_size)

    def module(self) -> SequentialNet:
        """The Flax module."""
        return SequentialNet(self.stages)


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


def _resnet(depth: int) -> ModelSpec:
    stages = resnet.resnet(depth)
    return ModelSpec(name=f"resnet{depth}", description=f"ResNet-{depth} (torchvision)", stages=stages,
                     preprocessing=TORCHVISION, aliases=resnet.resnet_aliases(stages),
                     feature_layer=resnet.feature_layer(stages), cam_layer=resnet.feature_layer(stages),
                     paper="He et al. 2016, Deep residual learning")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in [
        _squeezenet("squeezenet1_1", squeezenet.squeezenet1_1, "1.1"),
        _squeezenet("squeezenet1_0", squeezenet.squeezenet1_0, "1.0"),
        ModelSpec(name="efficientnet_lite0", description="EfficientNet-Lite0 (ReLU6, no SE, TF SAME padding)",
                  stages=efficientnet.efficientnet_lite0(), preprocessing=LITE,
                  aliases={"features": "head"}, feature_layer="head", cam_layer="head",
                  paper="Tan & Le 2019, EfficientNet", eval_transform=LITE_EVAL),
        _vgg("vgg19_caffe", 19, CAFFE, False,
             "VGG19 convolutional part, original Simonyan-Zisserman weights (no classifier)"),
        _vgg("vgg16", 16, TORCHVISION, True, "VGG16 (torchvision)"),
        _vgg("vgg19", 19, TORCHVISION, True, "VGG19 with classifier (torchvision)"),
        _resnet(18),
        _resnet(50),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; a clear error listing close names otherwise."""
    if name in MODELS:
        return MODELS[name]
    if name == "multistyle26":  # listed by `jaxviz models`, but not a network these commands take
        raise JaxvizError("multistyle26 is a fast style-transfer network, not a classifier or feature network: "
                          "use it with `jaxviz fast-style apply --model multistyle26`")
    close = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(MODELS)}"
    raise JaxvizError(f"unknown model {name!r}; {hint}")


def list_models() -> list[str]:
    return list(MODELS)


def layer_shapes(spec: ModelSpec, input_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every stage in order, by abstract evaluation (no FLOPs)."""
    size = input_size or spec.input_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def run(x):
        _, state = spec.module().init_with_output(jax.random.key(0), x, capture_intermediates=True)
        return {name: state["intermediates"][name]["__call__"][0] for name in spec.layer_names}

    acts = jax.eval_shape(run, x)
    return {name: tuple(acts[name].shape[1:]) for name in spec.layer_names}


def init_params(spec: ModelSpec, seed: int = 0, input_size: int | None = None) -> dict:
    """Random parameters of the right shapes (tests, porting checks, sanity checks)."""
    size = input_size or spec.input_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return spec.module().init(jax.random.key(seed), x)["params"]


def param_shapes(spec: ModelSpec) -> dict:
    """Shapes of every parameter, as a tree of tuples, without allocating them: the registry's
    recorded facts (``facts.json``) for its own specs, ``traced_param_shapes`` for any other."""
    facts = recorded_facts(spec)
    if facts is None:
        return traced_param_shapes(spec)
    return unflatten({path: tuple(shape) for path, shape in facts["param_shapes"].items()})


def traced_param_shapes(spec: ModelSpec) -> dict:
    """``param_shapes`` by abstract evaluation of the module's ``init`` (about 0.1-0.4 s of
    tracing, paid by every process that loads the model when not recorded)."""
    x = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3), jnp.float32)
    tree = jax.eval_shape(lambda: spec.module().init(jax.random.key(0), jnp.zeros(x.shape)))["params"]
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


FACTS_FILE = Path(__file__).with_name("facts.json")


@functools.lru_cache(maxsize=1)
def _facts() -> dict:
    return json.loads(FACTS_FILE.read_text()) if FACTS_FILE.exists() else {}


def recorded_facts(spec: ModelSpec) -> dict | None:
    """What ``scripts/write_model_facts.py`` recorded of a registry model by tracing its module
    (``param_shapes``: flat ``a/b/kernel`` -> shape; ``grouped_convolutions``: bool), or None for
    a spec that is not the registry's own (tests/test_models.py traces them again and compares)."""
    if MODELS.get(spec.name) is not spec:
        return None
    return _facts().get(spec.name)
