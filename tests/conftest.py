"""Shared fixtures: real models (skipped with a reason when their weights are absent, but a hard
failure under CI=true, where ../shared and the setup downloads must be present) and a tiny
hand-sized CNN for exact, fast checks."""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

from jaxviz.interface import TORCHVISION, Model
from jaxviz.models import bundled_model
from jaxviz.models.kinds import Conv, GlobalAvgPool, MaxPool, ReLU
from jaxviz.models.registry import ModelSpec


SUITE_CACHE_BYTES = 2 << 30  # the suite's cache is emptied at the start of a run beyond this


def pytest_configure(config) -> None:
    """The suite's own persistent compilation cache, ``.jax_cache/`` in the checkout (git-ignored;
    delete it for a cold run), on from the first test: the CLI, run in-process by many tests, would
    otherwise turn on the user's ``~/.cache/jaxviz/xla`` (``$JAXVIZ_CACHE_DIR``) and fill it with
    the tests' programs. Programs compiled by several tests or by both ``-n 2`` workers are compiled
    once, and a second run of the suite reuses them. A ``JAXVIZ_CACHE_DIR`` given by the caller (a
    path, or ``off``) is kept.

    The cache is not capped through ``jax_compilation_cache_max_size``: that makes every write
    list and stat the whole folder under a file lock (quadratic in the number of entries; the
    suite writes about 2,000) and, with two workers, failed writes. It is emptied instead, by the
    main process before any worker starts, once it holds more than ``SUITE_CACHE_BYTES``."""
    from jaxviz.runtime import cache_dir, enable_compilation_cache
    suite_cache = config.rootpath / ".jax_cache"
    os.environ.setdefault("JAXVIZ_CACHE_DIR", str(suite_cache))
    if cache_dir() == suite_cache and not hasattr(config, "workerinput") and suite_cache.is_dir() \
            and sum(f.stat().st_size for f in suite_cache.iterdir()) > SUITE_CACHE_BYTES:
        shutil.rmtree(suite_cache, ignore_errors=True)
    enable_compilation_cache()


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(config, items) -> None:
    """``slow_on_resnet18``: the test's ResNet-18 case of ``any_model`` is slow, its other cases
    are not (ResNet-18 compiles longest of the four; a test marks it where the small models
    and ResNet-18's own checks elsewhere already cover what its case would add)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("any_model") == "resnet18" \
                and item.get_closest_marker("slow_on_resnet18"):
            item.add_marker(pytest.mark.slow)


def _real_model(name: str):
    from jaxviz.weights.store import load_model, status
    if status(name) == "not ported":
        message = f"weights for {name} are not available here (see `jaxviz models`)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}: ../shared/weights or the setup downloads are missing")
        pytest.skip(message)
    return load_model(name)


@pytest.fixture(scope="session")
def squeezenet() -> Model:
    return _real_model("squeezenet1_1")


@pytest.fixture(scope="session")
def lite0() -> Model:
    return _real_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def vgg19() -> Model:
    """VGG19 convolutional part with the original (Caffe) weights."""
    return _real_model("vgg19_caffe")


TINY_STAGES = (
    Conv("features.0", 6, 3, 1, 1), ReLU("features.1"), MaxPool("features.2", 2, 2),
    Conv("features.3", 8, 3, 1, 1), ReLU("features.4"),
    Conv("classifier.0", 5, 1), ReLU("classifier.1"), GlobalAvgPool("classifier.2"),
)
TINY_SPEC = ModelSpec(name="tiny", description="tiny test CNN", stages=TINY_STAGES,
                      preprocessing=TORCHVISION, input_size=16, num_classes=5,
                      feature_layer="features.4", cam_layer="classifier.1")


def make_tiny_model(seed: int = 0) -> Model:
    """A 2-conv CNN with a global-average-pooled 5-class head (SqueezeNet-like), random weights."""
    module = TINY_SPEC.module()
    params = module.init(jax.random.key(seed), np.zeros((1, 16, 16, 3), np.float32))["params"]
    # Positive biases keep most ReLUs active, so gradients are informative in tests.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p + 0.1 if path[-1].key == "bias" else p, params)
    return bundled_model(TINY_SPEC, params)


@pytest.fixture()
def tiny_model() -> Model:
    return make_tiny_model()


def resnet18_model(seed: int = 0, input_size: int = 64) -> Model:
    """The bundled ResNet-18 (torchvision layout, 1000 classes) with random weights (numpy, from
    the parameter shapes: no Flax init to compile) and random BatchNorm statistics, declaring a
    small input size (64 px: layer4 is 2x2)."""
    import dataclasses

    import jax.numpy as jnp

    from jaxviz.models.registry import get_spec
    spec = dataclasses.replace(get_spec("resnet18"), input_size=input_size)
    shapes = jax.eval_shape(lambda: spec.module().init(jax.random.key(0), jnp.zeros((1, input_size, input_size, 3))))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf, shape = path[-1].key, s.shape
        if leaf == "kernel":  # conv HWIO / dense (in, out): variance 1 / fan-in
            return rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape[:-1]))
        if leaf in ("scale", "var"):
            return (0.5 + rng.random(shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)  # bias, mean
    params = jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(fill(p, s)), shapes["params"])
    return bundled_model(spec, params)


@pytest.fixture(params=["bundled", "linen", "nnx", "resnet18"])
def any_model(request) -> Model:
    """The same kind of small CNN as the bundled tiny model, a user's linen CNN (residual add,
    BatchNorm), a user's nnx CNN and the bundled ResNet-18 (random weights): techniques must
    work on all of them."""
    from tests.user_models import linen_model, nnx_model
    return {"bundled": make_tiny_model, "linen": linen_model, "nnx": nnx_model,
            "resnet18": resnet18_model}[request.param]()


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


class Lowerings:
    """Counts the programs JAX lowers to MLIR inside ``with lowerings():`` (every jit trace and every
    eager operation at a new shape): each costs a few milliseconds again in every process, even
    when the persistent cache holds its compiled form."""

    EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        self.count += event == self.EVENT

    def __enter__(self) -> "Lowerings":
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


@pytest.fixture()
def lowerings():
    return Lowerings
