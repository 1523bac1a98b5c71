"""The scan INDEX on disk and the streaming scan that writes it (the I/O room of ``jaxviz.scan``).

``jaxviz.scan`` holds the technique (Zeiler & Fergus 2014, fig. 2): the jitted per-batch step that
keeps every channel's top-k images and each image's pooled features, and the canonical merge of
shards' top-k, all on arrays. This module does the files: it lists a folder of images
(``collect_sources``), decodes them in a thread pool a few batches ahead (``_prefetch``), drives the
step over them (``scan``), checkpoints the running state so that a killed scan resumes, writes the
INDEX atomically, reads it back (``read_index`` -> ``Index``) and merges the indices of shards
(``merge_indices``). ``index_images`` loads the photographs under an index's top-k units for
``jaxviz.patches`` (which takes them as arrays).

INDEX directory (readable without jaxviz; ``read_index`` is the reader)
  ``meta.json``   {"model", "layers", "topk", "input_size", "fit", "count", "feature_layer",
                   "complete", "version": 1, "shard": [i, n], "total"}; ``count`` = images in
                   this index, ``total`` = images in the whole (unsharded) dataset;
                   ``input_size`` an int (square) or [h, w];
  ``images.csv``  columns ``index,path`` (global image index; a file path or a sample name);
  ``features.npy`` float32 (count, D), row r = the r-th row of images.csv;
  ``topk/<layer>.npz`` ``values`` (C, k) float32 descending, ``image`` (C, k) int32 (global index),
                   ``y``, ``x`` (C, k) int32; k = min(topk, count). A linen layer path
                   ``block/conv1`` is the file ``topk/block/conv1.npz``.
  While a scan runs, ``meta.json`` says ``"complete": false`` and the running state lives in
  ``.scan/`` (``state.npz``: images done + running top-k; ``features.f32``: rows appended so
  far). Every file is written to a temporary name and ``os.replace``-d, so a kill at any moment
  leaves either the previous checkpoint or the next one; running the same scan again resumes.

A size at which a requested layer is empty (0 x 0: SqueezeNet's fire9 at 16 px) is refused before
anything is written, naming the smallest size that works.

Shards and hosts: see ``jaxviz.scan``. Each host scans its contiguous shard (``shard=(i, n)``)
into its own INDEX; ``merge_indices`` (CLI ``jaxviz scan --merge A B ... --out INDEX``) combines
them, from the shared file system, into the index a one-host scan writes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxviz.activations import check_layers
from jaxviz.errors import JaxvizError
from jaxviz.interface import ModelLike, as_model
from jaxviz.io import WriteError, atomic_write
from jaxviz.scan import data_mesh, init_state, make_step, merge_shards, shard_range

PyTree = Any

VERSION = 1
_STATE_DIR = ".scan"

# ----------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class TopK:
    """Per-channel top-k of one layer: every array (C, k)."""

    values: np.ndarray
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray


@dataclass(frozen=True)
class Index:
    """A scan's results: ``paths[r]`` is image ``indices[r]``, ``features[r]`` its features."""

    path: Path
    meta: dict
    indices: np.ndarray  # (count,) int global image indices
    paths: list[str]
    features: np.ndarray  # (count, D) float32
    topk: dict[str, TopK]

    def source(self, image: int) -> str:
        """The path (or sample name) of global image index ``image``."""
        pos = int(np.searchsorted(self.indices, image))
        if pos >= len(self.indices) or self.indices[pos] != image:
            raise JaxvizError(f"image {image} is not in index {self.path}")
        return self.paths[pos]


