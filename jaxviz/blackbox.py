"""Query-based black-box attacks: SimBA (Guo et al. 2019, "Simple Black-box Adversarial Attacks", ICML).

SimBA sees nothing but a probability function ``predict_proba(images01 (N, H, W, 3)) -> (N, classes)``
(no gradients, no parameters: a numpy function of a model outside jaxviz works too). Given a
``jaxviz.interface.Model`` instead (any adapter, also ``from_apply_fn``), it queries the model's
jitted probabilities (``adversarial.proba_fn``: declared preprocessing, softmax of the logits). It walks
through random orthonormal directions q_1, q_2, ...; for each it queries x + eps*q and, only if
that did not help, x - eps*q, and keeps the first that improves the objective (untargeted: lower
p(label); targeted: higher p(target)). Accepted steps only ever improve the objective.

Conventions:
- Images are RGB in [0, 1], NHWC, not preprocessed; ``eps`` (the step length, L2 of one step) and
  the reported L2 / L-inf norms are in pixel units of [0, 1]. eps = 0.2 as in the paper.
- Bases: ``pixel`` = the standard basis in a random order (one coordinate = one pixel of one
  channel per step); ``dct`` = 2-D orthonormal DCT-II basis images (per channel), the low
  frequencies first (u < ceil(H * freq_ratio), v < ceil(W * freq_ratio), ratio 1/8 as in the
  paper) in random order, then the remaining frequencies in random order.
- Steps are clipped to [0, 1] and, with ``max_l2``, projected into the L2 ball around the original
  (radial shrink), so every query is a valid image inside the budget. A step that clipping,
  8-bit rounding or the L2 ball turns into no change is skipped without a query, so all H*W*3
  directions are available whatever the budget.
- 8-bit results: pixel-basis candidates are rounded to the 8-bit grid before they are queried (the
  paper's eps = 0.2 is exactly 51 grey levels), so the state is always a savable PNG. DCT steps
  are far below a grey level per pixel, so DCT candidates stay float; once an accepted float state
  is adversarial, its 8-bit rounding (``adversarial.quantize_8bit``, inside ``max_l2``) is queried,
  and the image stops only if that rounded image is adversarial too.
- Success is never a flag carried through the loop: every reported class, probability and success
  comes from a prediction of exactly the returned 8-bit array (the accepted pixel candidate, the
  DCT rounding check, or a final verification query of images whose rounding was never queried).
- Query counting is exact: every image passed to ``predict_proba`` counts as one query of the image
  it belongs to: the initial prediction of the original (which gives the label and the starting
  probability), every candidate, the 8-bit checks and the final verification. One query is kept in
  reserve whenever the final image might need its verification, so ``queries <= max_queries``.
- Vectorised across images: each iteration builds the candidates of all still-active images and
  queries them in one call (then the minus candidates of the images the plus step did not help, in
  a second call); ``both_signs=True`` queries plus and minus together in one call of 2N instead
  (2 queries per image per iteration). Measured (wave 1, by scripts/bench_optimise.py, since
  replaced by scripts/bench.py; SqueezeNet, 8 images, 2 shared CPU cores): batched calls give
  1.4x the queries/s of one call per query at 112 px and ~1.0x at 224 px (XLA's CPU
  convolutions are compute-bound there; accelerators gain more), and
  both signs in one call gave 0.88x the queries/s of plus-then-minus at both sizes while
  accepting fewer steps per query (it spends the minus query even where plus helped), so
  plus-then-minus, the paper's order, is the default. Images stop individually on success, on an
  exhausted budget or when the directions run out.
- Randomness: one key shared by every image, or (N,) keys (``jaxviz.keys.image_keys``), so an
  image's direction order depends on its own key only and its run in a batch equals its run alone. The loop runs on the host (numpy): its control flow depends on the
  black box's answers, and the black box may not be a JAX function.
"""
from __future__ import annotations

import time
from typing import Callable, Literal

import jax
import numpy as np

from jaxviz.adversarial import _LEVELS, AttackReport, AttackResult, perturbation_norms, quantize_8bit
from jaxviz.errors import JaxvizError
from jaxviz.interface import Model, PyTree
from jaxviz.keys import image_keys
from jaxviz.optimize import require_concrete

