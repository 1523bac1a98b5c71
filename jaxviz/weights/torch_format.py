"""Read and write PyTorch ``torch.save`` files without importing torch.

Two on-disk formats exist:

* zip (default since torch 1.6): ``<name>/data.pkl`` holds the object tree; each storage
  is the raw little-endian bytes of ``<name>/data/<key>``.
* legacy (``_use_new_zipfile_serialization=False``): five pickles in a row (magic number,
  protocol version, system info, the object tree, the list of storage keys), then for each
  key an int64 element count followed by the raw bytes.

In both, a tensor is pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` and a storage as the persistent id ``('storage', <torch.XStorage>, key,
location, numel[, view_metadata])``; offset and strides count elements, not bytes.

The unpickler only resolves the handful of globals a state dict needs and raises
``WeightsError`` for anything else, so a malicious file cannot run code.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxviz.errors import WeightsError

__all__ = ["load_torch_file", "save_torch_file"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Checkpoints often wrap the state dict with training metadata next to it.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")

_STORAGE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dt)
    for name, dt in {
        "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
        "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
        "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
        "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
    }.items()
}
_STORAGE_NAMES = {dt: name for name, dt in _STORAGE_DTYPES.items() if name != "UntypedStorage"}
# ``torch.<dtype>`` globals, which ``_rebuild_tensor_v3`` uses for dtypes without a storage class.
_TORCH_DTYPES: dict[str, np.dtype] = {
    str(np.dtype(dt)): np.dtype(dt)
    for dt in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.int32,
               np.int16, np.int8, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
               np.complex64, np.complex128, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
}


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A persistent-id reference: ``nbytes`` bytes from ``start`` of storage ``key``."""

    key: str
    dtype: np.dtype
    start: int = 0
    nbytes: int | None = None


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """A tensor before its storage is read (legacy files store the bytes after the pickle)."""

    storage: _Storage
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, shape, stride, *_ignored, dtype=None) -> _Tensor:
    # requires_grad, backward hooks and metadata do not matter for inference weights.
    if not isinstance(storage, _Storage):
        raise WeightsError("tensor does not refer to a storage")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, np.dtype):
        raise WeightsError(f"bad tensor dtype {dtype!r}")
    ints = (offset, *shape, *stride)
    if len(shape) != len(stride) or not all(type(i) is int and i >= 0 for i in ints):
        raise WeightsError(f"bad tensor layout: offset={offset!r} size={shape!r} stride={stride!r}")
    return _Tensor(storage, dtype, offset, tuple(shape), tuple(stride))


def _rebuild_tensor_v3(storage, offset, shape, stride, requires_grad, hooks, dtype, *_ignored):
    return _rebuild_tensor(storage, offset, shape, stride, dtype=dtype)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # Tensors with Python state pickle as this wrapper; find_class only lets new_type be
    # torch.Tensor or Parameter (a _Marker), and that state is not needed for weights.
    return func(*args)


class _Marker:
    """Stands in for ``torch.Tensor`` / ``torch.nn.Parameter`` as an argument, never called."""


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): tuple,
    ("torch", "Tensor"): _Marker,
    ("torch.nn.parameter", "Parameter"): _Marker,
    ("torch.storage", "UntypedStorage"): "UntypedStorage",
    **{("torch", name): name for name in _STORAGE_DTYPES},
    **{("torch", name): dt for name, dt in _TORCH_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals above; storages become ``_Storage`` references."""

    def __init__(self, file, record_dtype) -> None:
        super().__init__(file, encoding="utf-8")
        self._record_dtype = record_dtype  # legacy files need each storage's dtype to size it

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsError(f"refusing to load global {module}.{name}: not part of a "
                               "tensor state dict") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], str) and pid[1] in _STORAGE_DTYPES):
            raise WeightsError(f"unsupported persistent id {pid!r:.80}")
        key = pid[2].decode() if isinstance(pid[2], bytes) else str(pid[2])
        dtype = _STORAGE_DTYPES[pid[1]]
        self._record_dtype(key, dtype)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _Storage(key, dtype)
        _view_key, view_offset, view_numel = view  # pre-1.0 storage views into a root storage
        return _Storage(key, dtype, view_offset * dtype.itemsize, view_numel * dtype.itemsize)


def _materialise(t: _Tensor, raw: bytes, little: bool) -> np.ndarray:
    """Numpy array for ``t`` from its storage's bytes, honouring offset and strides."""
    end = None if t.storage.nbytes is None else t.storage.start + t.storage.nbytes
    raw = memoryview(raw)[t.storage.start:end]
    dtype = t.dtype.newbyteorder("<" if little else ">")
    flat = np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)
    # as_strided does no bounds check, so check the furthest element is inside the storage.
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
    if 0 not in t.shape and last >= flat.size:
        raise WeightsError(f"tensor of size {t.shape} reads past its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset:] if flat.size else flat, t.shape,
        [s * dtype.itemsize for s in t.stride], writeable=False)
    return np.array(view, dtype=t.dtype, order="C")  # a copy, in native byte order


