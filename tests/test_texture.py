"""Efros–Leung truth: a periodic sample is reproduced with its period; determinism by key;
Gram synthesis through the engine lowers the Gram loss (tiny model)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.texture import efros_leung, gram_texture, relative_layer_weights, sample_neighbourhoods


def _periodic(period=(4, 5), reps=(8, 7), seed=0):
    rng = np.random.default_rng(seed)
    tile = rng.random(period + (3,)).astype(np.float32)  # all colours distinct
    return np.tile(tile, reps + (1,)), tile


def test_efros_leung_reproduces_period():
    sample, tile = _periodic()
    out = np.asarray(efros_leung(sample, (22, 27), key=jax.random.key(3), radius=2, tolerance=0.0))
    assert out.shape == (22, 27, 3)
    np.testing.assert_array_equal(out[4:], out[:-4])       # vertical period 4
    np.testing.assert_array_equal(out[:, 5:], out[:, :-5])  # horizontal period 5
    # every output pixel is a sample colour
    colours = {tuple(c) for c in tile.reshape(-1, 3)}
    assert {tuple(c) for c in out.reshape(-1, 3)} <= colours


def test_efros_leung_deterministic_by_key():
    rng = np.random.default_rng(1)
    sample = rng.random((20, 20, 3)).astype(np.float32)
    a = efros_leung(sample, 12, key=jax.random.key(0), radius=2)
    b = efros_leung(sample, 12, key=jax.random.key(0), radius=2)
    c = efros_leung(sample, 12, key=jax.random.key(1), radius=2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_sample_neighbourhoods_match_direct_indexing():
    rng = np.random.default_rng(2)
    sample = rng.random((7, 9, 3)).astype(np.float32)
    r = 2
    neigh, centre = sample_neighbourhoods(sample, r)
    # centre (y, x) = (r + a, r + b); causal neighbourhood in scan order
    a, b = 3, 2
    y, x = r + a, r + b
    row = a * (9 - 2 * r) + b
    expected = [sample[y + dy, x + dx] for dy in range(-r, 1) for dx in range(-r, r + 1) if dy < 0 or dx < 0]
    np.testing.assert_array_equal(np.asarray(neigh[row]).reshape(-1, 3), np.stack(expected))
    np.testing.assert_array_equal(np.asarray(centre[row]), sample[y, x])


def test_efros_leung_rejects_bad_input():
    with pytest.raises(JaxvizError):
        efros_leung(np.zeros((8, 8)), 8, key=jax.random.key(0))
    with pytest.raises(JaxvizError):
        efros_leung(np.zeros((4, 4, 3)), 8, key=jax.random.key(0), radius=3)


def test_gram_texture_lowers_gram_loss(tiny_model):
    rng = np.random.default_rng(0)
    sample = rng.random((16, 16, 3)).astype(np.float32)
    image, result = gram_texture(tiny_model, tiny_model.params, sample, (16, 20), layers=("features.1", "features.4"),
                                 key=jax.random.key(0), steps=15)
    assert image.shape == (16, 20, 3) and image.min() >= 0 and image.max() <= 1
    assert result.losses[-1, 0] < 0.2 * result.losses[0, 0]


def test_gram_texture_init_starts_from_the_given_image(tiny_model):
    """init replaces the white-noise start: the continued run starts no higher than the first run
    stopped (the same image, resized to the same size = unchanged), the key no longer matters, and a
    smaller init is resized to ``size`` (coarse-to-fine)."""
    rng = np.random.default_rng(0)
    sample = rng.random((16, 16, 3)).astype(np.float32)
    layers = ("features.1", "features.4")
    first, r1 = gram_texture(tiny_model, tiny_model.params, sample, (16, 20), layers=layers,
                             key=jax.random.key(0), steps=6)
    again, r2 = gram_texture(tiny_model, tiny_model.params, sample, (16, 20), layers=layers,
                             key=jax.random.key(0), steps=4, init=first)
    # losses[i] is the loss before update i: the continued run starts at (or below) where the first stopped
    assert r2.losses[0, 0] <= 1.05 * r1.losses[-1, 0]
    assert r2.losses[0, 0] < 0.5 * r1.losses[0, 0]
    other_key, _ = gram_texture(tiny_model, tiny_model.params, sample, (16, 20), layers=layers,
                                key=jax.random.key(9), steps=4, init=first)
    np.testing.assert_array_equal(again, other_key)
    bigger, _ = gram_texture(tiny_model, tiny_model.params, sample, (32, 40), layers=layers,
                             key=jax.random.key(0), steps=2, init=first)
    assert bigger.shape == (32, 40, 3)
    with pytest.raises(JaxvizError, match="init"):
        gram_texture(tiny_model, tiny_model.params, sample, 16, layers=layers, key=jax.random.key(0),
                     steps=2, init=np.full((8, 8, 3), 2.0, np.float32))


def test_relative_layer_weights_make_each_term_a_relative_gram_error(any_model):
    """w_l E_l = scale ||G - Ĝ||² / (4 ||Ĝ||²) for every layer, with Ĝ the sample's normalised Gram
    computed independently (model.activations + einsum); the weights make layers of very different
    magnitudes count alike; a zero Gram is refused."""
    import jax.numpy as jnp

    from jaxviz.style import style_layer_loss
    spatial = [n for n, sh in any_model.layer_shapes((16, 20)).items() if len(sh) == 3][:2]
    rng = np.random.default_rng(1)
    sample = rng.random((16, 20, 3)).astype(np.float32)
    other = rng.random((1, 16, 20, 3)).astype(np.float32)
    w = relative_layer_weights(any_model, any_model.params, sample, spatial, scale=3.0)
    acts = any_model.activations(any_model.params, any_model.preprocess(jnp.asarray(sample)[None]), tuple(spatial))
    mine = any_model.activations(any_model.params, any_model.preprocess(jnp.asarray(other)), tuple(spatial))
    for wl, name in zip(w, spatial):
        f = np.asarray(acts[name][0], np.float64)
        g_hat = np.einsum("hwc,hwd->cd", f, f) / (f.shape[0] * f.shape[1])
        g = np.einsum("hwc,hwd->cd", np.asarray(mine[name][0], np.float64), np.asarray(mine[name][0], np.float64))
        g /= mine[name].shape[1] * mine[name].shape[2]
        expected = 3.0 * np.sum((g - g_hat) ** 2) / (4 * np.sum(g_hat ** 2))
        got = wl * float(style_layer_loss(mine[name], jnp.asarray(g_hat, jnp.float32))[0])
        assert got == pytest.approx(expected, rel=1e-3)
    with pytest.raises(JaxvizError):
        relative_layer_weights(any_model, any_model.params, sample, ("no_such_layer",))


def test_relative_layer_weights_refuse_a_zero_gram(tiny_model):
    """A sample whose features are all zero at a layer has no relative error to weight."""
    import jax.numpy as jnp
    zero = jax.tree_util.tree_map(jnp.zeros_like, tiny_model.params)  # every feature is 0 (biases too)
    with pytest.raises(JaxvizError, match="zero"):
        relative_layer_weights(tiny_model, zero, np.full((16, 16, 3), 0.5, np.float32), ("features.0",))


def test_cli_texture_efros_end_to_end_and_bad_inputs(tmp_path, capsys):
    from PIL import Image

    from jaxviz.cli import main
    out = tmp_path / "t.png"
    assert main(["texture", "brick", "--method", "efros", "--size", "12", "--sample-size", "20",
                 "--radius", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (12, 12)
    capsys.readouterr()
    for argv in (["texture", "no_such_sample", "--out", str(tmp_path / "a.png")],
                 ["texture", "brick", "--size", "4", "--out", str(tmp_path / "b.png")],
                 ["texture", "brick", "--out", str(tmp_path / "missing" / "c.png")],
                 ["style", "chelsea", "--style", "brick", "--style-weights", "1,2", "--out", str(tmp_path / "d.png")],
                 ["style", "chelsea", "--style", "brick", "--steps", "-1", "--out", str(tmp_path / "e.png")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.png"]


def test_gram_texture_takes_params_none_as_the_models_own(tiny_model):
    # params=None used to reach the layer check unresolved: "does not run at 32x32 px"
    layers = [tiny_model.layer_names[0]]
    sample = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
    a, _ = gram_texture(tiny_model, None, sample, 16, layers=layers, key=jax.random.key(0), steps=1)
    b, _ = gram_texture(tiny_model, tiny_model.params, sample, 16, layers=layers, key=jax.random.key(0), steps=1)
    np.testing.assert_array_equal(a, b)