Basis = Literal["pixel", "dct"]
BASES = ("pixel", "dct")
FREQ_RATIO = 1 / 8  # the DCT basis's low-frequency block (fraction of H and W), as in the paper
ProbaFn = Callable[[np.ndarray], "np.ndarray | jax.Array"]


# --------------------------------------------------------------------------------------------
# Directions (random orthonormal: permuted standard basis, or low-frequency-first DCT basis)

def dct_matrix(n: int) -> np.ndarray:
    """(n, n) float64 orthonormal DCT-II matrix: column k is the k-th cosine basis vector.

    ``dct_matrix(n)[:, k]`` equals ``scipy.fft.idct(e_k, norm="ortho")``.

    Raises:
      JaxvizError: n < 1.
    """
    if n < 1:
        raise JaxvizError(f"the DCT needs n >= 1, got {n}")
    i = np.arange(n, dtype=np.float64)[:, None]
    k = np.arange(n, dtype=np.float64)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[:, 0] = np.sqrt(1.0 / n)
    return m


def low_frequency_mask(shape: tuple[int, int], freq_ratio: float) -> np.ndarray:
    """(H * W * 3,) bool over direction indices (u * W + v) * 3 + c: u < ceil(H r), v < ceil(W r)."""
    h, w = shape
    u = np.arange(h)[:, None, None] < int(np.ceil(h * freq_ratio))
    v = np.arange(w)[None, :, None] < int(np.ceil(w * freq_ratio))
    return np.broadcast_to(u & v, (h, w, 3)).reshape(-1)


def direction_order(key: jax.Array, shape: tuple[int, int], basis: Basis, *,
                    freq_ratio: float = FREQ_RATIO, count: int | None = None) -> np.ndarray:
    """(count,) direction indices for one image (``key`` one key) or (N, count) for (N,) keys,
    in the order SimBA tries them.

    An index is a flat NHWC position ``(y * W + x) * 3 + c``: a pixel of one channel (pixel basis)
    or the DCT frequency (u, v) = (y, x) of channel c (DCT basis). Pixel: a random permutation of
    all H*W*3; DCT: the low-frequency block in random order, then the other frequencies.

    Raises:
      JaxvizError: an unknown ``basis``.
    """
    if basis not in ("pixel", "dct"):
        raise JaxvizError(f"unknown basis {basis!r}; use pixel or dct")
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw uint32 key data
        key = jax.random.wrap_key_data(np.asarray(key, np.uint32))
    if key.ndim > 0:  # one order per image, vmapped (the same as one call per key)
        return np.asarray(jax.vmap(lambda k: _order(k, shape, basis, freq_ratio, count))(key))
    return np.asarray(_order(key, shape, basis, freq_ratio, count))


def _order(key, shape, basis, freq_ratio, count):
    h, w = shape
    total = h * w * 3
    count = total if count is None else min(int(count), total)
    if basis == "pixel":
        return jax.random.permutation(key, total)[:count]
    low = np.flatnonzero(low_frequency_mask(shape, freq_ratio))
    k_low, k_rest = jax.random.split(key)
    order = jax.random.permutation(k_low, low)
    if count > len(low):
        rest = np.flatnonzero(~low_frequency_mask(shape, freq_ratio))
        order = jax.numpy.concatenate([order, jax.random.permutation(k_rest, rest)])
    return order[:count]


class _Directions:
    """Unit-norm direction images (n, H, W, 3) float32 from direction indices (n,)."""

    def __init__(self, shape: tuple[int, int], basis: Basis):
        self.h, self.w = shape
        self.basis = basis
        if basis == "dct":
            self.ch = dct_matrix(self.h).astype(np.float32)
            self.cw = dct_matrix(self.w).astype(np.float32)

    def __call__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        n = len(index)
        q = np.zeros((n, self.h * self.w * 3), np.float32)
        if self.basis == "pixel":
            q[np.arange(n), index] = 1.0
            return q.reshape(n, self.h, self.w, 3)
        q = q.reshape(n, self.h, self.w, 3)
        uv, c = np.divmod(index, 3)
        u, v = np.divmod(uv, self.w)
        # separable 2-D cosine: outer product of the row and column basis vectors
        q[np.arange(n), :, :, c] = self.ch[:, u].T[:, :, None] * self.cw[:, v].T[:, None, :]
        return q


