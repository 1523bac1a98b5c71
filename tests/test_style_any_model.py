"""Gram texture and Gatys style on models jaxviz did not write (conftest ``any_model``: the bundled
tiny CNN, a user's flax.linen CNN with a residual add and BatchNorm, a user's flax.nnx CNN), with
truth checks: the Gram matrix of a layer equals an einsum over activations taken independently
(flax's ``capture_intermediates``; for nnx the submodules called by hand), the Gatys loss gradient
equals central finite differences (float64), optimisation lowers the loss, texture synthesis
runs, non-square inputs, batch == single (shared key and per-image keys), the accelerated model
gives the plain model's result, and bad layers fail in one clear line. Tiny inputs: fast."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxviz import style
from jaxviz.errors import JaxvizError
from jaxviz.interface import TORCHVISION, from_linen
from jaxviz.testing import assert_grads_close, finite_difference_grad, random_indices, x64
from jaxviz.texture import gram_texture

HW = (16, 20)  # non-square everywhere


def _layers(model) -> tuple[str, tuple[str, ...]]:
    """A content layer and two style layers: the first spatial layer and the first block output
    (a module whose submodules ran before it: the residual block of linen and ResNet-18, so that
    the losses go through a residual add), else the feature layer. Shallow, so the deep
    ResNet-18 stays cheap."""
    spatial = [n for n, s in model.layer_shapes(HW).items() if len(s) == 3]
    blocks = [n for i, n in enumerate(spatial) if any(m.startswith((n + "/", n + ".")) for m in spatial[:i])]
    content = blocks[0] if blocks else model.feature_layer
    return content, (spatial[0], content)


def _independent_activation(model, params, x, layer: str) -> np.ndarray:
    """``layer``'s output computed without jaxviz's adapters."""
    if model.name == "user_nnx":
        m = nnx.merge(model.graphdef, params)
        m.eval()
        h = nnx.relu(m.bn(m.stem(x)))
        if layer == "stem":
            return np.asarray(m.stem(x))
        h = m.layers[0](h)
        if layer == "layers.0":
            return np.asarray(h)
        return np.asarray(m.layers[1](jax.nn.relu(h)))
    variables = params if "params" in params else {"params": params}
    _, state = model.module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    node = state["intermediates"]
    for part in layer.split("/"):
        node = node[part]
    return np.asarray(node["__call__"][0])


def _images(n: int, seed: int = 0, hw=HW) -> np.ndarray:
    return np.random.default_rng(seed).random((n,) + hw + (3,)).astype(np.float32)


def test_gram_of_a_layer_equals_einsum_over_independent_activations(any_model):
    x = any_model.preprocess(jnp.asarray(_images(2)))
    for layer in _layers(any_model)[1]:
        acts = _independent_activation(any_model, any_model.params, x, layer)
        assert acts.shape[1:3] != acts.shape[2:4] or acts.shape[1] != acts.shape[2]  # non-square maps
        reference = np.einsum("nhwc,nhwd->ncd", acts, acts) / (acts.shape[1] * acts.shape[2])
        feats = style.layer_features(any_model, [layer])(any_model.params, x)[0]
        np.testing.assert_allclose(np.asarray(style.gram_matrix(feats, normalize=True)), reference,
                                   rtol=1e-5, atol=1e-5)
        # one image through the targets path (the single-image matmul) gives image 0's Gram
        target = style.gram_targets(style.layer_features(any_model, [layer]), any_model.params, [x[:1]])[0]
        np.testing.assert_allclose(np.asarray(target), reference[0], rtol=1e-5, atol=1e-5)


def test_gatys_loss_gradient_matches_finite_differences(any_model):
    content_layer, style_layers = _layers(any_model)
    rng = np.random.default_rng(1)
    with x64():
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), any_model.params)
        loss = style.gatys_loss(any_model, content_layer, style_layers)
        content, grams = loss.targets(params, jnp.asarray(rng.standard_normal((1,) + HW + (3,))),
                                      jnp.asarray(rng.standard_normal((1, 12, 14, 3))))
        data = style.gatys_data(params, grams, [0.3, 0.7], content=content, content_weight=1.0,
                                style_weight=50.0, tv_weight=0.1)
        x = rng.standard_normal((1,) + HW + (3,))
        total = jax.jit(lambda z: jnp.sum(loss(z, None, data)))
        numeric = finite_difference_grad(lambda z: total(jnp.asarray(z)), x, eps=1e-6,
                                         indices=random_indices(x.shape, 16))
        assert_grads_close(jax.grad(total)(jnp.asarray(x)), numeric, rtol=1e-5, atol=1e-8)
        parts = loss.parts(jnp.asarray(x), data)
        assert all(float(v[0]) > 0 for v in parts.values())


def test_style_transfer_lowers_the_loss_non_square(any_model):
    content_layer, style_layers = _layers(any_model)
    content, s = _images(1, 2)[0], _images(1, 3, (24, 18))[0]
    r = style.style_transfer(any_model, any_model.params, content, [s], content_layer=content_layer,
                             style_layers=style_layers, style_weight=100.0, tv_weight=1e-3, steps=6,
                             optimizer="lbfgs-linesearch")
    assert r.image.shape == HW + (3,) and r.image.min() >= 0 and r.image.max() <= 1
    assert np.all(np.diff(r.losses) <= 1e-6 * r.losses[0]) and r.losses[-1] < 0.9 * r.losses[0], r.losses
    assert r.parts["style"] > 0 and r.parts["content"] > 0


def test_gram_texture_on_any_model(any_model):
    _, style_layers = _layers(any_model)
    sample = _images(1, 4, (18, 16))[0]
    image, result = gram_texture(any_model, any_model.params, sample, HW, layers=style_layers,
                                 key=jax.random.key(0), steps=12)
    assert image.shape == HW + (3,) and 0 <= image.min() and image.max() <= 1
    assert result.losses[-1, 0] < 0.3 * result.losses[0, 0], result.losses[:, 0]
    again, _ = gram_texture(any_model, any_model.params, sample, HW, layers=style_layers,
                            key=jax.random.key(0), steps=2)
    other, _ = gram_texture(any_model, any_model.params, sample, HW, layers=style_layers,
                            key=jax.random.key(1), steps=2)
    first, _ = gram_texture(any_model, any_model.params, sample, HW, layers=style_layers,
                            key=jax.random.key(0), steps=2)
    np.testing.assert_array_equal(again, first)  # same key, same texture
    assert not np.allclose(again, other)


def test_batch_equals_single(any_model):
    """Image i of a batch (Adam, per-image targets) equals its own run; the noise start follows
    ``image_keys``: (N,) keys are per image, one key is shared by every image."""
    content_layer, style_layers = _layers(any_model)
    contents, styles = _images(2, 5), _images(2, 6, (20, 20))
    kw = dict(content_layer=content_layer, style_layers=style_layers, style_weight=10.0, tv_weight=1e-2,
              steps=3, optimizer="adam", learning_rate=0.05, init="noise")
    keys = jax.random.split(jax.random.key(7), 2)
    batch = style.style_transfer_batch(any_model, any_model.params, contents, styles, key=keys, **kw)
    assert batch.images.shape == (2,) + HW + (3,) and batch.losses.shape == (3, 2)
    for i in range(2):
        one = style.style_transfer(any_model, any_model.params, contents[i], [styles[i]], key=keys[i], **kw)
        # Adam normalises round-off in near-zero gradients (batched vs one-image Gram products)
        np.testing.assert_allclose(batch.images[i], one.image, atol=1e-3)
        np.testing.assert_allclose(batch.losses[:, i], one.losses, rtol=1e-4)
    assert not np.allclose(batch.images[0], batch.images[1], atol=1e-2)  # per-image keys differ
    # one key shared by every image: each image starts as the single run with that key does
    start = dict(kw, steps=0)
    shared = style.style_transfer_batch(any_model, any_model.params, contents, styles, key=jax.random.key(3),
                                        **start)
    alone = style.style_transfer(any_model, any_model.params, contents[1], [styles[1]], key=jax.random.key(3),
                                 **start)
    np.testing.assert_array_equal(shared.images[0], shared.images[1])
    np.testing.assert_allclose(shared.images[1], alone.image, atol=1e-6)


def test_accelerated_model_gives_the_plain_result():
    """The front ends' ``accelerate`` (fast max-pool backward, stored kernels through
    ``model.prepare_params``, XLA options) changes speed, not the result."""
    from conftest import make_tiny_model
    from jaxviz.accel import accelerate
    plain = make_tiny_model()
    fast = accelerate(plain)
    content, s = _images(1, 8)[0], _images(1, 9)[0]
    kw = dict(content_layer="features.4", style_layers=("features.1", "features.4"), steps=5, tv_weight=1e-2)
    a = style.style_transfer(plain, plain.params, content, [s], **kw)
    b = style.style_transfer(fast, fast.params, content, [s], **kw)
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-4)
    np.testing.assert_allclose(b.image, a.image, atol=1e-3)


class _DeepPools(nn.Module):
    """Five 2x2 max-pools: at 16 px the last map is 0 x 0."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        for i in range(5):
            x = nn.Sequential([lambda y: nn.max_pool(y, (2, 2), (2, 2))], name=f"pool{i + 1}")(x)
        return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1).sum(-1, keepdims=True))


