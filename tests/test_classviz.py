"""Class and channel visualisation: the target score rises by a large factor and becomes the top
class on the real SqueezeNet; channel activations rise; sizes with an empty layer are refused with
the smallest size that works; the CLI end to end. (Any-model truth checks:
tests/test_optimise_any_model.py.)"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.classviz import channel_visualization, class_visualization, noise_init, to_rgb
from jaxviz.cli import main
from jaxviz.errors import JaxvizError
from jaxviz.optimize import valid_range


def test_class_visualization_real_squeezenet(squeezenet):
    classes = jnp.array([130, 76])  # flamingo, tarantula: optimised together
    res = class_visualization(squeezenet, None, classes, size=112, steps=50, key=jax.random.key(0))
    start = noise_init(squeezenet, jax.random.fold_in(jax.random.key(0), 12345), 2, 112)
    np.testing.assert_array_equal(np.asarray(start[0]), np.asarray(start[1]))  # one key: the same start
    before = squeezenet.apply(squeezenet.params, start)[jnp.arange(2), classes]
    logits = squeezenet.apply(squeezenet.params, res.images)
    after = logits[jnp.arange(2), classes]
    assert np.all(np.asarray(after) > 10 * np.maximum(np.asarray(before), 1.0)), (before, after)
    np.testing.assert_array_equal(jnp.argmax(logits, -1), classes)
    lo, hi = valid_range(squeezenet)
    x = np.asarray(res.images)
    assert np.all(x >= np.asarray(lo) - 1e-5) and np.all(x <= np.asarray(hi) + 1e-5)
    assert res.losses.shape == (50, 2)


def test_class_visualization_from_real_image_and_channel(tiny_model, squeezenet):
    # from a given init (e.g. a real image): the score rises from where it starts
    init = jax.random.uniform(jax.random.key(1), (2, 20, 24, 3), minval=-1.0, maxval=1.0)
    res = class_visualization(tiny_model, None, [3, 0], init=init, steps=15, lr=2.0, jitter_px=2,
                              blur_every=5, clip_fraction=0.05)
    s0 = tiny_model.apply(tiny_model.params, init)[jnp.arange(2), jnp.array([3, 0])]
    s1 = tiny_model.apply(tiny_model.params, res.images)[jnp.arange(2), jnp.array([3, 0])]
    assert np.all(np.asarray(s1) > np.asarray(s0))
    for param in ("fourier", "pixels"):
        r = channel_visualization(tiny_model, None, "features.4", [1, 6], size=(16, 20), steps=12, lr=0.05,
                                  parameterization=param, jitter_px=2)
        assert np.all(r.losses[-1] < r.losses[0]), param  # loss = -activation decreases
        assert r.images.shape == (2, 16, 20, 3)
        rgb = to_rgb(tiny_model, r.images)
        assert rgb.min() >= 0 and rgb.max() <= 1


def test_empty_layer_sizes_are_refused_with_the_smallest_size(squeezenet):
    """Issue 13: at 16 px SqueezeNet's maps from features.8 on are 0x0 (classviz printed "score
    nan", neuron "activation nan"); now one clear error naming the smallest size that works."""
    assert squeezenet.smallest_input("fire9") == 17
    with pytest.raises(JaxvizError, match=r"empty layers at 16x16 px \(from features.8 on.*at least 17x17 px"):
        class_visualization(squeezenet, None, [1], size=16, steps=1)
    with pytest.raises(JaxvizError, match=r"layer fire9 \(features.12\) of squeezenet1_1 is empty at 16x16 px.*at least 17x17 px"):
        channel_visualization(squeezenet, None, "fire9", [0], size=16, steps=1)
    with pytest.raises(JaxvizError, match=r"empty at 16x40 px"):  # non-square: the short side decides
        channel_visualization(squeezenet, None, "fire9", [0], size=(16, 40), steps=1)


def test_bad_inputs(tiny_model):
    with pytest.raises(JaxvizError):
        class_visualization(tiny_model, None, [7], steps=2)  # tiny model has 5 classes
    with pytest.raises(JaxvizError):
        channel_visualization(tiny_model, None, "features.4", [8], steps=2)  # 8 channels: 0..7
    with pytest.raises(JaxvizError):
        channel_visualization(tiny_model, None, "nope", [0], steps=2)
    with pytest.raises(JaxvizError):
        class_visualization(tiny_model, None, [1], init=jnp.zeros((2, 16, 16, 3)), steps=2)
    with pytest.raises(JaxvizError):
        class_visualization(tiny_model, None, [1], lr=float("nan"), steps=2)
    with pytest.raises(JaxvizError, match="unit"):
        channel_visualization(tiny_model, None, "features.4", [1], size=16, unit=(8, 0), steps=2)  # map 8x8


def test_cli_classviz_and_neuron(squeezenet, tmp_path, capsys):
    out = tmp_path / "c.png"
    assert main(["classviz", "--model", "squeezenet1_1", "--target", "flamingo", "1", "--steps", "3",
                 "--size", "32", "--out", str(out), "--npy", "-q"]) == 0
    arr = np.load(tmp_path / "c.npy")
    assert arr.shape == (2, 32, 32, 3) and arr.min() >= 0 and arr.max() <= 1
    from PIL import Image
    assert Image.open(out).size == (2 * 32 + 2, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "c.png"]
    out2 = tmp_path / "n.png"
    capsys.readouterr()
    assert main(["neuron", "--model", "squeezenet1_1", "--layer", "fire2", "--channel", "3", "--steps", "2",
                 "--size", "32", "--out", str(out2), "-q"]) == 0
    assert Image.open(out2).size == (32, 32)
    assert "features.3 channel 3 mean: activation" in capsys.readouterr().out
    assert main(["neuron", "--model", "squeezenet1_1", "--layer", "fire2", "--channel", "3", "--unit", "2", "1",
                 "--steps", "2", "--size", "32", "--out", str(out2), "-q"]) == 0
    assert "features.3 channel 3 unit (2, 1): activation" in capsys.readouterr().out  # the unit, not the mean


@pytest.mark.parametrize("argv", [
    ["classviz", "--target", "notaclass", "--out", "{tmp}/x.png"],
    ["classviz", "--target", "1", "--steps", "0", "--out", "{tmp}/x.png"],
    ["classviz", "--target", "1", "--out", "{tmp}/missing/x.png"],
    ["classviz", "--target", "1", "--out", "{tmp}/x.jpg"],
    ["neuron", "--layer", "fire2", "--channel", "999", "--out", "{tmp}/x.png"],
    ["neuron", "--layer", "nolayer", "--channel", "1", "--out", "{tmp}/x.png"],
    ["neuron", "--layer", "fire9", "--channel", "1", "--size", "16", "--out", "{tmp}/x.png"],
    ["classviz", "--target", "1", "--size", "16", "--out", "{tmp}/x.png"],
    ["classviz", "--target", "1", "--lr", "nan", "--out", "{tmp}/x.png"],
    ["classviz", "--target", "1", "--blur-sigma", "nan", "--out", "{tmp}/x.png"],
    ["classviz", "--target", "1", "--size", "100000", "--out", "{tmp}/x.png"],
])
def test_cli_bad_inputs_exit_2(squeezenet, tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--model", "squeezenet1_1", "--steps", "1"] \
        if "--steps" not in argv else [a.format(tmp=tmp_path) for a in argv] + ["--model", "squeezenet1_1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err
    assert list(tmp_path.iterdir()) == []