def basis_images(index: np.ndarray, shape: tuple[int, int], basis: Basis) -> np.ndarray:
    """(n,) direction indices -> (n, H, W, 3) float32 unit-L2 direction images (see direction_order)."""
    if basis not in BASES:
        raise JaxvizError(f"unknown basis {basis!r}; use one of {', '.join(BASES)}")
    return _Directions(shape, basis)(index)


# --------------------------------------------------------------------------------------------
# The attack

def _per_image(classes, n: int, what: str) -> np.ndarray:
    """A class index (all images) or (N,) indices -> (N,) int64."""
    value = np.asarray(classes)
    if value.ndim > 1 or (value.ndim == 1 and len(value) != n) or not np.issubdtype(value.dtype, np.integer):
        raise JaxvizError(f"{what} must be a class index or {n} integer class indices, got {classes!r}")
    return np.broadcast_to(value, (n,)).astype(np.int64)


def _pad_size(m: int, chunk: int | None) -> int:
    """The next power of two >= m, at most ``chunk``."""
    size = 1 << max(m - 1, 0).bit_length()
    return size if chunk is None else min(chunk, size)


class _Oracle:
    """The black box, called in chunks; counts the calls and the images it was shown."""

    def __init__(self, predict_proba: ProbaFn, chunk: int | None, pad: bool):
        self.predict_proba, self.chunk, self.pad = predict_proba, chunk, pad
        self.calls = 0
        self.images = 0
        self.classes: int | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        chunk = self.chunk or len(x)
        out = []
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk]
            m = len(part)
            if self.pad and _pad_size(m, self.chunk) > m:
                # filler copies keep a jitted callable at a few batch shapes; not queries of any image
                part = np.concatenate([part, np.repeat(part[-1:], _pad_size(m, self.chunk) - m, 0)])
            p = np.asarray(self.predict_proba(part), np.float64)
            self.calls += 1
            self.images += len(part)
            if p.ndim != 2 or p.shape[0] != len(part) or (self.classes and p.shape[1] != self.classes):
                raise JaxvizError(f"predict_proba must return (N, classes) probabilities for N images, got "
                                  f"shape {p.shape} for {len(part)} images")
            self.classes = p.shape[1]
            out.append(p[:m])
        return np.concatenate(out)


def _candidates(x: np.ndarray, x0: np.ndarray, step: np.ndarray, *, max_l2: float | None,
                grid: bool) -> np.ndarray:
    """clip(x + step) (into the L2 ball around x0 first, if max_l2), rounded to 8 bits if grid."""
    c = x + step
    if max_l2 is not None:
        d = (c - x0).reshape(len(c), -1)
        norm = np.sqrt((d.astype(np.float64) ** 2).sum(1))
        scale = np.minimum(1.0, max_l2 / np.maximum(norm, 1e-12)).astype(np.float32)
        c = x0 + scale[:, None, None, None] * (c - x0)
    c = np.clip(c, 0.0, 1.0)
    if grid:
        c = _quantize(c, x0, max_l2)
    return c.astype(np.float32)


def _quantize(x: np.ndarray, x0: np.ndarray, max_l2: float | None) -> np.ndarray:
    """The 8-bit image of x (inside the L2 budget): ``adversarial.quantize_8bit``; without a
    budget the same rounding in numpy (no device round trip on the host loop's hot path)."""
    if max_l2 is None:
        return _LEVELS[np.clip(np.rint(x * np.float32(255.0)), 0, 255).astype(np.int32)]
    return np.array(quantize_8bit(x, x0, norm="l2", eps=max_l2), np.float32)  # writable copy


