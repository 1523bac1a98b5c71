"""The attribution family on any model (``any_model``: the bundled tiny CNN, a user's flax.linen CNN
with a residual add and BatchNorm, a user's flax.nnx CNN, the bundled ResNet-18 with random
weights) and on a plain apply_fn where no layer is needed.

Truth, not shapes: input gradients (vanilla, input x gradient, SmoothGrad, Integrated Gradients,
a neuron target) equal float64 central finite differences; Grad-CAM / Grad-CAM++ equal a
computation that never touches jaxviz's layer machinery (flax's own ``perturb`` for the linen
model, a hand split of the network otherwise); guided backprop and the deconvnet equal their rule
applied by hand (the user's model code run with hand-written ReLUs swapped in); CAM == Grad-CAM *
h w on global-average-pooled linear heads; an image's result does not depend on its batch (nor
on its position in it) and equals its single-image result. Inputs are non-square everywhere
(12 x 20; ResNet-18 24 x 40).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxviz import cam as camlib
from jaxviz import saliency as sal
from jaxviz.accel import accelerate
from jaxviz.errors import JaxvizError
from jaxviz.interface.backward import NoReLUError
from jaxviz.interface import TORCHVISION, from_linen, from_nnx
from jaxviz.targets import Target
from jaxviz.testing import assert_grads_close, finite_difference_grad, random_indices, x64
from tests.conftest import make_tiny_model
from tests.user_models import NUM_CLASSES, ResidualBlock, apply_fn_model

H, W = 12, 20  # non-square everywhere
X = np.random.default_rng(0).normal(size=(2, H, W, 3))
# ResNet-18 halves the size five times: 24 x 40 leaves layer4 a 1 x 2 map
SIZE = {"resnet18": (24, 40)}
# the feature layer Grad-CAM uses (the model's default), and a neuron (layer, channel, y, x) inside
FEATURE = {"tiny": "features.4", "user_linen": "block", "user_nnx": "layers.1", "resnet18": "layer4.1"}
NEURON = {"tiny": ("features.3", 5, 2, 4), "user_linen": ("block/conv1", 3, 2, 7), "user_nnx": ("layers.0", 6, 4, 2),
          "resnet18": ("layer2.0/bn1", 7, 1, 4)}  # pre-ReLU outputs: the unit is never dead


# ResNet-18 is slow to compile and run here: its default runs check fewer techniques / points (the
# others are compositions of the same gradients, checked on the other models); the whole set runs
# under -m slow
HEAVY = {"resnet18"}


def _images(model, n=2, seed=0):
    """(n, h, w, 3) float64 normal images at the model's test size (non-square)."""
    h, w = SIZE.get(model.name, (H, W))
    return np.random.default_rng(seed).normal(size=(n, h, w, 3))


def jit(fn, optimise: bool = False):
    """``jax.jit`` without LLVM's optimisation passes: most programs here run once on tiny inputs,
    so compile time is what counts (float64 convolutions compile ~15x faster); ``optimise`` for
    those that run often enough to repay it."""
    return jax.jit(fn) if optimise else jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _float64(model):
    return jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), model.params)


# --------------------------------------------------------------------------- finite differences

