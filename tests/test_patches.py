"""Maximally activating patches: crops are exact, and a patch put back at its place — in an image
that is random noise everywhere else — reproduces the recorded activation (the unit sees only its
receptive field), on the tiny model and on SqueezeNet 1.1 (fire 1x1 and 3x3 channels). Measured
receptive fields (gradient support) equal the declared ones, border and offset cases included.
Deconvnet reconstructions equal Zeiler & Fergus's rule composed by hand and are the unit signals cut
at the patch boxes (zero outside them)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_model

from jaxviz.errors import JaxvizError
from jaxviz.images import load_image, save_image
from jaxviz.models import bundled_model
from jaxviz.models.kinds import Conv, GlobalAvgPool, MaxPool, ReLU
from jaxviz.models.squeezenet import Fire
from jaxviz.models.registry import ModelSpec, init_params
from jaxviz.patches import (GREY, channel_fields, crop_patches, layer_field, measured_field, measured_fields,
                            patch_grid, signal_image, top_patches, top_reconstructions, unit_boxes, unit_signals,
                            visible_extent)
from jaxviz.scan_index import collect_sources, index_images, scan


def test_crop_patches_matches_numpy_with_grey_outside():
    rng = np.random.default_rng(0)
    images = rng.random((4, 10, 14, 3)).astype(np.float32)  # non-square
    tops, lefts, size = np.array([-3, 0, 6, -20]), np.array([-2, 9, 5, 30]), 7
    got = np.asarray(crop_patches(jnp.asarray(images), jnp.asarray(tops), jnp.asarray(lefts), size))
    for img, t, l, tile in zip(images, tops, lefts, got):
        want = np.full((size, size, 3), GREY, np.float32)
        for i in range(size):
            for j in range(size):
                if 0 <= t + i < 10 and 0 <= l + j < 14:
                    want[i, j] = img[t + i, l + j]
        np.testing.assert_array_equal(tile, want)


def test_unit_boxes_follow_the_receptive_field(squeezenet):
    rf = squeezenet.receptive_fields(224)["features.12"]
    assert layer_field(squeezenet, "fire9", 224) == rf
    boxes = unit_boxes(squeezenet, "fire9", np.array([0, 3]), np.array([5, 1]), 224)
    assert tuple(boxes[0]) == rf.box(0, 5) and tuple(boxes[1]) == rf.box(3, 1)
    sizes = [layer_field(squeezenet, n, 224).size for n in ("fire3", "fire6", "fire9")]
    assert sizes[0] < sizes[1] < sizes[2]  # deeper layers give larger patches


# A bundled network with every border case of the geometry: an unpadded stride-2 conv (odd sizes
# leave the last row unseen), a ceil-mode max-pool (its last window hangs off the map), a fire
# module (1x1 channels see less than 3x3 ones) and padded convs (negative offsets).
EDGE_STAGES = (
    Conv("features.0", 6, 3, 2), ReLU("features.1"), MaxPool("features.2", 3, 2, ceil_mode=True),
    Fire("features.3", 4, 5, 5), Conv("features.4", 6, 3, 1, 1),
    ReLU("features.5"), Conv("classifier.0", 3, 1), GlobalAvgPool("classifier.1"),
)
EDGE_SPEC = ModelSpec(name="edge", description="border cases", stages=EDGE_STAGES,
                      preprocessing=make_tiny_model().preprocessing, input_size=24, num_classes=3,
                      feature_layer="features.5")


@pytest.fixture(scope="module")
def edge_model():
    import jax
    params = init_params(EDGE_SPEC, seed=4)
    params = jax.tree_util.tree_map_with_path(lambda path, p: p + 0.05 if path[-1].key == "bias" else p, params)
    return bundled_model(EDGE_SPEC, params)


@pytest.mark.parametrize("size", [24, 27, (22, 30)])
def test_measured_fields_equal_declared_on_edge_cases(edge_model, size):
    """Gradient support == the declared geometry, for every spatial layer: offsets (padding, none),
    a non-dividing stride (27 px), the ceil-mode pool, non-square inputs."""
    declared = edge_model.receptive_fields(size)
    spatial = [n for n, s in edge_model.layer_shapes(size).items() if len(s) == 3 and n in declared]
    assert "features.2" in spatial and "features.3" in spatial
    assert measured_fields(edge_model, edge_model.params, spatial, size) == {n: declared[n] for n in spatial}
    # What the last unit sees: declared walk == measured gradient support.
    from jaxviz.patches import _measure
    measured = _measure(edge_model, edge_model.params, tuple(spatial), edge_model.input_hw(size))
    for n in spatial:
        assert visible_extent(edge_model, n, size) == measured[n][2], n
    if size == 27:  # 3x3/2 without padding at 27 px: 13 units reach row 26; the ceil pool does not add any
        assert visible_extent(edge_model, "features.0", 27) == (27, 27)
    if size == 24:  # 3x3/2 without padding at 24 px: the last row and column are never seen
        assert visible_extent(edge_model, "features.0", 24) == (23, 23)


def test_fire_1x1_channels_see_the_previous_layer_field(edge_model):
    """A fire module's expand1x1 channels (0..4) see what the squeeze saw — the max-pool's field —
    and its expand3x3 channels (5..9) the whole fire field."""
    fields = edge_model.receptive_fields(24)
    own = channel_fields(edge_model, "features.3", [0, 4, 5, 9], 24)
    assert own[0] == own[4] == fields["features.2"]
    assert own[5] == own[9] == fields["features.3"]
    assert measured_field(edge_model, edge_model.params, "features.3", 24, channel=2) == fields["features.2"]


def test_measured_field_errors(edge_model):
    with pytest.raises(JaxvizError, match="no spatial output"):
        measured_field(edge_model, edge_model.params, "classifier.1", 24)
    with pytest.raises(JaxvizError, match="unknown layer"):
        measured_field(edge_model, edge_model.params, "features.9", 24)


def _put_back(tile, box, image, noise):
    """``noise`` with ``tile`` pasted at ``box`` (clipped to the image)."""
    h, w = image.shape[:2]
    top, left, bottom, right = (int(v) for v in box)
    out = noise.copy()
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(bottom, h), min(right, w)
    out[t0:t1, l0:l1] = tile[t0 - top:t1 - top, l0 - left:l1 - left]
    return out


def _check_put_back(model, index, layer, channels, k, rng):
    name = model.resolve_layer(layer)
    size = index.meta["input_size"]
    tiles, values = top_patches(model, index, layer, channels, images=index_images(index, model), k=k)
    t = index.topk[name]
    checked = 0
    for ci, channel in enumerate(channels):
        for j in range(k):
            y, x = int(t.y[channel, j]), int(t.x[channel, j])
            box = unit_boxes(model, name, np.array([y]), np.array([x]), size)[0]
            image = load_image(index.source(int(t.image[channel, j])), size, index.meta["fit"], model.eval_transform)
            noise = rng.random(image.shape).astype(np.float32)
            placed = _put_back(tiles[ci, j], box, image, noise)
            act = model.activation(model.params, model.preprocess(jnp.asarray(placed[None])), name)
            np.testing.assert_allclose(float(act[0, y, x, channel]), float(values[ci, j]), rtol=2e-4, atol=2e-5,
                                       err_msg=f"{layer} channel {channel} rank {j}")
            # and the noise did change the activation elsewhere / the image did matter here:
            full = model.activation(model.params, model.preprocess(jnp.asarray(noise[None])), name)
            checked += not np.isclose(float(full[0, y, x, channel]), float(values[ci, j]), rtol=1e-3)
    assert checked > 0, "the test is vacuous: noise alone gives the same activations"


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for i in range(7):
        save_image(rng.random((16 + i, 20, 3)), root / f"{i}.png")
    model = make_tiny_model(3)
    return model, scan(model, collect_sources([root]), root / "ix", layers=["features.1", "features.4"],
                       topk=3, batch=4)


def test_tiny_patch_put_back_reproduces_the_activation(tiny_index, rng):
    model, index = tiny_index
    for layer in ("features.1", "features.4"):
        _check_put_back(model, index, layer, [0, 5], 3, rng)


def test_top_patches_take_the_photographs_as_arrays(tiny_index):
    """The technique opens no file: a plain dict (or a callable) of arrays gives the same tiles as
    the index's loader; an image missing from it, or of another size, is refused in one line."""
    model, index = tiny_index
    layer, channels = "features.4", [0, 5]
    loaded = index_images(index, model)
    arrays = {int(i): np.array(loaded[int(i)]) for i in index.indices}
    want, values = top_patches(model, index, layer, channels, images=loaded, k=3)
    for images in (arrays, arrays.__getitem__):
        got, got_values = top_patches(model, index, layer, channels, images=images, k=3)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_values, values)
    needed = int(index.topk[layer].image[0, 0])
    with pytest.raises(JaxvizError, match=f"image {needed} .* not among the images given"):
        top_patches(model, index, layer, [0], images={i: a for i, a in arrays.items() if i != needed}, k=1)
    with pytest.raises(JaxvizError, match="expected"):
        top_patches(model, index, layer, [0], images={i: a[:-1] for i, a in arrays.items()}, k=1)


