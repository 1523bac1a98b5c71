"""Saliency -> object segmentation (Simonyan, Vedaldi & Zisserman 2014, §3.1), GrabCut-style.

The most salient pixels (top ``fg_fraction``) seed the foreground and the least salient (bottom
``bg_fraction``) the background; colour Gaussian mixtures (scikit-learn, ``components`` each) are
fitted to the two sets and a graph cut labels every pixel (Rother, Kolmogorov & Blake 2004,
GrabCut; Boykov & Jolly 2001): unary = -log GMM likelihood, pairwise = contrast-sensitive Potts
``gamma * exp(-beta |c_p - c_q|^2) / dist(p, q)`` on 4 or 8 neighbours with ``beta = 1 / (2 <|c_p -
c_q|^2>)``. The GMMs are refitted to the current labelling and the cut repeated until the
labelling stops changing (GrabCut's iteration to convergence), at most ``iterations`` times;
seeds stay hard. Simonyan et al. seed with the 95% and 30% saliency quantiles (``fg_fraction``
0.05, ``bg_fraction`` 0.3, the defaults); ``saliency_seeds`` returns the seeds for display. The
min cut is solved by ``scipy.sparse.csgraph.maximum_flow`` on integer capacities (costs scaled by
``SCALE`` and rounded, and scaled down together when the largest possible flow would not fit
scipy's int32) on a grid of at most ``max_side`` pixels a side; the mask is then upsampled to the
image.

Conventions: image (H, W, 3) RGB in [0, 1]; saliency (H, W) (higher = more salient; any scale);
mask (H, W) bool, True = object. This is numpy/scipy code (graph cuts are not jittable).
"""
from __future__ import annotations

import numpy as np

from jaxviz.errors import JaxvizError

SCALE = 100.0  # energy units per integer capacity unit: 0.01 resolution on -log likelihoods


def min_cut(source_caps: np.ndarray, sink_caps: np.ndarray, edges: np.ndarray,
            weights: np.ndarray) -> tuple[np.ndarray, int]:
    """Minimum s-t cut of a graph with integer capacities.

    Args:
      source_caps: (P,) int capacities source -> p (paid when p ends on the SINK side).
      sink_caps: (P,) int capacities p -> sink (paid when p ends on the SOURCE side).
      edges: (E, 2) int node pairs (p, q); each gets capacity ``weights`` in both directions.
      weights: (E,) int capacities (paid when p and q end on different sides).
    Returns:
      (P,) bool, True = on the source side; and the cut value (= the max flow).
    Raises:
      JaxvizError: capacities that are not non-negative integers (floats were truncated).
    """
    from scipy.sparse import csr_matrix

    for name, values in (("source_caps", source_caps), ("sink_caps", sink_caps), ("weights", weights)):
        values = np.asarray(values)
        if values.dtype.kind not in "iu" or (values.size and values.min() < 0):
            raise JaxvizError(f"{name} must be non-negative integers, got {values.dtype} "
                              f"{values.ravel()[:3].tolist()}")
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    p = len(source_caps)
    s, t = p, p + 1
    nodes = np.arange(p)
    rows = np.concatenate([np.full(p, s), nodes, edges[:, 0], edges[:, 1]])
    cols = np.concatenate([nodes, np.full(p, t), edges[:, 1], edges[:, 0]])
    caps = np.concatenate([source_caps, sink_caps, weights, weights]).astype(np.int64)
    keep = caps > 0
    # scipy's max-flow keeps capacities and flows in int32: each capacity must fit, and so must the
    # flow value, which no cut exceeds (all source arcs, or all sink arcs).
    if caps.max(initial=0) >= 2 ** 31 or min(int(source_caps.sum()), int(sink_caps.sum())) >= 2 ** 31:
        raise ValueError("capacities too large for scipy's int32 max-flow; lower the scale")
    graph = csr_matrix((caps[keep].astype(np.int32), (rows[keep], cols[keep])), shape=(p + 2, p + 2))
    graph.sum_duplicates()
    result = maximum_flow(graph, s, t, method="dinic")
    # Residual graph: capacity - flow (scipy's flow is antisymmetric, so reverse arcs appear too).
    residual = (graph.astype(np.int64) - result.flow.astype(np.int64)).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, s, directed=True, return_predecessors=False)
    side = np.zeros(p + 2, bool)
    side[reached] = True
    return side[:p], int(result.flow_value)


