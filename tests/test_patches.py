"""Maximally activating patches: crops are exact, and a patch put back at its place — in an image
that is random noise everywhere else — reproduces the recorded activation (the unit sees only its
receptive field), on the tiny model and on SqueezeNet 1.1 (fire 1x1 and 3x3 channels). Measured
receptive fields (gradient support) equal the declared ones, border and offset cases included."""
from __future__ import annotations

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
                            patch_grid, top_patches, unit_boxes, visible_extent)
from jaxviz.scan import collect_sources, scan


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
    tiles, values = top_patches(model, index, layer, channels, k=k)
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


def test_patch_grid_shape(tiny_index):
    model, index = tiny_index
    rf = model.receptive_fields(16)["features.4"]
    img = patch_grid(model, index, "features.4", [0, 1, 2])
    assert img.ndim == 3 and img.shape[2] == 3 and img.min() >= 0 and img.max() <= 1
    assert img.shape[0] == 2 * rf.size + 1  # one row of channels, each a 2x2 grid of 3 tiles


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
