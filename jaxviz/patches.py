"""Maximally activating patches (Zeiler & Fergus 2014, fig. 2; Girshick et al. 2014, fig. 4).

For a (layer, channel), a scan index (``jaxviz.scan``, on disk ``jaxviz.scan_index``) holds the k
images and positions with the strongest activation; the photographs themselves come in as arrays
(``images``: a mapping global image index -> (H, W, 3), e.g. ``jaxviz.scan_index.index_images``). The unit at position (y, x) of a layer sees exactly the input box
``field.box(y, x)`` of the layer's receptive field, so cropping that box shows everything the
unit saw — nothing less, nothing more. Where the box hangs over the image edge (the unit saw
padding there) the tile is grey. Deeper layers have larger receptive fields, hence larger patches.

Receptive fields come from the model: declared (``model.receptive_fields(size)``, the bundled
networks compose them from every kernel, stride and padding) or, for a model that does not know
its geometry (a user's linen / nnx module), MEASURED from gradient support (``measured_field``):
the input pixels with a non-zero gradient of one unit are the pixels it depends on. A channel can
see less than its layer (a SqueezeNet fire module's 1x1-expand channels see only what the squeeze
saw); the part of the layer's box a channel does not see is greyed too, measured the same way.

Conventions: images float RGB in [0, 1], NHWC; a patch tile is (S, S, 3) with S the receptive
field size; crops are one vmapped ``dynamic_slice`` (sizes static, positions traced). Fields are
the same along rows and columns (``ReceptiveField`` has one size, stride and offset).

Deconvnet reconstructions (Z&F fig. 2, left of each patch grid): ``unit_signals`` projects ONE
unit per image back to pixels with the deconvnet backward rule (ReLUs applied to the signal,
max-pools routed through their switches); ``top_reconstructions`` does it for a channel's top-k
units and cuts the same boxes as ``top_patches``; ``signal_image`` shows a signed signal on grey.
"""
from __future__ import annotations

import functools
from collections import Counter
from functools import partial
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.interface import Model, ModelLike, ReceptiveField, as_model
from jaxviz.interface.backward import RULES
from jaxviz.interface.model import host_indices, layer_tuple

if TYPE_CHECKING:
    from jaxviz.scan_index import Index

PyTree = Any
# The photographs under the units: global image index -> (H, W, 3) float [0, 1] at the index's size.
Images = Union[Mapping[int, np.ndarray], Callable[[int], np.ndarray]]
GREY = 0.5
_PROBE_IMAGES = 8  # random inputs whose gradient supports are united (max-pools route to one input)
_MAX_SIDE = 2048  # largest canvas a measurement may grow to
_PERIOD = 64  # canvases keep the input size modulo this (size-dependent "SAME" padding stays the same)


@partial(jax.jit, static_argnames=("size",))
def crop_patches(images: jax.Array, tops: jax.Array, lefts: jax.Array, size: int,
                 fill: float = GREY) -> jax.Array:
    """Crop (size, size) boxes starting at (top, left) — possibly outside — filling with ``fill``.

    Args:
      images: (N, H, W, 3).
      tops, lefts: (N,) int box corners in pixels (may be negative or beyond the image).
      size: tile size (static).
    Returns:
      (N, size, size, 3) tiles; pixels outside the image are ``fill``.
    """
    padded = jnp.pad(images, ((0, 0), (size, size), (size, size), (0, 0)), constant_values=fill)
    h, w = images.shape[1:3]

    def one(img, top, left):
        # Clamp inside the padded frame: a box can lie entirely off the image (huge fields).
        t = jnp.clip(top + size, 0, h + size)
        l = jnp.clip(left + size, 0, w + size)
        return jax.lax.dynamic_slice(img, (t, l, 0), (size, size, img.shape[-1]))

    return jax.vmap(one)(padded, tops, lefts)


# ------------------------------------------------------------------------- measured fields

def _picked(acts: dict, layers: tuple[str, ...], which: jax.Array, units: jax.Array, weights: jax.Array,
            blocks: bool) -> jax.Array:
    """(Q, M): probe q's score ``sum_c weights[q, c] * act[layers[which[q]]][m, units[q], c]`` on
    images m. ``blocks``: the batch holds Q blocks of M images, block q for probe q only;
    otherwise every probe reads all M images."""
    q = which.shape[0]
    total = 0.0
    for i, layer in enumerate(layers):
        a = acts[layer]
        rows = jnp.clip(units[:, 0], 0, a.shape[1] - 1)
        cols = jnp.clip(units[:, 1], 0, a.shape[2] - 1)
        w = weights[:, :a.shape[-1]] * (which == i)[:, None]
        if blocks:
            a = a.reshape((q, -1) + a.shape[1:])  # (Q, M, h, w, C)
            picked = a[jnp.arange(q), :, rows, cols, :]  # (Q, M, C)
            total = total + jnp.einsum("qmc,qc->qm", picked, w)
        else:
            picked = a[:, rows, cols, :]  # (M, Q, C)
            total = total + jnp.einsum("mqc,qc->qm", picked, w)
    return total