def _check_input_gradients(model, neuron=None, methods=("vanilla", "inputxgrad", "smoothgrad", "integrated"),
                           points=16):
    """vanilla, input x gradient, SmoothGrad (absolute noise), Integrated Gradients and a neuron
    target against central differences in float64 (each as the gradient of a scalar function of
    the input, evaluated by plain forward passes), at ``points`` random pixels."""
    x0 = _images(model)
    with x64():
        params = _float64(model)
        x = jnp.asarray(x0)
        index = jnp.array([1, 3])
        samples, std, steps = 2, 0.3, 3
        key = jax.random.key(4)
        baseline = 0.1 * jnp.asarray(np.random.default_rng(1).normal(size=x0.shape))
        target = Target(index=neuron[1], layer=neuron[0], y=neuron[2], x=neuron[3]) if neuron else None
        alphas = (np.arange(steps) + 0.5) / steps

        def techniques(p, x):
            out = {"vanilla": sal.gradients(model, p, x, index=index)}
            if "smoothgrad" in methods:
                out["smoothgrad"] = sal.smoothgrad_gradients(model, p, x, key=key, samples=samples, noise_std=std,
                                                             index=index)
                # the noise it adds (drawn as tests/test_saliency.py checks: one key, the same for each image)
                out["noise"] = sal.smoothgrad_noise(x, key=key, samples=samples, noise_std=std)
            if "integrated" in methods:
                out["integrated"] = sal.integrated_gradients_attributions(model, p, x, baseline=baseline,
                                                                          steps=steps, index=index)
            if "inputxgrad" in methods:
                out["inputxgrad"] = sal.input_x_gradient(model, p, x, index=index)
            if target is not None:
                out["neuron"] = sal.gradients(model, p, x, target)
            return out

        # independent scalar functions: Captum-style definitions, written from the model's output
        def scalars(p, z, noise):
            pick = lambda v: jnp.take_along_axis(model.apply(p, v), index[:, None], -1).sum()  # noqa: E731
            values = {"vanilla": pick(z)}
            if "smoothgrad" in methods:  # the mean over the (fixed) noisy copies
                values["smoothgrad"] = jnp.mean(jnp.stack([pick(z + e) for e in noise]))
            if "integrated" in methods:  # the path points, moved together with z
                values["integrated"] = jnp.mean(jnp.stack([pick(baseline + a * (x - baseline) + (z - x))
                                                           for a in alphas]))
            if target is not None:
                values["neuron"] = model.activation(p, z, target.layer)[:, target.y, target.x, target.index].sum()
            return values

        def run(p, x, zs):  # one compiled call: the techniques, and every perturbed input in a lax.map
            out = techniques(p, x)
            return out, jax.lax.map(lambda z: scalars(p, z, out.get("noise")), zs)
        zs, differences = _perturbed_points(x0, random_indices(x0.shape, points, seed=2))
        got, values = jit(run)(params, x, zs)
        assert got["vanilla"].dtype == jnp.float64
        numeric = differences(values)
        want = {"vanilla": numeric["vanilla"]}
        if "inputxgrad" in methods:
            want["inputxgrad"] = x0 * numeric["vanilla"]
        if "smoothgrad" in methods:
            want["smoothgrad"] = numeric["smoothgrad"]
        if "integrated" in methods:
            want["integrated"] = (x0 - np.asarray(baseline)) * numeric["integrated"]
        if target is not None:
            want["neuron"] = numeric["neuron"]
        for name, expected in want.items():
            assert np.abs(np.asarray(got[name])).sum() > 0, name
            try:
                assert_grads_close(got[name], expected, rtol=1e-5, atol=1e-8)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None


def _perturbed_points(x, indices, eps=1e-5):
    """Central differences at the flat ``indices`` of ``x``: (the perturbed inputs (4 per index:
    steps eps and eps/10, each way), a function turning {name: f at those inputs} into {name:
    difference quotients shaped like ``x``, NaN elsewhere}).

    A ReLU network is piecewise linear: where a kink lies within ``eps`` of the point the
    difference quotient is not the derivative. Such entries (steps eps and eps/10 disagree) are
    left NaN, i.e. not compared; at most a quarter of them may be dropped.
    """
    flat = np.asarray(x, np.float64).reshape(-1)
    indices = np.asarray(indices)
    steps = np.array([eps, eps / 10])
    points = []
    for i in indices:
        for h in steps:
            for sign in (1, -1):
                z = flat.copy()
                z[i] += sign * h
                points.append(z.reshape(x.shape))

    def differences(values):
        out, dropped = {}, 0
        for name, v in values.items():
            v = np.asarray(v, np.float64).reshape(len(indices), 2, 2)  # (index, step, sign)
            quotients = (v[:, :, 0] - v[:, :, 1]) / (2 * steps)
            d, fine = quotients[:, 0], quotients[:, 1]
            smooth = np.abs(d - fine) <= 1e-6 * np.abs(d) + 1e-9
            dropped += int((~smooth).sum())
            grad = np.full(flat.size, np.nan)
            grad[indices] = np.where(smooth, d, np.nan)
            out[name] = grad.reshape(x.shape)
        assert dropped <= len(out) * len(indices) // 4, f"{dropped} finite differences crossed a kink"
        return out
    return jnp.asarray(np.stack(points)), differences


