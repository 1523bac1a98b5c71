"""Torch state dict (numpy arrays, torch key names, OIHW) -> Flax parameter tree (HWIO), checked.

The map is derived from the Flax parameter tree itself: every Flax path has exactly one torch key
(``features.3/squeeze/kernel`` <-> ``features.3.squeeze.weight``), so a port either fills every
parameter with an array of the right shape or fails with a message naming what is wrong.
Conventions (Flax's "convert_pytorch_to_flax" guide): conv (O, I, kh, kw) -> (kh, kw, I, O),
dense (out, in) -> (in, out), and torchvision's classifier flattens NCHW, so VGG's first dense
weight is permuted to read our NHWC flatten.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from jaxviz.errors import WeightsError
from jaxviz.models.registry import ModelSpec, flatten_params, param_shapes, unflatten_params

_LEAF_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
                  "var": "running_var"}
# EfficientNet-Lite's port names its stem/head modules differently from our stages.
_LITE_MODULES = {"stem/conv": "_conv_stem", "stem/bn": "_bn0", "head/conv": "_conv_head",
                 "head/bn": "_bn1", "classifier": "_fc"}
# torch bookkeeping entries that carry no parameters.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def torch_key(spec: ModelSpec, flax_path: str) -> str:
    """The torch state-dict key holding the parameter at ``flax_path``."""
    *modules, leaf = flax_path.split("/")
    module = "/".join(modules)
    if spec.name.startswith("efficientnet"):
        if module in _LITE_MODULES:
            module = _LITE_MODULES[module]
        elif module.startswith("blocks."):
            module = "_" + module
    return module.replace("/", ".") + "." + _LEAF_TO_TORCH[leaf]


def _convert(array: np.ndarray, leaf: str, target: tuple[int, ...], flatten_from: tuple | None) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and array.ndim == 2:
        if flatten_from is not None:  # torch flattened (C, H, W); we flatten (H, W, C)
            h, w, c = flatten_from
            return array.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
        return array.T
    return array


def state_dict_to_params(spec: ModelSpec, state: dict[str, np.ndarray], source: str = "state dict") -> dict:
    """Convert and check a torch-named state dict; every parameter must be present and fit.

    Raises:
      WeightsError: a missing or unexpected key, or a shape that does not fit the architecture.
    """
    expected = flatten_params(param_shapes(spec))
    flatten_shapes = _flatten_inputs(spec)
    params, used = {}, set()
    problems = []
    for path, shape in expected.items():
        key = torch_key(spec, path)
        if key not in state:
            problems.append(f"missing {key}")
            continue
        module = path.split("/")[0]
        value = _convert(state[key], path.split("/")[-1], shape, flatten_shapes.get(module))
        if value.shape != shape:
            problems.append(f"{key} has shape {tuple(np.shape(state[key]))}, expected one that gives {shape}")
            continue
        params[path] = value
        used.add(key)
    extra = [k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    problems += [f"unexpected {k}" for k in extra]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(f"{source} does not fit {spec.name}: {'; '.join(problems[:3])}{more}")
    return unflatten_params(params)


def _flatten_inputs(spec: ModelSpec) -> dict[str, tuple[int, int, int]]:
    """(H, W, C) entering each ``flatten_dense`` stage (VGG's classifier.0 sees 7x7x512)."""
    shapes = {}
    for i, stage in enumerate(spec.stages):
        if stage.kind == "flatten_dense":
            pool = spec.stages[i - 1]
            channels = [s.args[0] for s in spec.stages[:i] if s.kind == "conv"][-1]
            shapes[stage.name] = (*pool.args, channels)
    return shapes


def params_to_state_dict(spec: ModelSpec, params: dict) -> dict[str, np.ndarray]:
    """The inverse map (tests port a state dict they made from random Flax parameters)."""
    flatten_shapes = _flatten_inputs(spec)
    state = {}
    for path, value in flatten_params(params).items():
        value = np.asarray(value)
        leaf, module = path.split("/")[-1], path.split("/")[0]
        if leaf == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif leaf == "kernel" and value.ndim == 2:
            if module in flatten_shapes:
                h, w, c = flatten_shapes[module]
                value = value.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, h * w * c)
            else:
                value = value.T
        state[torch_key(spec, path)] = np.ascontiguousarray(value)
    return state


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_params(params: dict, path: str | os.PathLike) -> str:
    """Write a parameter tree as .npz with fixed timestamps (same params -> same bytes -> same
    sha256, so the manifest can pin ported files) and atomically; returns the sha256."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, value in sorted(flatten_params(params).items()):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value, dtype=np.float32))
            archive.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())
    os.replace(tmp, path)
    return sha256_file(path)


def load_params(path: str | os.PathLike, spec: ModelSpec) -> dict:
    """Read a ported .npz and check it fits ``spec`` exactly (keys and shapes)."""
    try:
        with np.load(path) as data:
            flat = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsError(f"cannot read ported weights {path}: {e}") from None
    expected = flatten_params(param_shapes(spec))
    wrong = [k for k, shape in expected.items() if k not in flat or flat[k].shape != shape]
    extra = sorted(set(flat) - set(expected))
    if wrong or extra:
        what = wrong[0] if wrong else extra[0]
        detail = (f"shape {flat[what].shape}, expected {expected[what]}" if what in flat and what in expected
                  else "missing" if wrong else "unexpected")
        raise WeightsError(f"ported weights {path} do not fit {spec.name}: {what} {detail}; "
                           f"re-port with `python scripts/port_weights.py {spec.name}`")
    return unflatten_params(flat)


def write_record(path: str | os.PathLike, record: dict) -> None:
    Path(path).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