def read_index(path: str | os.PathLike) -> Index:
    """Read a complete INDEX directory (see the module docstring for the format), checking it.

    Raises:
      JaxvizError: not an index, an interrupted scan (rerun the scan to resume it), or a damaged
        one (a file missing or unreadable, a CSV without its header, a meta.json without its
        fields, arrays whose shapes disagree), each named in one line.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    if not path.is_dir() or not meta_path.is_file():
        raise JaxvizError(f"not a scan index (no meta.json): {path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as e:
        raise JaxvizError(f"damaged scan index {path}: cannot read meta.json ({e})") from None
    if not isinstance(meta, dict):
        raise JaxvizError(f"damaged scan index {path}: meta.json is not an object")
    if not meta.get("complete"):
        raise JaxvizError(f"scan index {path} is incomplete (interrupted?); run the same scan again to resume it")
    _check_meta(path, meta)
    indices, paths = _read_csv(path, path / "images.csv")
    features = _load_npy(path, "features.npy")
    if features.ndim != 2 or features.shape[0] != len(paths) or not np.issubdtype(features.dtype, np.floating):
        raise JaxvizError(f"damaged scan index {path}: features.npy holds a {features.dtype} array of shape "
                          f"{features.shape}, expected float (count, D) with count = {len(paths)} rows of images.csv")
    topk = {layer: _read_topk(path, layer, len(paths)) for layer in meta["layers"]}
    return Index(path, meta, indices, paths, features.astype(np.float32, copy=False), topk)


_META_FIELDS = {"model": str, "layers": list, "topk": int, "input_size": (int, list), "fit": str,
                "feature_layer": str}


def _check_meta(path: Path, meta: dict) -> None:
    for key, kind in _META_FIELDS.items():
        if key not in meta:
            raise JaxvizError(f"damaged scan index {path}: meta.json has no {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise JaxvizError(f"damaged scan index {path}: meta.json {key!r} is {meta[key]!r}")
    if not all(isinstance(layer, str) and _safe_layer(layer) for layer in meta["layers"]):
        raise JaxvizError(f"damaged scan index {path}: meta.json 'layers' must be a list of layer names")
    size = meta["input_size"]
    sides = [size] if isinstance(size, int) else size
    if len(sides) not in (1, 2) or not all(isinstance(v, int) and v > 0 for v in sides):
        raise JaxvizError(f"damaged scan index {path}: meta.json 'input_size' is {size!r}")


def _safe_layer(layer: str) -> bool:
    """A layer name usable as a relative file path under ``topk/`` (linen paths nest: block/conv1)."""
    parts = layer.split("/")
    return bool(layer) and all(p not in ("", ".", "..") for p in parts) and "\\" not in layer and "\0" not in layer


def _load_npy(path: Path, name: str) -> np.ndarray:
    file = path / name
    if not file.is_file():
        raise JaxvizError(f"damaged scan index {path}: {name} is missing")
    try:
        return np.load(file, allow_pickle=False)
    except Exception as e:  # garbage bytes: numpy raises ValueError, OSError, EOFError, ...
        raise JaxvizError(f"damaged scan index {path}: cannot read {name} ({e.__class__.__name__})") from None


def _read_topk(path: Path, layer: str, count: int) -> TopK:
    name = f"topk/{layer}.npz"
    file = path / "topk" / f"{layer}.npz"
    if not file.is_file():
        raise JaxvizError(f"damaged scan index {path}: {name} is missing")
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {n: np.asarray(z[n]) for n in ("values", "image", "y", "x")}
    except KeyError as e:
        raise JaxvizError(f"damaged scan index {path}: {name} has no array {e}") from None
    except Exception as e:
        raise JaxvizError(f"damaged scan index {path}: cannot read {name} ({e.__class__.__name__})") from None
    shape = arrays["values"].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays.values()) or shape[1] > count \
            or not all(np.issubdtype(arrays[n].dtype, np.integer) for n in ("image", "y", "x")):
        raise JaxvizError(f"damaged scan index {path}: {name} arrays have shapes "
                          f"{[a.shape for a in arrays.values()]}, expected equal (C, k) with k <= {count}, "
                          "integer image/y/x")
    return TopK(arrays["values"].astype(np.float32, copy=False), arrays["image"], arrays["y"], arrays["x"])


def _read_csv(root: Path, path: Path) -> tuple[np.ndarray, list[str]]:
    if not path.is_file():
        raise JaxvizError(f"damaged scan index {root}: images.csv is missing")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise JaxvizError(f"damaged scan index {root}: cannot read images.csv ({e.__class__.__name__})") from None
    if not rows or rows[0] != ["index", "path"]:
        raise JaxvizError(f"damaged scan index {root}: images.csv does not start with the header 'index,path'")
    try:
        indices = np.asarray([int(r[0]) for r in rows[1:]], np.int64)
        if any(len(r) != 2 for r in rows[1:]):
            raise ValueError
    except (ValueError, IndexError):
        raise JaxvizError(f"damaged scan index {root}: images.csv rows must be 'index,path'") from None
    if len(indices) and np.any(np.diff(indices) <= 0):
        raise JaxvizError(f"damaged scan index {root}: images.csv indices are not increasing")
    return indices, [r[1] for r in rows[1:]]




# ----------------------------------------------------------------------------------- sources

def image_extensions() -> set[str]:
    """File suffixes Pillow can open (lower case, with the dot)."""
    from PIL import Image
    return {ext.lower() for ext in Image.registered_extensions()}


def collect_sources(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Expand folders (recursively, sorted, any Pillow format), files and sample names.

    Raises:
      JaxvizError: an input that is neither a file, a folder nor a sample name; no images found.
    """
    from jaxviz.images import SAMPLES
    exts = image_extensions()
    sources: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f.resolve()) for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in exts and _STATE_DIR not in f.parts)
            if not found:
                raise JaxvizError(f"no images found in folder {p}")
            sources += found
        elif p.is_file():
            sources.append(str(p.resolve()))
        elif str(item) in SAMPLES:
            sources.append(str(item))
        else:
            raise JaxvizError(f"no such file, folder or sample image: {item}")
    if not sources:
        raise JaxvizError("no images to scan")
    return sources



