"""Dataset scan: the top-k activations of every channel over a dataset, on arrays.

Zeiler & Fergus (2014, "Visualizing and understanding convolutional networks", fig. 2) show, for a
unit, the dataset patches that excite it most. This module finds them: the model runs once per
batch of images, and for every channel of every requested layer we keep the k images with the
largest activation (each image counted once per channel, at its strongest position, as in the
paper) together with that position. Memory does not grow with the dataset: each batch's
per-channel candidates are merged into the running top-k inside the same jitted step as the
forward pass, so the bookkeeping is nearly free. Each image's pooled features (global average of
``model.feature_layer``) are kept too, for nearest neighbours and embeddings. Any model with named
layers works (``jaxviz.interface``: the bundled networks, a user's linen or nnx module); the
network runs only as far as the deepest layer needed (``model.activations``).

This module takes arrays and returns arrays. Streaming a folder of images through the step, the
INDEX directory it writes (checkpoints, resuming, reading it back) and merging indices from disk
live in the I/O room, ``jaxviz.scan_index`` (``scan``, ``read_index``, ``merge_indices``).

Conventions
  * Order is canonical: per channel, descending value, ties broken by the smaller image index and
    then by the first position in row-major order. ``lax.top_k`` is stable, and candidates always
    arrive in image order, so the streamed, sharded, resumed and merged scans give the same index
    as a brute-force sort.
  * Positions ``(y, x)`` index the layer's activation map; ``jaxviz.patches`` maps them to input
    pixels through the layer's receptive field.

Devices, shards and hosts
  The step runs data-parallel over the local devices: a 1-D ``Mesh`` named ``data`` over
  ``jax.local_devices()``, the batch split with ``NamedSharding(mesh, P('data'))``; inside
  ``shard_map`` each device runs the network on its slice, reduces it to its own per-channel top-k
  candidates, and an ``all_gather`` over ``data`` merges them into the replicated running state.
  Test it on one CPU with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.

  Several hosts scan disjoint contiguous shards of the same source list (``shard_range``; CLI
  ``--shard i/n``), each with its own devices and its own INDEX, then ``merge_shards`` combines
  their top-k (``jaxviz.scan_index.merge_indices``, CLI ``jaxviz scan --merge A B ... --out
  INDEX``); the result equals a one-host scan because every shard's top-k is canonical and the
  merge re-sorts the union canonically. On a cluster run one process per host, e.g. after
  ``jax.distributed.initialize(coordinator, n, i)`` use ``shard=(jax.process_index(),
  jax.process_count())`` — the scan itself only uses the host's ``jax.local_devices()``, so no
  cross-host collectives are needed until the (tiny) merge, which any one host does.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxviz.interface import Model

PyTree = Any


def shard_range(total: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, stop) of contiguous shard i of n over ``total`` images."""
    i, n = shard
    return (i * total) // n, ((i + 1) * total) // n


# ------------------------------------------------------------------------------- jitted step

def data_mesh(devices: Sequence | None = None) -> Mesh:
    """1-D mesh ``('data',)`` over this host's devices."""
    devices = list(devices or jax.local_devices())
    return Mesh(np.asarray(devices), ("data",))


def init_state(channels: dict[str, int], k: int) -> dict[str, dict[str, np.ndarray]]:
    """Empty running top-k: values -inf, indices -1, each (C, k)."""
    return {layer: {"values": np.full((c, k), -np.inf, np.float32),
                    "image": np.full((c, k), -1, np.int32),
                    "y": np.full((c, k), -1, np.int32),
                    "x": np.full((c, k), -1, np.int32)} for layer, c in channels.items()}


