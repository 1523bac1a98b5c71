"""The on-disk format of ported parameters: ``safetensors``, written deterministically, read checked.

A ported file is a plain safetensors file: any program reads it without jaxviz
(``safetensors.flax.load_file(path)`` or ``safetensors.numpy.load_file(path)``) and gets flat keys
naming the Flax parameter tree, ``"features.3/squeeze/kernel"`` -> ``params["features.3"]["squeeze"]["kernel"]``.

Same parameters -> same bytes, so ``weights/MANIFEST.json`` can pin a port's sha256: tensors in
sorted key order, little-endian, fixed metadata (no dates, no paths, no versions), the header JSON
written as the safetensors library writes it (compact, ``__metadata__`` first, padded with spaces
to 8 bytes). We write the bytes ourselves rather than through ``safetensors.numpy.save`` so a pin
does not depend on that library's version (it orders several metadata keys by a hash map); the
tests check that our bytes equal the library's for a one-key metadata.

Reading checks, in this order and before any tensor byte is read: the file's sha256 (when a pin is
given), then the header's names, dtypes and shapes against the architecture's; then every value
must be finite. Writes go to a temporary file in the target folder and are renamed into place;
the temporary file is removed on any failure, so a file under its final name is always complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile  # noqa: F401  (kept: callers and tests reach tempfile through this module)
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from jaxviz.errors import WeightsError
from jaxviz.trees import flatten, unflatten  # noqa: F401 (re-exported: the weight files' paths)

__all__ = ["SUFFIX", "atomic_write", "check_finite", "flatten", "load_flat", "load_params",
           "read_record", "save_flat", "save_params", "serialize_header", "sha256_file",
           "unflatten", "write_port", "write_record"]

SUFFIX = ".safetensors"
# safetensors dtype codes of the arrays we store (ported parameters are float32).
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
           np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8",
           np.dtype(np.bool_): "BOOL"}
_CODES = {code: dt for dt, code in _DTYPES.items()}


# ---- trees ----------------------------------------------------------------------------------

# ---- files ----------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Any:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``: jaxviz's
    one atomic write (``jaxviz.io.atomic_write``; the temporary file is removed on any failure,
    including KeyboardInterrupt). Raises ``jaxviz.io.WriteError`` (an ``OSError`` and a
    ``JaxvizError``: one line) for a read-only or full location. Returns ``write``'s result."""
    from jaxviz.io import atomic_write as write_atomically
    return write_atomically(path, write)


def write_record(path: str | os.PathLike, record: Mapping) -> None:
    """A JSON record (source, hashes) beside a port, written atomically."""
    text = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def read_record(path: str | os.PathLike) -> dict:
    """The JSON record at ``path`` ({} when there is none); a damaged one raises one clear line.

    A record must be a JSON object whose ``ported_sha256`` (and ``source_sha256``, if present) is
    a 64-digit hex string: a pin we cannot read is not a pin.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(record, dict):
        raise WeightsError(f"{path} is damaged (a JSON {type(record).__name__}, not an object)")
    for key in ("ported_sha256", "source_sha256"):
        if (key in record or key == "ported_sha256") and not _is_sha256(record.get(key)):
            raise WeightsError(f"{path} is damaged ({key} is {str(record.get(key))[:70]!r}, "
                               "not a sha256)")
    return record


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# ---- writing --------------------------------------------------------------------------------

def check_finite(flat: Mapping[str, np.ndarray], what: str) -> None:
    """Refuse arrays holding NaN or ±inf (a port of broken weights would explain nothing)."""
    for key, value in flat.items():
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
            raise WeightsError(f"{what}: {key} holds {nan} NaN and {inf} infinite values of "
                               f"{value.size}; refusing weights that are not finite")


def _prepare(flat: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays = {}
    for key in sorted(flat):
        if not isinstance(key, str) or not key:
            raise WeightsError(f"bad parameter name {key!r}")
        value = np.asarray(flat[key])
        native = value.dtype.newbyteorder("=")
        if native not in _DTYPES:
            raise WeightsError(f"{key}: dtype {value.dtype} is not stored in ported weights")
        arrays[key] = np.asarray(value, dtype=native.newbyteorder("<"), order="C")  # (0-d stays 0-d)
    return arrays


def serialize_header(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length and the JSON header for ``arrays`` in their given order."""
    header, offset = {}, 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise WeightsError("safetensors metadata must map str to str")
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    for key, value in arrays.items():
        header[key] = {"dtype": _DTYPES[value.dtype.newbyteorder("=")], "shape": list(value.shape),
                       "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def save_flat(flat: Mapping[str, Any], path: str | os.PathLike, *,
              metadata: Mapping[str, str] | None = None) -> str:
    """Write ``{key: array}`` as safetensors (sorted keys, deterministic bytes), atomically.

    Returns the sha256 of the written bytes. Raises ``WeightsError`` for non-finite values or an
    unsupported dtype and ``OSError`` when the location cannot be written.
    """
    arrays = _prepare(flat)
    check_finite(arrays, str(path))

    def write(f: IO[bytes]) -> str:
        digest = hashlib.sha256()
        for chunk in (serialize_header(arrays, metadata), *arrays.values()):
            view = memoryview(chunk.reshape(-1).view(np.uint8)) if isinstance(chunk, np.ndarray) else chunk
            f.write(view)
            digest.update(view)
        return digest.hexdigest()

    return atomic_write(path, write)


