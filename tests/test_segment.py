"""Truth tests for jaxviz.segment (min cut vs brute force, a synthetic disc) and `jaxviz segment`."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxviz.errors import JaxvizError
import jaxviz.segment as segment_module
from jaxviz.segment import _fit_int32, grid_edges, mask_overlay, min_cut, saliency_seeds, segment_from_saliency


@pytest.mark.parametrize("seed", range(6))
def test_min_cut_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    p = 8
    source, sink = rng.integers(0, 12, p), rng.integers(0, 12, p)
    edges = np.array([(i, j) for i in range(p) for j in range(i + 1, p) if rng.random() < 0.5]).reshape(-1, 2)
    weights = rng.integers(0, 7, len(edges))

    def energy(on_source):
        return (sink[on_source].sum() + source[~on_source].sum()
                + weights[on_source[edges[:, 0]] != on_source[edges[:, 1]]].sum())

    best = min(energy(np.array(bits, bool)) for bits in itertools.product([False, True], repeat=p))
    labels, value = min_cut(source, sink, edges, weights)
    assert value == best
    assert energy(labels) == best


def test_grid_edges_connect_exactly_the_neighbours():
    for neighbours, offsets in [(4, {(0, 1), (1, 0)}), (8, {(0, 1), (1, 0), (1, 1), (1, -1)})]:
        h, w = 4, 5
        edges, dists = grid_edges(h, w, neighbours)
        got = {tuple(sorted((int(a), int(b)))) for a, b in edges}
        want = {tuple(sorted((y * w + x, (y + dy) * w + x + dx))) for y in range(h) for x in range(w)
                for dy, dx in offsets if 0 <= y + dy < h and 0 <= x + dx < w}
        assert got == want and len(edges) == len(want)
        ya, xa = np.divmod(edges[:, 0], w)
        yb, xb = np.divmod(edges[:, 1], w)
        np.testing.assert_allclose(dists, np.hypot(ya - yb, xa - xb))


def _disc_scene(h=90, w=130, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 40) ** 2 + (xx - 75) ** 2 < 28 ** 2
    image = np.where(disc[..., None], [0.85, 0.25, 0.2], [0.2, 0.45, 0.75]) + rng.normal(0, 0.06, (h, w, 3))
    saliency = 0.6 * disc + rng.random((h, w))  # a noisy disc
    return np.clip(image, 0, 1).astype(np.float32), saliency.astype(np.float32), disc


@pytest.mark.parametrize("neighbours", [4, 8])
def test_disc_is_segmented_from_a_noisy_saliency_map(neighbours):
    image, saliency, disc = _disc_scene()
    mask = segment_from_saliency(image, saliency, iterations=3, neighbours=neighbours)
    assert mask.shape == disc.shape and mask.dtype == bool
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou >= 0.9, iou


def test_downsampled_cut_is_upsampled_to_the_image():
    image, saliency, disc = _disc_scene(180, 260, seed=1)
    mask = segment_from_saliency(image, saliency, iterations=2, max_side=64)
    assert mask.shape == disc.shape
    assert (mask & disc).sum() / (mask | disc).sum() >= 0.85


def test_full_resolution_cut_fits_scipys_int32():
    """At 224 x 224 on the full-resolution grid the capacities overflowed int32 (ValueError):
    unaries are now capped at the hard-seed cost and the flow bound checked, scaled if needed."""
    image, saliency, disc = _disc_scene(224, 224, seed=2)
    mask = segment_from_saliency(image, saliency, max_side=224, iterations=2)
    assert (mask & disc).sum() / (mask | disc).sum() >= 0.9


@pytest.mark.parametrize("seed", range(4))
def test_capacities_scaled_to_int32_keep_the_cut(seed):
    rng = np.random.default_rng(seed)
    p = 8
    source, sink = rng.integers(1, 12, p), rng.integers(1, 12, p)
    edges = np.array([(i, j) for i in range(p) for j in range(i + 1, p) if rng.random() < 0.5]).reshape(-1, 2)
    weights = rng.integers(0, 7, len(edges))
    big = 2 ** 28  # the same problem in units too small for scipy's int32 flow
    with pytest.raises(ValueError, match="int32"):
        min_cut(source * big, sink * big, edges, weights * big)
    s2, t2, w2 = _fit_int32(source * big, sink * big, weights * big)
    assert min(s2.sum(), t2.sum()) < 2 ** 31
    labels, _ = min_cut(s2, t2, edges, w2)

    def energy(on_source):
        return (sink[on_source].sum() + source[~on_source].sum()
                + weights[on_source[edges[:, 0]] != on_source[edges[:, 1]]].sum())
    assert energy(labels) == energy(min_cut(source, sink, edges, weights)[0])


def test_rounds_stop_when_the_labelling_converges(monkeypatch):
    image, saliency, disc = _disc_scene(seed=4)
    calls = []

    def counting(*args):
        calls.append(1)
        return min_cut(*args)
    monkeypatch.setattr(segment_module, "min_cut", counting)
    mask = segment_from_saliency(image, saliency, iterations=50)
    rounds = len(calls)
    assert 2 <= rounds < 50  # converged: the last round repeated the labelling before it
    calls.clear()
    np.testing.assert_array_equal(segment_from_saliency(image, saliency, iterations=rounds - 1), mask)
    assert (mask & disc).sum() / (mask | disc).sum() >= 0.9


def test_saliency_seeds_are_the_quantiles():
    rng = np.random.default_rng(5)
    saliency = rng.random((40, 50)).astype(np.float32)
    fg, bg = saliency_seeds(saliency, fg_fraction=0.05, bg_fraction=0.3, smooth=0, max_side=64)
    order = np.argsort(-saliency.ravel(), kind="stable")
    want_fg, want_bg = np.zeros(2000, bool), np.zeros(2000, bool)
    want_fg[order[:100]], want_bg[order[-600:]] = True, True
    np.testing.assert_array_equal(fg.ravel(), want_fg)
    np.testing.assert_array_equal(bg.ravel(), want_bg)
    # on a downsampled grid: the map's shape, disjoint, about the asked shares, the salient disc inside
    image, sal, disc = _disc_scene(180, 260, seed=1)
    fg, bg = saliency_seeds(sal, max_side=64)
    assert fg.shape == bg.shape == disc.shape and not (fg & bg).any()
    assert abs(fg.mean() - 0.05) < 0.01 and abs(bg.mean() - 0.3) < 0.02
    assert disc[fg].mean() > 0.95 and not disc[bg].mean() > 0.05
    with pytest.raises(JaxvizError, match="fraction"):
        saliency_seeds(sal, fg_fraction=0.8, bg_fraction=0.3)


def test_seeds_are_hard():
    # Colours say "all one object", but the seeds must keep their labels.
    rng = np.random.default_rng(3)
    image = np.clip(0.5 + rng.normal(0, 0.02, (20, 24, 3)), 0, 1).astype(np.float32)
    saliency = rng.random((20, 24)).astype(np.float32)
    mask = segment_from_saliency(image, saliency, fg_fraction=0.1, bg_fraction=0.3, iterations=2,
                                 smooth=0, gamma=500.0)
    order = np.argsort(-saliency.ravel(), kind="stable")
    assert mask.ravel()[order[:48]].all()
    assert not mask.ravel()[order[-144:]].any()


def test_bad_inputs_raise():
    image, saliency, _ = _disc_scene(20, 20)
    with pytest.raises(JaxvizError, match="saliency must be"):
        segment_from_saliency(image, saliency[:10])
    with pytest.raises(JaxvizError, match="RGB"):
        segment_from_saliency(image[..., 0], saliency)
    with pytest.raises(JaxvizError, match="fraction"):
        segment_from_saliency(image, saliency, fg_fraction=0.6, bg_fraction=0.5)
    with pytest.raises(JaxvizError, match="neighbours"):
        segment_from_saliency(image, saliency, neighbours=6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 2)])
def test_tiny_images_give_a_mask_of_their_size(shape):
    """Issue 13 item 13: a 1x1 image crashed inside GaussianMixture (one seed pixel)."""
    rng = np.random.default_rng(0)
    mask = segment_from_saliency(rng.random(shape + (3,)).astype(np.float32), rng.random(shape).astype(np.float32))
    assert mask.shape == shape and mask.dtype == bool


def test_overlay_keeps_the_object_and_dims_the_rest():
    image, _, disc = _disc_scene(30, 40)
    out = mask_overlay(image, disc)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert np.abs(out[~disc] - image[~disc] * 0.5).max() < 1e-6


def test_cli_segment_writes_overlay_and_mask(tmp_path, squeezenet, capsys):
    from PIL import Image

    from jaxviz.cli import main
    out, mask = tmp_path / "overlay.png", tmp_path / "mask.png"
    assert main(["segment", "chelsea", "--model", "squeezenet1_1", "--out", str(out), "--mask", str(mask),
                 "--iterations", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "overlay.png"]
    from jaxviz.images import load_image
    h, w = load_image("chelsea").shape[:2]
    m = np.asarray(Image.open(mask).convert("L"))
    assert m.shape == (h, w) and set(np.unique(m)) <= {0, 255}
    assert 0.01 < (m > 0).mean() < 0.9
    assert Image.open(out).size == (w, h)
    printed = capsys.readouterr().out
    assert printed.startswith("chelsea: vanilla saliency for class ") and str(out) in printed


@pytest.mark.parametrize("argv, message", [
    (["segment", "no_such_image.png", "--out", "{tmp}/o.png"], "no such image"),
    (["segment", "chelsea", "--out", "{tmp}/missing/o.png"], "does not exist"),
    (["segment", "chelsea", "--out", "{tmp}/o.jpg"], ".png"),
    (["segment", "chelsea", "--out", "{tmp}/o.png", "--method", "magic"], "unknown method"),
    (["segment", "chelsea", "--out", "{tmp}/o.png", "--fg-fraction", "0.9"], "fraction"),
    (["segment", "chelsea", "--out", "{tmp}/o.png", "--mask", "{tmp}/o.png"], "different"),
])
def test_cli_segment_bad_inputs(tmp_path, capsys, argv, message):
    from jaxviz.cli import main
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