@partial(jax.jit, static_argnames=("model", "layers"))
def _probe_scores(model: Model, params: PyTree, layers: tuple[str, ...], pool: jax.Array, which: jax.Array,
                  units: jax.Array, weights: jax.Array) -> jax.Array:
    """(Q, M): every probe's score on every image of the random pool (one forward pass)."""
    return _picked(model.activations(params, pool, layers), layers, which, units, weights, blocks=False)


@partial(jax.jit, static_argnames=("model", "layers", "chunk"))
def _support_chunks(model: Model, params: PyTree, layers: tuple[str, ...], pool: jax.Array, chosen: jax.Array,
                    which: jax.Array, units: jax.Array, weights: jax.Array, chunk: int) -> jax.Array:
    """(Q, H, W) bool: for probe q, the input pixels with a non-zero gradient of its score (see
    ``_picked``), united over the pool images ``chosen[q]`` (R of them). Probes run ``chunk`` at
    a time, each on its own copies of its images, so one forward and one backward graph serve
    every layer (one compilation). Q is a multiple of ``chunk``."""
    images = chosen.shape[1]

    def step(probe):
        chosen_, which_, units_, weights_ = probe  # (chunk, R), (chunk,), (chunk, 2), (chunk, Cmax)
        xs = pool[chosen_.reshape(-1)]  # (chunk * R, H, W, 3)

        def score(xs):
            return jnp.sum(_picked(model.activations(params, xs, layers), layers, which_, units_, weights_, True))

        g = jax.grad(score)(xs).reshape((chunk, images) + pool.shape[1:])
        return jnp.any(g != 0, axis=(1, 4))

    n = which.shape[0] // chunk
    if n == 1:  # no loop: a smaller program to compile
        return step((chosen, which, units, weights))
    masks = jax.lax.map(step, (chosen.reshape(n, chunk, images), which.reshape(n, chunk),
                               units.reshape(n, chunk, 2), weights.reshape(n, chunk, -1)))
    return masks.reshape((-1,) + pool.shape[1:3])