def _resolve(obj: Any, read) -> Any:
    """Replace every ``_Tensor`` in a tree of dicts/lists/tuples by its array."""
    if isinstance(obj, _Tensor):
        return read(obj)
    if isinstance(obj, dict):
        return {k: _resolve(v, read) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, read) for v in obj)
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise WeightsError("zip archive has no data.pkl; not a torch.save file")
        prefix = pkl[: -len("data.pkl")]
        little = (zf.read(prefix + "byteorder").strip() != b"big"
                  if prefix + "byteorder" in names else True)
        with zf.open(pkl) as f:
            tree = _Unpickler(f, lambda key, dtype: None).load()
        cache: dict[str, bytes] = {}

        def read(t: _Tensor) -> np.ndarray:
            if t.storage.key not in cache:
                cache[t.storage.key] = zf.read(f"{prefix}data/{t.storage.key}")
            return _materialise(t, cache[t.storage.key], little)

        return _resolve(tree, read)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        def load(record=lambda key, dtype: None) -> Any:
            return _Unpickler(f, record).load()

        if load() != _LEGACY_MAGIC:
            raise WeightsError("not a torch.save file (bad magic number)")
        if load() != _LEGACY_PROTOCOL:
            raise WeightsError("unsupported legacy torch protocol version")
        sys_info = load()
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        dtypes: dict[str, np.dtype] = {}
        tree = load(dtypes.__setitem__)
        storages: dict[str, bytes] = {}
        for key in load():
            key = key.decode() if isinstance(key, bytes) else str(key)
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            nbytes = numel * dtypes[key].itemsize
            # Check against the bytes left so a corrupt count cannot trigger a huge allocation.
            if not 0 <= nbytes <= os.fstat(f.fileno()).st_size - f.tell():
                raise WeightsError(f"storage {key} is truncated")
            storages[key] = f.read(nbytes)
    return _resolve(tree, lambda t: _materialise(t, storages[t.storage.key], little))


def _state_dict(tree: Any, path: str) -> dict[str, np.ndarray]:
    """Unwrap ``{'state_dict': {...}, 'epoch': ...}`` and check every value is numeric."""
    # A state dict's values are tensors, so a wrapper key holding a dict is the wrapping.
    while isinstance(tree, dict):
        inner = [tree[k] for k in _WRAPPER_KEYS if isinstance(tree.get(k), dict)]
        if not inner:
            break
        tree = inner[0]
    if not isinstance(tree, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(tree).__name__}")
    out = {}
    for key, value in tree.items():
        if isinstance(value, (bool, int, float)):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[str(key)] = value
    return out


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state dict (zip or legacy format) without torch.

    Args:
        path: file written by ``torch.save(state_dict, path)``; a dict wrapping the state
            dict under ``state_dict``/``model_state_dict``/``model``/``net``/``params`` works too.

    Returns:
        ``{name: array}`` with the shapes (NCHW for convolutions) and dtypes as stored;
        float16/bfloat16 stay as they are, scalars such as ``num_batches_tracked`` are 0-d.

    Raises:
        WeightsError: missing, truncated or corrupt file, a global other than tensor
            rebuilding (e.g. a pickled class or ``os.system``), or a non-tensor entry.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    try:
        tree = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes is a bad file
        raise WeightsError(f"{path}: corrupt or unsupported torch file "
                           f"({type(e).__name__}: {e})") from e
    return _state_dict(tree, path)


