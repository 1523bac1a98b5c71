"""Ported weights on disk: port on first use, verify hashes and shapes on every load.

``weights/MANIFEST.json`` (committed) pins, per model, the sha256 of the source and of the
ported file where they are known. Porting writes ``weights/NAME.npz`` and a record
``weights/NAME.json`` (source path and hashes); loading checks the ported file's sha256 against
the manifest (or the record, for weights a user ported) and its shapes against the architecture.
"""
from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path

from jaxviz.errors import WeightsError
from jaxviz.models.bundled import BundledModel, bundled_model
from jaxviz.models.registry import get_spec, list_models
from jaxviz.weights import porting
from jaxviz.weights.sources import SOURCES, Source, expected_prefix, weights_dir


def manifest() -> dict:
    path = weights_dir() / "MANIFEST.json"
    if not path.is_file():
        path = Path(__file__).resolve().parents[2] / "weights" / "MANIFEST.json"
    try:
        return json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError):
        return {}


def ported_path(name: str) -> Path:
    return weights_dir() / f"{name}.npz"


def status(name: str) -> str:
    """'available' (ported), 'portable' (source found; ported on first use) or 'not ported'."""
    if ported_path(name).is_file():
        return "available"
    return "portable" if SOURCES[name].find() is not None else "not ported"


def available_models() -> list[str]:
    return [n for n in list_models() if status(n) != "not ported"]


def _check_source_hash(name: str, path: Path, digest: str) -> None:
    """A torchvision-style name (NAME-<sha256 prefix>.pth) must keep its promise; otherwise the
    file must be the pinned source."""
    prefix = expected_prefix(path)
    pinned = manifest().get(name, {}).get("source_sha256") or SOURCES[name].sha256
    if prefix and not digest.startswith(prefix):
        raise WeightsError(f"{path} has sha256 {digest[:16]}…, but its torchvision-style name promises "
                           f"{prefix}…: the file is corrupt or renamed (--no-verify ports it anyway)")
    if not prefix and pinned and digest != pinned:
        raise WeightsError(f"{path} has sha256 {digest[:16]}…, expected {pinned[:16]}… for {name} "
                           f"(--no-verify ports a different file deliberately)")


def port_model(name: str, source_path: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Port ``name``'s weights from its source (or ``source_path``) into ``weights/NAME.npz``.

    Raises:
      WeightsError: no source, a source with the wrong hash, or weights that do not fit.
    """
    spec = get_spec(name)
    source: Source = SOURCES[name]
    path = Path(source_path) if source_path else source.find()
    if path is None:
        raise WeightsError(f"no weights for {name}: {source.howto}")
    if not path.is_file():
        raise WeightsError(f"no such weights file: {path}")
    source_digest = porting.sha256_file(path)
    if verify:
        _check_source_hash(name, path, source_digest)
    params = porting.state_dict_to_params(spec, source.read(path), source=str(path))
    target = ported_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = porting.save_params(params, target)
    porting.write_record(target.with_suffix(".json"), {
        "model": name, "source": str(path), "source_description": source.description,
        "licence": source.licence, "source_sha256": source_digest, "ported_sha256": digest,
        "ported_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    load_params.cache_clear()
    return target


@lru_cache(maxsize=8)
def load_params(name: str) -> dict:
    """The ported parameters of ``name``, porting first if needed; hash and shapes verified."""
    spec = get_spec(name)
    path = ported_path(name)
    if not path.is_file():
        port_model(name)
    digest = porting.sha256_file(path)
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    pinned_source = manifest().get(name, {})
    # The manifest pins the port of the pinned source; a port of another file (e.g. torchvision's
    # float32 .pth instead of the float16 export) is pinned by its own record.
    if not record or record.get("source_sha256") == pinned_source.get("source_sha256"):
        pinned = pinned_source.get("ported_sha256") or record.get("ported_sha256")
    else:
        pinned = record.get("ported_sha256")
    if pinned and digest != pinned:
        raise WeightsError(f"weights file {path} has sha256 {digest[:16]}…, expected {pinned[:16]}…; "
                           f"delete it and re-port with `python scripts/port_weights.py {name}`")
    return porting.load_params(path, spec)


def load_model(name: str) -> BundledModel:
    """A ready model: spec, Flax module and verified ported parameters.

    Example:
      >>> model = load_model("squeezenet1_1")
      >>> logits = jax.jit(model.apply)(model.params, model.preprocess(images))  # (N, 1000)
    """
    spec = get_spec(name)
    return bundled_model(spec, load_params(name))


def default_model() -> str:
    """The first available of squeezenet1_1, efficientnet_lite0."""
    for name in ("squeezenet1_1", "efficientnet_lite0"):
        if status(name) != "not ported":
            return name
    raise WeightsError("no classifier weights available: " + SOURCES["squeezenet1_1"].howto)
