"""Feature inversion: the normalised feature loss falls >= 10x and, from a shallow layer, the
reconstruction correlates strongly with the original; normalisation identities; an empty layer is
refused; CLI. (Any-model truth checks: tests/test_optimise_any_model.py.)"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import objectives as obj
from jaxviz.cli import main
from jaxviz.errors import JaxvizError
from jaxviz.images import load_images
from jaxviz.inversion import inversion_loss, invert, pixel_scale


def test_inversion_shallow_layer_real_squeezenet(squeezenet):
    x0 = squeezenet.preprocess(jnp.asarray(load_images(["chelsea"], 96)))
    res = invert(squeezenet, None, x0, "pool1", steps=100, lr=0.05, tv_weight=0.5)
    before, after = (np.asarray(v) for v in res.extras["feature_loss"])
    assert after[0] * 10 <= before[0], (before, after)
    r = np.corrcoef(np.asarray(res.images).ravel(), np.asarray(x0).ravel())[0, 1]
    assert r > 0.8, r


def test_normalisation_identities(tiny_model):
    x0 = jax.random.normal(jax.random.key(0), (2, 12, 16, 3))
    b = pixel_scale(x0)
    np.testing.assert_allclose(b ** 2, np.mean(np.sum(np.asarray(x0) ** 2, -1).reshape(2, -1), 1), rtol=1e-5)
    loss = inversion_loss(tiny_model, tiny_model.params, x0, "features.4", tv_weight=0.3, beta=1.5)
    # at x0 the feature term vanishes: only the normalised TV term remains
    expect = 0.3 * obj.total_variation(x0, 1.5) / (12 * 16 * b ** 1.5)
    np.testing.assert_allclose(loss(x0), expect, rtol=1e-5)
    # scaling the image and B together leaves the normalised TV^beta term unchanged
    l2 = inversion_loss(tiny_model, tiny_model.params, 3 * x0, "features.4", tv_weight=0.3, beta=1.5)
    tv_only = lambda l, x: l(x) - obj.feature_match(tiny_model, tiny_model.params, "features.4", x)(x)
    np.testing.assert_allclose(tv_only(l2, 3 * x0), tv_only(loss, x0), rtol=1e-4)


def test_inversion_tiny_batch_and_lbfgs(tiny_model):
    x0 = jax.random.uniform(jax.random.key(2), (2, 16, 20, 3), minval=-1.5, maxval=1.5)
    res = invert(tiny_model, None, x0, "features.1", steps=60, lr=0.05, tv_weight=0.0)
    before, after = res.extras["feature_loss"]
    assert np.all(np.asarray(after) * 10 <= np.asarray(before))
    res = invert(tiny_model, None, x0[:1], "features.1", steps=20, tv_weight=0.0, optimizer="lbfgs")
    before, after = res.extras["feature_loss"]
    assert float(after[0]) * 10 <= float(before[0])
    with pytest.raises(JaxvizError):
        invert(tiny_model, None, x0, "features.1", steps=0)
    with pytest.raises(JaxvizError):
        invert(tiny_model, None, x0, "features.1", optimizer="sgd")
    with pytest.raises(JaxvizError):
        invert(tiny_model, None, x0, "features.1", beta=float("nan"))


def test_empty_layer_is_refused(squeezenet):
    """Issue 13: ``invert --layer fire9`` at 16 px reported "loss 0 -> 0"; now refused."""
    x0 = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(JaxvizError, match=r"layer fire9 \(features.12\).*empty at 16x16 px.*at least 17x17 px"):
        invert(squeezenet, None, x0, "fire9", steps=1)


def test_cli_invert(squeezenet, tmp_path, capsys):
    out = tmp_path / "inv.png"
    assert main(["invert", "chelsea", "--model", "squeezenet1_1", "--layer", "pool1", "--steps", "3",
                 "--size", "32", "--out", str(out), "-q", "--npy"]) == 0
    assert np.load(tmp_path / "inv.npy").shape == (1, 32, 32, 3)
    assert main(["invert", "nosuchimage.png", "--model", "squeezenet1_1", "--layer", "pool1",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert main(["invert", "chelsea", "--model", "squeezenet1_1", "--layer", "pool1", "--tv-weight", "-1",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.npy", "inv.png"]


def test_a_reference_image_at_the_preprocessing_mean_is_one_clear_error(tiny_model):
    """Zero in model-input space (a uniform image at the preprocessing mean): the regulariser's
    normalisation 1 / B^beta was infinite and the result NaN images."""
    from jaxviz.errors import JaxvizError
    from jaxviz.inversion import invert
    x0 = np.zeros((2, 16, 16, 3), np.float32)
    x0[0] = 0.5
    with pytest.raises(JaxvizError, match=r"reference image\(s\) \[1\] are uniform"):
        invert(tiny_model, None, x0, "features.1", steps=2)


def test_all_zero_reference_features_are_one_clear_error(tiny_model):
    """The normalised feature distance divides by ||Phi(x0)||^2: zero features (here a dead first
    layer) are refused instead of giving NaN images."""
    params = jax.tree_util.tree_map(lambda p: p, tiny_model.params)
    params["features.0"] = jax.tree_util.tree_map(jnp.zeros_like, params["features.0"])
    x0 = np.full((1, 16, 16, 3), 0.3, np.float32)
    with pytest.raises(JaxvizError, match="features of reference image"):
        obj.feature_match(tiny_model, params, "features.1", x0)
    assert obj.feature_match(tiny_model, tiny_model.params, "features.1", x0) is not None


def test_an_image_inverts_exactly_as_alone_in_a_batch(tiny_model):
    # the module's promise: the pixel norm B that scales the start noise and the TV term is reduced
    # eagerly, the same bits in any batch (a jitted reduction rounded with the batch size: 2.4e-7);
    # the network's own batched convolutions may round differently, hence the tolerance
    x0 = tiny_model.preprocess(jnp.asarray(np.random.default_rng(0).uniform(size=(3, 32, 32, 3)), jnp.float32))
    layer = tiny_model.layer_names[0]
    batch = invert(tiny_model, None, x0, layer, steps=3, key=jax.random.key(3)).images
    alone = invert(tiny_model, None, x0[:1], layer, steps=3, key=jax.random.key(3)).images
    np.testing.assert_allclose(np.asarray(batch)[0], np.asarray(alone)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pixel_scale(x0))[:1], np.asarray(pixel_scale(x0[:1])))
