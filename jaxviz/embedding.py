"""Feature space: exact nearest neighbours, PCA/t-SNE maps and grid embeddings of images.

Krizhevsky et al. (2012, fig. 4) show that images close in the last hidden layer of a CNN are
semantically alike although their pixels differ (pose, lighting, position), unlike neighbours in
raw pixel space. Karpathy's "t-SNE visualization of CNN codes" (cnnembed) embeds those codes in
2-D with t-SNE (van der Maaten & Hinton 2008) and draws each image at its point, or snaps the
points to a dense grid with a linear assignment.

Conventions
  * Features are global-average-pooled activations of a layer of any model with named layers
    (``model.feature_layer`` by default, the same features a scan INDEX stores):
    ``pooled_features`` -> (N, C).
  * Pixel-space features: images resized (antialiased) to ``size`` x ``size`` and flattened.
  * Distances: cosine distance ``1 - cos(q, d)`` (a zero vector has cosine 0 to everything) or
    Euclidean L2. Neighbours are exact: a jitted matmul + ``lax.top_k`` over database chunks, the
    running best merged chunk by chunk (memory O(queries x chunk)), queries in chunks too; for
    L2 the data are centred first (the matmul form cancels for near pairs). The k + 8 best
    candidates are then re-ranked on the host: distances recomputed in float64 from the original
    rows (|q - d|, or 1 - the cosine of the unit rows), rounded to float32, sorted by distance and
    then index, so equal distances go to the smaller database index, at the k-th place too (a
    query whose tie reaches the last candidate is ranked against every row). Cosine distances are
    rounded to 1e-12, so that copies of a row scaled by any factor tie. Features beyond 2^+-40 in
    magnitude are scaled by a power of two for the float32 search (exact; squares would overflow).
  * Reductions (PCA, t-SNE) are scikit-learn's; the grid assignment is
    ``scipy.optimize.linear_sum_assignment`` on squared distances between the (min-max
    normalised) 2-D points and the grid-cell centres.
"""
from __future__ import annotations

import functools
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import Model, ModelLike, as_model

Array = jax.Array
PyTree = Any
METRICS = ("cosine", "l2")


# ----------------------------------------------------------------------------------- features

def pooled_features(model: ModelLike, params: PyTree, x: Array, layer: str) -> Array:
    """(N, H, W, 3) preprocessed images -> (N, C) global-average pooled activations of ``layer``
    (a layer that is already (N, C) is returned as is; other shapes are flattened)."""
    model = as_model(model)
    return _pooled(model, params, x, model.resolve_layer(layer))


def _pooled_fn(model: Model, params: PyTree, x: Array, layer: str) -> Array:
    acts = model.activation(params, x, layer)
    return acts.mean(axis=(1, 2)) if acts.ndim == 4 else acts.reshape(acts.shape[0], -1)


_pooled = jax.jit(_pooled_fn, static_argnames=("model", "layer"))


@functools.lru_cache(maxsize=8)
def _pooled_jit(options: tuple[tuple[str, str], ...]):
    """``_pooled`` compiled with the model's XLA options (a top-level call: options apply)."""
    if not options:
        return _pooled
    return jax.jit(_pooled_fn, static_argnames=("model", "layer"), compiler_options=dict(options))


@partial(jax.jit, static_argnames=("size",))
def pixel_features(images01: Array, size: int = 32) -> Array:
    """(N, H, W, 3) images in [0, 1] -> (N, size*size*3) raw pixels of the antialiased resize."""
    n, _, _, c = images01.shape
    small = jax.image.resize(images01, (n, size, size, c), "linear", antialias=True)
    return small.reshape(n, -1)


