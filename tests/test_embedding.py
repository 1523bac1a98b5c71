"""Feature space: exact neighbours == brute force, variants found first, PCA/t-SNE, grid assignment, CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import embedding as E
from jaxviz.cli import main
from jaxviz.errors import JaxvizError


def _brute(q, db, metric):
    if metric == "l2":
        d = np.sqrt(((q[:, None, :].astype(np.float64) - db[None]) ** 2).sum(-1))
    else:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        dn = db / np.linalg.norm(db, axis=1, keepdims=True)
        d = 1.0 - qn.astype(np.float64) @ dn.T
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("chunk,query_chunk", [(16, 10), (101, 37), (1000, 4), (7, 1)])
def test_neighbors_equal_brute_force(rng, metric, chunk, query_chunk):
    q = rng.normal(size=(37, 20)).astype(np.float32)
    db = rng.normal(size=(101, 20)).astype(np.float32)  # 101 rows: not a multiple of any chunk
    dist, idx = E.nearest_neighbors(q, db, 9, metric=metric, chunk=chunk, query_chunk=query_chunk)
    ref_d, ref_i = _brute(q, db, metric)
    np.testing.assert_array_equal(idx, ref_i[:, :9])
    np.testing.assert_allclose(dist, ref_d[:, :9], atol=2e-5)
    assert idx.dtype == np.int32 and dist.shape == (37, 9)


def test_neighbors_k_equals_n_and_ties(rng):
    db = rng.normal(size=(10, 4)).astype(np.float32)
    db = np.concatenate([db, db[[3, 3]]])  # rows 10 and 11 duplicate row 3
    dist, idx = E.nearest_neighbors(db[3:4], db, 12, metric="l2", chunk=5)
    assert idx[0, :3].tolist() == [3, 10, 11]  # ties: smaller index first, across chunks
    assert sorted(idx[0].tolist()) == list(range(12))
    np.testing.assert_allclose(dist[0, :3], 0, atol=1e-3)
    # cosine: scaled copies are at distance 0; a zero vector is at distance 1 from everything.
    db2 = np.stack([np.array([1.0, 2, 3]), np.array([2.0, 4, 6]), np.zeros(3), np.array([-1.0, 0, 0])])
    dist, idx = E.nearest_neighbors(db2[:1], db2, 4)
    assert idx[0].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(dist[0, :3], [0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_neighbors_break_exact_ties_by_index_at_the_kth_place_too(metric):
    # integer rows: many distinct rows at exactly the same distance, which the float32 search
    # alone ordered by rounding (18 before 35 came out 35 first, and k=11 cut 18 off)
    rs = np.random.RandomState(0)
    db = rs.randint(-3, 4, size=(40, 8)).astype(np.float32)
    queries = np.concatenate([np.zeros((1, 8), np.float32), rs.randint(-2, 3, size=(5, 8)).astype(np.float32)])
    d64, q64 = db.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        true = np.sqrt(((q64[:, None] - d64[None]) ** 2).sum(-1))
    else:
        unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)  # noqa: E731
        true = 1 - unit(q64) @ unit(d64).T
    true = true.astype(np.float32)
    assert len(np.unique(true[0])) <= 30  # the data do tie (26 distances for 40 rows)
    for k in (1, 11, 23, 40):
        dist, idx = E.nearest_neighbors(queries, db, k, metric=metric, chunk=7)
        for row in range(len(queries)):
            want = np.lexsort((np.arange(40), true[row]))[:k]
            assert idx[row].tolist() == want.tolist(), (k, row)
            np.testing.assert_allclose(dist[row], true[row][want], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_neighbors_tie_groups_larger_than_the_candidates_and_extreme_scales(metric):
    rs = np.random.RandomState(1)
    perms = np.stack([rs.permutation(np.arange(1, 9)) for _ in range(60)]).astype(np.float32)
    # 60 rows at exactly the same distance from the query: more than k + 8 candidates
    _, idx = E.nearest_neighbors(np.full((1, 8), 4.5, np.float32), perms, 4, metric=metric, chunk=13)
    assert idx[0].tolist() == [0, 1, 2, 3]
    # copies of one row scaled by any factor are at cosine distance 0: in index order
    copies = np.stack([np.array([1.0, 2, 3]) * f for f in (1, 3, 0.1, 7, 1e3, 0.37)]).astype(np.float32)
    if metric == "cosine":
        dist, idx = E.nearest_neighbors(copies[:1], copies, 6, metric=metric)
        assert idx[0].tolist() == list(range(6)) and (dist == 0).all() and not np.signbit(dist).any()
    # features around 1e19: float32 squares overflow; no padding index (-1), the true order
    big = (rs.randn(20, 8) * 1e19).astype(np.float32)
    dist, idx = E.nearest_neighbors(big[:1], big, 5, metric=metric, chunk=7)
    b64 = big.astype(np.float64)
    if metric == "l2":
        true = np.sqrt(((b64 - b64[0]) ** 2).sum(1))
    else:
        unit = b64 / np.linalg.norm(b64, axis=1, keepdims=True)
        true = 1 - unit @ unit[0]
    assert (idx >= 0).all() and idx[0].tolist() == np.argsort(true, kind="stable")[:5].tolist()
    assert np.isfinite(dist).all()


def test_neighbors_bad_input(rng):
    db = rng.normal(size=(5, 3))
    for kwargs in ({"k": 0}, {"k": 6}, {"k": 2, "metric": "hamming"}):
        with pytest.raises(JaxvizError):
            E.nearest_neighbors(db, db, **kwargs)
    with pytest.raises(JaxvizError, match="same D"):
        E.nearest_neighbors(db[:, :2], db, 2)


def test_pooled_and_pixel_features(tiny_model, rng):
    x = jnp.asarray(rng.normal(size=(3, 16, 20, 3)), jnp.float32)
    f = E.pooled_features(tiny_model, tiny_model.params, x, "features.4")
    _, state = tiny_model.module.apply({"params": tiny_model.params}, x, capture_intermediates=True,
                                       mutable=["intermediates"])
    np.testing.assert_allclose(f, state["intermediates"]["features.4"]["__call__"][0].mean(axis=(1, 2)),
                               rtol=1e-6)
    images = np.zeros((2, 40, 64, 3), np.float32)
    images[0] = 0.25
    images[1, :, :32] = 1.0  # left half white
    p = np.asarray(E.pixel_features(jnp.asarray(images), 8)).reshape(2, 8, 8, 3)
    np.testing.assert_allclose(p[0], 0.25, atol=1e-6)
    # Antialiased (triangle-filter) resize: far from the edge exact, the edge symmetric.
    np.testing.assert_allclose(p[1, :, :3], 1.0, atol=1e-6)
    np.testing.assert_allclose(p[1, :, 5:], 0.0, atol=1e-6)
    np.testing.assert_allclose(p[1, :, 3] + p[1, :, 4], 1.0, atol=1e-6)


def test_model_features_batched_equals_single(tiny_model, rng):
    images = rng.uniform(size=(5, 16, 16, 3)).astype(np.float32)
    f = E.model_features(tiny_model, images, batch=2)
    direct = E.pooled_features(tiny_model, tiny_model.params, tiny_model.preprocess(jnp.asarray(images)),
                               tiny_model.feature_layer)
    np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-6)
    with pytest.raises(JaxvizError, match="empty"):
        E.model_features(tiny_model, images[:, :1, :1])  # 1 px: features.4 is 0 x 0
    # 8-bit pixels (0-255) were preprocessed as if in [0, 1]: other features, silently
    for bad in ((images * 255).astype(np.uint8), np.where(images > 0.5, np.nan, images)):
        with pytest.raises(JaxvizError, match=r"finite RGB in \[0, 1\]"):
            E.model_features(tiny_model, bad)
    assert E.model_features(tiny_model, images[:0]).shape == (0, 8)  # (0, C), not (0, 0)


def test_tsne_refuses_bad_perplexity(rng):
    x = rng.normal(size=(10, 4)).astype(np.float32)
    for bad in (float("nan"), float("inf"), 0.0, -3.0):
        with pytest.raises(JaxvizError, match="perplexity"):
            E.tsne(x, perplexity=bad)


def test_feature_neighbours_find_variants_first(squeezenet):
    """The seed claim: in feature space an image's flipped/cropped variants come before unrelated
    images (whose own variants are in the set too)."""
    from jaxviz.images import fit_image, load_image
    size = 224

    def variants(name):
        img = load_image(name)
        h, w = img.shape[:2]
        crop = img[h // 10: h - h // 10, w // 8: w - w // 8]
        return [fit_image(v, size, "stretch") for v in (img[:, ::-1], crop, crop[:, ::-1])]

    query = "chelsea"
    others = ["coffee", "rocket", "astronaut", "brick", "camera", "coins"]
    images = variants(query) + [fit_image(load_image(o), size, "stretch") for o in others] + variants("coffee")[:2]
    q = E.model_features(squeezenet, fit_image(load_image(query), size, "stretch")[None])
    db = E.model_features(squeezenet, np.stack(images), batch=6)
    for metric in ("cosine", "l2"):
        _, idx = E.nearest_neighbors(q, db, 3, metric=metric)
        assert sorted(idx[0].tolist()) == [0, 1, 2], metric


def test_pca_and_tsne(rng):
    centres = rng.normal(size=(3, 30)) * 10
    x = np.concatenate([c + rng.normal(size=(12, 30)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(3), 12)
    for points in (E.pca(x), E.tsne(x, perplexity=8)):
        assert points.shape == (36, 2)
        # Clusters stay clusters: each point's nearest other point is in its own cluster.
        d = ((points[:, None] - points[None]) ** 2).sum(-1) + np.eye(36) * 1e9
        assert np.mean(labels[d.argmin(1)] == labels) > 0.95
    np.testing.assert_array_equal(E.tsne(x, perplexity=8, seed=3), E.tsne(x, perplexity=8, seed=3))
    with pytest.raises(JaxvizError):
        E.tsne(x[:3])


def test_grid_assignment_is_a_bijection_and_beats_random(rng):
    points = rng.normal(size=(48, 2)) * [3.0, 1.0]
    rows, cols = E.grid_shape(48)
    assert rows * cols >= 48
    cells = E.grid_assignment(points, 6, 8)
    assert sorted(cells.tolist()) == list(range(48))  # onto every cell, once
    cost = E.grid_costs(points, 6, 8)
    best = cost[np.arange(48), cells].sum()
    for _ in range(20):
        assert best < cost[np.arange(48), rng.permutation(48)].sum()
    # Fewer points than cells: distinct cells. Points already on the centres stay there.
    r, c = np.divmod(np.arange(12), 4)
    on_grid = np.stack([c, r], axis=1).astype(float)
    assert E.grid_assignment(on_grid, 3, 4).tolist() == list(range(12))
    assert len(set(E.grid_assignment(points[:40], 6, 8).tolist())) == 40
    with pytest.raises(JaxvizError):
        E.grid_assignment(points, 4, 4)


def test_thumbnail_map_and_grid_image():
    thumbs = np.stack([np.full((4, 4, 3), v, np.float32) for v in (0.0, 0.5, 0.25)])
    canvas = E.thumbnail_map(np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]), thumbs, size=20)
    assert canvas[:4, :4].max() == 0.0  # min point at the top left
    assert np.all(canvas[16:, 16:] == 0.5)  # max point at the bottom right
    assert np.all(canvas[:4, 16:] == 0.25)  # (x max, y min): top right
    assert np.all(canvas[8:12, 8:12] == 1.0)  # background
    g = E.grid_image(np.array([3, 0, 1]), thumbs, 2, 2)
    assert g.shape == (8, 8, 3) and np.all(g[4:, 4:] == 0.0) and np.all(g[:4, :4] == 0.5)
    assert np.all(g[4:, :4] == 1.0)  # empty cell


# ----------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, squeezenet) -> Path:
    """A tiny INDEX (format of coord.md / jaxviz.scan) with squeezenet features at 64 px."""
    from jaxviz.images import load_image, save_image
    root = tmp_path_factory.mktemp("idx")
    (root / "images").mkdir()
    paths = []
    for name in ("chelsea", "coffee", "rocket", "brick"):
        img = load_image(name, 64, "stretch")
        for tag, v in (("", img), ("_flip", img[:, ::-1])):
            p = root / "images" / f"{name}{tag}.png"
            save_image(v, p)
            paths.append(str(p))
    images = np.stack([load_image(p, 64, "stretch") for p in paths])
    feats = E.model_features(squeezenet, images)
    np.save(root / "features.npy", feats.astype(np.float32))
    with open(root / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "path"])
        w.writerows(enumerate(paths))
    (root / "meta.json").write_text(json.dumps({
        "model": "squeezenet1_1", "layers": [], "topk": 9, "input_size": 64, "fit": "stretch",
        "count": len(paths), "feature_layer": "features.12", "complete": True, "version": 1}))
    return root


def test_cli_neighbors(index_dir, tmp_path, capsys):
    query = str(index_dir / "images" / "rocket.png")
    for space in ("feature", "pixel"):
        for metric in ("cosine", "l2"):
            assert main(["neighbors", str(index_dir), query, "chelsea", "--k", "3", "--space", space,
                         "--metric", metric, "--json", "--no-progress"]) == 0
            res = json.loads(capsys.readouterr().out)
            assert [r["query"] for r in res] == [query, "chelsea"]
            first = res[0]["neighbors"][0]
            assert first["path"] == query and first["distance"] == pytest.approx(0, abs=1e-3)
            dists = [n["distance"] for n in res[1]["neighbors"]]
            assert dists == sorted(dists) and len(dists) == 3
    # Feature space: the flipped rocket is the query's next neighbour.
    assert main(["neighbors", str(index_dir), query, "--k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["neighbors"][1]["path"].endswith("rocket_flip.png")
    out = tmp_path / "nb.png"
    assert main(["neighbors", str(index_dir), query, "chelsea", "--k", "4", "--out", str(out)]) == 0
    assert out.is_file() and "rocket" in capsys.readouterr().out
    for argv in (["neighbors", str(index_dir), query, "--k", "9"],
                 ["neighbors", str(tmp_path), query],
                 ["neighbors", str(index_dir), "nofile.png"],
                 ["neighbors", str(index_dir), query, "--out", str(tmp_path / "x.txt")]):
        assert main(argv) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_cli_embed(index_dir, tmp_path, capsys):
    from PIL import Image
    for method, extra in (("pca", ["--grid"]), ("tsne", []), ("tsne", ["--grid"])):
        out = tmp_path / f"{method}{len(extra)}.png"
        assert main(["embed", str(index_dir), "--method", method, "--thumb", "16", "--size", "200",
                     "--no-progress", "--out", str(out)] + extra) == 0
        size = Image.open(out).size
        assert size == ((3 * 16, 3 * 16) if extra else (200, 200))
    out = tmp_path / "scatter.png"
    assert main(["embed", str(index_dir), "--method", "pca", "--scatter", "--no-progress", "--out", str(out)]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["embed", str(tmp_path / "none"), "--out", str(tmp_path / "e.png")]) == 2
    assert main(["embed", str(index_dir), "--thumb", "2", "--out", str(tmp_path / "e.png")]) == 2
    assert main(["embed", str(index_dir), "--perplexity", "nan", "--out", str(tmp_path / "e.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 3
    assert not (tmp_path / "e.png").exists()
