"""Feature-map grids: activations, per-map normalisation, strongest channel, layout, CLI."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import activations as A
from jaxviz.cli import main
from jaxviz.errors import JaxvizError


def test_feature_maps_equal_the_forward_pass(tiny_model, rng):
    x = jnp.asarray(rng.normal(size=(2, 16, 24, 3)), jnp.float32)  # batch 2, non-square
    acts = A.feature_maps(tiny_model, tiny_model.params, x, "features.4")
    assert acts.shape == (2, 8, 12, 8)
    # Independent computation: the flax module's own intermediates.
    _, state = tiny_model.module.apply({"params": tiny_model.params}, x, capture_intermediates=True,
                                       mutable=["intermediates"])
    np.testing.assert_allclose(acts, state["intermediates"]["features.4"]["__call__"][0], rtol=1e-6)
    # Per-image == batched.
    one = A.feature_maps(tiny_model, tiny_model.params, x[1:], "features.4")
    np.testing.assert_allclose(one[0], acts[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(JaxvizError, match="apply_fn"):
        A.feature_maps(lambda p, x: x, None, x, "features.4")


def test_normalize_maps_per_image_and_channel(rng):
    acts = rng.normal(size=(2, 3, 5, 4)).astype(np.float32) * np.array([1, 10, 100, 0.1], np.float32)
    acts[1, :, :, 2] = 7.0  # a constant map carries no spatial information -> 0
    maps = np.asarray(A.normalize_maps(jnp.asarray(acts)))
    assert maps.shape == (2, 4, 3, 5)
    a = acts[0, :, :, 1]
    np.testing.assert_allclose(maps[0, 1], (a - a.min()) / (a.max() - a.min()), atol=1e-6)
    assert np.all(maps[1, 2] == 0)
    for n, c in [(0, 0), (0, 3), (1, 1)]:
        assert maps[n, c].min() == 0 and maps[n, c].max() == pytest.approx(1.0)


def test_strongest_channel():
    acts = np.zeros((2, 4, 3, 5), np.float32)
    acts[0, 1, 2, 3] = 5.0  # image 0: channel 3 has the single largest value
    acts[0, :, :, 1] = 2.0  # ... channel 1 the largest mean
    acts[1, 0, 0, 4] = 1.0
    acts[1, 3, 2, 0] = 9.0
    assert A.strongest_channel(jnp.asarray(acts)).tolist() == [3, 0]
    assert A.strongest_channel(jnp.asarray(acts), by="mean").tolist() == [1, 0]


def test_maps_grid_layout_and_highlight(rng):
    tiles = rng.uniform(size=(5, 4, 6)).astype(np.float32)  # non-square maps
    image = A.maps_grid(tiles, highlight=4, columns=3, min_tile=8)
    # Tiles are enlarged 2x, framed by 2 px: tile c at row c // 3, column c % 3 of (12, 16) cells.
    cell_h, cell_w = 8 + 4, 12 + 4
    assert image.shape == (2 * cell_h, 3 * cell_w, 3)
    r, c = divmod(4, 3)
    inner = image[r * cell_h + 2: r * cell_h + 10, c * cell_w + 2: c * cell_w + 14, 0]
    np.testing.assert_allclose(inner, np.kron(tiles[4], np.ones((2, 2))), atol=1e-6)
    np.testing.assert_allclose(image[r * cell_h, c * cell_w], [1.0, 0.1, 0.1])  # red frame
    assert image[0, 0].tolist() == [1.0, 1.0, 1.0]  # other tiles: white


def test_activation_panel(rng):
    image = rng.uniform(size=(20, 30, 3)).astype(np.float32)
    acts = rng.normal(size=(5, 7, 10)).astype(np.float32)
    acts[2, 3, 6] = 50.0
    panel, best = A.activation_panel(image, acts)
    assert best == 6
    assert panel.ndim == 3 and panel.shape[2] == 3 and 0 <= panel.min() and panel.max() <= 1


def test_check_spatial(squeezenet):
    assert A.check_spatial(squeezenet, "fire9") == "features.12"
    with pytest.raises(JaxvizError, match="no spatial"):
        A.check_spatial(squeezenet, "classifier.3")
    with pytest.raises(JaxvizError, match="unknown layer"):
        A.check_spatial(squeezenet, "fire99")
    # Issue 13 item 4: an empty layer is refused, naming the smallest size where it is not.
    with pytest.raises(JaxvizError, match=r"fire9 \(features.12\) of squeezenet1_1 is empty .* 17 px"):
        A.check_spatial(squeezenet, "fire9", 16)
    assert A.check_spatial(squeezenet, "fire9", 17) == "features.12"


def test_cli_activations(squeezenet, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["activations", "chelsea", "--model", "squeezenet1_1", "--layer", "fire2", "--fit", "stretch",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "strongest channel" in text and out.is_file()
    # The printed channel is the argmax of the per-channel maxima.
    from jaxviz.images import load_images
    x = squeezenet.preprocess(load_images(["chelsea"], 224, "stretch"))
    acts = squeezenet.activation(squeezenet.params, x, "fire2")
    assert f"strongest channel {int(np.argmax(np.max(acts[0], axis=(0, 1))))} " in text
    for argv in (["activations", "chelsea", "--model", "squeezenet1_1", "--layer", "pool", "--out", str(tmp_path / "b.png")],
                 ["activations", "nofile.png", "--model", "squeezenet1_1", "--layer", "fire2", "--out", str(tmp_path / "b.png")],
                 ["activations", "chelsea", "--model", "squeezenet1_1", "--layer", "fire2", "--out", str(tmp_path / "no" / "b.png")]):
        assert main(argv) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "b.png").exists()