def grid_edges(h: int, w: int, neighbours: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(E, 2) index pairs of 4- or 8-connected neighbours on an h x w grid, and (E,) distances.

    Raises:
      JaxvizError: ``neighbours`` other than 4 or 8.
    """
    if neighbours not in (4, 8):
        raise JaxvizError(f"neighbours must be 4 or 8, got {neighbours!r}")
    idx = np.arange(h * w).reshape(h, w)
    offsets = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if neighbours == 8 else [])
    pairs, dists = [], []
    for dy, dx in offsets:  # dy >= 0; q = p + (dy, dx)
        a = idx[: h - dy, max(0, -dx): w - max(0, dx)]
        b = idx[dy:, max(0, dx): w - max(0, -dx)]
        pairs.append(np.stack([a.ravel(), b.ravel()], 1))
        dists.append(np.full(a.size, np.hypot(dy, dx)))
    return np.concatenate(pairs), np.concatenate(dists)


def _fit_gmm(colours: np.ndarray, components: int, seed: int):
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits
    k = max(1, min(components, len(colours) // 10))
    with threadpool_limits(1):  # 3x3 linear algebra: BLAS threads only add overhead here
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed,
                              max_iter=50).fit(colours)
    return gmm


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    if a.shape[:2] == size:
        return a.astype(np.float32)
    chans = a[..., None] if a.ndim == 2 else a
    out = np.stack([np.asarray(Image.fromarray(chans[..., c].astype(np.float32), mode="F")
                               .resize((size[1], size[0]), Image.BILINEAR)) for c in range(chans.shape[-1])], -1)
    return out[..., 0] if a.ndim == 2 else out


def _grid_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The cut's grid: at most ``max_side`` pixels a side, at least 4 x 4 cells (so that each
    colour model has seeds to fit on tiny images: a 1 x 1 image is stretched to a constant grid,
    and its mask sampled back)."""
    factor = min(1.0, max_side / max(height, width))
    return max(4, round(height * factor)), max(4, round(width * factor))


def _grid_seeds(sal: np.ndarray, fg_fraction: float, bg_fraction: float,
                smooth: float) -> tuple[np.ndarray, np.ndarray]:
    """(P,) foreground and background seeds of a grid saliency map (h, w), by rank (ties and the
    map's scale do not matter), after an optional Gaussian smoothing."""
    if smooth > 0:
        from scipy.ndimage import gaussian_filter
        sal = gaussian_filter(sal, smooth, mode="nearest")
    order = np.argsort(-sal.ravel(), kind="stable")
    p = sal.size
    fg_seed, bg_seed = np.zeros(p, bool), np.zeros(p, bool)
    fg_seed[order[: max(2, int(round(fg_fraction * p)))]] = True  # >= 2: a GMM needs two samples
    bg_seed[order[p - max(2, int(round(bg_fraction * p))):]] = True
    return fg_seed, bg_seed


def saliency_seeds(saliency: np.ndarray, *, fg_fraction: float = 0.05, bg_fraction: float = 0.3,
                   max_side: int = 112, smooth: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The hard seeds ``segment_from_saliency`` uses, at the map's resolution (H, W) each:
    (foreground = the ``fg_fraction`` most salient cells, background = the ``bg_fraction`` least
    salient), found on the cut's grid (``max_side``, ``smooth`` as there) and sampled back.

    Raises:
      JaxvizError: a map that is not 2-D or not finite, fractions out of range.
    """
    saliency = np.asarray(saliency, np.float32)
    if saliency.ndim != 2:
        raise JaxvizError(f"saliency must be (H, W), got shape {saliency.shape}")
    if not np.isfinite(saliency).all():  # NaN sorts anywhere: seeds of nothing
        raise JaxvizError("saliency map contains NaN or infinite values")
    if not (0 < fg_fraction < 1 and 0 < bg_fraction < 1 and fg_fraction + bg_fraction < 1):
        raise JaxvizError("fg_fraction and bg_fraction must be in (0, 1) with a sum below 1")
    height, width = saliency.shape
    h, w = _grid_shape(height, width, max_side)
    fg, bg = _grid_seeds(_resize(saliency, (h, w)), fg_fraction, bg_fraction, smooth)
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return fg.reshape(h, w)[np.ix_(rows, cols)], bg.reshape(h, w)[np.ix_(rows, cols)]


def segment_from_saliency(image01: np.ndarray, saliency: np.ndarray, *, fg_fraction: float = 0.05,
                          bg_fraction: float = 0.3, iterations: int = 10, components: int = 5,
                          gamma: float = 50.0, neighbours: int = 8, max_side: int = 112,
                          smooth: float = 2.0, seed: int = 0) -> np.ndarray:
    """Object mask from a saliency map by GMM colour models + graph cut (GrabCut-style).

    Args:
      image01: (H, W, 3) RGB in [0, 1].
      saliency: (H, W) map at the image's resolution (higher = more salient).
      fg_fraction: share of pixels (most salient) fixed as foreground seeds.
      bg_fraction: share of pixels (least salient) fixed as background seeds.
      iterations: at most this many GMM refit + cut rounds; they stop as soon as a round leaves
        the labelling unchanged (converged).
      components: Gaussians per colour model.
      gamma: weight of the pairwise (smoothness) term, as in GrabCut.
      neighbours: 4 or 8.
      max_side: the cut runs on a grid downsampled to at most this many pixels a side.
      smooth: Gaussian sigma (grid pixels) applied to the saliency before seeding: gradient maps
        are speckled, and isolated salient pixels make poor seeds. 0 = none.
      seed: random state of the GMM fits.
    Returns:
      (H, W) bool mask, True = object.
    Raises:
      JaxvizError: mismatched shapes, NaN saliency, fractions or other settings out of range.
    """
    image01 = np.asarray(image01, np.float32)
    saliency = np.asarray(saliency, np.float32)
    if image01.ndim != 3 or image01.shape[-1] != 3:
        raise JaxvizError(f"image must be (H, W, 3) RGB, got shape {image01.shape}")
    if saliency.shape != image01.shape[:2]:
        raise JaxvizError(f"saliency must be (H, W) = {image01.shape[:2]}, got {saliency.shape}")
    from jaxviz.techniques import check
    check("segment", fg_fraction=fg_fraction, bg_fraction=bg_fraction, iterations=iterations,
          neighbours=neighbours, components=components, gamma=gamma, max_side=max_side, smooth=smooth,
          seed=seed)  # the registry's bounds
    if fg_fraction + bg_fraction >= 1:
        raise JaxvizError("fg_fraction and bg_fraction must be in (0, 1) with a sum below 1")
    if not np.isfinite(saliency).all():
        raise JaxvizError("saliency map contains NaN or infinite values")

    height, width = saliency.shape
    h, w = _grid_shape(height, width, max_side)
    img, sal = _resize(image01, (h, w)), _resize(saliency, (h, w))
    colours = img.reshape(-1, 3).astype(np.float64)
    fg_seed, bg_seed = _grid_seeds(sal, fg_fraction, bg_fraction, smooth)
    p = h * w

    edges, dists = grid_edges(h, w, neighbours)
    diff2 = ((colours[edges[:, 0]] - colours[edges[:, 1]]) ** 2).sum(-1)
    beta = 1.0 / (2.0 * max(diff2.mean(), 1e-12))
    pair = gamma * np.exp(-beta * diff2) / dists
    pair_caps = np.maximum(np.round(pair * SCALE), 0).astype(np.int64)
    # A hard seed's t-link must exceed anything its n-links could save.
    degree = np.bincount(edges.ravel(), weights=np.concatenate([pair_caps, pair_caps]), minlength=p)
    hard = int(degree.max()) + 1

    from threadpoolctl import threadpool_limits
    fg, bg = fg_seed, bg_seed
    for _ in range(iterations):
        with threadpool_limits(1):
            fg_nll = -_fit_gmm(colours[fg], components, seed).score_samples(colours)
            bg_nll = -_fit_gmm(colours[bg], components, seed).score_samples(colours)
        # Subtracting each pixel's smaller cost changes no cut. A cost above ``hard`` (more than
        # all of the pixel's n-links could save) decides the pixel as surely as ``hard`` does.
        base = np.minimum(fg_nll, bg_nll)
        unary_fg = np.minimum(np.round((fg_nll - base) * SCALE), hard).astype(np.int64)
        unary_bg = np.minimum(np.round((bg_nll - base) * SCALE), hard).astype(np.int64)
        source_caps = np.where(fg_seed, hard, np.where(bg_seed, 0, unary_bg))  # cost of "background"
        sink_caps = np.where(bg_seed, hard, np.where(fg_seed, 0, unary_fg))    # cost of "object"
        source_caps, sink_caps, pair_fit = _fit_int32(source_caps, sink_caps, pair_caps)
        labels, _ = min_cut(source_caps, sink_caps, edges, pair_fit)
        if labels.sum() < 2 or (~labels).sum() < 2:
            break
        converged = np.array_equal(labels, fg)
        fg, bg = labels, ~labels
        if converged:
            break
    mask = fg.reshape(h, w)
    return _resize(mask.astype(np.float32), (height, width)) >= 0.5


def _fit_int32(source_caps: np.ndarray, sink_caps: np.ndarray, pair_caps: np.ndarray):
    """(source, sink, pair) capacities scaled down together (the cut stays the same up to rounding)
    until the largest possible flow fits scipy's int32 max-flow."""
    bound = min(int(source_caps.sum()), int(sink_caps.sum()))
    limit = 2 ** 31 - 1
    if bound < limit:
        return source_caps, sink_caps, pair_caps
    factor = limit / (2.0 * bound)
    return tuple(np.floor(c * factor).astype(np.int64) for c in (source_caps, sink_caps, pair_caps))


def mask_overlay(image01: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) image with the background dimmed and the object tinted, via ``jaxviz.render``.

    Raises:
      JaxvizError: a mask of another size than the image.
    """
    from jaxviz.render import colorize
    image01 = np.asarray(image01, np.float32)
    if np.shape(mask) != image01.shape[:2]:
        raise JaxvizError(f"mask must be (H, W) = {image01.shape[:2]}, got {np.shape(mask)}")
    m = np.asarray(mask, np.float32)[..., None]
    tint = colorize(np.full(mask.shape, 0.75), "jet")  # warm colour over the object
    obj = (1 - alpha * 0.5) * image01 + alpha * 0.5 * tint
    return np.clip(m * obj + (1 - m) * image01 * (1 - alpha), 0.0, 1.0)
