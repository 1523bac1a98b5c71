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
import io
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
        if not all(type(i) is int and i >= 0 for i in (view_offset, view_numel)):
            raise WeightsError(f"bad storage view {view!r:.80}")
        return _Storage(key, dtype, view_offset * dtype.itemsize, view_numel * dtype.itemsize)


# ---- reading: everything declared is checked before any tensor byte is read -----------------

# Without a caller's budget, a file may ask for at most this much memory, or twice its own size
# (VGG19's 548 MB .pth needs 548 MB): a few hundred bytes must not claim gigabytes.
MIN_BUDGET = 256 << 20
_PICKLE_LIMIT = 64 << 20  # a state dict's object tree is kilobytes; its arrays live elsewhere


class _Bounded:
    """A file view that never hands pickle more than the bytes left in the file, so a length
    field of 2**40 reads a short string (and fails) instead of preallocating a terabyte."""

    def __init__(self, f, end: int) -> None:
        self._f, self._end = f, end

    def _left(self) -> int:
        return max(0, self._end - self._f.tell())

    def read(self, n: int = -1) -> bytes:
        return self._f.read(self._left() if n is None or n < 0 else min(n, self._left()))

    def readline(self, n: int = -1) -> bytes:
        return self._f.readline(self._left() if n is None or n < 0 else min(n, self._left()))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)


def _extent(t: _Tensor) -> int:
    """Bytes of its storage that ``t`` reads (from the storage's start), 0 for an empty tensor."""
    if 0 in t.shape:
        return 0
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
    return t.storage.start + (last + 1) * t.dtype.itemsize


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_declared(tensors: Mapping[str, _Tensor], storage_sizes: Mapping[str, int],
                    expected: Mapping[str, tuple[int, ...]] | None, budget: int) -> dict[str, int]:
    """Check shapes, sizes and storage bounds from the metadata alone; returns how many bytes of
    each storage the tensors need (nothing else is read)."""
    if expected is not None:
        wrong = [(k, t.shape, tuple(expected[k])) for k, t in tensors.items()
                 if k in expected and t.shape != tuple(expected[k])]
        if wrong:
            more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
            raise WeightsError("; ".join(f"{k}: expected shape {want}, found {got}"
                                         for k, got, want in wrong[:3]) + more)
    total = 0
    for key, t in tensors.items():
        nbytes = int(np.prod(t.shape, dtype=object)) * t.dtype.itemsize
        total += nbytes
        if nbytes > budget:
            raise WeightsError(f"{key} of shape {t.shape} asks for {_gib(nbytes)}, over the "
                               f"{_gib(budget)} this file may use")
    if total > budget:
        raise WeightsError(f"its tensors ask for {_gib(total)} in all, over the {_gib(budget)} this file may use")
    declared = sum(storage_sizes.values())
    if declared > budget:
        raise WeightsError(f"its storages declare {_gib(declared)}, over the {_gib(budget)} this file may use")
    needed: dict[str, int] = {}
    for key, t in tensors.items():
        if t.storage.key not in storage_sizes:
            raise WeightsError(f"{key} refers to storage {t.storage.key!r}, which the file does not hold")
        extent = _extent(t)
        limit = storage_sizes[t.storage.key]
        if t.storage.nbytes is not None:  # a pre-1.0 view: confined to its window
            limit = min(limit, t.storage.start + t.storage.nbytes)
        if extent > limit:
            raise WeightsError(f"tensor {key} of size {t.shape} reads past its storage "
                               f"({extent} of {limit} bytes)")
        needed[t.storage.key] = max(needed.get(t.storage.key, 0), extent)
    return needed


def _materialise(t: _Tensor, raw: bytes, little: bool) -> np.ndarray:
    """Numpy array for ``t`` from its storage's bytes (bounds already checked), honouring offset
    and strides."""
    dtype = t.dtype.newbyteorder("<" if little else ">")
    if 0 in t.shape:
        return np.zeros(t.shape, t.dtype)
    raw = memoryview(raw)[t.storage.start:]
    flat = np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset:], t.shape, [s * dtype.itemsize for s in t.stride], writeable=False)
    return np.array(view, dtype=t.dtype, order="C")  # a copy, in native byte order


