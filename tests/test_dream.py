"""DeepDream: the layer's ½Σf² rises from a real image; the gradient identity; octave sizes; octaves
at which the layer is empty are refused; CLI. (Any-model truth checks: tests/test_optimise_any_model.py.)"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import objectives as obj
from jaxviz.cli import main
from jaxviz.dream import deepdream, octave_sizes
from jaxviz.errors import JaxvizError
from jaxviz.optimize import valid_range


def test_octave_sizes():
    assert octave_sizes(100, 60, 3, 2.0) == [(25, 15), (50, 30), (100, 60)]
    assert octave_sizes(32, 32, 1, 1.4) == [(32, 32)]


def test_dream_amplifies_layer_tiny(tiny_model):
    x = jax.random.uniform(jax.random.key(0), (2, 32, 40, 3), minval=-1.0, maxval=1.0)
    d = deepdream(tiny_model, None, x, "features.4", octaves=2, octave_scale=1.5, steps=6, step=0.05,
                  jitter_px=3)
    energy = obj.deepdream(tiny_model, tiny_model.params, "features.4")
    assert np.all(np.asarray(energy(d)) > 1.2 * np.asarray(energy(x)))
    lo, hi = valid_range(tiny_model)
    assert np.all(np.asarray(d) >= np.asarray(lo) - 1e-5) and np.all(np.asarray(d) <= np.asarray(hi) + 1e-5)
    assert d.shape == x.shape
    # the result stays a variation of the input (detail added, not replaced)
    assert np.corrcoef(np.asarray(d).ravel(), np.asarray(x).ravel())[0, 1] > 0.5


def test_gradient_at_layer_is_activation(tiny_model):
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    acts = tiny_model.activation(tiny_model.params, x, "features.4")
    loss_from_layer = lambda a: jnp.sum(0.5 * jnp.sum(jnp.square(a).reshape(2, -1), 1))
    np.testing.assert_array_equal(jax.grad(loss_from_layer)(acts), acts)


def test_bad_inputs(tiny_model):
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(JaxvizError):
        deepdream(tiny_model, None, x, "features.4", octaves=4, octave_scale=2.0)  # 4 px coarsest
    with pytest.raises(JaxvizError):
        deepdream(tiny_model, None, x, "nope")
    with pytest.raises(JaxvizError):
        deepdream(tiny_model, None, x[0], "features.4")


def test_octaves_with_an_empty_layer_are_refused(squeezenet):
    """Issue 13: ``dream --size 44`` (4 octaves of 1.4: the first at 16 px, where fire9 is 0x0)
    returned its input unchanged; now one error naming the sizes that work."""
    x = jnp.zeros((1, 44, 44, 3))
    with pytest.raises(JaxvizError, match=r"layer fire9 \(features.12\) of squeezenet1_1 is empty at the coarsest "
                                          r"octave \(16x16 px\); it needs at least 17x17 px: use an image of at least 47x47"):
        deepdream(squeezenet, None, x, "fire9", octaves=4, octave_scale=1.4, steps=1)
    with pytest.raises(JaxvizError, match="empty at the coarsest octave"):
        deepdream(squeezenet, None, jnp.zeros((1, 16, 16, 3)), "fire9", octaves=1, steps=1)
    # the smallest size that works: 24 / 1.4 = 17.1 -> 17 px, where fire9 is 1x1 (two octaves, not
    # four: the same rule with half the compilations)
    with pytest.raises(JaxvizError, match=r"at least 17x17 px: use an image of at least 24x24"):
        deepdream(squeezenet, None, jnp.zeros((1, 23, 23, 3)), "fire9", octaves=2, octave_scale=1.4, steps=1)
    out = deepdream(squeezenet, None, jnp.zeros((1, 24, 24, 3)), "fire9", octaves=2, octave_scale=1.4, steps=1)
    assert out.shape == (1, 24, 24, 3)


def test_cli_dream(squeezenet, tmp_path, capsys):
    out = tmp_path / "d.png"
    assert main(["dream", "chelsea", "--model", "squeezenet1_1", "--layer", "fire3", "--octaves", "2",
                 "--steps", "2", "--size", "48", "--out", str(out), "-q"]) == 0
    from PIL import Image
    assert Image.open(out).size == (48, 48)
    for bad in (["--octaves", "0"], ["--octave-scale", "nan"], ["--layer", "fire9", "--size", "44"]):
        argv = ["dream", "chelsea", "--model", "squeezenet1_1", "--layer", "fire3", *bad,
                "--out", str(tmp_path / "x.png")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["d.png"]