def model_features(model: ModelLike, images01: np.ndarray, *, layer: str | None = None, params: PyTree | None = None,
                   batch: int = 32, progress: bool = False) -> np.ndarray:
    """Pooled features (N, C) of many [0, 1] images (N, H, W, 3), in fixed-size batches (one
    compile; the last batch padded). ``layer`` defaults to ``model.feature_layer``.

    Raises:
      JaxvizError: not (N, H, W, 3), values outside [0, 1] or not finite, an empty layer, batch < 1.
    """
    from jaxviz.activations import check_layers
    model = as_model(model)
    params = model.resolve_params(params)
    images01 = np.asarray(images01, np.float32)
    if images01.ndim != 4 or images01.shape[-1] != 3:
        raise JaxvizError(f"expected images (N, H, W, 3), got shape {images01.shape}")
    if images01.size and not (np.isfinite(images01).all() and images01.min() >= 0 and images01.max() <= 1):
        # 0-255 pixels would be preprocessed as if in [0, 1]: features of another image, silently
        raise JaxvizError(f"images must be finite RGB in [0, 1] (8-bit pixels: divide by 255), got values "
                          f"{np.nanmin(images01):.4g}..{np.nanmax(images01):.4g}")
    layer = model.resolve_layer(layer or model.feature_layer)
    check_layers(model, [layer], images01.shape[1:3], spatial=False)  # refuses an empty layer
    if isinstance(batch, bool) or batch < 1:
        raise JaxvizError(f"batch must be at least 1, got {batch}")
    n = len(images01)
    batch = max(1, min(batch, n))
    pooled = _pooled_jit(tuple(model.compiler_options))
    starts = range(0, n, batch)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="features", unit="batch")
    out = []
    for s in starts:
        chunk = images01[s:s + batch]
        m = len(chunk)
        if m < batch:  # pad: one compiled shape
            chunk = np.concatenate([chunk, np.zeros((batch - m,) + chunk.shape[1:], chunk.dtype)])
        feats = pooled(model, params, model.preprocess(jnp.asarray(chunk)), layer)
        out.append(np.asarray(feats)[:m])
    if not out:  # no images: (0, C), C from the layer's shape
        one = jax.ShapeDtypeStruct((1,) + images01.shape[1:], jnp.float32)
        shape = jax.eval_shape(lambda v: pooled(model, params, model.preprocess(v), layer), one).shape
        return np.zeros((0,) + shape[1:], np.float32)
    return np.concatenate(out)


# ----------------------------------------------------------------------------------- neighbours

def _distances(q: Array, d: Array, d_sq: Array, metric: str) -> Array:
    s = jnp.matmul(q, d.T, precision=jax.lax.Precision.HIGHEST)
    if metric == "cosine":
        return 1.0 - s  # rows were normalised beforehand
    q_sq = jnp.sum(q * q, axis=1, keepdims=True)
    return jnp.maximum(q_sq - 2.0 * s + d_sq[None, :], 0.0)  # squared; sqrt at the end


@partial(jax.jit, static_argnames=("k", "metric"))
def _search(q: Array, chunks: Array, chunk_sq: Array, chunk_ids: Array, k: int, metric: str):
    """q (Q, D); chunks (n, C, D); chunk_sq (n, C); chunk_ids (n, C) with -1 for padding."""
    nq = q.shape[0]
    kk = min(k, chunks.shape[1])

    def body(best, chunk):
        data, sq, ids = chunk
        dist = _distances(q, data, sq, metric)
        dist = jnp.where(ids[None, :] >= 0, dist, jnp.inf)
        neg, pos = jax.lax.top_k(-dist, kk)
        cand_i = jnp.broadcast_to(ids[None, :], dist.shape)
        cand_i = jnp.take_along_axis(cand_i, pos, axis=1)
        # Running best first: top_k keeps the earlier entry on ties (smaller index wins).
        all_d = jnp.concatenate([best[0], -neg], axis=1)
        all_i = jnp.concatenate([best[1], cand_i], axis=1)
        neg, pos = jax.lax.top_k(-all_d, k)
        return (-neg, jnp.take_along_axis(all_i, pos, axis=1)), None

    init = (jnp.full((nq, k), jnp.inf, q.dtype), jnp.full((nq, k), -1, jnp.int32))
    (dist, idx), _ = jax.lax.scan(body, init, (chunks, chunk_sq, chunk_ids))
    return dist, idx


# Candidates beyond k that the host re-ranks exactly: the float32 search's rounding (and the
# cancellation of |q|^2 - 2 q.d + |d|^2 for near pairs) can reorder rows whose distances differ
# by ~1e-7 relative, and ties at the k-th place must still go to the smaller index.
RERANK_EXTRA = 8