def _support(model: Model, params: PyTree, layers: tuple[str, ...], hw: tuple[int, int], units: dict,
             weights: dict, seed: int, images: int, rule: str = "gradient") -> dict:
    """{layer: (P, H, W) bool numpy}: each probe's gradient support for the probes {layer: units
    (P, 2)} with channel weights {layer: (P, C)}, united over ``images`` random inputs.

    A dead unit has no gradient at all, so each probe uses the ``images`` inputs (of a pool of
    4 x ``images`` standard-normal ones) on which its score is largest. ``rule``: the ReLU
    backward rule (``model.with_backward``) of the backward pass."""
    which = np.concatenate([np.full(len(units[layer]), i, np.int32) for i, layer in enumerate(layers)])
    u = np.concatenate([np.asarray(units[layer], np.int32) for layer in layers])
    cmax = max(np.shape(weights[layer])[1] for layer in layers)
    w = np.concatenate([np.pad(np.asarray(weights[layer], np.float32), ((0, 0), (0, cmax - np.shape(weights[layer])[1])))
                        for layer in layers])
    q = len(which)
    # Random inputs from numpy: jax.random's threefry takes seconds to compile on a CPU.
    pool = jnp.asarray(np.random.default_rng(seed).standard_normal((4 * images,) + tuple(hw) + (3,)), jnp.float32)
    scores = np.asarray(_probe_scores(model, params, layers, pool, jnp.asarray(which), jnp.asarray(u),
                                      jnp.asarray(w)))
    chosen = np.argsort(-scores, axis=1, kind="stable")[:, :images].astype(np.int32)
    # Probes per step: about 2 Mpixels of input copies at a time (memory), at most all of them.
    chunk = int(max(1, min(q, 2 ** 21 // (images * hw[0] * hw[1]))))
    pad = -q % chunk
    which = np.concatenate([which, np.zeros(pad, np.int32)])
    u = np.concatenate([u, np.zeros((pad, 2), np.int32)])
    w = np.concatenate([w, np.zeros((pad, cmax), np.float32)])
    chosen = np.concatenate([chosen, np.zeros((pad, images), np.int32)])
    masks = np.asarray(_support_chunks(model.with_backward(rule), params, layers, pool, jnp.asarray(chosen),
                                       jnp.asarray(which), jnp.asarray(u), jnp.asarray(w), chunk))[:q]
    out, start = {}, 0
    for layer in layers:
        out[layer] = masks[start:start + len(units[layer])]
        start += len(units[layer])
    return out


def _extents(masks: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last index along ``axis`` (0 rows, 1 columns) of each (H, W) mask; -1 if empty."""
    hit = masks.any(axis=2 - axis)  # (P, n)
    n = hit.shape[1]
    first = np.where(hit.any(1), hit.argmax(1), -1)
    last = np.where(hit.any(1), n - hit[:, ::-1].argmax(1), -1)
    return first, last


def _fit_axis(pos: np.ndarray, first: np.ndarray, last: np.ndarray, n: int,
              stride: int | None = None) -> ReceptiveField | None:
    """Size, stride and offset along one axis from the supports of units at positions ``pos``.

    A support's first pixel is the box's top unless the box was clipped by the image (first == 0);
    its last is the box's bottom unless clipped by what the layer can see at all: the image, or
    less when a stride does not divide it, i.e. the largest last pixel of any probe. Sparse
    supports can only shrink a box, so the offset is the smallest top seen and the end the largest
    bottom. None: not determined at this size.
    """
    ok = first >= 0
    if not ok.any():
        return None
    visible = int(last[ok].max())
    tops = [(int(p), int(f)) for p, f, o in zip(pos, first, ok) if o and f > 0]
    bots = [(int(p), int(l)) for p, l, o in zip(pos, last, ok) if o and l < visible]
    if stride is None:
        steps: Counter = Counter()
        for edges in (tops, bots):
            for a in range(len(edges)):
                for b in range(a + 1, len(edges)):
                    (pa, ea), (pb, eb) = edges[a], edges[b]
                    if pa != pb and (ea - eb) % (pa - pb) == 0 and (ea - eb) // (pa - pb) > 0:
                        steps[(ea - eb) // (pa - pb)] += 1
        if not steps:
            return None
        stride = max(steps, key=lambda s: (steps[s], -s))
    if not tops or not bots:
        return None
    offset = min(e - p * stride for p, e in tops)
    end = max(e - p * stride for p, e in bots)
    return ReceptiveField(end - offset, stride, offset) if end > offset else None


def _probe_positions(n: int) -> np.ndarray:
    """Units probed along an axis of n: both ends (extents), their neighbours and the middle
    (unclipped boxes, for the stride)."""
    return np.unique(np.clip([0, 1, n // 2, n - 2, n - 1], 0, n - 1))


def _last_position(n: int) -> np.ndarray:
    return np.asarray([n - 1])


def _canvases(n: int) -> list[int]:
    """Input sides to measure at for an input side n: n itself if small, else a smaller side with
    the same remainder modulo 64 (cheaper; the same geometry), then larger ones until a unit's
    box fits (fields larger than the image)."""
    start = n if n <= 2 * _PERIOD else _PERIOD + n % _PERIOD
    sides = [start + _PERIOD * (2 ** k - 1) for k in range(8)]
    return [v for v in sides if v <= _MAX_SIDE] or [start]


def _layer_shapes(model: Model, params: PyTree, layers: tuple[str, ...], hw: tuple[int, int]) -> dict:
    """{layer: shape without batch} at ``hw`` (abstract evaluation; the pass stops after them, so a
    classifier head that needs another input size does not matter)."""
    x = jax.ShapeDtypeStruct((1,) + hw + (3,), jnp.float32)
    try:
        acts = jax.eval_shape(lambda p, x: model.activations(p, x, layers), params, x)
    except JaxvizError:
        raise
    except Exception as e:  # the model does not run at this size
        raise JaxvizError(f"cannot measure receptive fields in {model.name}: it does not run on a "
                          f"{hw[0]}x{hw[1]} input ({e.__class__.__name__})") from None
    shapes = {layer: tuple(acts[layer].shape[1:]) for layer in layers}
    for layer, shape in shapes.items():
        if len(shape) != 3 or 0 in shape:
            raise JaxvizError(f"layer {layer} of {model.name} has no spatial output at {hw[0]}x{hw[1]} "
                              f"(shape {shape}); a receptive field needs an (h, w, C) layer")
    return shapes


def _measure(model: Model, params: PyTree, layers: tuple[str, ...], hw: tuple[int, int],
             channel: int | None = None, seed: int = 0, positions=_probe_positions) -> dict:
    """{layer: (rows field or None, columns field or None, (visible rows, visible columns))} at ``hw``."""
    shapes = _layer_shapes(model, params, layers, hw)
    rng = np.random.default_rng(seed + 1)
    # Fewer inputs per probe on large canvases (cost); each is one that excites the probe most.
    images = _PROBE_IMAGES if hw[0] * hw[1] <= 96 * 96 else _PROBE_IMAGES // 2
    units, weights, probes = {}, {}, {}
    for i, layer in enumerate(layers):
        lh, lw, c = shapes[layer]
        rows, cols = positions(lh), positions(lw)
        probes[layer] = rows, cols
        units[layer] = np.concatenate([np.stack([rows, np.full_like(rows, lw // 2)], 1),
                                       np.stack([np.full_like(cols, lh // 2), cols], 1)]).astype(np.int32)
        # Positive random weights over the channels: no systematic cancellation between channels.
        w = rng.uniform(0.5, 1.5, (len(units[layer]), c)).astype(np.float32)
        if channel is not None:
            if not 0 <= channel < c:
                raise JaxvizError(f"channel {channel} out of range: layer {layer} has {c} channels")
            w = np.zeros_like(w)
            w[:, channel] = 1.0
        weights[layer] = w
    masks = _support(model, params, layers, hw, units, weights, seed, images)
    out = {}
    for layer in layers:
        rows, cols = probes[layer]
        r_first, r_last = _extents(masks[layer][:len(rows)], 0)
        c_first, c_last = _extents(masks[layer][len(rows):], 1)
        # What the last unit can see: less than the image when a stride does not divide it.
        extent = (int(r_last[-1]) if r_last[-1] > 0 else hw[0], int(c_last[-1]) if c_last[-1] > 0 else hw[1])
        out[layer] = (_fit_axis(rows, r_first, r_last, hw[0]), _fit_axis(cols, c_first, c_last, hw[1]), extent)
    return out


def measured_fields(model: ModelLike, params: PyTree, layers: Sequence[str], size: int | tuple[int,
                    int] | None = None, *,
                    channel: int | None = None, seed: int = 0) -> dict[str, ReceptiveField]:
    """{layer: receptive field} MEASURED from gradient support, for any model with named layers.

    For probe units along a row and a column of each layer (ends and middle), the input pixels
    with a non-zero gradient of the unit (its channels summed with positive random weights, or
    only ``channel``), united over 8 random inputs, give the box each unit sees; their tops and
    bottoms give the stride (the common step between units), the offset and the size, as
    ``model.receptive_fields`` declares them for the bundled networks. Boxes clipped by the image
    do not count. Inputs larger than 128 px are measured on a smaller canvas with the same size
    modulo 64, and where no unit's box is unclipped the canvas grows (up to 2048 px): this assumes
    the geometry depends on the input size at most through its remainder modulo 64 (true for
    explicit padding, and for "SAME" padding with strides up to 64; not for adaptive pooling).
    All layers share one forward pass and one compilation.

    Args:
      model: a ``jaxviz`` Model with named layers; params: its variables (``model.params``).
      layers: layers with a spatial (h, w, C) output.
      size: input size (int or (h, w); default the model's).
      channel: measure one channel's field (default: the union over channels, the layer's).
    Returns:
      {canonical layer name: ``ReceptiveField(size, stride, offset)``}: unit (i, j) sees rows
      [offset + i*stride, offset + i*stride + size), and the same along columns.
    Raises:
      JaxvizError: no named layers, a non-spatial layer, a field that differs between rows and
        columns (a non-square input with size-dependent padding), or one that could not be measured.
    """
    model = as_model(model)
    names = tuple(dict.fromkeys(model.resolve_layer(layer) for layer in layer_tuple(layers)))
    if not names:
        return {}
    hw = model.input_hw(size)
    fields: dict[str, ReceptiveField] = {}
    todo = names
    heights, widths = _canvases(hw[0]), _canvases(hw[1])
    for at in zip(heights + heights[-1:] * len(widths), widths + widths[-1:] * len(heights)):
        measured = _measure(model, params, todo, at, channel, seed)
        for layer, (rows, cols, _) in measured.items():
            if rows is not None and cols is not None:
                if rows != cols:
                    raise JaxvizError(f"the receptive field of {layer} differs between rows ({rows}) and "
                                      f"columns ({cols}) at {at[0]}x{at[1]}; use a square input")
                fields[layer] = rows
        todo = tuple(layer for layer in todo if layer not in fields)
        if not todo or at == (heights[-1], widths[-1]):
            break
    if todo:
        what = f"channel {channel} of {todo[0]}" if channel is not None else todo[0]
        raise JaxvizError(f"could not measure the receptive field of {what} of {model.name} (up to "
                          f"{heights[-1]}x{widths[-1]} px): its units have no input gradient, or see the whole image")
    return {layer: fields[layer] for layer in names}


def measured_field(model: ModelLike, params: PyTree, layer: str, size: int | tuple[int, int] | None = None, *,
                   channel: int | None = None, seed: int = 0) -> ReceptiveField:
    """The receptive field of one ``layer``, MEASURED from gradient support (``measured_fields``).

    Equal to the declared ``model.receptive_fields(size)[layer]`` where the model declares one
    (tested on the bundled networks); the way to know the geometry of a user's linen/nnx model.
    """
    model = as_model(model)
    return measured_fields(model, params, (layer,), size, channel=channel, seed=seed)[model.resolve_layer(layer)]


# ------------------------------------------------------------------------ fields for patches

def _declared(model: Model, layer: str, hw: tuple[int, int]) -> ReceptiveField | None:
    fields = model.receptive_fields(hw)
    return fields.get(layer) if fields else None


def layer_field(model: ModelLike, layer: str, size: int | tuple[int, int] | None = None, *,
                params: PyTree | None = None) -> ReceptiveField:
    """The receptive field of ``layer``: declared by the model where it knows its geometry,
    otherwise measured (``measured_field``, with ``params`` or ``model.params``)."""
    model = as_model(model)
    layer = model.resolve_layer(layer)
    hw = model.input_hw(size)
    declared = _declared(model, layer, hw)
    if declared is not None:
        return declared
    return measured_field(model, model.resolve_params(params), layer, hw)


def visible_extent(model: ModelLike, layer: str, size: int | tuple[int, int] | None = None, *,
                   params: PyTree | None = None) -> tuple[int, int]:
    """(rows, columns): input pixels [0, extent) that ``layer`` can see at all.

    When a stride does not divide the input (SqueezeNet 1.0's 7x7/2 conv1 at 224 px skips the last
    row and column), the last pixels reach no unit: a box is clipped to this, not to the image.
    Declared geometry: the smallest last-unit box end over the layers up to ``layer``; otherwise
    measured (the last unit's gradient support).
    """
    model = as_model(model)
    layer = model.resolve_layer(layer)
    hw = model.input_hw(size)
    fields = model.receptive_fields(hw)
    if fields and layer in fields:
        shapes = model.layer_shapes(hw)
        eh, ew = hw
        for name in model.layer_names:
            shape, f = shapes.get(name), fields.get(name)
            if f is None or shape is None or len(shape) != 3:
                if name == layer:
                    break
                continue
            eh = min(eh, f.box(shape[0] - 1, 0)[2]) if shape[0] else eh
            ew = min(ew, f.box(0, shape[1] - 1)[3]) if shape[1] else ew
            if name == layer:
                break
        return eh, ew
    return _measure(model, model.resolve_params(params), (layer,), hw,
                    positions=_last_position)[layer][2]


def channel_fields(model: ModelLike, layer: str, channels: int | Sequence[int], size: int | tuple[int,
                   int] | None = None, *,
                   params: PyTree | None = None, field: ReceptiveField | None = None) -> dict[int, ReceptiveField]:
    """{channel: the part of the layer's field that channel sees}, measured at ``size``.

    The layer's ``field`` (declared or measured) is the union over its channels; a channel can see
    less (a SqueezeNet fire module's 1x1-expand channels see only what its squeeze saw). For units
    whose layer box lies inside what the layer can see, each channel's box is measured from the
    input support of that one channel's unit, backpropagated with the deconvnet ReLU rule
    (``model.with_backward("deconv")``: the signal passes a ReLU whatever the forward state, so a
    channel that random inputs leave inactive is measured too; the support still lies within the
    pixels the unit depends on), and kept inside ``field``. A channel or size where this cannot be
    determined (no such unit, no ReLU to replace and a dead channel) keeps the layer's field.
    ``channels``: one channel or a list of them (negative from the end; keys of the result in
    0..C-1).

    Raises:
      JaxvizError: an unknown layer, a channel out of range or not a whole number.
    """
    model = as_model(model)
    layer = model.resolve_layer(layer)
    hw = model.input_hw(size)
    params = model.resolve_params(params)
    field = field or layer_field(model, layer, hw, params=params)
    shape = _layer_shapes(model, params, (layer,), hw)[layer]
    channels = list(dict.fromkeys(host_indices(channels, shape[2], "channel", f"channels of {layer}").tolist()))
    extent = visible_extent(model, layer, hw, params=params)[0]
    # Units whose whole layer box is visible: a narrower channel box shows on both sides.
    inside = [i for i in range(shape[0]) if field.box(i, 0)[0] > 0 and field.box(i, 0)[2] < extent]
    if not inside:
        return {c: field for c in channels}
    rows = np.asarray(sorted({inside[len(inside) // 2], inside[-1]}), np.int32)
    units = np.tile(np.stack([rows, np.full_like(rows, shape[1] // 2)], 1), (len(channels), 1)).astype(np.int32)
    w = np.zeros((len(units), shape[2]), np.float32)
    w[np.arange(len(units)), np.repeat(channels, len(rows))] = 1.0
    try:
        model.with_backward("deconv")
        rule = "deconv"
    except JaxvizError:  # no ReLU to replace: plain gradients on the inputs that excite the channel
        rule = "gradient"
    masks = _support(model, params, (layer,), hw, {layer: units}, {layer: w}, 0, _PROBE_IMAGES // 2, rule)[layer]
    first, last = _extents(masks, 0)
    out = {}
    for i, c in enumerate(channels):
        sl = slice(i * len(rows), (i + 1) * len(rows))
        tops = [f - p * field.stride for p, f in zip(rows, first[sl]) if f >= 0]
        bots = [e - p * field.stride for p, e in zip(rows, last[sl]) if e >= 0]
        if not tops:
            out[c] = field
            continue
        top, end = max(field.offset, min(tops)), min(field.offset + field.size, max(bots))
        out[c] = ReceptiveField(int(end - top), field.stride, int(top)) if end > top else field
    return out


def unit_boxes(model: ModelLike, layer: str, ys: np.ndarray, xs: np.ndarray, size: int | tuple[int,
               int] | None = None, *,
               params: PyTree | None = None) -> np.ndarray:
    """Unclipped receptive-field boxes (top, left, bottom, right), (N, 4), of units (y, x) of ``layer``."""
    rf = layer_field(model, layer, size, params=params)
    ys, xs = np.asarray(ys), np.asarray(xs)
    tops, lefts = rf.offset + ys * rf.stride, rf.offset + xs * rf.stride
    return np.stack([tops, lefts, tops + rf.size, lefts + rf.size], axis=-1)


# ---------------------------------------------------------------------------------- patches

def _index_size(index: Index) -> int | tuple[int, int]:
    size = index.meta["input_size"]
    return tuple(size) if isinstance(size, list) else int(size)


def _top_units(model: Model, index: Index, images: Images, layer: str, channels: Sequence[int], k: int | None,
               params: PyTree) -> tuple:
    """Checked arguments and the images under the top-k units: (name, channels, k, hw, rf,
    images (len(channels) * k, H, W, 3) from ``images``, ys, xs, values (C, k))."""
    name = model.resolve_layer(layer)
    if name not in index.topk:
        raise JaxvizError(f"layer {layer} was not scanned in {index.path}; scanned: {', '.join(index.topk) or 'none'}")
    t = index.topk[name]
    n_channels, kmax = t.values.shape
    channels = host_indices(channels, n_channels, "channel", f"channels of {name}").tolist()  # negative: from the end
    if not channels:
        raise JaxvizError("give at least one channel")
    k = kmax if k is None else min(int(k), kmax)
    if k < 1:
        raise JaxvizError("k must be at least 1")
    hw = model.input_hw(_index_size(index))
    rf = layer_field(model, name, hw, params=params)
    image_ids = t.image[channels, :k]
    if np.any(image_ids < 0):
        raise JaxvizError(f"index {index.path}: layer {name} holds fewer than {k} images per channel")
    get = images.__getitem__ if isinstance(images, Mapping) else images
    cache = {}
    for i in np.unique(image_ids):
        try:
            cache[int(i)] = np.asarray(get(int(i)), np.float32)
        except (KeyError, IndexError):
            raise JaxvizError(f"image {int(i)} of index {index.path} is not among the images given") from None
        if cache[int(i)].shape != (*hw, 3):
            raise JaxvizError(f"image {int(i)} has shape {cache[int(i)].shape}, expected {(*hw, 3)} "
                              "(the index's input size, RGB)")
    images = np.stack([cache[int(i)] for i in image_ids.ravel()])
    ys, xs = t.y[channels, :k].ravel(), t.x[channels, :k].ravel()
    return name, channels, k, hw, rf, images, ys, xs, t.values[channels, :k]


def top_patches(model: ModelLike, index: Index, layer: str, channels: Sequence[int], *, images: Images,
                k: int | None = None,
                params: PyTree | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The patches under the top-k activations of ``channels`` of ``layer``.

    Args:
      model: the ``jaxviz`` Model the index was scanned with (for its layers and geometry).
      index: a ``jaxviz.scan_index.Index`` (its top-k arrays and meta; no file is read here).
      layer: layer name or alias (must have been scanned).
      channels: channel numbers (negative: from the end).
      images: the photographs, global image index -> (H, W, 3) float [0, 1] at the index's input
        size, fitted as the scan fitted them: a mapping or a callable
        (``jaxviz.scan_index.index_images(index, model)`` loads them from the index's sources).
      k: patches per channel (default, or more than the index holds: all it holds; the CLI refuses more).
      params: the model's variables, for measured fields (default ``model.params``).
    Returns:
      ``(patches, values)``: (len(channels), k, S, S, 3) tiles in [0, 1] (S = receptive field
      size; grey where the unit saw nothing) and the (len(channels), k) activations.
    Raises:
      JaxvizError: unknown layer or channel out of range, an image missing from ``images`` or of
        another size.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    name, channels, k, hw, rf, images, ys, xs, values = _top_units(model, index, images, layer, channels, k, params)
    tops, lefts = rf.offset + ys * rf.stride, rf.offset + xs * rf.stride
    tiles = np.array(crop_patches(jnp.asarray(images), jnp.asarray(tops), jnp.asarray(lefts), rf.size))
    # Grey out what this unit did not see: the part of the layer's field outside the channel's
    # own field (fire 1x1 channels), and pixels beyond the layer's visible extent.
    eh, ew = visible_extent(model, name, hw, params=params)
    own = channel_fields(model, name, channels, hw, params=params, field=rf)
    offs = np.arange(rf.size)
    for n, channel in enumerate(np.repeat(channels, k)):
        top, left, bottom, right = own[int(channel)].box(int(ys[n]), int(xs[n]))
        rows, cols = tops[n] + offs, lefts[n] + offs
        inside_r = (rows >= top) & (rows < min(bottom, eh))
        inside_c = (cols >= left) & (cols < min(right, ew))
        tiles[n][~(inside_r[:, None] & inside_c[None, :])] = GREY
    tiles = tiles.reshape(len(channels), k, rf.size, rf.size, 3)
    return tiles, values


# ------------------------------------------------------------------ deconvnet reconstructions

def unit_signals(model: ModelLike, params: PyTree, images01: jax.Array, layer: str, units: jax.Array, *,
                 rule: str = "deconv") -> jax.Array:
    """The input-space signal of ONE unit per image (Zeiler & Fergus 2014, sec. 2.1 and fig. 2).

    Z&F project a single strong activation back to pixels: every other activation of the layer
    is set to zero and the signal goes down through the network with each ReLU applied to the
    signal itself (not gated by the forward pass) and each max-pool routed through its switches
    (the positions of the forward maxima). That is the derivative of the unit's value with the
    ReLU backward rule replaced (``model.with_backward("deconv")``); max-pool gradients already
    route through the switches.

    Args:
      model: a ``jaxviz`` Model with named layers (static under ``jit``).
      params: its variables.
      images01: (N, H, W, 3) images in [0, 1]; the model's preprocessing is applied inside, so the
        signal is d unit / d image: RGB pixels whatever the model's channel order and scaling.
      layer: layer name or alias (static) with a spatial (h, w, C) output.
      units: (N, 3) int (y, x, channel): image n's unit (traced; positions are checked when
        concrete, since JAX would clamp an index outside the map silently).
      rule: "deconv" (Z&F), "guided" (Springenberg et al. 2015) or "gradient" (the true derivative).
    Returns:
      (N, H, W, 3): image n's signal from its own unit only (images are independent).
    Raises:
      JaxvizError: unknown layer or rule, a non-spatial layer, ``units`` not (N, 3), a unit outside
        the layer's map, or a model without a ReLU for the rule to replace.
    """
    model = as_model(model)
    if rule not in RULES:
        raise JaxvizError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    name = model.resolve_layer(layer)
    if images01.ndim != 4 or images01.shape[-1] != 3:
        raise JaxvizError(f"expected images (N, H, W, 3), got shape {images01.shape}")
    if units.ndim != 2 or units.shape != (images01.shape[0], 3):
        raise JaxvizError(f"units must be ({images01.shape[0]}, 3) int (y, x, channel), got shape {units.shape}")
    net = model.with_backward(rule)  # "gradient": the model itself
    shape = jax.eval_shape(lambda x: net.activation(params, model.preprocess(x), name), images01).shape
    if len(shape) != 4:
        raise JaxvizError(f"layer {name} has no spatial positions (output shape {shape[1:]})")
    if not isinstance(units, jax.core.Tracer):
        u = np.asarray(units)
        if np.any(u < 0) or np.any(u >= np.asarray(shape[1:4])):
            bad = u[np.any((u < 0) | (u >= np.asarray(shape[1:4])), axis=1)][0]
            raise JaxvizError(f"unit (y, x, channel) = {tuple(int(v) for v in bad)} outside layer {name}'s "
                              f"{shape[1]}x{shape[2]}x{shape[3]} output")
    units = jnp.asarray(units, jnp.int32)

    def score(x):
        acts = net.activation(params, model.preprocess(x), name)
        return jnp.sum(acts[jnp.arange(x.shape[0]), units[:, 0], units[:, 1], units[:, 2]])

    return jax.grad(score)(images01)


@functools.lru_cache(maxsize=8)
def _signals_jit(options: tuple[tuple[str, str], ...]):
    kwargs = {"compiler_options": dict(options)} if options else {}
    return jax.jit(unit_signals, static_argnames=("model", "layer", "rule"), **kwargs)


def top_reconstructions(model: ModelLike, index: Index, layer: str, channels: Sequence[int], *, images: Images,
                        k: int | None = None, params: PyTree | None = None, rule: str = "deconv", batch: int = 16
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Deconvnet reconstructions of the top-k units of ``channels`` of ``layer``, cropped to the
    same boxes as ``top_patches`` (Zeiler & Fergus 2014, fig. 2: each reconstruction beside its patch).

    Each of the top-k units (image, y, x) of a channel is projected alone to pixel space
    (``unit_signals`` with ``rule``) and its receptive-field box is cut from the signal (zero
    outside the image), so tile [c, i] lies exactly over patch [c, i].

    Args:
      model, index, layer, channels, images, k, params: as ``top_patches``.
      rule: the backward rule (``unit_signals``).
      batch: images per backward pass (the last batch is padded: one compilation).
    Returns:
      ``(signals, values)``: (len(channels), k, S, S, 3) float signals d unit / d image (signed;
      ``signal_image`` turns one into a picture) and the (len(channels), k) activations.
    Raises:
      JaxvizError: as ``top_patches`` and ``unit_signals``.
    """
    model = as_model(model)
    params = model.resolve_params(params)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise JaxvizError(f"batch must be a positive integer, got {batch!r}")
    if rule not in RULES:
        raise JaxvizError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    name, channels, k, _, rf, images, ys, xs, values = _top_units(model, index, images, layer, channels, k, params)
    units = np.stack([ys, xs, np.repeat(channels, k)], axis=1).astype(np.int32)
    signals_fn = _signals_jit(tuple(model.compiler_options))
    n = len(images)
    batch = min(int(batch), n)
    out = []
    for s in range(0, n, batch):
        chunk, u = images[s:s + batch], units[s:s + batch]
        m = len(chunk)
        if m < batch:  # padding images get a valid unit; their signals are dropped
            chunk = np.concatenate([chunk, np.zeros((batch - m,) + chunk.shape[1:], chunk.dtype)])
            u = np.concatenate([u, np.repeat(u[:1], batch - m, axis=0)])
        sig = signals_fn(model, params, jnp.asarray(chunk), name, jnp.asarray(u), rule=rule)
        out.append(np.asarray(sig)[:m])
    signals = np.concatenate(out)
    tops, lefts = rf.offset + ys * rf.stride, rf.offset + xs * rf.stride
    tiles = np.array(crop_patches(jnp.asarray(signals), jnp.asarray(tops), jnp.asarray(lefts), rf.size, 0.0))
    return tiles.reshape(len(channels), k, rf.size, rf.size, 3), values


def signal_image(signal: np.ndarray, *, percentile: float = 99.5) -> np.ndarray:
    """A signed signal (..., H, W, 3) as a picture in [0, 1]: 0 -> grey 0.5, scaled so that the
    ``percentile`` of |signal| (over the whole array) reaches 0 or 1 (clipped), as deconvnet
    reconstructions are usually shown. An all-zero signal is plain grey."""
    signal = np.asarray(signal, np.float32)
    scale = np.percentile(np.abs(signal), percentile) if signal.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.abs(signal).max()) if signal.size else 0.0
    if scale <= 0:
        return np.full(signal.shape, 0.5, np.float32)
    return np.clip(0.5 + 0.5 * signal / scale, 0.0, 1.0).astype(np.float32)


def patch_grid(model: ModelLike, index: Index, layer: str, channels: Sequence[int], *, images: Images,
               k: int | None = None,
               params: PyTree | None = None, pad: int = 2) -> np.ndarray:
    """One image: for each channel a square grid of its top-k patches, channels side by side
    (arguments as ``top_patches``).

    Returns:
      (H, W, 3) float image in [0, 1] (white separators), for ``jaxviz.images.save_image``.
    """
    from jaxviz.render import grid
    tiles, _ = top_patches(model, index, layer, channels, images=images, k=k, params=params)
    per_channel = [grid(t, pad=1, fill=1.0) for t in tiles]
    return grid(np.stack(per_channel), columns=min(len(per_channel), 8), pad=pad * 3, fill=1.0)


__all__ = ["GREY", "crop_patches", "measured_field", "layer_field", "visible_extent", "channel_fields",
           "unit_boxes", "top_patches", "patch_grid", "unit_signals", "top_reconstructions", "signal_image"]