def _state_dict(tree: Any) -> dict[str, Any]:
    """Unwrap ``{'state_dict': {...}, 'epoch': ...}`` and check every value is a tensor or number."""
    # A state dict's values are tensors, so a wrapper key holding a dict is the wrapping.
    while isinstance(tree, dict):
        inner = [tree[k] for k in _WRAPPER_KEYS if isinstance(tree.get(k), dict)]
        if not inner:
            break
        tree = inner[0]
    if not isinstance(tree, dict):
        raise WeightsError(f"expected a dict of tensors, found {type(tree).__name__}")
    out = {}
    for key, value in tree.items():
        if isinstance(value, (bool, int, float)):
            value = np.asarray(value)
        if not isinstance(value, (_Tensor, np.ndarray)):
            raise WeightsError(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        out[str(key)] = value
    return out


def _load_zip(path: str, expected, budget: int) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = next((n for n in infos if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise WeightsError("zip archive has no data.pkl; not a torch.save file")
        if infos[pkl].file_size > _PICKLE_LIMIT:
            raise WeightsError(f"data.pkl declares {_gib(infos[pkl].file_size)}; not a state dict")
        prefix = pkl[: -len("data.pkl")]
        little = (zf.read(prefix + "byteorder").strip() != b"big"
                  if prefix + "byteorder" in infos and infos[prefix + "byteorder"].file_size < 16 else True)
        # zipfile never inflates past a member's declared size, so the declared sizes are the bound.
        state = _state_dict(_Unpickler(io.BytesIO(zf.read(pkl)), lambda key, dtype: None).load())
        tensors = {k: v for k, v in state.items() if isinstance(v, _Tensor)}
        member = {t.storage.key: f"{prefix}data/{t.storage.key}" for t in tensors.values()}
        sizes = {key: infos[name].file_size for key, name in member.items() if name in infos}
        needed = _check_declared(tensors, sizes, expected, budget)
        raw: dict[str, bytes] = {}
        for key, n in needed.items():
            with zf.open(member[key]) as f:
                raw[key] = f.read(n)
            if len(raw[key]) < n:
                raise WeightsError(f"storage {key} is truncated")
        return {k: _materialise(v, raw[v.storage.key], little) if isinstance(v, _Tensor) else v
                for k, v in state.items()}


def _load_legacy(path: str, expected, budget: int) -> dict[str, np.ndarray]:
    with open(path, "rb") as raw_file:
        size = os.fstat(raw_file.fileno()).st_size
        f = _Bounded(raw_file, size)

        def load(record=lambda key, dtype: None) -> Any:
            return _Unpickler(f, record).load()

        if load() != _LEGACY_MAGIC:
            raise WeightsError("not a torch.save file (bad magic number)")
        if load() != _LEGACY_PROTOCOL:
            raise WeightsError("unsupported legacy torch protocol version")
        sys_info = load()
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        dtypes: dict[str, np.dtype] = {}
        state = _state_dict(load(dtypes.__setitem__))
        keys = load()
        if not isinstance(keys, list):
            raise WeightsError("bad storage list")
        # First pass: each storage's declared element count, then skip its bytes.
        where: dict[str, tuple[int, int]] = {}
        for key in keys:
            key = key.decode() if isinstance(key, bytes) else str(key)
            if key not in dtypes:
                raise WeightsError(f"storage {key} has no declared dtype")
            count = raw_file.read(8)
            if len(count) < 8:
                raise WeightsError(f"storage {key} is truncated")
            (numel,) = struct.unpack("<q" if little else ">q", count)
            nbytes = numel * dtypes[key].itemsize
            if not 0 <= nbytes <= size - raw_file.tell():
                raise WeightsError(f"storage {key} is truncated")
            where[key] = (raw_file.tell(), nbytes)
            raw_file.seek(nbytes, os.SEEK_CUR)
        tensors = {k: v for k, v in state.items() if isinstance(v, _Tensor)}
        needed = _check_declared(tensors, {k: n for k, (_, n) in where.items()}, expected, budget)
        raw: dict[str, bytes] = {}
        for key, n in needed.items():
            raw_file.seek(where[key][0])
            raw[key] = raw_file.read(n)
    return {k: _materialise(v, raw[v.storage.key], little) if isinstance(v, _Tensor) else v
            for k, v in state.items()}


def load_torch_file(path: str | os.PathLike, *, expected: Mapping[str, tuple[int, ...]] | None = None,
                    max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state dict (zip or legacy format) without torch.

    Args:
        path: file written by ``torch.save(state_dict, path)``; a dict wrapping the state
            dict under ``state_dict``/``model_state_dict``/``model``/``net``/``params`` works too.
        expected: ``{key: shape}`` (torch layout) of the entries a caller needs; an entry of
            another shape is refused before any storage byte is read. Other keys are returned.
        max_bytes: memory the tensors and storages may declare in all (default: 256 MiB or twice
            the file's size, whichever is larger), checked before any storage byte is read.

    Returns:
        ``{name: array}`` with the shapes (NCHW for convolutions) and dtypes as stored;
        float16/bfloat16 stay as they are, scalars such as ``num_batches_tracked`` are 0-d.

    Raises:
        WeightsError: missing, truncated or corrupt file, a global other than tensor
            rebuilding (e.g. a pickled class or ``os.system``), a non-tensor entry, a shape
            other than ``expected``, or sizes over the budget (a stride-0 tensor of 16 GiB
            from 500 bytes, a zip member that would inflate to gigabytes).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    budget = max_bytes if max_bytes is not None else max(MIN_BUDGET, 2 * os.path.getsize(path))
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, expected, budget)
        return _load_legacy(path, expected, budget)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from e
    except MemoryError:
        raise WeightsError(f"{path}: out of memory reading it") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes is a bad file
        raise WeightsError(f"{path}: corrupt or unsupported torch file "
                           f"({type(e).__name__}: {e})") from e


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