def test_patch_grid_shape(tiny_index):
    model, index = tiny_index
    rf = model.receptive_fields(16)["features.4"]
    img = patch_grid(model, index, "features.4", [0, 1, 2], images=index_images(index, model))
    assert img.ndim == 3 and img.shape[2] == 3 and img.min() >= 0 and img.max() <= 1
    assert img.shape[0] == 2 * rf.size + 1  # one row of channels, each a 2x2 grid of 3 tiles


def _hand_deconv(model, images01, units):
    """Zeiler & Fergus's deconvnet for a unit of the tiny model's features.4, composed by hand:
    the layers' own forward pieces give the linear maps (vjp of a convolution = its transposed
    convolution, vjp of the max-pool at the forward input = unpooling through the switches), and
    the ReLUs are applied to the signal: relu(signal), whatever the forward pass did."""
    p = model.params

    def conv3(x0, a):  # features.2 -> features.3 (a convolution)
        return model.run(p, x0, capture=("features.3",), inject={"features.2": a}, output=False)[1]["features.3"]

    def pool(x0, a):  # features.1 -> features.2 (the max-pool)
        return model.run(p, x0, capture=("features.2",), inject={"features.1": a}, output=False)[1]["features.2"]

    def conv0(im):  # image -> features.0 (preprocessing and the first convolution)
        return model.activation(p, model.preprocess(im), "features.0")

    out = []
    for img, (y, x, c) in zip(images01, units):
        img = jnp.asarray(img[None])
        x0 = model.preprocess(img)
        acts = model.activations(p, x0, ("features.1", "features.2", "features.4"))
        sig = jnp.zeros_like(acts["features.4"]).at[0, y, x, c].set(1.0)
        sig = jax.nn.relu(sig)  # features.4 (ReLU): on the signal
        sig = jax.vjp(partial(conv3, x0), acts["features.2"])[1](sig)[0]  # transposed convolution
        sig = jax.vjp(partial(pool, x0), acts["features.1"])[1](sig)[0]  # unpooling through the switches
        sig = jax.nn.relu(sig)  # features.1 (ReLU): on the signal
        sig = jax.vjp(conv0, img)[1](sig)[0]  # transposed first convolution, then the preprocessing
        out.append(np.asarray(sig[0]))
    return np.stack(out)