def save_params(params: Mapping, path: str | os.PathLike, *,
                metadata: Mapping[str, str] | None = None) -> str:
    """``save_flat`` of a nested parameter tree (keys joined with ``/``); returns the sha256."""
    return save_flat(flatten(params), path, metadata=metadata)


def write_port(path: str | os.PathLike, params: Mapping, *, metadata: Mapping[str, str],
               record: Mapping | None = None) -> str:
    """A port and its record: ``path`` (safetensors) then ``path.with_suffix('.json')`` with
    ``record`` + ``ported_sha256`` + ``format``, each written atomically; returns the sha256.

    If the record cannot be written the new port is removed too, so no port is left that its
    record does not pin. Raises ``WeightsError`` (one line) for a read-only or full location.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = save_params(params, path, metadata=metadata)
        if record is not None:
            try:
                write_record(path.with_suffix(".json"), {**record, "ported_sha256": digest,
                                                         "format": "safetensors"})
            except BaseException:
                path.unlink(missing_ok=True)
                raise
    except OSError as e:
        raise WeightsError(f"cannot write {path}: {e.strerror or e}") from None
    return digest


# ---- reading --------------------------------------------------------------------------------

def load_flat(path: str | os.PathLike, expected: Mapping[str, tuple[int, ...]] | None = None, *,
              sha256: str | None = None, what: str = "", repair: str = "") -> dict[str, np.ndarray]:
    """Read a ported safetensors file, checked.

    Args:
      path: the file.
      expected: ``{key: shape}`` the architecture needs; every key must be there with that shape
        and nothing else (checked from the header, before any tensor is read).
      sha256: the pinned sha256 of the whole file, checked first.
      what: the network's name, for messages; repair: how to fix it, appended to every message.

    Raises:
      WeightsError: a missing, damaged or unpinned file, a hash, key or shape that differs, or a
        value that is not finite.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    fix = f"; {repair}" if repair else ""
    if not path.is_file():
        raise WeightsError(f"no ported weights at {path}{fix}")
    if sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256:
            raise WeightsError(f"{path} has sha256 {digest[:16]}…, expected {sha256[:16]}…{fix}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
            if expected is not None:
                _check_shapes(header, expected, f"{path} does not fit {what or 'the network'}", fix)
            bad = [k for k, (dtype, _) in header.items() if dtype not in _CODES]
            if bad:
                raise WeightsError(f"{path}: {bad[0]} has dtype {header[bad[0]][0]}{fix}")
            flat = {k: f.get_tensor(k) for k in header}
    except SafetensorError as e:
        raise WeightsError(f"cannot read ported weights {path}: {e}{fix}") from None
    except OSError as e:
        raise WeightsError(f"cannot read ported weights {path}: {e}{fix}") from None
    check_finite(flat, str(path))
    return flat


def load_params(path: str | os.PathLike, expected: Mapping[str, tuple[int, ...]] | None = None, *,
                sha256: str | None = None, what: str = "", repair: str = "") -> dict:
    """``load_flat`` as a nested parameter tree of numpy arrays."""
    return unflatten(load_flat(path, expected, sha256=sha256, what=what, repair=repair))


def _check_shapes(found: Mapping[str, tuple[str, tuple[int, ...]]], expected: Mapping[str, tuple[int, ...]],
                  what: str, fix: str) -> None:
    problems = []
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"{key} is missing (expected shape {tuple(shape)})")
        elif found[key][1] != tuple(shape):
            problems.append(f"{key}: expected shape {tuple(shape)}, found {found[key][1]}")
    problems += [f"{key} is not a parameter of it (shape {found[key][1]})"
                 for key in sorted(set(found) - set(expected))]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(f"{what}: {'; '.join(problems[:3])}{more}{fix}")
