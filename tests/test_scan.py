"""Dataset scan: top-k == brute force, sharded (4 simulated devices) == one device, shards merged
== one scan, interrupted (exception and SIGKILL) + resumed == uninterrupted, CLI end to end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import make_tiny_model

from jaxviz.errors import JaxvizError
from jaxviz.images import load_images, save_image
from jaxviz.scan_index import collect_sources, merge_indices, read_index, scan

TESTS = Path(__file__).resolve().parent
LAYERS = ["features.1", "features.4"]  # ReLU output (many exact ties at 0) and the last ReLU


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """19 random non-square images, nested folders, mixed formats, plus a non-image file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(19):
        h, w = rng.integers(12, 40, size=2)
        img = rng.random((h, w, 3)) ** rng.uniform(0.3, 3)  # varied statistics
        where = [root, root / "sub", root / "sub" / "deeper"][i % 3]
        save_image(img, where / f"img{i:02d}.{'png' if i % 4 else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    return root


def _brute_force(model, sources, layers, k, size, params=None, fit="eval"):
    """Top-k by a full sort of every image's activations (numpy), and the pooled features, of the
    images fitted as the scan fits them (default: the model's evaluation transform)."""
    params = model.params if params is None else params
    images = load_images(sources, size, fit, model.eval_transform)
    feature_layer = model.feature_layer
    acts = model.activations(params, model.preprocess(images), tuple(layers) + (feature_layer,))
    out = {}
    for layer in layers:
        a = np.asarray(acts[layer])
        n, h, w, c = a.shape
        flat = a.reshape(n, h * w, c)
        val, pos = flat.max(1), flat.argmax(1)  # (n, C): each image once, first max position
        vals, imgs, ys, xs = [], [], [], []
        for ch in range(c):
            order = np.lexsort((np.arange(n), -val[:, ch]))[:k]  # value desc, then image index
            vals.append(val[order, ch]), imgs.append(order)
            ys.append(pos[order, ch] // w), xs.append(pos[order, ch] % w)
        out[layer] = [np.array(v) for v in (vals, imgs, ys, xs)]
    feats = np.asarray(acts[feature_layer]).mean((1, 2))
    return out, feats


def _assert_same_index(a, b, exact=True):
    assert a.meta["layers"] == b.meta["layers"] and a.paths == b.paths
    np.testing.assert_array_equal(a.indices, b.indices)
    for layer in a.meta["layers"]:
        ta, tb = a.topk[layer], b.topk[layer]
        for name in ("image", "y", "x"):
            np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=f"{layer} {name}")
        if exact:
            np.testing.assert_array_equal(ta.values, tb.values)
        else:
            np.testing.assert_allclose(ta.values, tb.values, rtol=1e-5, atol=_batch_atol(tb.values))
    if exact:
        np.testing.assert_array_equal(a.features, b.features)
    else:
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=_batch_atol(b.features))


def _batch_atol(values: np.ndarray) -> float:
    """float32 rounding of the same image computed in batches of other compositions: XLA-CPU's
    convolution tiling depends on the batch on some CPUs (seen on an AMD EPYC: 4.6e-5 on activations
    of 39 and 2.4e-6 on one of 0.033, where the rounding cancels), so the bound scales with the
    layer's largest value, not with each element."""
    return 2e-5 * float(np.abs(values).max(initial=0.0))


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    model = make_tiny_model()
    sources = collect_sources([folder])
    out = tmp_path_factory.mktemp("ref") / "index"
    return model, sources, scan(model, sources, out, layers=LAYERS, topk=4, batch=8)


def test_collect_sources_recursive_and_samples(folder):
    sources = collect_sources([folder, "chelsea"])
    assert len(sources) == 20 and sources[-1] == "chelsea"
    assert all(Path(s).suffix in (".png", ".jpg") for s in sources[:-1])
    assert sources[:-1] == sorted(sources[:-1])
    with pytest.raises(JaxvizError, match="no such file"):
        collect_sources([folder / "missing"])