def test_unit_signals_deconv_equals_the_rule_composed_by_hand():
    model = make_tiny_model(4)
    rng = np.random.default_rng(3)
    images = rng.random((3, 16, 16, 3)).astype(np.float32)
    units = np.array([[3, 4, 0], [7, 0, 5], [0, 7, 2]], np.int32)  # one unit per image, corners included
    got = np.asarray(unit_signals(model, model.params, jnp.asarray(images), "features.4", jnp.asarray(units)))
    want = _hand_deconv(model, images, units)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # not vacuous: the deconvnet differs from the true gradient, which it must not equal
    true = np.asarray(unit_signals(model, model.params, jnp.asarray(images), "features.4", jnp.asarray(units),
                                   rule="gradient"))
    assert np.abs(got - true).max() > 1e-3 * np.abs(got).max()
    # batch == single: image 1 alone gives its own signal
    one = np.asarray(unit_signals(model, model.params, jnp.asarray(images[1:2]), "features.4", jnp.asarray(units[1:2])))
    np.testing.assert_allclose(one[0], got[1], rtol=1e-5, atol=1e-7)


def test_unit_signals_errors(tiny_model):
    x = jnp.zeros((2, 16, 16, 3))
    with pytest.raises(JaxvizError, match="rule"):
        unit_signals(tiny_model, tiny_model.params, x, "features.4", jnp.zeros((2, 3), jnp.int32), rule="lrp")
    with pytest.raises(JaxvizError, match=r"\(2, 3\)"):
        unit_signals(tiny_model, tiny_model.params, x, "features.4", jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(JaxvizError, match="outside layer features.4"):
        unit_signals(tiny_model, tiny_model.params, x, "features.4", jnp.asarray([[0, 0, 0], [8, 0, 0]]))
    with pytest.raises(JaxvizError, match="spatial"):
        unit_signals(tiny_model, tiny_model.params, x, "classifier.2", jnp.zeros((2, 3), jnp.int32))


def test_top_reconstructions_are_the_unit_signals_cut_at_the_patch_boxes(tiny_index):
    """Tile [c, j] is the deconvnet signal of the channel's j-th top unit, cut at the same box as
    its patch; the signal is zero outside that box (a unit depends on its receptive field only)."""
    model, index = tiny_index
    layer, channels, size = "features.4", [0, 5], index.meta["input_size"]
    for batch in (4, 16):  # padded last batch, and one batch
        images = index_images(index, model)
        recon, values = top_reconstructions(model, index, layer, channels, images=images, k=3, batch=batch)
        _, patch_values = top_patches(model, index, layer, channels, images=images, k=3)
        np.testing.assert_array_equal(values, patch_values)
        t = index.topk[layer]
        rf = layer_field(model, layer, size)
        assert recon.shape == (2, 3, rf.size, rf.size, 3)
        for ci, channel in enumerate(channels):
            for j in range(3):
                y, x = int(t.y[channel, j]), int(t.x[channel, j])
                image = load_image(index.source(int(t.image[channel, j])), size, index.meta["fit"], model.eval_transform)
                full = np.asarray(unit_signals(model, model.params, jnp.asarray(image[None]), layer,
                                               jnp.asarray([[y, x, channel]])))[0]
                top, left, bottom, right = (int(v) for v in unit_boxes(model, layer, [y], [x], size)[0])
                want = np.zeros((rf.size, rf.size, 3), np.float32)
                t0, l0, t1, l1 = max(top, 0), max(left, 0), min(bottom, size), min(right, size)
                want[t0 - top:t1 - top, l0 - left:l1 - left] = full[t0:t1, l0:l1]
                np.testing.assert_allclose(recon[ci, j], want, rtol=1e-5, atol=1e-7)
                outside = full.copy()
                outside[t0:t1, l0:l1] = 0
                assert np.abs(outside).max() == 0 and np.abs(want).max() > 0


def test_signal_image():
    sig = np.array([[[-2.0, 0.0, 1.0]]], np.float32)
    img = signal_image(sig, percentile=100)
    np.testing.assert_allclose(img, [[[0.0, 0.5, 0.75]]])
    np.testing.assert_array_equal(signal_image(np.zeros((2, 2, 3))), np.full((2, 2, 3), 0.5, np.float32))


def test_squeezenet_patch_put_back_reproduces_the_activation(squeezenet, tmp_path, rng):
    """Real weights at 96 px; fire3 channel 3 is a 1x1-expand channel (smaller field), 100 a 3x3
    one; fire6 deeper. Uses the scan's recorded values."""
    sources = ["chelsea", "coffee", "astronaut", "rocket", "brick"]
    index = scan(squeezenet, sources, tmp_path / "ix", layers=["fire3", "fire6"], topk=2, batch=5, input_size=96)
    own = channel_fields(squeezenet, "fire3", [3, 100], 96)
    assert own[3] == squeezenet.receptive_fields(96)["features.3"]  # what fire2 (its input) saw
    assert own[100] == squeezenet.receptive_fields(96)["features.4"]
    _check_put_back(squeezenet, index, "fire3", [3, 100], 2, rng)
    _check_put_back(squeezenet, index, "fire6", [7, 300], 2, rng)
    # conv1 is 3x3/2 without padding: at 96 px its 47 units reach row 94, row 95 is never seen
    assert visible_extent(squeezenet, "fire6", 96) == (95, 95)


@pytest.mark.slow
def test_squeezenet_measured_fields_equal_declared(squeezenet):
    """Real weights, every spatial stage at 96 px (fields up to 207 px: the canvas grows)."""
    declared = squeezenet.receptive_fields(96)
    spatial = [n for n, s in squeezenet.layer_shapes(96).items() if len(s) == 3 and n in declared]
    assert measured_fields(squeezenet, squeezenet.params, spatial, 96) == {n: declared[n] for n in spatial}