def test_central_differences_helper_agrees_with_the_scalar_one():
    x = np.random.default_rng(3).normal(size=(2, 3))
    with x64():
        zs, differences = _perturbed_points(x, np.arange(6))
        both = differences({"cube": jnp.sum(zs ** 3, axis=(1, 2)), "sin": jnp.sum(jnp.sin(zs), axis=(1, 2))})
        assert not np.isnan(both["cube"]).any()  # smooth: nothing dropped
        np.testing.assert_allclose(both["cube"], finite_difference_grad(lambda v: np.sum(v ** 3), x), rtol=1e-8)
        np.testing.assert_allclose(both["sin"], np.cos(x), rtol=1e-8)


def test_input_gradients_equal_finite_differences(any_model):
    if any_model.name in HEAVY:
        _check_input_gradients(any_model, NEURON[any_model.name], ("vanilla",), points=4)
    else:
        _check_input_gradients(any_model, NEURON[any_model.name])


@pytest.mark.slow
def test_resnet18_every_input_gradient_equals_finite_differences():
    from tests.conftest import resnet18_model
    _check_input_gradients(resnet18_model(), NEURON["resnet18"])


def test_input_gradients_of_a_plain_apply_fn_equal_finite_differences():
    _check_input_gradients(apply_fn_model())


def test_a_plain_apply_fn_says_what_needs_a_layer():
    model = apply_fn_model()
    x = jnp.asarray(X, jnp.float32)
    for fn in (camlib.grad_cam, camlib.grad_cam_plus_plus, camlib.cam, camlib.guided_grad_cam):
        with pytest.raises(JaxvizError, match="without named layers"):
            fn(model, model.params, x)
    # a bare function works too (coerced with as_model) for everything that needs no layer
    bare = sal.vanilla_saliency(model.apply_fn, model.params, x, index=jnp.array([0, 1]))
    np.testing.assert_allclose(bare, sal.vanilla_saliency(model, model.params, x, index=jnp.array([0, 1])))


# --------------------------------------------------------------------------- Grad-CAM, independently

class PerturbedLinenCNN(nn.Module):
    """tests.user_models.LinenCNN with flax's own ``perturb`` after the block (same parameters)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="stem")(x))
        x = self.perturb("block_out", ResidualBlock(name="block")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(NUM_CLASSES, name="head")(x.mean((1, 2)))


def _layer_gradient_by_hand(model, x, index):
    """(A, d logit_index / d A) at the feature layer, without jaxviz's capture/injection."""
    pick = lambda logits: jnp.take_along_axis(logits, index[:, None], -1).sum()  # noqa: E731
    if model.name == "user_linen":
        variables = model.params
        _, state = model.module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        acts = state["intermediates"]["block"]["__call__"][0]
        perturbations = jax.tree_util.tree_map(
            jnp.zeros_like, PerturbedLinenCNN().init(jax.random.key(0), x)["perturbations"])
        grads = jax.grad(lambda d: pick(PerturbedLinenCNN().apply({**variables, "perturbations": d}, x)))(
            perturbations)["block_out"]
        return acts, grads
    if model.name == "user_nnx":
        net = nnx.merge(model.graphdef, model.params)
        net.eval()
        h = jax.nn.relu(net.layers[0](nnx.relu(net.bn(net.stem(x)))))
        acts = net.layers[1](h)
        tail = lambda a: net.head(jax.nn.relu(a).mean((1, 2)))  # noqa: E731
        return acts, jax.grad(lambda a: pick(tail(a)))(acts)
    # the bundled networks: their flax module's intermediates, and the head written out
    layer = FEATURE[model.name]
    _, state = model.module.apply({"params": model.params}, x, capture_intermediates=True, mutable=["intermediates"])
    acts = state["intermediates"][layer]["__call__"][0]
    if model.name == "resnet18":  # layer4.1 -> global average pool -> fc
        fc = model.params["fc"]
        tail = lambda a: a.mean((1, 2)) @ fc["kernel"] + fc["bias"]  # noqa: E731
    else:  # classifier.0 (1x1 conv) -> ReLU -> global average pool
        head = model.params["classifier.0"]
        def tail(a):
            return jax.nn.relu(jnp.einsum("nhwc,co->nhwo", a, head["kernel"][0, 0]) + head["bias"]).mean((1, 2))
    return acts, jax.grad(lambda a: pick(tail(a)))(acts)