# -------------------------------------------------------------------------------- scanning

class _Checkpoint:
    """Running state on disk: atomic ``state.npz`` + an append-only ``features.f32``."""

    def __init__(self, out: Path):
        self.dir = out / _STATE_DIR
        self.state_path = self.dir / "state.npz"
        self.features_path = self.dir / "features.f32"

    def load(self, dim: int) -> tuple[int, dict] | None:
        if not self.state_path.is_file():
            return None
        with np.load(self.state_path) as z:
            done = int(z["done"])
            state: dict = {}
            for key in z.files:
                if "/" in key:
                    layer, name = key.rsplit("/", 1)
                    state.setdefault(layer, {})[name] = z[key]
        # Rows beyond the checkpoint were appended by the batch that was interrupted: drop them.
        with open(self.features_path, "r+b") as f:
            f.truncate(done * dim * 4)
        return done, state

    def start(self) -> None:
        with _writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
            self.features_path.write_bytes(b"")
            if self.state_path.exists():
                self.state_path.unlink()

    def save(self, done: int, features: np.ndarray, state: dict) -> None:
        with _writing(self.features_path), open(self.features_path, "ab") as f:
            # features first: the state may never run ahead
            f.write(np.ascontiguousarray(features, np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        arrays = {f"{layer}/{n}": np.asarray(a) for layer, s in state.items() for n, a in s.items()}
        _atomic(self.state_path, lambda f: np.savez(f, done=np.int64(done), **arrays))

    def features(self, dim: int) -> np.ndarray:
        return np.fromfile(self.features_path, np.float32).reshape(-1, dim)


def _atomic(path: Path, write: Callable) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` (``jaxviz.io.atomic_write``:
    the temporary file is removed on any failure; a full disk is one ``WriteError`` line)."""
    atomic_write(path, write, what="scan index file", track=False)  # the scan cleans up after itself


def _write_json(path: Path, obj: dict) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def _write_csv(path: Path, indices: Sequence[int], paths: Sequence[str]) -> None:
    def write(f):
        import io
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["index", "path"])
        w.writerows(zip(indices, paths))
        f.write(text.getvalue().encode())
    _atomic(path, write)


def _sources_digest(sources: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()


def _finish(out: Path, meta: dict, state: dict, features: np.ndarray, count: int) -> None:
    """Write the final arrays, remove the running state, then flip ``complete`` last: a complete
    index never holds ``.scan/`` or temporary files (a kill before the flip leaves an incomplete
    index that the next run scans again)."""
    k = min(meta["topk"], count)
    for layer, s in state.items():
        with _writing(out / "topk"):
            (out / "topk" / f"{layer}.npz").parent.mkdir(parents=True, exist_ok=True)
        _atomic(out / "topk" / f"{layer}.npz", lambda f, s=s: np.savez(
            f, values=np.asarray(s["values"][:, :k], np.float32),
            **{n: np.asarray(s[n][:, :k], np.int32) for n in ("image", "y", "x")}))
    _atomic(out / "features.npy", lambda f: np.save(f, features.astype(np.float32)))
    shutil.rmtree(out / _STATE_DIR, ignore_errors=True)
    _sweep(out)
    _write_json(out / "meta.json", {**meta, "complete": True})


# ------------------------------------------------------------------------ one writer at a time

class _writing:
    """An OSError while writing the index (read-only, full disk) becomes one ``WriteError`` line."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            reason = error.strerror or str(error)
            raise WriteError(f"cannot write scan index file {self.path}: {reason}", error.errno, reason) from None
        return False


def _sweep(out: Path) -> None:
    """Remove temporary files a killed writer left (``.NAME.*.tmp``, see ``jaxviz.io``)."""
    for tmp in list(out.glob(".*.tmp")) + list((out / "topk").rglob(".*.tmp")):
        tmp.unlink(missing_ok=True)


@contextmanager
def index_lock(out: Path, wait: bool = False) -> Iterator[bool]:
    """Hold the index folder ``out`` for writing (``fcntl.flock`` on the folder itself: no lock
    file is left behind). Yields True when this call created the folder.

    Raises:
      JaxvizError: another process is writing the same index (``wait=False``).
    """
    import fcntl
    out = Path(out)
    created = not out.exists()
    with _writing(out):
        out.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(out, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise JaxvizError(f"index {out} is being written by another scan; wait until it finishes "
                                  "(or pass --wait)") from None
            try:
                same = os.stat(out).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:  # removed by the holder we waited for (its failed fresh scan)
                same = False
            if not same:
                os.close(fd)
                fd = -1
                with _writing(out):
                    out.mkdir(parents=True, exist_ok=True)
                created = True
                continue
            yield created
            return
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock


_OURS = ("meta.json", "images.csv", "features.npy", "topk", _STATE_DIR)


def _remove_partial(out: Path, created: bool) -> None:
    """Remove what a failed fresh scan wrote (never other files; the folder only if we made it)."""
    for name in _OURS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)
    _sweep(out)
    if created:
        try:
            out.rmdir()
        except OSError:
            pass


def _prefetch(sources: Sequence[str], batch: int, size: int | tuple[int, int], fit: str, start: int,
              workers: int = 2, transform=None):
    """Yield (offset, images (b, S, S, 3)) batches, decoding the next ones in threads."""
    from jaxviz.images import load_image

    def submit(lo: int) -> list:
        # One task per image, not per batch: every worker decodes the batch needed next (the
        # first batch, which the device waits for, in half the time with two workers).
        return [pool.submit(load_image, s, size, fit, transform) for s in sources[lo:lo + batch]]

    with ThreadPoolExecutor(workers) as pool:
        offsets = list(range(start, len(sources), batch))
        # Only a few batches in flight: memory must not grow with the dataset.
        ahead = workers + 1
        pending = deque(submit(lo) for lo in offsets[:ahead])
        for i, lo in enumerate(offsets):
            images = np.stack([f.result() for f in pending.popleft()])
            if i + ahead < len(offsets):
                pending.append(submit(offsets[i + ahead]))
            yield lo, images


def _size_meta(hw: tuple[int, int]) -> int | list[int]:
    return hw[0] if hw[0] == hw[1] else [hw[0], hw[1]]


def _fits() -> tuple[str, ...]:
    from jaxviz import images
    return tuple(getattr(images, "FITS", ("stretch", "crop")))


def scan(model: ModelLike, sources: Sequence[str], out: str | os.PathLike, *, layers: Sequence[str], topk: int = 9,
         batch: int = 32, input_size: int | tuple[int, int] | None = None, fit: str = "eval",
         shard: tuple[int, int] = (0, 1), devices: Sequence | None = None, params: PyTree | None = None,
         compiler_options: Sequence[tuple[str, str]] | None = None, progress: bool = False,
         on_batch: Callable[[int], None] | None = None, wait: bool = False) -> Index:
    """Scan images and write (or resume) an INDEX directory at ``out``.

    Args:
      model: a ``jaxviz`` Model with named layers (bundled, ``from_linen``, ``from_nnx``).
      sources: image paths or sample names (``collect_sources`` expands folders); the whole
        dataset even when scanning one shard.
      out: the INDEX directory; created, or resumed if it holds an interrupted scan of the same
        configuration (a complete one is returned as is).
      layers: layer names or aliases with spatial outputs.
      topk: images kept per channel (at most the number of images: more cannot be kept).
      batch: images per step (rounded up to a multiple of the number of devices).
      input_size: input size, int (square) or (h, w) (default: the model's).
      fit: how images are fitted to the size (``jaxviz.images.fit_image``): "eval" (default)
        the model's standard evaluation transform (``model.eval_transform``), "stretch", "crop".
      shard: (i, n): scan only the i-th of n contiguous parts of ``sources``.
      devices: devices of the data mesh (default ``jax.local_devices()``).
      params: the model's variables (default ``model.params``).
      compiler_options: XLA options for the step (default ``model.compiler_options``).
      on_batch: called with the number of images done after each checkpoint (progress, tests).
      wait: when another process is writing ``out`` (the folder is locked), wait for it instead
        of refusing.
    Returns:
      the complete ``Index``.
    Raises:
      JaxvizError: bad arguments (checked before anything is written: unknown, non-spatial or
        empty layers, sizes, counts), an unreadable image, ``out`` holding something else or
        being written by another scan; ``WriteError`` (a read-only or full location: a fresh
        scan then removes what it wrote).
    """
    model = as_model(model)
    params = model.resolve_params(params)
    compiler_options = model.compiler_options if compiler_options is None else tuple(compiler_options)
    sources = [str(s) for s in sources]
    if not sources:
        raise JaxvizError("no images to scan")
    from jaxviz.techniques import check
    check("scan", topk=topk, batch=batch)
    hw = model.input_hw(input_size)
    if not all(1 <= v <= 4096 for v in hw):
        raise JaxvizError(f"input size must be between 1 and 4096 pixels, got {hw[0]}x{hw[1]}")
    i_shard, n_shard = shard
    if not (n_shard >= 1 and 0 <= i_shard < n_shard):
        raise JaxvizError(f"shard must be i/n with 0 <= i < n, got {i_shard}/{n_shard}")
    if fit not in _fits():
        raise JaxvizError(f"unknown fit {fit!r}; use one of {', '.join(_fits())}")
    if not layers:
        raise JaxvizError("give at least one layer to scan")
    names, shapes = check_layers(model, layers, hw)
    layers = tuple(dict.fromkeys(names.values()))
    unsafe = [layer for layer in layers if not _safe_layer(layer)]
    if unsafe:
        raise JaxvizError(f"layer name {unsafe[0]!r} cannot name a file in the index")
    feature_layer = model.feature_layer
    shapes.update(check_layers(model, [feature_layer], hw, spatial=False)[1])
    lo, hi = shard_range(len(sources), shard)
    mine = sources[lo:hi]
    if not mine:
        raise JaxvizError(f"shard {i_shard}/{n_shard} of {len(sources)} images is empty; use fewer shards")
    size = _size_meta(hw)
    load_size = size if isinstance(size, int) else hw
    meta = {"model": model.name, "layers": list(layers), "topk": int(topk), "input_size": size, "fit": fit,
            "count": len(mine), "feature_layer": feature_layer, "complete": False, "version": VERSION,
            "shard": [i_shard, n_shard], "total": len(sources), "sources_sha256": _sources_digest(sources)}
    # At most ``count`` images can be kept per channel: the state never needs more columns.
    k = min(int(topk), len(mine))
    batch = min(int(batch), len(mine))

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise JaxvizError(f"output {out} exists and is not a folder")
    with index_lock(out, wait) as created:
        fresh = False  # this call writes a new index (not a resume, not someone else's folder)
        try:
            resumed = _existing(out, meta)
            fresh = resumed is None
            return _scan_locked(model, params, mine, out, meta, resumed, shapes, layers, feature_layer, k, batch,
                                lo, hi, load_size, fit, devices, compiler_options, progress, on_batch)
        except BaseException as e:
            # A fresh scan leaves nothing when it could not be written, or when it failed (an
            # unreadable image, ...) before its first checkpoint: no work to resume, and a stale
            # index of the old image list would refuse the corrected rerun. An interrupted one
            # (Ctrl-C, a kill) keeps its folder to resume.
            stopped = isinstance(e, (KeyboardInterrupt, SystemExit))
            nothing_done = not (out / _STATE_DIR / "state.npz").is_file()
            if (fresh and (isinstance(e, WriteError) or (nothing_done and not stopped))) or (
                    created and not any(out.iterdir())):
                _remove_partial(out, created)
            raise


def _scan_locked(model, params, mine, out, meta, resumed, shapes, layers, feature_layer, k, batch, lo, hi,
                 load_size, fit, devices, compiler_options, progress, on_batch) -> Index:
    """The scan proper, with the index folder locked (``scan``)."""
    checkpoint = _Checkpoint(out)
    dim = int(np.prod(shapes[feature_layer][-1:] if len(shapes[feature_layer]) == 3 else shapes[feature_layer]))
    if resumed == "complete":
        _sweep(out)
        return read_index(out)
    if resumed == "partial":
        loaded = checkpoint.load(dim)
    else:
        loaded = None
        checkpoint.start()
        _write_csv(out / "images.csv", range(lo, hi), mine)
        _write_json(out / "meta.json", meta)
    done, state = loaded if loaded else (0, init_state({l: shapes[l][-1] for l in layers}, k))

    mesh = data_mesh(devices)
    ndev = mesh.devices.size
    batch = -(-batch // ndev) * ndev
    step = make_step(model, layers, feature_layer, k, mesh, compiler_options=compiler_options)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), initial=done, unit="img", desc=f"scan {model.name}")
    try:
        for offset, images in _prefetch(mine, batch, load_size, fit, done,
                                        transform=getattr(model, "eval_transform", None)):
            n = len(images)
            ids = np.full((batch,), -1, np.int32)
            ids[:n] = np.arange(lo + offset, lo + offset + n)
            if n < batch:  # pad the last batch: one compiled shape
                images = np.concatenate([images, np.zeros((batch - n,) + images.shape[1:], images.dtype)])
            state, features = step(params, images, ids, state)
            done = offset + n
            host_state = jax.device_get(state)
            checkpoint.save(done, np.asarray(features)[:n], host_state)
            if bar is not None:
                bar.update(n)
            if on_batch is not None:
                on_batch(done)
    finally:
        if bar is not None:
            bar.close()
    _finish(out, meta, jax.device_get(state), checkpoint.features(dim), len(mine))
    return read_index(out)


_FRIENDLY = {"sources_sha256": "image list", "total": "image count", "input_size": "input size"}


def _existing(out: Path, meta: dict) -> str | None:
    """None (fresh), 'partial' (resume) or 'complete'; an error if ``out`` holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise JaxvizError(f"output {out} exists and is not a folder")
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        # An ``images/`` folder is allowed: datasets built for the index live inside it.
        if any(p.name != "images" for p in out.iterdir()):
            raise JaxvizError(f"output folder {out} is not empty and is not a scan index")
        return None
    try:
        old = json.loads(meta_path.read_text())
    except ValueError:
        raise JaxvizError(f"corrupt {meta_path}; remove {out} to start again") from None
    if not old.get("complete") and not (out / _STATE_DIR / "state.npz").is_file():
        return None  # interrupted before its first checkpoint: nothing to keep, whatever it scanned
    keys = ("model", "layers", "topk", "input_size", "fit", "shard", "total", "sources_sha256")
    diff = [_FRIENDLY.get(k, k) for k in keys if old.get(k) != meta.get(k)]
    if diff:
        raise JaxvizError(f"{out} holds a scan with other settings ({', '.join(diff)} differ); "
                          f"choose another --out or remove it")
    return "complete" if old.get("complete") else "partial"



# ---------------------------------------------------------------------------------- merging

def merge_indices(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, wait: bool = False) -> Index:
    """Merge the indices of disjoint shards of one dataset into one INDEX at ``out``.

    The union of the shards' per-channel top-k, re-sorted canonically (value descending, then image
    index), is exactly the top-k of a one-host scan.

    Raises:
      JaxvizError: incomplete or incompatible parts, overlapping images, a shard missing (the
        parts must hold every image of the list), or ``out`` not free.
    """
    if not parts:
        raise JaxvizError("nothing to merge")
    indices = [read_index(p) for p in parts]
    first = indices[0].meta
    keys = ("model", "layers", "topk", "input_size", "fit", "feature_layer", "total", "sources_sha256")
    for ix in indices[1:]:
        diff = [_FRIENDLY.get(k, k) for k in keys if ix.meta.get(k) != first.get(k)]
        if diff:
            raise JaxvizError(f"cannot merge {ix.path} with {indices[0].path}: different {', '.join(diff)} "
                              f"(shards must scan the same image list with the same settings)")
    all_ids = np.concatenate([ix.indices for ix in indices])
    if len(np.unique(all_ids)) != len(all_ids):
        raise JaxvizError("the indices to merge overlap (the same image in two shards)")
    if len(all_ids) != first["total"]:  # a merged index is marked complete: every shard must be there
        shards = {tuple(ix.meta.get("shard", (0, 1))) for ix in indices}
        counts = {n for _, n in shards}
        missing = (f"shard {', '.join(f'{i}/{n}' for n in counts for i in range(n) if (i, n) not in shards)} "
                   "missing" if len(counts) == 1 else "shards missing")
        raise JaxvizError(f"the indices to merge hold {len(all_ids)} of the list's {first['total']} images "
                          f"({missing}); merge every shard of the scan")
    order = np.argsort(all_ids, kind="stable")
    paths = [p for ix in indices for p in ix.paths]
    features = np.concatenate([ix.features for ix in indices])[order]
    k = min(first["topk"], len(all_ids))
    topk = {layer: merge_shards([_arrays(ix.topk[layer]) for ix in indices], k) for layer in first["layers"]}
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JaxvizError(f"output {out} already exists and is not empty")
    with index_lock(out, wait) as created:
        if any(out.iterdir()):  # another merge got there first
            raise JaxvizError(f"output {out} already exists and is not empty")
        try:
            meta = {**first, "count": len(all_ids), "shard": [0, 1], "complete": False}
            _write_csv(out / "images.csv", all_ids[order].tolist(), [paths[i] for i in order])
            _write_json(out / "meta.json", meta)
            _finish(out, meta, topk, features, len(all_ids))
        except BaseException:
            _remove_partial(out, created)
            raise
    return read_index(out)


def _arrays(t: TopK) -> dict[str, np.ndarray]:
    return {"values": t.values, "image": t.image, "y": t.y, "x": t.x}


# ------------------------------------------------------------------------- the index's images

class IndexImages(Mapping):
    """The photographs of an index as a lazy ``{global image index: (H, W, 3) float [0, 1]}``:
    each is loaded on first use as the scan loaded it (the index's size and fit, the model's
    evaluation transform for fit "eval") and kept. ``jaxviz.patches`` takes any such mapping."""

    def __init__(self, index: Index, transform=None):
        self.index = index
        self.transform = transform
        size = index.meta["input_size"]
        self.size = tuple(size) if isinstance(size, list) else int(size)
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, image: int) -> np.ndarray:
        from jaxviz.images import load_image
        image = int(image)
        if image not in self._cache:
            source = self.index.source(image)  # JaxvizError for an image not in the index
            self._cache[image] = load_image(source, self.size, self.index.meta["fit"], self.transform)
        return self._cache[image]

    def __iter__(self) -> Iterator[int]:
        return iter(int(i) for i in self.index.indices)

    def __len__(self) -> int:
        return len(self.index.indices)


def index_images(index: Index, model: ModelLike=None) -> IndexImages:
    """The photographs of ``index`` (``IndexImages``), loaded as the scan loaded them with ``model``
    (its ``eval_transform``; None: torchvision's evaluation transform)."""
    return IndexImages(index, getattr(model, "eval_transform", None) if model is not None else None)