def test_topk_equals_brute_force(reference):
    model, sources, index = reference
    want, feats = _brute_force(model, sources, LAYERS, 4, 16)
    assert index.meta["complete"] and index.meta["count"] == 19
    for layer in LAYERS:
        t = index.topk[layer]
        values, image, y, x = want[layer]
        assert t.values.shape == (model.layer_shapes()[layer][-1], 4)
        np.testing.assert_allclose(t.values, values, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(t.image, image)
        np.testing.assert_array_equal(t.y, y)
        np.testing.assert_array_equal(t.x, x)
        assert np.all(np.diff(t.values, axis=1) <= 0)
    np.testing.assert_allclose(index.features, feats, rtol=1e-5, atol=1e-6)
    # the index files are readable without jaxviz
    meta = json.loads((index.path / "meta.json").read_text())
    assert meta["count"] == 19 and meta["feature_layer"] == "features.4" and meta["version"] == 1
    with np.load(index.path / "topk" / "features.4.npz") as z:
        assert z["image"].dtype == np.int32 and z["values"].dtype == np.float32


def test_merge_shards_on_arrays_is_the_canonical_topk_of_the_union(rng):
    """The pure merge (no files): shards' canonical top-k, merged, equal the brute-force canonical
    top-k of all images, ties (equal values) broken by the smaller image index."""
    from jaxviz.scan import merge_shards, shard_range
    n, c, k = 23, 5, 4
    values = rng.integers(0, 6, (c, n)).astype(np.float32)  # many ties
    pos = rng.integers(0, 9, (2, c, n)).astype(np.int32)

    def topk(ids):
        order = np.lexsort((ids[None, :].repeat(c, 0), -values[:, ids]), axis=1)[:, :k]
        return {"values": np.take_along_axis(values[:, ids], order, 1), "image": ids[order].astype(np.int32),
                "y": np.take_along_axis(pos[0][:, ids], order, 1), "x": np.take_along_axis(pos[1][:, ids], order, 1)}

    want = topk(np.arange(n))
    for shards in (1, 2, 3, 7):
        parts = [topk(np.arange(*shard_range(n, (i, shards)))) for i in range(shards)]
        got = merge_shards(parts[::-1], k)  # the order of the parts does not matter
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{shards} shards, {name}")


def test_topk_larger_than_dataset_and_batch_one(folder, tmp_path):
    model = make_tiny_model(1)
    sources = collect_sources([folder])[:5]
    index = scan(model, sources, tmp_path / "ix", layers=["features.4"], topk=9, batch=1, fit="stretch")
    assert index.meta["fit"] == "stretch"
    want, _ = _brute_force(model, sources, ["features.4"], 9, 16, fit="stretch")
    assert index.topk["features.4"].values.shape[1] == 5  # k = min(topk, count)
    np.testing.assert_array_equal(index.topk["features.4"].image, want["features.4"][1])


def test_batch_size_does_not_change_the_index(reference, tmp_path):
    model, sources, index = reference
    other = scan(model, sources, tmp_path / "ix", layers=LAYERS, topk=4, batch=5)
    _assert_same_index(index, other, exact=False)


def test_shards_merged_equal_one_scan(reference, tmp_path):
    model, sources, index = reference
    parts = [scan(model, sources, tmp_path / f"part{i}", layers=LAYERS, topk=4, batch=4, shard=(i, 3))
             for i in range(3)]
    assert sum(p.meta["count"] for p in parts) == 19
    merged = merge_indices([p.path for p in parts[::-1]], tmp_path / "merged")
    _assert_same_index(index, merged, exact=False)
    with pytest.raises(JaxvizError, match="overlap"):
        merge_indices([parts[0].path, parts[0].path], tmp_path / "bad")
    # a shard left out: refused (a merged index is complete), and nothing written
    with pytest.raises(JaxvizError, match=r"1\d of the list's 19 images \(shard 1/3 missing\)"):
        merge_indices([parts[0].path, parts[2].path], tmp_path / "short")
    assert not (tmp_path / "short").exists()


def test_interrupted_scan_resumes_to_the_same_index(reference, tmp_path):
    model, sources, index = reference
    out = tmp_path / "ix"

    def stop_after_two_batches(done):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(model, sources, out, layers=LAYERS, topk=4, batch=4, on_batch=stop_after_two_batches)
    assert json.loads((out / "meta.json").read_text())["complete"] is False
    assert not (out / "features.npy").exists()
    with pytest.raises(JaxvizError, match="incomplete"):
        read_index(out)
    with np.load(out / ".scan" / "state.npz") as z:
        assert int(z["done"]) == 8
    seen = []
    resumed = scan(model, sources, out, layers=LAYERS, topk=4, batch=4, on_batch=seen.append)
    assert seen[0] == 12  # it did not start again
    _assert_same_index(index, resumed, exact=False)
    assert not (out / ".scan").exists()
    with pytest.raises(JaxvizError, match=r"other settings \(.* differ\)"):
        scan(model, sources, out, layers=LAYERS, topk=5, batch=4)


KILLED = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import make_tiny_model
from jaxviz.scan_index import scan, collect_sources
scan(make_tiny_model(), collect_sources([{folder!r}]), {out!r}, layers={layers!r}, topk=4, batch=2,
     on_batch=lambda done: time.sleep(0.4))
"""


def test_killed_process_resumes_to_the_same_index(reference, folder, tmp_path):
    model, sources, index = reference
    out = tmp_path / "ix"
    code = KILLED.format(tests=str(TESTS), folder=str(folder), out=str(out), layers=LAYERS)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"})
    state = out / ".scan" / "state.npz"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.is_file():
                with np.load(state) as z:
                    if int(z["done"]) >= 4:
                        break
            time.sleep(0.05)
        assert proc.poll() is None, "the scan finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert json.loads((out / "meta.json").read_text())["complete"] is False
    resumed = scan(model, sources, out, layers=LAYERS, topk=4, batch=2)
    _assert_same_index(index, resumed, exact=False)


SHARDED = """
import sys
sys.path.insert(0, {tests!r})
import jax
assert len(jax.devices()) == 4, jax.devices()
from conftest import make_tiny_model
from jaxviz.scan_index import scan, collect_sources
scan(make_tiny_model(), collect_sources([{folder!r}]), {out!r}, layers={layers!r}, topk=4, batch=8)
"""


def test_four_device_scan_equals_one_device_scan(reference, folder, tmp_path):
    model, sources, index = reference
    assert len(jax.devices()) == 1
    out = tmp_path / "ix4"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    code = SHARDED.format(tests=str(TESTS), folder=str(folder), out=str(out), layers=LAYERS)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # Same images, positions and order; values agree to float32 rounding (XLA's CPU convolution
    # on a 2-image slice may round differently from the 8-image batch, by 1 ulp).
    _assert_same_index(index, read_index(out), exact=False)


# ---------------------------------------------------------------------------------------- CLI

def _cli(argv, capsys):
    from jaxviz.cli import main
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_scan_and_patches_end_to_end(squeezenet, folder, tmp_path, capsys):
    out = tmp_path / "ix"
    code, stdout, err = _cli(["scan", str(folder / "sub"), "coffee", "--model", "squeezenet1_1", "--layers",
                              "fire3", "fire6", "--topk", "3", "--out", str(out), "--batch", "4",
                              "--size", "64", "--no-progress"], capsys)
    assert code == 0, err
    index = read_index(out)
    assert index.meta["layers"] == ["features.4", "features.9"] and index.meta["count"] == 13
    assert index.features.shape == (13, 512)
    fig = tmp_path / "fig.png"
    # more patches than the index holds per channel (--topk 3): refused, as neighbors' --k over its images
    code, _, err = _cli(["patches", str(out), "--layer", "fire6", "--channels", "0", "--k", "4", "--out", str(fig)],
                        capsys)
    assert code == 2 and "--k must be between 1 and 3" in err and not fig.exists(), err
    code, stdout, err = _cli(["patches", str(out), "--layer", "fire6", "--channels", "0", "5", "200",
                              "--out", str(fig)], capsys)
    assert code == 0, err
    assert fig.is_file()
    # two shards + merge == one scan, through the CLI
    for i in range(2):
        assert _cli(["scan", str(folder / "sub"), "coffee", "--model", "squeezenet1_1", "--layers", "fire3",
                     "fire6", "--topk", "3", "--out", str(tmp_path / f"s{i}"), "--batch", "4", "--size", "64",
                     "--shard", f"{i}/2", "--no-progress"], capsys)[0] == 0
    code, _, err = _cli(["scan", "--merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "shard 1/2 missing" in err and not (tmp_path / "m").exists()
    code, _, err = _cli(["scan", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                         str(tmp_path / "m")], capsys)
    assert code == 0, err
    _assert_same_index(index, read_index(tmp_path / "m"), exact=False)


@pytest.mark.parametrize("argv, message", [
    (["scan", "/no/such/dir", "--layers", "fire3", "--out", "{tmp}/a"], "no such file"),
    (["scan", "chelsea", "--layers", "fire33", "--out", "{tmp}/a", "--model", "squeezenet1_1"], "unknown layer"),
    (["scan", "chelsea", "--layers", "classifier.3", "--out", "{tmp}/a", "--model", "squeezenet1_1"], "spatial"),
    (["scan", "chelsea", "--layers", "fire3", "--out", "{tmp}/a", "--shard", "3/2"], "--shard"),
    (["scan", "chelsea", "--layers", "fire3", "--out", "{tmp}/a", "--shard", "x"], "--shard"),
    (["scan", "chelsea", "--layers", "fire3", "--out", "{tmp}/a", "--topk", "0"], "--topk"),
    (["scan", "chelsea", "--out", "{tmp}/a"], "--layers"),
    (["scan", "chelsea", "--layers", "fire3", "--out", "{tmp}/notempty"], "not empty"),
    (["scan", "chelsea", "--merge", "{tmp}/x", "--out", "{tmp}/a"], "not both"),
    (["scan", "--merge", "{tmp}/notempty", "--out", "{tmp}/a"], "not a scan index"),
    (["patches", "{tmp}/notempty", "--layer", "fire3", "--channels", "0", "--out", "{tmp}/p.png"], "not a scan index"),
    (["patches", "{tmp}/x", "--layer", "fire3", "--channels", "0", "--out", "{tmp}/no/p.png"], "does not exist"),
])
def test_cli_bad_inputs_one_line_exit_2(argv, message, squeezenet, tmp_path, capsys):
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "file.txt").write_text("x")
    code, _, err = _cli([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_patches_bad_layer_and_channel(reference):
    model, _, index = reference
    from jaxviz.patches import top_patches
    with pytest.raises(JaxvizError, match="out of range"):
        top_patches(model, index, "features.4", [0, 8], images={})
    with pytest.raises(JaxvizError, match="not scanned"):
        top_patches(model, index, "features.3", [0], images={})


def test_ties_are_canonical_with_dead_channels(folder, tmp_path):
    """Channels that are 0 everywhere tie on every image: lowest image index, position (0, 0) —
    the same order as the brute-force sort, through batches, shards and merges."""
    model = make_tiny_model(2)
    params = jax.tree_util.tree_map(lambda p: p, model.params)
    params["features.0"]["bias"] = params["features.0"]["bias"].at[:3].set(-100.0)  # dead ReLUs
    sources = collect_sources([folder])
    index = scan(model, sources, tmp_path / "ix", layers=["features.1"], topk=4, batch=3, params=params)
    t = index.topk["features.1"]
    assert np.all(t.values[:3] == 0)
    np.testing.assert_array_equal(t.image[:3], np.tile(np.arange(4), (3, 1)))
    np.testing.assert_array_equal(t.y[:3], 0)
    want, _ = _brute_force(model, sources, ["features.1"], 4, 16, params)
    np.testing.assert_array_equal(t.image, want["features.1"][1])
    parts = [scan(model, sources, tmp_path / f"p{i}", layers=["features.1"], topk=4, batch=2, shard=(i, 2),
                  params=params) for i in range(2)]
    merged = merge_indices([parts[1].path, parts[0].path], tmp_path / "m")
    _assert_same_index(index, merged, exact=False)


def test_figure_dataset_is_deterministic_and_scannable(tmp_path):
    from jaxviz.datasets import figure_dataset, figure_index
    a = figure_dataset(tmp_path / "a", 40, size=24)
    b = figure_dataset(tmp_path / "b", 40, size=24)
    assert len(a) == 40 and [Path(p).name for p in a] == [Path(p).name for p in b]
    assert all(Path(p).read_bytes() == Path(q).read_bytes() for p, q in zip(a, b))
    assert any("face" in Path(p).name for p in a) and any("crop" in Path(p).name for p in a)
    assert figure_dataset(tmp_path / "a", 40, size=24) == a  # reused, not rewritten
    index = figure_index(make_tiny_model(), tmp_path / "ix", layers=("features.4",), count=40, topk=3)
    assert index.meta["count"] == 40 and all("/ix/images/" in p for p in index.paths)


def test_unreadable_image_is_a_clear_error_and_leaves_no_complete_index(folder, tmp_path):
    import shutil
    bad = tmp_path / "imgs"
    shutil.copytree(folder, bad)
    (bad / "zz_broken.png").write_bytes(b"not a png")
    with pytest.raises(JaxvizError, match="cannot read image .*zz_broken.png"):
        scan(make_tiny_model(), collect_sources([bad]), tmp_path / "ix", layers=["features.4"], topk=2, batch=4)
    with pytest.raises(JaxvizError, match="incomplete"):
        read_index(tmp_path / "ix")


def test_an_unreadable_image_in_the_first_batch_leaves_nothing(folder, tmp_path, monkeypatch):
    """Failing before its first checkpoint, a fresh scan has nothing to resume: it removes what it
    wrote, so the corrected rerun (the broken file deleted: another image list) is not refused
    as 'a scan with a different image list'. A broken image later on keeps the resumable index,
    and once the file is repaired the same command resumes it."""
    import shutil
    bad = tmp_path / "imgs"
    shutil.copytree(folder, bad)
    (bad / "000_broken.png").write_bytes(b"")
    out = tmp_path / "ix"
    with pytest.raises(JaxvizError, match="cannot read image .*000_broken.png"):
        scan(make_tiny_model(), collect_sources([bad]), out, layers=["features.4"], topk=2, batch=4)
    assert not out.exists()
    (bad / "000_broken.png").unlink()
    assert scan(make_tiny_model(), collect_sources([bad]), out, layers=["features.4"], topk=2, batch=4).meta["complete"]

    shutil.rmtree(out)  # interrupted before its first checkpoint, then run on another list: a fresh scan
    import jaxviz.scan_index as scan_index

    def interrupted(*args, **kwargs):  # Ctrl-C after the index was started, before any batch
        raise KeyboardInterrupt
    with monkeypatch.context() as mp:
        mp.setattr(scan_index, "make_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            scan(make_tiny_model(), collect_sources([folder]), out, layers=["features.4"], topk=2, batch=4)
    assert (out / "meta.json").is_file() and not (out / ".scan" / "state.npz").is_file()
    assert scan(make_tiny_model(), collect_sources([bad]), out, layers=["features.4"], topk=2, batch=4).meta["complete"]

    shutil.rmtree(out)
    late = bad / "zz_broken.png"
    late.write_bytes(b"")
    with pytest.raises(JaxvizError, match="cannot read image .*zz_broken.png"):
        scan(make_tiny_model(), collect_sources([bad]), out, layers=["features.4"], topk=2, batch=4)
    assert (out / ".scan" / "state.npz").is_file()  # batches done before it are kept
    shutil.copy(next(p for p in sorted(bad.glob("*.png")) if p != late), late)
    seen = []
    done = scan(make_tiny_model(), collect_sources([bad]), out, layers=["features.4"], topk=2, batch=4,
                on_batch=seen.append)
    assert done.meta["complete"] and seen[0] > 4  # resumed, not restarted


# ------------------------------------------------------------------- bad sizes, damaged indices

def test_empty_layer_is_refused_before_anything_is_written(folder, tmp_path):
    """Issue 13 item 4: at 1 px the tiny model's features.4 is 0 x 0; the scan names the smallest
    size that works and writes nothing."""
    model = make_tiny_model()
    assert model.smallest_input("features.4") == 2
    with pytest.raises(JaxvizError, match=r"features.4 of tiny is empty .* smallest input size where it is not is 2 px"):
        scan(model, collect_sources([folder]), tmp_path / "ix", layers=["features.4"], input_size=1)
    assert not (tmp_path / "ix").exists()
    for bad in ({"topk": 0}, {"batch": 0}, {"input_size": 0}, {"input_size": 5000}, {"fit": "squash"},
                {"layers": ["classifier.2"]}, {"layers": []}):
        kwargs = {"layers": ["features.4"], **bad}
        with pytest.raises(JaxvizError):
            scan(model, collect_sources([folder]), tmp_path / "ix", **kwargs)
        assert not (tmp_path / "ix").exists()


def test_huge_topk_and_batch_are_capped_by_the_dataset(folder, tmp_path):
    """Issue 13 item 8: --topk 1000000000 allocated terabytes; at most ``count`` images can be kept."""
    model = make_tiny_model()
    sources = collect_sources([folder])[:6]
    index = scan(model, sources, tmp_path / "ix", layers=["features.4"], topk=10 ** 9, batch=10 ** 9)
    want, _ = _brute_force(model, sources, ["features.4"], 6, 16)
    assert index.topk["features.4"].values.shape == (8, 6)
    np.testing.assert_array_equal(index.topk["features.4"].image, want["features.4"][1])


def test_cli_scan_refuses_an_empty_layer_naming_the_smallest_size(squeezenet, tmp_path, capsys):
    """`scan --size 16` crashed with a traceback and left a half-written index (fire9 is 0 x 0)."""
    out = tmp_path / "ix"
    code, _, err = _cli(["scan", "chelsea", "--model", "squeezenet1_1", "--layers", "fire3", "fire9",
                         "--size", "16", "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "fire9" in err and "empty" in err and "17 px" in err
    assert not out.exists()
    code, _, err = _cli(["scan", "chelsea", "--model", "squeezenet1_1", "--layers", "fire3", "--size", "0",
                         "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "--size" in err and not out.exists()


def _damage_missing(name):
    def damage(ix: Path):
        (ix / name).unlink()
    return damage


def _damage_write(name, data: bytes):
    def damage(ix: Path):
        (ix / name).write_bytes(data)
    return damage


def _damage_csv_header(ix: Path):
    lines = (ix / "images.csv").read_text().splitlines()
    (ix / "images.csv").write_text("\n".join(lines[1:]) + "\n")


def _damage_meta(edit):
    def damage(ix: Path):
        meta = json.loads((ix / "meta.json").read_text())
        (ix / "meta.json").write_text(json.dumps(edit(meta)))
    return damage


def _damage_features_rows(ix: Path):
    np.save(ix / "features.npy", np.load(ix / "features.npy")[:-1])


DAMAGES = {
    "missing features.npy": (_damage_missing("features.npy"), "features.npy is missing"),
    "missing images.csv": (_damage_missing("images.csv"), "images.csv is missing"),
    "missing topk": (_damage_missing("topk/features.4.npz"), "topk/features.4.npz is missing"),
    "garbage features.npy": (_damage_write("features.npy", b"\x93NUMPY garbage" * 7), "cannot read features.npy"),
    "csv without header": (_damage_csv_header, "header"),
    "meta without layers": (_damage_meta(lambda m: {k: v for k, v in m.items() if k != "layers"}), "'layers'"),
    "garbage topk": (_damage_write("topk/features.4.npz", b"PK\x03\x04 not a zip"), "cannot read topk/features.4.npz"),
    "meta not json": (_damage_write("meta.json", b"{not json"), "meta.json"),
    "meta a list": (_damage_meta(lambda m: [m]), "meta.json"),
    "features rows": (_damage_features_rows, "features.npy"),
    "layer path escapes": (_damage_meta(lambda m: {**m, "layers": ["../../etc/x"]}), "'layers'"),
}
COMMANDS = {
    "neighbors": ["neighbors", "{ix}", "{image}", "--k", "2", "--space", "pixel", "--no-progress"],
    "embed": ["embed", "{ix}", "--method", "pca", "--thumb", "16", "--size", "64", "--no-progress",
              "--out", "{tmp}/e.png"],
    "patches": ["patches", "{ix}", "--layer", "features.4", "--channels", "0", "--out", "{tmp}/p.png"],
}


@pytest.fixture(scope="module")
def small_index(folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    sources = collect_sources([folder])[:5]
    return scan(make_tiny_model(), sources, root / "ix", layers=["features.1", "features.4"], topk=3, batch=5)


def test_cli_reads_an_undamaged_small_index(small_index, tmp_path, capsys):
    """The control for the damage cases: the same commands succeed (patches needs a registered model)."""
    import shutil
    ix = tmp_path / "ix"
    shutil.copytree(small_index.path, ix)
    for name in ("neighbors", "embed"):
        argv = [a.format(ix=ix, image=small_index.paths[0], tmp=tmp_path) for a in COMMANDS[name]]
        code, _, err = _cli(argv, capsys)
        assert code == 0, err


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_cli_damaged_index_is_one_line_exit_2(small_index, command, damage, tmp_path, capsys):
    """Issue 13 item 9: each damaged index gives one JaxvizError line naming what is wrong."""
    import shutil
    ix = tmp_path / "ix"
    shutil.copytree(small_index.path, ix)
    edit, message = DAMAGES[damage]
    edit(ix)
    argv = [a.format(ix=ix, image=small_index.paths[0], tmp=tmp_path) for a in COMMANDS[command]]
    code, _, err = _cli(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err and "damaged" in err, err
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "p.png").exists()