# ---- writer -------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    """Pickle opcodes for one primitive (str, int, tuple of ints, None), minus PROTO and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _pickle_tree(obj: Any, legacy: bool) -> bytes:
    """Protocol-2 pickle of dicts of ``_Tensor``s, written opcode by opcode since the
    globals it names (``torch._utils._rebuild_tensor_v2``...) cannot be imported here."""
    if isinstance(obj, Mapping):
        items = b"".join(_dumps(str(k)) + _pickle_tree(v, legacy) for k, v in obj.items())
        return b"}" + (b"(" + items + b"u" if items else b"")
    if not isinstance(obj, _Tensor):
        return _dumps(obj)
    s = obj.storage
    typed = s.dtype != np.uint8 or obj.dtype == np.uint8  # v3 + UntypedStorage otherwise
    storage_cls = b"ctorch\n%s\n" % _STORAGE_NAMES[s.dtype].encode() if typed else (
        b"ctorch.storage\nUntypedStorage\n")
    pid = (b"(" + _dumps("storage") + storage_cls + _dumps(s.key) + _dumps("cpu")
           + _dumps(s.nbytes // s.dtype.itemsize) + (b"N" if legacy else b"") + b"tQ")
    args = (pid + _dumps(obj.offset) + _dumps(obj.shape) + _dumps(obj.stride)
            + b"\x89ccollections\nOrderedDict\n)R")  # requires_grad=False, no hooks
    if typed:
        return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"
    dtype = b"ctorch\n%s\n" % str(obj.dtype).encode()
    return b"ctorch._utils\n_rebuild_tensor_v3\n(" + args + dtype + b"tR"


def _write(path: str, tree: Any, storages: dict[str, np.ndarray], legacy: bool) -> None:
    """Write a tree of ``_Tensor``s; ``storages[key]`` is each storage as a 1-D little-endian
    array of the storage's dtype."""
    body = b"\x80\x02" + _pickle_tree(tree, legacy) + b"."
    if legacy:
        with open(path, "wb") as f:
            sys_info = {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}
            for header in (_LEGACY_MAGIC, _LEGACY_PROTOCOL, sys_info):
                f.write(pickle.dumps(header, protocol=2))
            f.write(body)
            f.write(pickle.dumps(list(storages), protocol=2))
            for flat in storages.values():
                f.write(struct.pack("<q", flat.size) + flat.tobytes())
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        records = {"data.pkl": body, "byteorder": b"little",
                   **{f"data/{k}": v.tobytes() for k, v in storages.items()}, "version": b"3\n"}
        for name, data in records.items():
            info = zipfile.ZipInfo("archive/" + name)
            # Pad the local header (as torch does) so each record's data is 64-byte aligned.
            pad = -(zf.fp.tell() + 30 + len(info.filename) + 4) % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(info, data)


def save_torch_file(state: Mapping[str, Any], path: str | os.PathLike, *,
                    legacy: bool = False) -> None:
    """Write ``{name: array}`` (dicts may nest) so that ``torch.load(path, weights_only=True)``
    returns the same dict of tensors; ``legacy=True`` writes the pre-1.6 format.

    Used to make test files without torch. Every array is written C-contiguous in its own
    storage; uint16/uint32/uint64/float8 need the zip format.

    Raises:
        WeightsError: an entry is not a numeric array of a dtype torch has.
    """
    storages: dict[str, np.ndarray] = {}

    def convert(name: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): convert(f"{name}.{k}", v) for k, v in value.items()}
        arr = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        if arr.dtype.newbyteorder("=") not in _TORCH_DTYPES.values():
            raise WeightsError(f"{name!r}: dtype {arr.dtype} cannot be saved for torch")
        if legacy and arr.dtype.newbyteorder("=") not in _STORAGE_NAMES:
            # torch's legacy loader cannot read the untyped storages these dtypes need.
            raise WeightsError(f"{name!r}: dtype {arr.dtype} needs the zip format (legacy=False)")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        key = str(len(storages))
        # Dtypes without a torch storage class (uint16...) go in an untyped byte storage.
        storage_dtype = arr.dtype if arr.dtype in _STORAGE_NAMES else np.dtype(np.uint8)
        storages[key] = arr.reshape(-1).view(storage_dtype)
        stride = tuple(s // arr.itemsize for s in arr.strides) if arr.size else (1,) * arr.ndim
        return _Tensor(_Storage(key, storage_dtype, 0, arr.nbytes), arr.dtype, 0, arr.shape, stride)

    tree = {str(k): convert(str(k), v) for k, v in state.items()}
    _write(os.fspath(path), tree, storages, legacy)