def test_grad_cam_equals_an_independent_computation(any_model):
    model = any_model
    x = jnp.asarray(_images(model), jnp.float32)
    h, w = x.shape[1:3]
    index = jnp.array([2, 0])
    layer = FEATURE[model.name]
    assert model.feature_layer == layer  # the default layer is the one checked here

    def run(p, x):
        return (camlib.layer_gradients(model, p, x, layer=layer, index=index),
                camlib.grad_cam(model, p, x, index=index),
                camlib.grad_cam(model, p, x, index=index, relu=False, resize=None),
                camlib.grad_cam_plus_plus(model, p, x, index=index, layer=layer))
    (acts, grads), gc, signed, plus = jit(run)(model.params, x)
    hand_acts, hand_grads = jit(lambda x: _layer_gradient_by_hand(model, x, index))(x)
    # absolute bounds scaled by each array's largest value: the two programs fuse and sum in other
    # orders, and float32 rounding of a small activation is set by the large ones it came from
    # (seen on an AMD EPYC: 2.4e-6 on an activation of 0.053 in ResNet-18)
    np.testing.assert_allclose(acts, hand_acts, rtol=1e-5, atol=1e-5 * float(np.abs(hand_acts).max()))
    np.testing.assert_allclose(grads, hand_grads, rtol=1e-4, atol=max(1e-7, 1e-5 * float(np.abs(hand_grads).max())))
    assert np.abs(np.asarray(hand_grads)).sum() > 0
    raw = jnp.einsum("nhwc,nc->nhw", hand_acts, hand_grads.mean(axis=(1, 2)))
    assert raw.shape[1:] == ((1, 2) if model.name == "resnet18" else (6, 10))  # a non-square map
    scale = float(np.abs(raw).max())
    np.testing.assert_allclose(signed, raw, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(gc, jax.image.resize(jax.nn.relu(raw), (2, h, w), "bilinear"), rtol=1e-4,
                               atol=1e-6 * scale)
    # Grad-CAM++ from the same independent A and dS/dA (pytorch-grad-cam's weights)
    a, g = np.asarray(hand_acts, np.float64), np.asarray(hand_grads, np.float64)
    denom = 2 * g ** 2 + a.sum(axis=(1, 2), keepdims=True) * g ** 3
    alpha = np.where(g != 0, g ** 2 / np.where(denom != 0, denom, 1.0), 0.0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    want = jax.image.resize(jnp.asarray(np.maximum(np.einsum("nhwc,nc->nhw", a, weights), 0), jnp.float32),
                            (2, h, w), "bilinear")
    np.testing.assert_allclose(plus, want, rtol=2e-3, atol=1e-5 * float(np.abs(want).max()))


# --------------------------------------------------------------------------- guided backprop / deconvnet by hand

def _hand_relu(rule):
    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0.0)

    def fwd(x):
        return jnp.maximum(x, 0.0), x

    def bwd(x, g):
        keep = (g > 0) & (x > 0) if rule == "guided" else g > 0
        return (jnp.where(keep, g, 0.0),)
    relu.defvjp(fwd, bwd)
    return relu


def _user_code_gradient(model, x, index, relu, monkeypatch):
    """jax.grad through the user's own model code, with every ReLU it calls swapped for ``relu``
    (traced inside the swap, so the jitted gradient keeps the hand-written rule)."""
    with monkeypatch.context() as patch:
        for owner in (jax.nn, nn, nnx):
            patch.setattr(owner, "relu", relu)
        if model.name == "user_nnx":
            def forward(v):
                net = nnx.merge(model.graphdef, model.params)
                net.eval()
                return net(v)
        elif model.name == "user_linen":
            forward = lambda v: model.module.apply(model.params, v)  # noqa: E731
        else:
            forward = lambda v: model.module.apply({"params": model.params}, v)  # noqa: E731
        return jit(jax.grad(lambda v: jnp.take_along_axis(forward(v), index[:, None], -1).sum()))(x)


@pytest.mark.parametrize("rule", ["guided", "deconv"])
def test_guided_backprop_and_deconvnet_equal_their_rule_by_hand(any_model, rule, monkeypatch):
    model = any_model
    if model.name in HEAVY and rule == "deconv":
        pytest.skip("ResNet-18's deconvnet runs under -m slow (test_resnet18_deconvnet_equals_its_rule_by_hand)")
    _check_backward_rule(model, rule, monkeypatch)


@pytest.mark.slow
def test_resnet18_deconvnet_equals_its_rule_by_hand(monkeypatch):
    from tests.conftest import resnet18_model
    _check_backward_rule(resnet18_model(), "deconv", monkeypatch)


def _check_backward_rule(model, rule, monkeypatch):
    x = jnp.asarray(_images(model), jnp.float32)
    index = jnp.array([4, 1])
    fn = sal.guided_gradients if rule == "guided" else sal.deconvnet_gradients

    def library(p, x):
        out = {"signal": fn(model, p, x, index=index)}
        if model.name not in HEAVY:  # (the test is not vacuous: the rule changes the gradient)
            out["gradient"] = sal.gradients(model, p, x, index=index)
        if rule == "guided" and model.name not in HEAVY:  # guided Grad-CAM: this signal times Grad-CAM
            out["guided-gradcam"] = camlib.guided_grad_cam_attributions(model, p, x, index=index, resize="nearest")
            out["gradcam"] = camlib.grad_cam(model, p, x, index=index, resize="nearest")
        return out
    got = jit(library)(model.params, x)
    want = _user_code_gradient(model, x, index, _hand_relu(rule), monkeypatch)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got["signal"], want, rtol=1e-4, atol=1e-6 * scale)
    if "gradient" in got:
        assert not np.allclose(got["signal"], got["gradient"], atol=1e-6 * scale)  # the rule was really applied
    if "gradcam" in got:
        expected = np.asarray(want) * np.asarray(got["gradcam"])[..., None]
        np.testing.assert_allclose(got["guided-gradcam"], expected, rtol=1e-4,
                                   atol=1e-6 * float(np.abs(expected).max()))


