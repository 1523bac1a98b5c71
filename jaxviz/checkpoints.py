"""Fast-style training checkpoints on disk (the I/O room of ``jaxviz.fast_style``).

A checkpoint is training state, so one msgpack file (``flax.serialization``): the config, the
network parameters, the optax state, the step and the key (``CHECKPOINT_VERSION``). It is written
through jaxviz's one atomic write (``jaxviz.io``: a temporary file in the target folder renamed
into place, removed on any failure) and read back with every array's shape checked against the
config's network and every value finite, so a damaged file gives one ``JaxvizError``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxviz.errors import JaxvizError
from jaxviz.fast_style import FastStyleConfig, TrainState
from jaxviz.io import write_bytes

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, config: FastStyleConfig, state: TrainState) -> None:
    """Write one msgpack file atomically (``JaxvizError`` if the location is not writable)."""
    path = Path(path)
    if path.is_dir():
        raise JaxvizError(f"checkpoint path is a folder: {path}")
    payload = {
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(asdict(config)),
        "step": state.step,
        "key": np.asarray(jax.random.key_data(state.key)),
        "losses": np.asarray(state.losses, np.float32),
        "params": jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(state.params)),
        "opt_state": jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(state.opt_state)),
    }
    # jaxviz's one atomic write: a temporary file renamed into place, removed on any failure; an OS
    # error (read-only or full location) is one WriteError line, ``cannot write checkpoint PATH: reason``.
    write_bytes(path, serialization.msgpack_serialize(payload), what="checkpoint")


def _restore(template, stored, what: str):
    """``stored`` (a state dict) in ``template``'s structure (leaves: ``jax.ShapeDtypeStruct``),
    every array's shape checked and every value finite."""
    restored = serialization.from_state_dict(template, stored)
    want = jax.tree_util.tree_leaves_with_path(template)
    got = jax.tree_util.tree_leaves(restored)
    if len(want) != len(got):
        raise ValueError(f"{what} has {len(got)} arrays, expected {len(want)}")
    leaves = []
    for (path, w), g in zip(want, got):
        g = np.asarray(g)
        if g.shape != tuple(w.shape) or g.dtype.kind not in "fiu" or not np.all(np.isfinite(g)):
            raise ValueError(f"{what} {jax.tree_util.keystr(path)}: {g.dtype} {g.shape}, expected finite "
                             f"{w.dtype} {tuple(w.shape)}")
        leaves.append(jnp.asarray(g, w.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def load_checkpoint(path: str | Path) -> tuple[FastStyleConfig, TrainState]:
    """Read a checkpoint written by ``save_checkpoint``.

    Raises:
      JaxvizError: missing, unreadable, not a checkpoint, another version, or arrays that do not
        fit the network its config describes (one line, no traceback).
    """
    path = Path(path)
    if not path.is_file():
        raise JaxvizError(f"checkpoint not found: {path}")
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
        if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"version {payload.get('version') if isinstance(payload, dict) else None}, "
                             f"expected {CHECKPOINT_VERSION}")
        raw = json.loads(payload["config"])
        config = FastStyleConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        net, s = config.network(), config.num_styles
        shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                                 jnp.ones((1, s)) / s)["params"])
        params = _restore(shapes, payload["params"], "params")
        opt_state = _restore(jax.eval_shape(optax.adam(config.learning_rate).init, shapes), payload["opt_state"],
                             "optimiser state")
        key = jax.random.wrap_key_data(jnp.asarray(payload["key"], jnp.uint32))
        losses = [float(v) for v in np.asarray(payload["losses"], np.float32).reshape(-1)]
        step = int(payload["step"])
        if step < 0:
            raise ValueError(f"step {step}")
    except Exception as e:  # msgpack / json / missing keys / wrong shapes: not a usable checkpoint
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise JaxvizError(f"not a usable fast-style checkpoint: {path} ({e.__class__.__name__}"
                          f"{': ' + detail if detail else ''})") from None
    return config, TrainState(step, params, opt_state, key, losses)