def test_bad_layers_fail_in_one_clear_line(any_model):
    from tests.user_models import apply_fn_model
    content = _images(1, 10)[0]
    kw = dict(steps=1)
    with pytest.raises(JaxvizError, match="unknown layer 'stme'"):
        style.style_transfer(any_model, any_model.params, content, [content], content_layer=None,
                             style_layers=("stme",), **kw)
    head = [n for n, s in any_model.layer_shapes(HW).items() if len(s) == 1][-1]
    with pytest.raises(JaxvizError, match="needs a spatial"):
        style.style_transfer(any_model, any_model.params, content, [content], content_layer=None,
                             style_layers=(head,), **kw)
    plain = apply_fn_model()
    with pytest.raises(JaxvizError, match="named layers"):
        style.style_transfer(plain, plain.params, content, [content], **kw)
    for bad in (dict(style_weight=float("nan")), dict(learning_rate=-1.0, optimizer="adam"),
                dict(layer_weights=[float("inf"), 1.0]), dict(style_scale=float("nan"))):
        with pytest.raises(JaxvizError):
            style.style_transfer(any_model, any_model.params, content, [content],
                                 content_layer=_layers(any_model)[0], style_layers=_layers(any_model)[1],
                                 **{**kw, **bad})


def test_empty_layer_names_the_smallest_size():
    module = _DeepPools()
    model = from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))), name="deep",
                       preprocessing=TORCHVISION)
    content = _images(1, 11, (16, 16))[0]
    with pytest.raises(JaxvizError, match=r"pool5 of deep is empty at 16x16 px .*at least 32x32"):
        style.style_transfer(model, model.params, content, [content], content_layer="pool1",
                             style_layers=("pool5",), steps=1)
    with pytest.raises(JaxvizError, match=r"pool5 of deep is empty at 16x16"):
        gram_texture(model, model.params, _images(1, 12, (32, 32))[0], 16, layers=("pool5",),
                     key=jax.random.key(0), steps=1)


@pytest.mark.slow  # compiling the transform network's training step takes a while on CPU
def test_fast_style_training_on_a_user_loss_network():
    """The fast-style perceptual loss on a user's linen network (residual add, BatchNorm): the
    step runs and repeating it on its own batch lowers the loss."""
    from jaxviz import fast_style as fs
    from tests.user_models import linen_model
    model = linen_model()
    content_layer, style_layers = _layers(model)
    config = fs.FastStyleConfig(num_styles=2, width=4, res_blocks=0, size=16, batch=1, learning_rate=1e-3,
                                content_layer=content_layer, style_layers=style_layers, style_weight=1.0)
    step = fs.make_train_step(config, model, model.params, [_images(1, 13)[0], _images(1, 14)[0]])
    state = fs.init_state(config, jax.random.key(0))
    contents = jnp.asarray(_images(2, 15, (20, 20)))
    params, opt, first = step(state.params, state.opt_state, state.key, jnp.int32(0), contents)
    for _ in range(4):
        params, opt, loss = step(params, opt, state.key, jnp.int32(0), contents)
    assert np.isfinite(float(first)) and float(loss) < float(first)
