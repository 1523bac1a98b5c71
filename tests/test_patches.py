"""Maximally activating patches: crops are exact, and a patch put back at its place — in an image
that is random noise everywhere else — reproduces the recorded activation (the unit sees only its
receptive field), on the tiny model and on SqueezeNet 1.1 (fire 1x1 and 3x3 channels)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_SPEC, make_tiny_model

from jaxviz.images import load_image, save_image
from jaxviz.patches import GREY, crop_patches, patch_grid, top_patches, unit_boxes, unit_field, visible_extent
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


def test_unit_boxes_follow_the_receptive_field():
    from jaxviz.models.registry import get_spec
    spec = get_spec("squeezenet1_1")
    rf = spec.receptive_fields(224)["features.12"]
    boxes = unit_boxes(spec, "fire9", np.array([0, 3]), np.array([5, 1]), 224)
    assert tuple(boxes[0]) == rf.box(0, 5) and tuple(boxes[1]) == rf.box(3, 1)
    sizes = [rf.size for rf in (spec.receptive_fields(224)[spec.resolve_layer(n)] for n in ("fire3", "fire6", "fire9"))]
    assert sizes[0] < sizes[1] < sizes[2]  # deeper layers give larger patches


def _put_back(tile, box, image, noise):
    """``noise`` with ``tile`` pasted at ``box`` (clipped to the image)."""
    h, w = image.shape[:2]
    top, left, bottom, right = (int(v) for v in box)
    out = noise.copy()
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(bottom, h), min(right, w)
    out[t0:t1, l0:l1] = tile[t0 - top:t1 - top, l0 - left:l1 - left]
    return out


def _check_put_back(model, index, spec, layer, channels, k, rng):
    name = spec.resolve_layer(layer)
    size = index.meta["input_size"]
    tiles, values = top_patches(index, layer, channels, k=k, spec=spec)
    t = index.topk[name]
    checked = 0
    for ci, channel in enumerate(channels):
        for j in range(k):
            y, x = int(t.y[channel, j]), int(t.x[channel, j])
            box = unit_boxes(spec, name, np.array([y]), np.array([x]), size)[0]
            image = load_image(index.source(int(t.image[channel, j])), size)
            noise = rng.random(image.shape).astype(np.float32)
            placed = _put_back(tiles[ci, j], box, image, noise)
            act = model.apply(model.params, model.preprocess(jnp.asarray(placed[None])), stop=name)
            np.testing.assert_allclose(float(act[0, y, x, channel]), float(values[ci, j]), rtol=2e-4, atol=2e-5,
                                       err_msg=f"{layer} channel {channel} rank {j}")
            # and the noise did change the activation elsewhere / the image did matter here:
            full = model.apply(model.params, model.preprocess(jnp.asarray(noise[None])), stop=name)
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
        _check_put_back(model, index, TINY_SPEC, layer, [0, 5], 3, rng)


def test_patch_grid_shape(tiny_index):
    _, index = tiny_index
    rf = TINY_SPEC.receptive_fields(16)["features.4"]
    img = patch_grid(index, "features.4", [0, 1, 2], spec=TINY_SPEC)
    assert img.ndim == 3 and img.shape[2] == 3 and img.min() >= 0 and img.max() <= 1
    assert img.shape[0] == 2 * rf.size + 1  # one row of channels, each a 2x2 grid of 3 tiles


def test_squeezenet_patch_put_back_reproduces_the_activation(squeezenet, tmp_path, rng):
    """Real weights at 96 px; fire3 channel 3 is a 1x1-expand channel (smaller field), 100 a 3x3
    one; fire6 deeper. Uses the scan's recorded values."""
    sources = ["chelsea", "coffee", "astronaut", "rocket", "brick"]
    index = scan(squeezenet, sources, tmp_path / "ix", layers=["fire3", "fire6"], topk=2, batch=5, input_size=96)
    spec = squeezenet.spec
    assert unit_field(spec, "fire3", 3, 96).size < unit_field(spec, "fire3", 100, 96).size
    _check_put_back(squeezenet, index, spec, "fire3", [3, 100], 2, rng)
    _check_put_back(squeezenet, index, spec, "fire6", [7, 300], 2, rng)
    assert visible_extent(spec, "fire6", 96) <= 96