def _take(a: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(a, idx, axis=1)


def _candidates(act: jax.Array, ids: jax.Array, k: int) -> dict[str, jax.Array]:
    """(b, h, w, C) activations -> each image's strongest position per channel, then the top-k
    images per channel: arrays (C, min(k, b)), in canonical order."""
    b, h, w, c = act.shape
    row_max = act.max(axis=2)  # (b, h, C)
    val = row_max.max(axis=1)  # (b, C)
    val = jnp.where(ids[:, None] >= 0, val, -jnp.inf).T  # (C, b); padding images never win
    kk = min(k, b)
    values, idx = jax.lax.top_k(val, kk)
    # Position = first row holding the maximum, then its first column holding it (row-major
    # first maximum). Done in two small steps, for the kk winners only: a full arg-max over every
    # (image, channel) map is a slow variadic reduction on XLA-CPU (10x the plain max here).
    rows = jnp.take_along_axis(jnp.argmax(row_max, axis=1).T, idx, axis=1)  # (C, kk)
    lines = act[idx, rows, :, jnp.arange(c)[:, None]]  # (C, kk, w)
    cols = jnp.argmax(lines, axis=-1)
    return {"values": values, "image": ids[idx], "y": rows.astype(jnp.int32), "x": cols.astype(jnp.int32)}


def merge_topk(running: dict[str, jax.Array], new: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """Merge candidates (C, m) that come after ``running`` (C, k') in canonical order into the
    top-k; ``lax.top_k`` keeps the earlier entry on ties, so the order stays canonical."""
    cat = {name: jnp.concatenate([running[name], new[name]], axis=1) for name in running}
    values, idx = jax.lax.top_k(cat["values"], k)
    return {"values": values, **{name: _take(cat[name], idx) for name in ("image", "y", "x")}}


def make_step(model: Model, layers: tuple[str, ...], feature_layer: str, k: int, mesh: Mesh, *,
              compiler_options: Sequence[tuple[str, str]] = ()) -> Callable:
    """The jitted scan step ``step(params, images01, ids, state) -> (state, features)``.

    ``images01`` (B, H, W, 3) in [0, 1] sharded over ``data``; ``ids`` (B,) int32 global image
    indices, -1 for padding; ``state`` the replicated running top-k; ``features`` (B, D) pooled
    ``feature_layer`` activations (sharded like the batch). B must be a multiple of the mesh size.
    The network runs only as far as the deepest of the layers (``model.activations``).
    ``compiler_options``: XLA options for the step (``model.compiler_options``).

    Cached: the same settings give the same jitted function, so a second scan in the process
    reuses its compiled step (a fresh closure would be traced and compiled again on every call).
    """
    return _make_step(model, tuple(layers), feature_layer, int(k), mesh,
                      tuple(tuple(o) for o in compiler_options))


@functools.lru_cache(maxsize=8)
def _make_step(model: Model, layers: tuple[str, ...], feature_layer: str, k: int, mesh: Mesh,
               compiler_options: tuple[tuple[str, str], ...]) -> Callable:
    capture = tuple(dict.fromkeys(tuple(layers) + (feature_layer,)))

    def local(params, images, ids, state):
        acts = model.activations(params, model.preprocess(images), capture)
        new_state = {}
        for layer in layers:
            cand = _candidates(acts[layer], ids, k)
            # Device d's candidates land after device d-1's: image order, so ties stay canonical.
            cand = {n: jax.lax.all_gather(a, "data", axis=1, tiled=True) for n, a in cand.items()}
            new_state[layer] = merge_topk(state[layer], cand, k)
        feats = acts[feature_layer]
        features = feats.mean(axis=(1, 2)) if feats.ndim == 4 else feats.reshape(feats.shape[0], -1)
        return new_state, features

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data"), P()),
                            out_specs=(P(), P("data")), check_vma=False)
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    options = {"compiler_options": dict(compiler_options)} if compiler_options else {}
    return jax.jit(sharded, in_shardings=(replicated, batch, batch, replicated),
                   out_shardings=(replicated, batch), donate_argnums=(3,), **options)


def merge_shards(parts: Sequence[dict[str, np.ndarray]], k: int) -> dict[str, np.ndarray]:
    """The canonical top-k of the union of disjoint shards' top-k of one layer.

    Args:
      parts: per shard ``{"values", "image", "y", "x"}`` arrays (C, k_i), each in canonical order.
      k: columns kept (at most the sum of the k_i).
    Returns:
      ``{"values", "image", "y", "x"}`` (C, k): value descending, then image index (positions are
      one per image) — exactly the top-k of a one-host scan over all the shards' images.
    """
    names = ("values", "image", "y", "x")
    cat = {n: np.concatenate([np.asarray(p[n]) for p in parts], axis=1) for n in names}
    rank = np.lexsort((cat["image"], -cat["values"].astype(np.float64)), axis=1)[:, :k]
    return {n: np.take_along_axis(a, rank, axis=1) for n, a in cat.items()}