def simba(predict_proba: ProbaFn | Model, images: jax.Array, *, label: jax.Array | None = None,
          target: int | jax.Array | None = None, basis: Basis = "dct",
          eps: float = 0.2, max_queries: int = 5000, max_l2: float | None = None,
          freq_ratio: float | None = None, key: jax.Array | None = None, both_signs: bool = False,
          chunk: int | None = None, pad: bool | None = None, model: str = "",
          params: PyTree | None = None) -> AttackResult:
    """SimBA on a batch of images through a probability function only (see the module docstring).

    Args:
      predict_proba: ``f(images01 (M, H, W, 3) float32 numpy) -> (M, classes)`` probabilities,
        or a ``jaxviz.interface.Model`` (queried through ``adversarial.proba_fn(model, params)``;
        ``params`` None: ``model.params``).
      images: (N, H, W, 3) RGB in [0, 1] (8-bit images for exact 8-bit results).
      label: (N,) reference classes for the untargeted attack (default: the black box's
        prediction on the originals; that initial query is made and counted in any case).
      target: class index (all images) or (N,) indices: targeted (raise p(target) until it is
        the top class; a target that is already the top class on the original is an error);
        None: untargeted (lower p(label) until another class is on top).
      basis: "pixel" or "dct". eps: step length in [0, 1] pixel units (L2 of one step); the
        pixel basis needs eps >= 0.5/255 (its candidates are rounded to the 8-bit grid).
      max_queries: per-image budget of images passed to predict_proba (>= 2), never exceeded.
      max_l2: optional L2 budget of the perturbation (pixel units, >= 1/255: one grey level);
        None: unbounded.
      freq_ratio: DCT low-frequency block, as a fraction of the height and width, in (0, 1]
        (None: 1/8, the paper's); with ``basis="pixel"`` it must stay None (it would do nothing).
      key: PRNG key (split per image) or (N,) keys: the random direction orders.
      both_signs: query x + eps q and x - eps q together (one call of 2N) instead of x - eps q
        only where x + eps q did not help (the paper's order, fewer queries).
      chunk: at most this many images per predict_proba call (memory).
      pad: pad every call to a power of two (<= chunk) with copies, so a jitted predict_proba
        compiles for a few batch sizes only; the copies are no query of any image (default: True
        for a ``Model``, False for a function).
      model: a name for the report (default: the ``Model``'s name).
      params: the ``Model``'s parameters (None: its own); only with a ``Model``.
    Returns:
      ``AttackResult(images (N, H, W, 3) float32 on the 8-bit grid, report)``; ``report.queries``
      (N,) queries used, ``report.steps`` (N,) directions tried, ``report.eps`` = max_l2;
      ``report.extra``: ``accepted`` (N,) accepted steps, ``trace`` (iterations + 1, N) the
      objective's probability (p(label) untargeted, p(target) targeted) of the accepted state
      after each iteration, ``calls``, ``images_sent``, ``seconds``.
    Raises:
      JaxvizError: bad shapes, values or budgets, a ``freq_ratio`` with the pixel basis, a target
        already on top of an original, or a predict_proba of the wrong output shape.
    """
    require_concrete("simba", images, label, target, key)
    start_time = time.perf_counter()
    from jaxviz.techniques import check
    check("simba", basis=basis, eps=eps, max_queries=max_queries, max_l2=max_l2, freq_ratio=freq_ratio, chunk=chunk)
    freq_ratio = FREQ_RATIO if freq_ratio is None else freq_ratio
    if isinstance(predict_proba, Model):
        from jaxviz.adversarial import proba_fn
        model = model or predict_proba.name
        pad = True if pad is None else pad
        predict_proba = proba_fn(predict_proba, params)
    elif params is not None:
        raise JaxvizError("params apply to a jaxviz Model only; a predict_proba function holds its own")
    pad = bool(pad)
    x0 = np.asarray(images, np.float32)
    if x0.ndim != 4 or x0.shape[-1] != 3:
        raise JaxvizError(f"images must be (N, H, W, 3) in [0, 1], got shape {tuple(x0.shape)}")
    if not np.isfinite(x0).all() or x0.min(initial=0) < 0 or x0.max(initial=0) > 1:
        raise JaxvizError("images must be finite and in [0, 1]")
    if basis == "pixel" and eps < 0.5 / 255:
        # pixel candidates are rounded to the 8-bit grid: such a step rounds back to the same image
        raise JaxvizError(f"eps (--step) {eps:g} is under half a grey level (0.5/255): every pixel-basis step would "
                          "round back to the same 8-bit value; use eps >= 0.5/255 or basis='dct'")
    if max_l2 is not None and max_l2 < 1 / 255 * (1 - 1e-6):
        raise JaxvizError(f"max_l2 (--eps) {max_l2:g} is under one grey level (1/255): no 8-bit image other than "
                          "the original fits in it")
    max_queries = int(max_queries)
    n, h, w, _ = x0.shape
    rows = np.arange(n)
    keys = image_keys(key, n)
    # all directions (indices only, 4 bytes each; the direction images are built per step): a
    # direction whose steps clipping, rounding or the L2 ball turn into no change costs no query,
    # so the budget, not a count of directions, ends the run
    count = h * w * 3
    orders = (direction_order(keys, (h, w), basis, freq_ratio=freq_ratio, count=count) if n
              else np.zeros((0, count), np.int64))
    directions = _Directions((h, w), basis)
    grid = basis == "pixel"
    oracle = _Oracle(predict_proba, chunk, pad)

    p0 = oracle(x0)  # the initial prediction: label and starting probability (1 query each)
    used = np.ones(n, np.int64)
    classes = p0.shape[1]
    label = p0.argmax(1) if label is None else _per_image(label, n, "label")
    targeted = target is not None
    tgt = _per_image(target, n, "target") if targeted else np.full(n, -1)
    for name, values in (("label", label), ("target", tgt if targeted else label)):
        if len(values) and (values.min() < 0 or values.max() >= classes):
            raise JaxvizError(f"{name} classes must be in 0..{classes - 1}")
    if targeted:  # a target already on top would be a "success" without an attack
        same = np.flatnonzero(tgt == p0.argmax(1))
        if len(same):
            raise JaxvizError(f"image {same[0]}: target class {tgt[same[0]]} is already the black box's top "
                              "class on the original; choose another target")
    goal = tgt if targeted else label

    def objective(p: np.ndarray, idx: np.ndarray) -> np.ndarray:  # to minimise
        v = p[np.arange(len(idx)), goal[idx]]
        return -v if targeted else v

    def adversarial(p: np.ndarray, idx: np.ndarray) -> np.ndarray:
        top = p.argmax(1)
        return top == tgt[idx] if targeted else top != label[idx]

    x = x0.copy()
    cur = objective(p0, rows)
    cur_adv = adversarial(p0, rows)
    final = _quantize(x0, x0, max_l2)
    known = (final == x0).reshape(n, -1).all(1)  # is the final 8-bit image's prediction known?
    on_grid = known.copy()  # is the state x on the 8-bit grid?
    final_p = p0.copy()
    done = known & cur_adv
    tried = np.zeros(n, np.int64)
    accepted = np.zeros(n, np.int64)
    trace = [-cur if targeted else cur.copy()]

    def accept(idx: np.ndarray, cand: np.ndarray, p: np.ndarray) -> None:
        x[idx] = cand
        cur[idx] = objective(p, idx)
        cur_adv[idx] = adversarial(p, idx)
        accepted[idx] += 1
        if grid:  # the candidate was on the 8-bit grid: it is the final image, already predicted
            final[idx], final_p[idx], known[idx], on_grid[idx] = cand, p, True, True
        else:
            known[idx] = False

    def check_rounded() -> None:
        # DCT: an adversarial float state is checked as the 8-bit image it would be saved as
        c = np.flatnonzero(~known & cur_adv & ~done)
        if len(c):
            final[c] = _quantize(x[c], x0[c], max_l2)
            final_p[c] = oracle(final[c])
            used[c] += 1
            known[c] = True
        done[:] |= known & adversarial(final_p, rows)

    sparse = grid and max_l2 is None  # pixel steps on the grid touch one value: no dense work

    def propose(idx: np.ndarray, coords: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
        """Candidates x + sign * eps * q (clipped, projected, rounded) and whether they move x:
        a step that clipping (or rounding) turns into no change is skipped without a query."""
        cand = x[idx]
        if sparse and on_grid[idx].all():
            flat = cand.reshape(len(idx), -1)
            rows_ = np.arange(len(idx))
            old = flat[rows_, coords]
            new = _quantize(np.clip(old + np.float32(sign * eps), 0, 1), None, None)
            flat[rows_, coords] = new  # equal to the dense rounding: the other values are levels
            return cand, new != old
        cand = _candidates(cand, x0[idx], sign * eps * directions(coords), max_l2=max_l2, grid=grid)
        return cand, (cand != x[idx]).reshape(len(idx), -1).any(1)

    check_rounded()
    t = 0
    while True:
        reserve = np.where(known & grid, 0, 1)  # keep one query for the final verification
        active = ~done & (used + 1 + reserve <= max_queries) & (t < count)
        if not active.any():
            break
        idx = np.flatnonzero(active)
        coords = orders[idx, t]
        tried[idx] += 1
        plus, moves_p = propose(idx, coords, 1.0)
        if both_signs:
            minus, moves_m = propose(idx, coords, -1.0)
            room2 = used[idx] + 2 + reserve[idx] <= max_queries
            ask_p, ask_m = moves_p, moves_m & (room2 | ~moves_p)
            p_all = oracle(np.concatenate([plus[ask_p], minus[ask_m]]))
            pp, pm = p_all[:ask_p.sum()], p_all[ask_p.sum():]
            used[idx] += ask_p.astype(np.int64) + ask_m
            vp = np.full(len(idx), np.inf)
            vm = np.full(len(idx), np.inf)
            vp[ask_p] = objective(pp, idx[ask_p])
            vm[ask_m] = objective(pm, idx[ask_m])
            take_p = (vp < cur[idx]) & (vp <= vm)
            take_m = (vm < cur[idx]) & ~take_p
            if take_p.any():
                accept(idx[take_p], plus[take_p], pp[np.cumsum(ask_p)[take_p] - 1])
            if take_m.any():
                accept(idx[take_m], minus[take_m], pm[np.cumsum(ask_m)[take_m] - 1])
        else:
            better = np.zeros(len(idx), bool)
            if moves_p.any():
                pp = oracle(plus[moves_p])
                used[idx[moves_p]] += 1
                better[moves_p] = objective(pp, idx[moves_p]) < cur[idx[moves_p]]
                if better.any():
                    accept(idx[better], plus[better], pp[better[moves_p]])
            # the minus step only where the plus step did not help (and the budget allows)
            rest = np.flatnonzero(~better & (used[idx] + 1 + reserve[idx] <= max_queries))
            if len(rest):
                minus, ask = propose(idx[rest], coords[rest], -1.0)
                rest, minus = rest[ask], minus[ask]
            if len(rest):
                pm = oracle(minus)
                used[idx[rest]] += 1
                good = objective(pm, idx[rest]) < cur[idx[rest]]
                if good.any():
                    accept(idx[rest][good], minus[good], pm[good])
        t += 1
        check_rounded()
        trace.append(-cur if targeted else cur.copy())

    unknown = np.flatnonzero(~known)
    if len(unknown):  # the final verification query (kept in reserve above)
        final[unknown] = _quantize(x[unknown], x0[unknown], max_l2)
        final_p[unknown] = oracle(final[unknown])
        used[unknown] += 1
    assert (used <= max_queries).all()

    success = adversarial(final_p, rows)
    top = final_p.argmax(1)
    l2, linf = perturbation_norms(x0, final)
    report = AttackReport(
        method=f"simba-{basis}", model=model, success=success, steps=tried.astype(np.int32),
        label=label.astype(np.int32), label_confidence=p0[rows, label], target=tgt.astype(np.int32),
        final_class=top.astype(np.int32), final_confidence=final_p[rows, top],
        target_confidence=final_p[rows, np.where(tgt >= 0, tgt, label)], l2=l2, linf=linf,
        eps=max_l2, norm="l2", queries=used.copy(),
        extra=dict(accepted=accepted, trace=np.stack(trace), calls=oracle.calls,
                   images_sent=oracle.images, step=eps, basis=basis, both_signs=both_signs,
                   seconds=time.perf_counter() - start_time))
    return AttackResult(final, report)
