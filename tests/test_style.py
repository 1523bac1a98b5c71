"""Gatys losses and style transfer: Gram == einsum reference; losses and their gradients against
finite differences (float64); monotone L-BFGS descent; style weight 0 keeps the content; colour
transforms are exact where they should be."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import style
from jaxviz.errors import JaxvizError
from jaxviz.testing import assert_grads_close, finite_difference_grad, random_indices, x64


def test_gram_matches_einsum_reference_non_square_batch():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 5, 7, 4)).astype(np.float32)
    g = np.asarray(style.gram_matrix(jnp.asarray(f)))
    for n in range(3):
        flat = f[n].reshape(-1, 4).T  # C x M
        np.testing.assert_allclose(g[n], flat @ flat.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(style.gram_matrix(jnp.asarray(f), normalize=True)), g / 35, rtol=1e-6)
    one = np.asarray(style.gram_matrix(jnp.asarray(f[1:2])))  # the single-image (2-D matmul) path
    np.testing.assert_allclose(one, g[1:2], rtol=1e-5, atol=1e-5)


def test_style_layer_loss_is_gatys_formula():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((2, 3, 4, 5))
    t = rng.standard_normal((4, 6, 5))  # target image of another size
    with x64():
        e = np.asarray(style.style_layer_loss(jnp.asarray(f), style.gram_matrix(jnp.asarray(t[None]), True)[0]))
    m, c = 12, 5
    for n in range(2):
        fl = f[n].reshape(-1, c).T
        tl = t.reshape(-1, c).T
        ref = np.sum((fl @ fl.T - tl @ tl.T * m / 24) ** 2) / (4 * c * c * m * m)
        np.testing.assert_allclose(e[n], ref, rtol=1e-10)


@pytest.mark.parametrize("which", ["style", "content", "tv"])
def test_loss_gradients_match_finite_differences(which):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, 3))
    other = rng.standard_normal((2, 4, 5, 3))
    with x64():
        if which == "style":
            target = style.gram_matrix(jnp.asarray(other), True)
            f = lambda z: jnp.sum(style.style_layer_loss(z, target) * jnp.array([1.0, 2.0]))
        elif which == "content":
            f = lambda z: jnp.sum(style.content_loss(z, jnp.asarray(other)) * jnp.array([1.0, 2.0]))
        else:
            f = lambda z: jnp.sum(style.tv_loss(z) * jnp.array([1.0, 2.0]))
        numeric = finite_difference_grad(lambda z: f(jnp.asarray(z)), x, indices=random_indices(x.shape, 25))
        assert_grads_close(jax.grad(f)(jnp.asarray(x)), numeric, rtol=1e-6, atol=1e-8)
    if which == "tv":  # exact value on a hand-made image
        img = np.zeros((1, 2, 2, 1)); img[0, 0, 0, 0] = 1.0
        assert float(style.tv_loss(jnp.asarray(img))[0]) == 2.0


def test_total_loss_gradient_through_network_matches_finite_differences(tiny_model):
    rng = np.random.default_rng(3)
    with x64():
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), tiny_model.params)
        feats = style.layer_features(tiny_model, ("features.4", "features.1"))
        s = jnp.asarray(rng.standard_normal((1, 16, 16, 3)))
        x = rng.standard_normal((1, 16, 16, 3))
        content = feats(params, jnp.asarray(rng.standard_normal((1, 16, 16, 3))))[0]
        targets = style.gram_targets(lambda p, z: feats(p, z)[1:], params, [s])

        def total(z):
            f = feats(params, z)
            return jnp.sum(style.content_loss(f[0], content) + 10 * style.style_layer_loss(f[1], targets[0])
                           + 0.1 * style.tv_loss(z))
        numeric = finite_difference_grad(lambda z: total(jnp.asarray(z)), x, indices=random_indices(x.shape, 20))
        assert_grads_close(jax.grad(total)(jnp.asarray(x)), numeric, rtol=1e-5, atol=1e-7)


def test_feature_fn_runs_only_to_deepest_and_keeps_order(tiny_model):
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 16, 16, 3)), jnp.float32)
    f = style.layer_features(tiny_model, ("features.4", "features.1"))(tiny_model.params, x)
    acts = tiny_model.activations(tiny_model.params, x, ("features.1", "features.4"))
    np.testing.assert_array_equal(np.asarray(f[0]), np.asarray(acts["features.4"]))
    np.testing.assert_array_equal(np.asarray(f[1]), np.asarray(acts["features.1"]))
    # the pass stops after the deepest requested layer: the classifier head is not in the program
    jaxpr = str(jax.make_jaxpr(style.layer_features(tiny_model, ("features.1",)))(tiny_model.params, x))
    assert jaxpr.count("conv_general_dilated") == 1


def test_blended_targets_are_weighted_mean(tiny_model):
    rng = np.random.default_rng(5)
    feats = style.layer_features(tiny_model, ("features.1",))
    a, b = (jnp.asarray(rng.standard_normal((1, 16, 16, 3)), jnp.float32) for _ in range(2))
    ga = style.gram_targets(feats, tiny_model.params, [a])[0]
    gb = style.gram_targets(feats, tiny_model.params, [b])[0]
    gm = style.gram_targets(feats, tiny_model.params, [a, b], [3.0, 1.0])[0]
    np.testing.assert_allclose(np.asarray(gm), np.asarray(0.75 * ga + 0.25 * gb), rtol=1e-5, atol=1e-6)
    with pytest.raises(JaxvizError):
        style.gram_targets(feats, tiny_model.params, [a, b], [1.0])


def _images(seed=0, shape=(16, 20)):
    rng = np.random.default_rng(seed)
    return rng.random(shape + (3,)).astype(np.float32), rng.random((24, 24, 3)).astype(np.float32)


@pytest.mark.parametrize("optimizer", ["lbfgs", "lbfgs-linesearch"])
def test_style_transfer_lbfgs_decreases_loss_monotonically(tiny_model, optimizer):
    content, s = _images()
    r = style.style_transfer(tiny_model, tiny_model.params, content, [s], content_layer="features.4",
                             style_layers=("features.1", "features.4"), style_weight=1e3, tv_weight=1e-2,
                             steps=12, optimizer=optimizer)
    assert r.image.shape == (16, 20, 3)
    assert len(r.losses) == 12
    assert np.all(np.diff(r.losses) <= 1e-6 * abs(r.losses[0])), r.losses
    assert r.losses[-1] < 0.5 * r.losses[0]


def test_second_call_reuses_compiled_step_for_new_weights_and_targets(tiny_model):
    """Weights, targets and loss weights travel as data: a new style, new loss weights and even new
    network parameters must not build a new engine step (the old code baked them in as constants)."""
    import importlib
    engine = importlib.import_module("jaxviz.optimize")
    content, s = _images(2)
    kw = dict(content_layer="features.4", style_layers=("features.1",), steps=2, optimizer="lbfgs")
    style.style_transfer(tiny_model, tiny_model.params, content, [s], **kw)
    before = engine._compiled.cache_info()
    other = jax.tree_util.tree_map(lambda p: p * 1.01, tiny_model.params)
    r = style.style_transfer(tiny_model, other, content, [s[::-1]], style_weight=7.0, tv_weight=0.5, **kw)
    after = engine._compiled.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 1
    assert r.parts["tv"] > 0


def test_batch_equals_one_image_runs(tiny_model):
    """style_transfer_batch (Adam) is N independent runs: each image equals its own single run."""
    rng = np.random.default_rng(8)
    contents = rng.random((2, 16, 20, 3)).astype(np.float32)
    styles = rng.random((2, 24, 24, 3)).astype(np.float32)
    kw = dict(content_layer="features.4", style_layers=("features.1", "features.4"), style_weight=10.0,
              tv_weight=1e-2, steps=5, optimizer="adam", learning_rate=0.05)
    batch = style.style_transfer_batch(tiny_model, tiny_model.params, contents, styles, **kw)
    assert batch.images.shape == (2, 16, 20, 3) and batch.losses.shape == (5, 2)
    for i in range(2):
        one = style.style_transfer(tiny_model, tiny_model.params, contents[i], [styles[i]], **kw)
        np.testing.assert_allclose(batch.images[i], one.image, atol=2e-5)
        np.testing.assert_allclose(batch.losses[:, i], one.losses, rtol=2e-5)
    assert np.all(batch.losses[-1] < batch.losses[0])
    assert set(batch.parts) >= {"content", "style", "tv"} and batch.parts["style"].shape == (2,)
    bare = style.style_transfer_batch(tiny_model, tiny_model.params, contents, styles, final_parts=False, **kw)
    assert bare.parts == {} and np.array_equal(bare.images, batch.images)
    with pytest.raises(JaxvizError):
        style.style_transfer_batch(tiny_model, tiny_model.params, contents, styles[:1], **kw)
    with pytest.raises(JaxvizError):
        style.style_transfer_batch(tiny_model, tiny_model.params, contents, styles,
                                   **{**kw, "optimizer": "lbfgs-linesearch"})


def test_lbfgs_batch_equals_one_image_runs(tiny_model):
    """``"lbfgs"`` keeps one memory and one step scaling per image (``style.per_image``): a batch
    is N independent L-BFGS runs, image i == its own single run, for images whose losses differ by
    orders of magnitude (the plain optax L-BFGS would take one step scaling for the batch)."""
    rng = np.random.default_rng(9)
    contents = rng.random((3, 16, 20, 3)).astype(np.float32)
    styles = rng.random((3, 24, 24, 3)).astype(np.float32)
    styles[1] *= 0.05  # a much weaker style: a loss of another scale
    kw = dict(content_layer="features.4", style_layers=("features.1", "features.4"), style_weight=1e3,
              tv_weight=1e-2, steps=6, optimizer="lbfgs")
    batch = style.style_transfer_batch(tiny_model, tiny_model.params, contents, styles, **kw)
    for i in range(3):
        one = style.style_transfer(tiny_model, tiny_model.params, contents[i], [styles[i]], **kw)
        np.testing.assert_allclose(batch.losses[:, i], one.losses, rtol=1e-4)
        np.testing.assert_allclose(batch.images[i], one.image, atol=1e-4)
    assert batch.losses[-1, 0] < 0.5 * batch.losses[0, 0] and batch.losses[-1, 2] < 0.5 * batch.losses[0, 2]


def test_per_image_lbfgs_is_independent_per_image_and_plain_lbfgs_is_not():
    """On a batch of quadratics of very different scales, ``per_image(lbfgs)`` gives each row
    exactly the iterates of L-BFGS run on that row alone; one L-BFGS over the whole batch does not
    (its inner products and step scaling mix the rows)."""
    from jaxviz.optimize import lbfgs
    scales = jnp.array([1.0, 30.0, 0.02])[:, None]
    curv = jnp.linspace(0.5, 3.0, 5)[None, :]
    target = jnp.arange(15.0).reshape(3, 5) / 7.0

    def grad(x, rows):  # of sum_i s_i sum_j c_j (x_ij - t_ij)^2 / 2 over the given rows
        return scales[rows] * curv * (x - target[rows])

    def run(opt, x, rows=slice(None), steps=6):
        state = opt.init(x)
        path = []
        for _ in range(steps):
            g = grad(x, rows)
            upd, state = opt.update(g, state, x)
            x = x + upd
            path.append(x)
        return jnp.stack(path)

    x0 = jnp.zeros((3, 5))
    batched = run(style.per_image(lbfgs(line_search=False)), x0)
    for i in range(3):
        alone = run(lbfgs(line_search=False), x0[i:i + 1], slice(i, i + 1))[:, 0]
        np.testing.assert_allclose(batched[:, i], alone, rtol=1e-5, atol=1e-6)
    coupled = run(lbfgs(line_search=False), x0)
    assert not np.allclose(coupled, batched, atol=1e-3)
    assert float(jnp.abs(batched[-1] - target).max()) < 0.05  # it converges on each row (from 2.0 away)


def test_style_weight_zero_keeps_content(tiny_model):
    content, s = _images(1)
    for opt in ("lbfgs", "adam"):
        r = style.style_transfer(tiny_model, tiny_model.params, content, [s], content_layer="features.4",
                                 style_layers=("features.1",), style_weight=0.0, steps=3, optimizer=opt)
        np.testing.assert_allclose(r.image, content, atol=1e-5)
        assert r.parts["style"] == 0.0 and r.parts["content"] < 1e-6


def test_colour_transforms():
    rng = np.random.default_rng(6)
    rgb = rng.random((5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(style.yiq_to_rgb(style.rgb_to_yiq(rgb))), rgb, atol=1e-5)
    # histogram (mean/covariance) matching: result has the content's colour statistics
    content = np.clip(rng.random((30, 30, 3)) * 0.3 + np.array([0.5, 0.2, 0.1]), 0, 1).astype(np.float32)
    src = np.clip(rng.random((20, 20, 3)) * 0.4 + 0.3, 0, 1).astype(np.float32)
    out = np.asarray(style.match_color(src, content)).reshape(-1, 3)
    np.testing.assert_allclose(out.mean(0), content.reshape(-1, 3).mean(0), atol=1e-3)
    np.testing.assert_allclose(np.cov(out.T), np.cov(content.reshape(-1, 3).T), atol=1e-3)
    grey = np.asarray(style.match_luminance(src, content))
    assert np.allclose(grey[..., 0], grey[..., 1])
    yc = np.asarray(style.rgb_to_yiq(content))[..., 0]
    assert abs(grey[..., 0].mean() - yc.mean()) < 1e-3


def test_preserve_colour_luminance_keeps_content_chroma(tiny_model):
    content, s = _images(2)
    r = style.style_transfer(tiny_model, tiny_model.params, content, [s], content_layer="features.4",
                             style_layers=("features.1",), steps=3, preserve_color="luminance")
    iq_out = np.asarray(style.rgb_to_yiq(r.image))[..., 1:]
    iq_in = np.asarray(style.rgb_to_yiq(content))[..., 1:]
    inside = (r.image > 0.01).all(-1) & (r.image < 0.99).all(-1)  # clipping may change chroma
    np.testing.assert_allclose(iq_out[inside], iq_in[inside], atol=1e-4)


def test_bad_arguments(tiny_model):
    content, s = _images()
    kw = dict(content_layer="features.4", style_layers=("features.1",), steps=1)
    with pytest.raises(JaxvizError):
        style.style_transfer(tiny_model, tiny_model.params, content, [], **kw)
    with pytest.raises(JaxvizError):
        style.style_transfer(tiny_model, tiny_model.params, content, [s], optimizer="sgdx", **kw)
    with pytest.raises(JaxvizError):
        style.style_transfer(tiny_model, tiny_model.params, content[..., :2], [s], **kw)
    with pytest.raises(JaxvizError):
        style.style_transfer(tiny_model, tiny_model.params, content, [s], style_layers=("nope",),
                             content_layer="features.4", steps=1)


@pytest.mark.slow
def test_vgg19_style_transfer_small(vgg19):
    content, s = _images(3, (32, 40))
    r = style.style_transfer(vgg19, vgg19.params, content, [s], steps=5)
    assert np.all(np.diff(r.losses) <= 0) and r.losses[-1] < r.losses[0]


def test_luminance_mode_starts_at_its_own_content_target(tiny_model):
    """With colour preservation by luminance the content features come from the grey luminance
    image, so the start must be that image: with style weight 0 the content loss stays 0."""
    content, s = _images(3)
    r = style.style_transfer(tiny_model, tiny_model.params, content, [s], content_layer="features.4",
                             style_layers=("features.1",), style_weight=0.0, steps=2,
                             preserve_color="luminance")
    assert r.parts["content"] < 1e-6


def test_target_feature_passes_compile_once(tiny_model):
    """Targets are computed by one jitted function per loss: a second call with another style
    image of the same shape hits the cache (no new jax.jit wrapper, no retrace)."""
    content, s = _images(4)
    kw = dict(content_layer="features.4", style_layers=("features.1",), steps=0)
    style.style_transfer(tiny_model, tiny_model.params, content, [s], **kw)
    before = style._jitted.cache_info()
    style.style_transfer(tiny_model, tiny_model.params, content, [1.0 - s], **kw)
    after = style._jitted.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 2
