"""Ported weights on disk: port on first use, verify hashes and shapes on every load.

Files, in ``weights/`` (``$JAXVIZ_WEIGHTS`` or the checkout's; see ``sources.weights_dir``):

- ``MANIFEST.json`` (committed) pins, per model, the sha256 of the source and of its port where
  both are byte-reproducible. A manifest that cannot be read is refused (fail closed): the pins
  are what make a weights file trustworthy.
- ``NAME.safetensors``: the ported Flax parameters (``tensorfile``: flat keys such as
  ``features.3/squeeze/kernel``, deterministic bytes), readable by ``safetensors`` without jaxviz.
- ``NAME.json``: the port's record (source path and description, source and port sha256). It pins
  a port of a file the manifest does not know (a user's own .pth). A record that cannot be read
  makes that one model "damaged": listing models still works, loading it says what to do.

Loading checks the port's sha256 against its pin (the manifest's when the record's source is the
pinned one, else the record's), then its names and shapes against the architecture, then that
every value is finite. Porting writes the file to a temporary name in ``weights/`` and renames it;
a failure (read-only or full disk) leaves no temporary file and raises one clear ``WeightsError``.

Ports made before the store used safetensors (``NAME.npz``) are read once: on the first load the
.npz is checked against its pin (the manifest's ``npz_sha256`` or its record), its shapes against
the architecture, rewritten as ``NAME.safetensors`` (pinned again) and removed. This needs no
source, so a port of a .pth the user no longer has survives the change of format;
``scripts/port_weights.py`` re-ports from the sources instead, with the same result.
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
from jaxviz.weights import porting, tensorfile
from jaxviz.weights.sources import PROJECT_ROOT, SOURCES, Source, expected_prefix, weights_dir

_SHA_FIELDS = ("source_sha256", "ported_sha256", "npz_sha256")


def manifest_path() -> Path | None:
    """The manifest in use: the weights folder's, else the checkout's; None when there is none
    (an installed jaxviz without a checkout pins sources in ``sources.SOURCES`` only)."""
    for path in (weights_dir() / "MANIFEST.json", PROJECT_ROOT / "weights" / "MANIFEST.json"):
        if path.is_file():
            return path
    return None


def manifest() -> dict:
    """``{model: {source_sha256, ported_sha256, ...}}`` from MANIFEST.json.

    Raises:
      WeightsError: the manifest exists but is not valid JSON of that form (fail closed).
    """
    path = manifest_path()
    if path is None:
        return {}
    fix = f"restore it (`git checkout -- {path.name}` in the checkout's weights/)"
    try:
        models = json.loads(path.read_text())["models"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path} is damaged ({type(e).__name__}: {str(e)[:60]}); "
                           f"refusing to load unpinned weights: {fix}") from None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise WeightsError(f"{path} is damaged (\"models\" must map names to objects): {fix}")
    for name, entry in models.items():
        for key in _SHA_FIELDS:
            if key in entry and not tensorfile._is_sha256(entry[key]):
                raise WeightsError(f"{path} is damaged ({name}.{key} is not a sha256): {fix}")
    return models


def ported_path(name: str) -> Path:
    return weights_dir() / f"{name}{tensorfile.SUFFIX}"


def legacy_path(name: str) -> Path:
    """Where ports were written before safetensors (read once, see the module docstring)."""
    return weights_dir() / f"{name}.npz"


def record_path(name: str) -> Path:
    return weights_dir() / f"{name}.json"


def _repair(name: str) -> str:
    return (f"delete it and re-port with `python scripts/port_weights.py {name}` "
            f"(add `--from FILE` for a file you supplied)")


def damage(name: str) -> str | None:
    """Why ``name``'s port cannot be trusted (a damaged record, nothing pinning it), or None.
    Cheap: no file is hashed."""
    entry = manifest().get(name, {})
    if not (ported_path(name).is_file() or legacy_path(name).is_file()):
        return None
    try:
        record = tensorfile.read_record(record_path(name))
    except WeightsError as e:
        return str(e)
    if not record and not (entry.get("ported_sha256") or entry.get("npz_sha256")):
        return f"{record_path(name)} is missing and the manifest pins no port of {name}"
    return None


def status(name: str) -> str:
    """'available' (ported), 'damaged' (ported, but its record is unreadable or nothing pins it),
    'portable' (source found; ported on first use) or 'not ported'.

    Raises:
      WeightsError: MANIFEST.json is damaged.
    """
    if ported_path(name).is_file() or legacy_path(name).is_file():
        return "damaged" if damage(name) else "available"
    manifest()  # fail closed on a damaged manifest here too
    return "portable" if SOURCES[name].find() is not None else "not ported"


def available_models() -> list[str]:
    return [n for n in list_models() if status(n) in ("available", "portable")]


def _check_source_hash(name: str, path: Path, digest: str, pins: dict) -> None:
    """A torchvision-style name (NAME-<sha256 prefix>.pth) must keep its promise; otherwise the
    file must be the pinned source."""
    prefix = expected_prefix(path)
    pinned = pins.get(name, {}).get("source_sha256") or SOURCES[name].sha256
    if prefix and not digest.startswith(prefix):
        raise WeightsError(f"{path} has sha256 {digest[:16]}…, but its torchvision-style name promises "
                           f"{prefix}…: the file is corrupt or renamed (--no-verify ports it anyway)")
    if not prefix and pinned and digest != pinned:
        raise WeightsError(f"{path} has sha256 {digest[:16]}…, expected {pinned[:16]}… for {name} "
                           f"(--no-verify ports a different file deliberately)")


def _write_port(name: str, params: dict, record: dict) -> str:
    """``NAME.safetensors`` and its record (``tensorfile.write_port``); a stale ``NAME.npz`` goes."""
    digest = tensorfile.write_port(ported_path(name), params, metadata=_metadata(name), record=record)
    try:
        legacy_path(name).unlink(missing_ok=True)
    except OSError:
        pass
    return digest


def _metadata(name: str) -> dict[str, str]:
    return {"format": "flax", "model": name}


def port_model(name: str, source_path: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Port ``name``'s weights from its source (or ``source_path``) into ``weights/NAME.safetensors``.

    Raises:
      WeightsError: no source, a source with the wrong hash, weights that do not fit or are not
        finite, or a location that cannot be written (nothing is left behind).
    """
    spec = get_spec(name)
    source: Source = SOURCES[name]
    pins = manifest()
    path = Path(source_path) if source_path else source.find()
    if path is None:
        raise WeightsError(f"no weights for {name}: {source.howto}")
    if not path.is_file():
        raise WeightsError(f"no such weights file: {path}")
    source_digest = tensorfile.sha256_file(path)
    if verify:
        _check_source_hash(name, path, source_digest, pins)
    state = source.read(path, porting.torch_shapes(spec))
    params = porting.state_dict_to_params(spec, state, source=str(path))
    _write_port(name, params, {
        "model": name, "source": str(path), "source_description": source.description,
        "licence": source.licence, "source_sha256": source_digest,
        "ported_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    load_params.cache_clear()
    return ported_path(name)


def _pinned_port(name: str, record: dict, pins: dict, field: str = "ported_sha256") -> str | None:
    """The manifest pins the port of the pinned source; a port of another file (e.g. torchvision's
    float32 .pth instead of the float16 export) is pinned by its own record."""
    entry = pins.get(name, {})
    if not record or record.get("source_sha256") == entry.get("source_sha256"):
        return entry.get(field) or record.get("ported_sha256")
    return record.get("ported_sha256")


def _convert_legacy(name: str, pins: dict) -> None:
    """Read a pre-safetensors ``NAME.npz`` port once (hash and shapes checked) and rewrite it."""
    old = legacy_path(name)
    record = tensorfile.read_record(record_path(name))
    npz_pin = _pinned_port(name, record, pins, field="npz_sha256")
    if npz_pin is None:
        raise WeightsError(f"{old} is pinned by no record or manifest entry; {_repair(name)}")
    entry = pins.get(name, {})
    # The conversion of the pinned source's port must give the pinned safetensors port.
    pinned = entry.get("ported_sha256") if record.get("source_sha256", entry.get("source_sha256")) == \
        entry.get("source_sha256") else None
    porting.convert_legacy_npz(old, ported_path(name), porting.flax_shapes(get_spec(name)), npz_pin,
                               metadata=_metadata(name), pinned=pinned, repair=_repair(name))


@lru_cache(maxsize=8)
def load_params(name: str) -> dict:
    """The ported parameters of ``name``, porting first if needed; hash, shapes and values verified.

    Raises:
      WeightsError: no source to port from, a damaged manifest or record, or a port whose hash,
        shapes or values are wrong (each one line saying how to repair it).
    """
    spec = get_spec(name)
    pins = manifest()
    path = ported_path(name)
    if not path.is_file():
        if legacy_path(name).is_file():
            try:
                _convert_legacy(name, pins)
            except (OSError, WeightsError):
                if not path.is_file():  # another process may have converted it meanwhile
                    raise
        else:
            port_model(name)
    try:
        record = tensorfile.read_record(record_path(name))
    except WeightsError as e:
        raise WeightsError(f"{e}; {_repair(name)}") from None
    pinned = _pinned_port(name, record, pins)
    if pinned is None:
        raise WeightsError(f"{path} is pinned by no record or manifest entry; {_repair(name)}")
    return tensorfile.load_params(path, porting.flax_shapes(spec), sha256=pinned, what=name,
                                  repair=_repair(name))


def load_model(name: str) -> BundledModel:
    """A ready model: spec, Flax module and verified ported parameters.

    Example:
      >>> model = load_model("squeezenet1_1")
      >>> logits = jax.jit(model.apply)(model.params, model.preprocess(images))  # (N, 1000)
    """
    spec = get_spec(name)
    return bundled_model(spec, load_params(name))


def default_model() -> str:
    """The first available of squeezenet1_1, efficientnet_lite0 (a damaged one counts, so that
    loading it says what is wrong rather than silently switching networks)."""
    for name in ("squeezenet1_1", "efficientnet_lite0"):
        if status(name) != "not ported":
            return name
    raise WeightsError("no classifier weights available: " + SOURCES["squeezenet1_1"].howto)