def _rerank(queries: np.ndarray, database: np.ndarray, candidates: np.ndarray, k: int, metric: str,
            budget_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' distances (Q, kk) recomputed in float64 from the original rows, rounded
    to float32 and sorted by (distance, index): the k first. Memory: (block, kk, D) float64 rows
    at a time, within ``budget_bytes``."""
    n, kk = len(database), candidates.shape[1]
    block = max(1, budget_bytes // (kk * database.shape[1] * 8 * 3))  # rows, difference, square
    dists, idxs = [], []
    for s in range(0, len(queries), block):
        cand = candidates[s:s + block]
        d = _exact_distances(queries[s:s + block], database[cand], metric)
        order = np.lexsort((cand, d))  # by distance, then index
        d, cand = np.take_along_axis(d, order, 1), np.take_along_axis(cand, order, 1)
        if kk < n:
            # a group of equal distances that reaches the last candidate may go on beyond it, in
            # rounding order: those queries are ranked against every row
            for row in np.flatnonzero(d[:, k - 1] >= d[:, -1]):
                d[row, :k], cand[row, :k] = _exact_top_k(queries[s + row], database, k, metric, budget_bytes)
        dists.append(d[:, :k])
        idxs.append(cand[:, :k].astype(np.int32))
    return np.concatenate(dists), np.concatenate(idxs)


def _exact_distances(q: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """(Q, D) queries, (Q, M, D) rows -> (Q, M) float32 distances computed in float64."""
    q, rows = q[:, None, :].astype(np.float64), rows.astype(np.float64)
    if metric == "l2":
        return np.sqrt(np.sum((rows - q) ** 2, axis=-1)).astype(np.float32)
    # 1e-12 grid: copies scaled by a factor tie (their float64 cosines differ by ~1e-16)
    d = np.round(1.0 - np.sum(_unit_rows(rows) * _unit_rows(q), axis=-1), 12)
    return (np.clip(d, 0.0, 2.0) + 0.0).astype(np.float32)  # + 0.0: no -0.0


def _exact_top_k(q: np.ndarray, database: np.ndarray, k: int, metric: str,
                 budget_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """One query (D,) against every database row: the k nearest by (distance, index)."""
    step = max(1, budget_bytes // (database.shape[1] * 8 * 3))
    d = np.concatenate([_exact_distances(q[None], database[None, s:s + step], metric)[0]
                        for s in range(0, len(database), step)])
    order = np.lexsort((np.arange(len(database)), d))[:k]
    return d[order], order


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit length, zero rows left zero; in ``x``'s dtype (float32 for
    the search, float64 for the re-ranking)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0).astype(x.dtype, copy=False)


def nearest_neighbors(queries: np.ndarray, database: np.ndarray, k: int, *, metric: str = "cosine",
                      chunk: int = 4096, query_chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database rows of each query row.

    Args:
      queries: (Q, D) features; database: (N, D).
      k: neighbours per query, 1 <= k <= N.
      metric: "cosine" (distance 1 - cosine similarity) or "l2" (Euclidean).
      chunk: database rows per step; query_chunk: queries per jitted call (padded, one compile).
    Returns:
      distances (Q, k) float32 ascending, indices (Q, k) int32 database rows (equal distances in
      index order).
    Raises:
      JaxvizError: bad shapes, k or metric.
    """
    queries = np.asarray(queries, np.float32)
    database = np.asarray(database, np.float32)
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise JaxvizError(f"expected queries (Q, D) and database (N, D) with the same D, got "
                          f"{queries.shape} and {database.shape}")
    for name, rows in (("queries contain", queries), ("database contains", database)):
        if not np.isfinite(rows).all():  # NaN distances would sort anywhere: neighbours of nothing
            raise JaxvizError(f"the {name} NaN or infinite values")
    n = len(database)
    from jaxviz.techniques import check
    check("neighbors", k=k, metric=metric, context={"images": n})  # 1 <= k <= the database size
    if chunk < 1 or query_chunk < 1:
        raise JaxvizError("chunk sizes must be positive")
    originals = queries, database  # for the exact re-ranking
    kk = min(n, k + RERANK_EXTRA)
    peak = max(float(np.abs(queries).max(initial=0.0)), float(np.abs(database).max(initial=0.0)))
    if peak > 2.0 ** 40 or 0.0 < peak < 2.0 ** -40:
        # float32 squares would overflow (or vanish): scale by a power of two, which is exact and
        # keeps every ranking (the re-ranking uses the original rows)
        scale = np.float32(2.0 ** -np.round(np.log2(peak)))
        queries, database = queries * scale, database * scale
    if metric == "cosine":
        queries, database = _unit_rows(queries), _unit_rows(database)
    else:  # L2 is translation invariant; centring shrinks the norms that cancel in the matmul form
        centre = database.mean(axis=0, dtype=np.float64).astype(np.float32)
        queries, database = queries - centre, database - centre
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    ids = np.concatenate([np.arange(n, dtype=np.int32), np.full(pad, -1, np.int32)])
    data = np.concatenate([database, np.zeros((pad, database.shape[1]), np.float32)])
    sq = np.sum(data.astype(np.float64) ** 2, axis=1).astype(np.float32)
    chunks = jnp.asarray(data.reshape(n_chunks, chunk, -1))
    chunk_sq, chunk_ids = jnp.asarray(sq.reshape(n_chunks, chunk)), jnp.asarray(ids.reshape(n_chunks, chunk))
    nq = len(queries)
    query_chunk = max(1, min(query_chunk, nq))
    dists, idxs = [], []
    for s in range(0, nq, query_chunk):
        q = queries[s:s + query_chunk]
        m = len(q)
        if m < query_chunk:
            q = np.concatenate([q, np.zeros((query_chunk - m, q.shape[1]), np.float32)])
        _, i = _search(jnp.asarray(q), chunks, chunk_sq, chunk_ids, kk, metric)
        d, i = _rerank(originals[0][s:s + m], originals[1], np.asarray(i)[:m], k, metric)
        dists.append(d)
        idxs.append(i)
    if not dists:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    return np.concatenate(dists), np.concatenate(idxs)


# ----------------------------------------------------------------------------------- 2-D maps

def pca(features: np.ndarray, dims: int = 2, *, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, dims) principal-component coordinates (scikit-learn PCA).

    Raises:
      JaxvizError: features not (N, D) with N > dims, NaN or infinite values, or dims not in 1..D.
    """
    from sklearn.decomposition import PCA
    _check_dims(dims)
    features = _check_points(features, dims + 1)
    if dims > features.shape[1]:
        raise JaxvizError(f"dims must be at most the feature size {features.shape[1]}, got {dims}")
    return PCA(n_components=dims, random_state=seed).fit_transform(features).astype(np.float32)


def tsne(features: np.ndarray, dims: int = 2, *, perplexity: float = 30.0, seed: int = 0,
         pca_dims: int | None = 50, exact_below: int = 1000) -> np.ndarray:
    """(N, D) -> (N, dims) t-SNE coordinates (scikit-learn, PCA init, ``learning_rate='auto'``).

    Features are first reduced to ``pca_dims`` with PCA (the usual speed-up; None keeps all);
    the perplexity is capped at (N - 1) / 3 so small sets work. Sets of up to ``exact_below``
    points use the exact gradient (measured faster than Barnes-Hut there: 1k points 54 s vs 126 s on
    a loaded 2-core CPU), larger ones Barnes-Hut (which maps to at most 3 dims).

    Raises:
      JaxvizError: features not (N, D) with N >= 4, NaN or infinite values, bad dims or settings.
    """
    from sklearn.manifold import TSNE

    from jaxviz.techniques import check
    check("tsne", perplexity=perplexity, seed=seed)
    _check_dims(dims)
    if pca_dims is not None:
        _check_dims(pca_dims, "pca_dims")
    features = _check_points(features, 4)
    n, d = features.shape
    if dims > 3 and n > exact_below:
        raise JaxvizError(f"t-SNE of more than {exact_below} points (Barnes-Hut) maps to at most 3 dims, got {dims}")
    if pca_dims and d > pca_dims and n > pca_dims:
        features = pca(features, pca_dims, seed=seed)
    perplexity = float(min(perplexity, (n - 1) / 3))
    model = TSNE(n_components=dims, perplexity=perplexity, init="pca", learning_rate="auto",
                 random_state=seed, method="exact" if n <= exact_below else "barnes_hut")
    return model.fit_transform(features).astype(np.float32)


def _check_dims(dims: int, name: str = "dims") -> None:
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
        raise JaxvizError(f"{name} must be a whole number >= 1, got {dims!r}")


def _check_points(features: np.ndarray, minimum: int) -> np.ndarray:
    features = np.asarray(features, np.float32)
    if features.ndim != 2:
        raise JaxvizError(f"expected features (N, D), got shape {features.shape}")
    if len(features) < minimum:
        raise JaxvizError(f"need at least {minimum} points, got {len(features)}")
    if not np.all(np.isfinite(features)):
        raise JaxvizError("features contain NaN or infinite values")
    return features


def unit_square(points: np.ndarray) -> np.ndarray:
    """(N, 2) -> (N, 2) min-max normalised per axis to [0, 1] (a constant axis -> 0.5)."""
    points = np.asarray(points, np.float64)
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = hi - lo
    return np.where(span > 0, (points - lo) / np.where(span > 0, span, 1.0), 0.5)


def grid_shape(n: int, aspect: float = 1.0) -> tuple[int, int]:
    """(rows, cols) of the smallest near-square grid (cols/rows ~ aspect) with >= n cells."""
    cols = max(1, int(np.ceil(np.sqrt(n * aspect))))
    return int(np.ceil(n / cols)), cols


def grid_costs(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(N, rows*cols) squared distances from the normalised points to the cell centres; cell
    r * cols + c has centre ((c + 0.5) / cols, (r + 0.5) / rows) as (x, y)."""
    p = unit_square(points)
    r, c = np.divmod(np.arange(rows * cols), cols)
    centres = np.stack([(c + 0.5) / cols, (r + 0.5) / rows], axis=1)
    return ((p[:, None, :] - centres[None]) ** 2).sum(-1)


def grid_assignment(points: np.ndarray, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    """Snap 2-D points to grid cells one-to-one with the least total squared distance.

    Points (x, y) are normalised to the unit square and matched to the cell centres by
    ``scipy.optimize.linear_sum_assignment`` (Hungarian; O(n^3): fine for thousands of points).
    Returns (N,) int cell indices ``r * cols + c``, all distinct.
    """
    from scipy.optimize import linear_sum_assignment
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise JaxvizError(f"expected (N, 2) points, got shape {points.shape}")
    if rows is None or cols is None:
        rows, cols = grid_shape(len(points))
    if rows * cols < len(points):
        raise JaxvizError(f"a {rows}x{cols} grid has fewer cells than the {len(points)} points")
    point_idx, cells = linear_sum_assignment(grid_costs(points, rows, cols))
    out = np.empty(len(points), np.int64)
    out[point_idx] = cells
    return out


def thumbnail_map(points: np.ndarray, thumbs: np.ndarray, *, size: int = 1200,
                  background: float = 1.0) -> np.ndarray:
    """Draw each (t, t, 3) thumbnail at its normalised 2-D point on a (size, size, 3) canvas
    (x right, y down; later images on top)."""
    thumbs = np.asarray(thumbs, np.float32)
    t = thumbs.shape[1]
    if size <= t:
        raise JaxvizError(f"canvas size {size} must exceed the thumbnail size {t}")
    p = unit_square(points)
    xy = np.round(p * (size - t)).astype(int)
    canvas = np.full((size, size, 3), background, np.float32)
    for (x, y), thumb in zip(xy, thumbs):
        canvas[y:y + t, x:x + t] = thumb[:, :, :3]
    return canvas


def grid_image(cells: np.ndarray, thumbs: np.ndarray, rows: int, cols: int,
               background: float = 1.0) -> np.ndarray:
    """Place thumbnail i (t, t, 3) in cell ``cells[i]`` of a rows x cols grid -> (rows*t, cols*t, 3)."""
    thumbs = np.asarray(thumbs, np.float32)
    t = thumbs.shape[1]
    canvas = np.full((rows * t, cols * t, 3), background, np.float32)
    for cell, thumb in zip(np.asarray(cells), thumbs):
        r, c = divmod(int(cell), cols)
        canvas[r * t:(r + 1) * t, c * t:(c + 1) * t] = thumb[:, :, :3]
    return canvas