# --------------------------------------------------------------------------- normalisation layers are not ReLUs

class NormNet(nn.Module):
    """conv -> GroupNorm or LayerNorm -> act -> conv -> act -> GAP -> dense. flax's norms clamp their
    variance with ``jnp.maximum(0, .)``: not a ReLU for the backward rules."""
    norm: str = "group"
    act: callable = nn.relu

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), name="conv1")(x)
        x = nn.GroupNorm(num_groups=2, name="norm")(x) if self.norm == "group" else nn.LayerNorm(name="norm")(x)
        x = self.act(x)
        x = self.act(nn.Conv(8, (3, 3), strides=2, name="conv2")(x))
        return nn.Dense(NUM_CLASSES, name="head")(x.mean((1, 2)))


class NormNnx(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.norm = nnx.GroupNorm(8, num_groups=2, rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(8, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = jnp.maximum(self.norm(self.conv1(x)), 0.0)  # the user's own bare ReLU: still one
        return self.head(nnx.relu(self.conv2(x)).mean((1, 2)))


@pytest.mark.parametrize("norm", ["group", "layer", "nnx-group"])
@pytest.mark.parametrize("rule", ["guided", "deconv"])
def test_backward_rules_leave_the_variance_clamp_of_normalisation_layers_alone(norm, rule):
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    index = jnp.array([1, 3])
    hand = _hand_relu(rule)
    if norm == "nnx-group":
        net = NormNnx(nnx.Rngs(0))
        model = from_nnx(net, input_size=16, preprocessing=TORCHVISION)
        graphdef, state = nnx.split(net)

        def by_hand(v):  # the same module with only the ReLUs swapped (its norm untouched)
            hnet = nnx.merge(graphdef, state)
            h = hand(hnet.norm(hnet.conv1(v)))
            return hnet.head(hand(hnet.conv2(h)).mean((1, 2)))
    else:
        variables = NormNet(norm).init(jax.random.key(0), x)
        model = from_linen(NormNet(norm), variables, input_size=16, preprocessing=TORCHVISION)
        by_hand = lambda v: NormNet(norm, act=hand).apply(variables, v)  # noqa: E731
    xp = model.preprocess(x)
    want = jax.grad(lambda v: jnp.take_along_axis(by_hand(v), index[:, None], -1).sum())(xp)
    fn = sal.guided_gradients if rule == "guided" else sal.deconvnet_gradients
    scale = float(np.abs(want).max())
    for m in (model, accelerate(model)):
        np.testing.assert_allclose(fn(m, None, xp, index=index), want, rtol=1e-4, atol=1e-6 * scale)


def test_a_relu_that_flax_sequential_calls_is_still_a_relu():
    # partial(jnp.maximum, 0.0) is called from flax's own Sequential.__call__: only flax's
    # normalisation code is excluded, not every max(x, 0) that flax's frames call
    relu = functools.partial(jnp.maximum, 0.0)
    hand = _hand_relu("guided")

    class SeqNet(nn.Module):
        act: callable = relu

        @nn.compact
        def __call__(self, x):
            x = nn.Sequential([nn.Conv(8, (3, 3), name="conv1"), self.act])(x)
            return nn.Dense(NUM_CLASSES, name="head")(x.mean((1, 2)))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    variables = SeqNet().init(jax.random.key(0), x)
    model = from_linen(SeqNet(), variables, input_size=16, preprocessing=TORCHVISION)
    xp, index = model.preprocess(x), jnp.array([1, 3])
    want = jax.grad(lambda v: jnp.take_along_axis(SeqNet(act=hand).apply(variables, v), index[:, None], -1).sum())(xp)
    got = sal.guided_gradients(model, None, xp, index=index)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))


def test_a_normalised_network_without_relus_has_no_guided_backprop():
    x = jnp.zeros((1, 16, 16, 3))
    net = NormNet("layer", act=jnp.tanh)
    model = from_linen(net, net.init(jax.random.key(0), x), input_size=16, preprocessing=TORCHVISION)
    with pytest.raises(NoReLUError):
        sal.guided_gradients(model, None, x, index=jnp.array([0]))


# --------------------------------------------------------------------------- CAM on GAP + linear heads

class GapLinen(nn.Module):
    """conv -> ReLU in a ``features`` block -> global average pool -> dense: CAM's architecture."""

    @nn.compact
    def __call__(self, x):
        x = Features(name="features")(nn.relu(nn.Conv(6, (3, 3), strides=2, name="stem")(x)))
        return nn.Dense(NUM_CLASSES, name="head")(x.mean((1, 2)))


class Features(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(7, (3, 3))(x))


class GapNnx(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(3, 6, (3, 3), strides=2, rngs=rngs)
        self.features = nnx.Sequential(nnx.Conv(6, 7, (3, 3), rngs=rngs), nnx.relu)
        self.head = nnx.Linear(7, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.head(self.features(nnx.relu(self.stem(x))).mean((1, 2)))


def _gap_model(kind):
    if kind == "bundled":
        return make_tiny_model(1), "classifier.1"  # channels are the class maps: no weights
    if kind == "resnet18":  # layer4.1 -> avgpool -> fc: the weights are fc's kernel
        from tests.conftest import resnet18_model
        return resnet18_model(1), "layer4.1"
    if kind == "linen":
        module = GapLinen()
        return from_linen(module, module.init(jax.random.key(1), jnp.zeros((1, H, W, 3))),
                          preprocessing=TORCHVISION), "features"
    return from_nnx(GapNnx(nnx.Rngs(1)), preprocessing=TORCHVISION), "features"


@pytest.mark.parametrize("kind", ["bundled", "linen", "nnx", "resnet18"])
def test_cam_equals_grad_cam_times_hw_on_a_gap_linear_head(kind):
    model, layer = _gap_model(kind)
    x = jnp.asarray(_images(model), jnp.float32)
    index = jnp.array([3, 1])
    weights = camlib.cam_weights(model, layer=layer)
    assert (weights is None) == (kind == "bundled")
    if weights is not None:  # the head's kernel, read through the interface
        assert weights.shape == ((512, 1000) if kind == "resnet18" else (7, NUM_CLASSES))

    def run(p, x):
        return (camlib.cam(model, p, x, layer=layer, weights=weights, index=index, relu=False, resize=None),
                camlib.grad_cam(model, p, x, layer=layer, index=index, relu=False, resize=None),
                camlib.cam(model, p, x, layer=layer, weights=weights, index=index),
                camlib.grad_cam(model, p, x, layer=layer, index=index))
    cam_raw, gc_raw, cam_map, gc_map = jit(run)(model.params, x)
    h, w = cam_raw.shape[1:]
    assert (h, w) == ((1, 2) if kind == "resnet18" else (6, 10))
    np.testing.assert_allclose(cam_raw, gc_raw * (h * w), rtol=1e-4, atol=1e-5 * float(np.abs(cam_raw).max()))
    np.testing.assert_allclose(cam_map, gc_map * (h * w), rtol=1e-4, atol=1e-5 * float(np.abs(cam_map).max()))
    assert cam_map.shape == x.shape[:3] and float(np.asarray(cam_raw).max()) > 0
    if weights is not None:  # a signed class map (relu=False) really is signed
        assert float(np.asarray(cam_raw).min()) < 0


# --------------------------------------------------------------------------- batch independence

def _check_batch_independence(model, names):
    """An image's result does not depend on the rest of its batch: with the same program (batch
    of 3, one class per image), replacing the other images changes nothing for image 0, and
    permuting the batch (with its classes and per-image keys) permutes the results; and image 0
    alone gives its batch result."""
    x = jnp.asarray(_images(model, 3, seed=5), jnp.float32)
    others = jnp.asarray(_images(model, 3, seed=6), jnp.float32).at[0].set(x[0])
    index = jnp.array([0, 4, 2])
    keys = jax.random.split(jax.random.key(9), 3)
    layer = FEATURE[model.name]
    techniques = {
        "smoothgrad shared key": lambda x, i, k: sal.smoothgrad(model, model.params, x, key=jax.random.key(9),
                                                                samples=2, index=i),
        "smoothgrad per-image keys": lambda x, i, k: sal.smoothgrad(model, model.params, x, key=k, samples=2,
                                                                    index=i),
        "integrated": lambda x, i, k: sal.integrated_gradients(model, model.params, x, steps=2, index=i),
        "gradcam++": lambda x, i, k: camlib.grad_cam_plus_plus(model, model.params, x, layer=layer, index=i),
        "guided-gradcam": lambda x, i, k: camlib.guided_grad_cam(model, model.params, x, layer=layer, index=i),
    }
    f = jit(lambda x, i, k: {name: techniques[name](x, i, k) for name in names},
            optimise=model.name in HEAVY)  # three runs of ResNet-18 repay its optimisation
    batch = f(x, index, keys)
    replaced = f(others, index, keys)
    perm = np.array([2, 0, 1])
    permuted = f(x[perm], index[perm], keys[perm])
    for name, maps in batch.items():
        assert maps.shape == x.shape[:3], name
        scale = float(np.abs(np.asarray(maps)).max())
        assert scale > 0, name
        np.testing.assert_allclose(replaced[name][0], maps[0], rtol=1e-4, atol=1e-6 * scale, err_msg=name)
        assert not np.allclose(replaced[name][1:], maps[1:]), name  # the others did change
        np.testing.assert_allclose(permuted[name], np.asarray(maps)[perm], rtol=1e-4, atol=1e-6 * scale,
                                   err_msg=name)
    if model.name not in HEAVY:  # and literally: image 0 alone (one more compilation)
        single = f(x[:1], index[:1], keys[:1])
        for name, maps in batch.items():
            np.testing.assert_allclose(single[name][0], maps[0], rtol=1e-4,
                                       atol=1e-6 * float(np.abs(np.asarray(maps)).max()), err_msg=name)
    if "smoothgrad per-image keys" in batch and "smoothgrad shared key" in batch:
        assert not np.allclose(batch["smoothgrad shared key"], batch["smoothgrad per-image keys"])


BATCH_TECHNIQUES = ("smoothgrad shared key", "smoothgrad per-image keys", "integrated", "gradcam++", "guided-gradcam")


def test_an_image_result_does_not_depend_on_its_batch(any_model):
    """SmoothGrad with one shared key and with per-image keys (issue 13 item 5), Integrated
    Gradients, Grad-CAM++ and guided Grad-CAM (which contains guided backprop and Grad-CAM);
    ResNet-18: two of them (all under -m slow)."""
    heavy = any_model.name in HEAVY
    _check_batch_independence(any_model, ("smoothgrad per-image keys", "gradcam++") if heavy else BATCH_TECHNIQUES)


@pytest.mark.slow
def test_resnet18_every_technique_is_batch_independent():
    from tests.conftest import resnet18_model
    _check_batch_independence(resnet18_model(), BATCH_TECHNIQUES)


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
def test_a_class_out_of_range_is_an_error_on_any_model(any_model):
    """A concrete class beyond the model's classes gave an all-zero gradient map, a NaN Grad-CAM
    or occlusion map, or FGSM images left unchanged; now one clear error everywhere (a negative
    class counts from the end, as numpy indexing)."""
    from jaxviz import adversarial, occlusion
    m = any_model
    n = m.num_classes
    x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
    for bad in (n, -n - 1, [0, n + 4]):
        with pytest.raises(JaxvizError, match=f"out of range for {n} classes"):
            sal.vanilla_saliency(m, m.params, x, index=jnp.asarray(bad))
        with pytest.raises(JaxvizError, match=f"out of range for {n} classes"):
            camlib.grad_cam(m, m.params, x, layer=m.cam_layer or m.feature_layer, index=jnp.asarray(bad))
        with pytest.raises(JaxvizError, match=f"out of range for {n} classes"):
            occlusion.occlusion(m, m.params, x, window=8, stride=8, index=jnp.asarray(bad))
        with pytest.raises(JaxvizError, match=f"out of range for {n} classes"):
            adversarial.fgsm(m, m.params, jax.nn.sigmoid(x), jnp.broadcast_to(jnp.asarray(bad), (2,)), eps=0.1)
    last = sal.gradients(m, m.params, x, index=jnp.asarray(-1))
    np.testing.assert_allclose(last, sal.gradients(m, m.params, x, index=jnp.asarray(n - 1)), rtol=1e-6, atol=1e-8)
    for eps in (float("nan"), -0.5, 5.0):
        with pytest.raises(JaxvizError, match="eps"):
            adversarial.fgsm(m, m.params, jax.nn.sigmoid(x), jnp.asarray([0, 1]), eps=eps)


def test_wrong_images_and_baselines_are_clear_errors(any_model):
    """An NCHW batch reached the network in Grad-CAM / CAM (flax's ScopeParamShapeError) and a
    baseline of the wrong shape raised numpy's broadcasting error in IG: one JaxvizError each."""
    m = any_model
    x = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
    layer = m.cam_layer or m.feature_layer
    for fn in (lambda z: camlib.grad_cam(m, m.params, z, layer=layer),
               lambda z: camlib.grad_cam_plus_plus(m, m.params, z, layer=layer),
               lambda z: sal.vanilla_saliency(m, m.params, z)):
        with pytest.raises(JaxvizError, match=r"images must be \(N, H, W, 3\)"):
            fn(jnp.transpose(x, (0, 3, 1, 2)))
    with pytest.raises(JaxvizError, match="baseline of shape"):
        sal.integrated_gradients(m, m.params, x, baseline=jnp.ones((5, 5, 3)), steps=2)
    same = sal.integrated_gradients(m, m.params, x, baseline=jnp.ones((16, 16, 3)), steps=2)
    np.testing.assert_allclose(same, sal.integrated_gradients(m, m.params, x, baseline=jnp.ones_like(x), steps=2),
                               rtol=1e-6)
