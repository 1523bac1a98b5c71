"""Foundation CLI: predict / models / layers, class names as typed on the command line, and
one-line errors (exit 2) for bad input."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxviz.cli import main


def test_predict_json(squeezenet, capsys):
    # issue 2's reference numbers are for PIL bicubic straight to 224 px (--fit stretch)
    assert main(["predict", "chelsea", "coffee", "--model", "squeezenet1_1", "--topk", "2", "--json",
                 "--fit", "stretch"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result] == ["chelsea", "coffee"]
    assert result[0]["topk"][0]["index"] == 285 and result[0]["topk"][0]["label"] == "Egyptian cat"
    assert abs(result[0]["topk"][0]["prob"] - 0.716) < 0.005
    assert abs(result[1]["topk"][0]["prob"] - 0.963) < 0.005 and len(result[1]["topk"]) == 2
    probs = [t["prob"] for t in result[1]["topk"]]
    assert probs == sorted(probs, reverse=True)
    # the default (the evaluation transform) crops differently, the classes stay
    assert main(["predict", "chelsea", "coffee", "--model", "squeezenet1_1", "--topk", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["topk"][0]["index"] for r in result] == [285, 967]
    assert [r["topk"][0]["label"] for r in result] == ["Egyptian cat", "espresso"]


def test_top_k_and_labels_through_the_interface(squeezenet):
    """top_k / predict_proba on the model interface (a bare apply_fn too) and the accelerated model."""
    import jax
    import jax.numpy as jnp

    from jaxviz.accel import accelerate
    from jaxviz.classify import predict_proba, top_k
    from jaxviz.images import load_images
    x = squeezenet.preprocess(load_images(["chelsea", "coffee"], 224, "stretch"))
    probs = np.asarray(jax.nn.softmax(jax.jit(squeezenet.apply)(squeezenet.params, x)))
    top, idx = top_k(squeezenet, squeezenet.params, x, 3)
    np.testing.assert_array_equal(idx, np.argsort(-probs, axis=-1)[:, :3])
    np.testing.assert_allclose(top, np.sort(probs, axis=-1)[:, ::-1][:, :3], rtol=1e-5)
    fast = accelerate(squeezenet)
    np.testing.assert_allclose(predict_proba(fast, fast.params, x), probs, atol=1e-4)  # conv rounding only
    bare = top_k(squeezenet.module.apply, {"params": squeezenet.params}, x, 1)[1]
    np.testing.assert_array_equal(bare[:, 0], [285, 967])
    assert squeezenet.labels[285] == "Egyptian cat" and len(squeezenet.labels) == 1000


def test_class_names_resolve_to_themselves_and_cardigan_is_the_sweater(capsys):
    """Issue 13 item 3: an exact name wins (cardigan 474, Cardigan 264); each of the 1000 names
    maps back to its own index; a name two classes share up to case is refused with both; a word
    suggests the classes containing it."""
    from jaxviz.errors import JaxvizError
    from jaxviz.labels import imagenet_labels, resolve_class
    labels = imagenet_labels()
    assert resolve_class("cardigan") == 474 and resolve_class("Cardigan") == 264
    assert [resolve_class(name) for name in labels] == list(range(1000))
    assert resolve_class("EGYPTIAN CAT") == 285  # unique up to case: accepted
    with pytest.raises(JaxvizError, match="ambiguous") as e:
        resolve_class("CARDIGAN")
    assert "264" in str(e.value) and "474" in str(e.value)
    with pytest.raises(JaxvizError, match="classes containing 'cat'") as e:
        resolve_class("cat")
    assert "'tiger cat' (282)" in str(e.value) and "Persian cat" in str(e.value) and "crate" not in str(e.value)
    with pytest.raises(JaxvizError, match="out of range"):
        resolve_class("1000")
    assert resolve_class("3", num_classes=5) == 3
    with pytest.raises(JaxvizError, match="no class names"):
        resolve_class("cat", num_classes=5)
    assert resolve_class("b", num_classes=2, labels=("a", "b")) == 1


def test_models_and_layers(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"squeezenet1_1", "squeezenet1_0", "vgg16", "vgg19", "vgg19_caffe", "efficientnet_lite0"}
    assert rows["vgg16"]["status"] in ("not ported", "available", "portable")
    # the fast style network is listed too, and `layers` says what it is for
    assert rows["multistyle26"]["status"] in ("available", "not ported") and rows["multistyle26"]["classes"] is None
    assert main(["layers", "multistyle26"]) == 2
    assert "fast-style apply" in capsys.readouterr().err
    assert main(["layers", "squeezenet1_1"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("features.12 "))
    assert "fire9" in line and "13x13x512" in line and line.split()[-2:] == ["16", "207"]
    # fire9's parameters: squeeze 1x1 (512 -> 64), expand 1x1 and 3x3 (64 -> 256 each), with biases
    assert line.split()[-3] == str((512 * 64 + 64) + (64 * 256 + 256) + (9 * 64 * 256 + 256))
    # trainable parameters as torch counts them (BatchNorm's running statistics are buffers there)
    assert main(["layers", "efficientnet_lite0"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("stem "))
    assert line.split()[2] == str(3 * 3 * 3 * 32 + 2 * 32)  # conv (no bias) + BN scale and bias
    assert main(["layers", "resnet18"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("layer1.0 "))
    assert line.split()[2] == str(2 * (64 * 64 * 9 + 2 * 64))
    assert main(["layers", "squeezenet1_1", "--size", "320"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("features.12 "))
    assert "19x19x512" in line


def _bad_images(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return tmp_path


@pytest.mark.parametrize("argv,message", [
    (["predict", "{tmp}/missing.png"], "no such image file"),
    (["predict", "{tmp}/corrupt.png"], "cannot read image"),
    (["predict", "chelsea", "--model", "alexnet"], "unknown model"),
    (["predict", "chelsea", "--model", "vgg19_caffe"], "no classifier"),
    (["predict", "chelsea", "--topk", "0"], "--topk"),
    (["layers", "squeezenet9"], "unknown model"),
    (["layers", "squeezenet1_1", "--size", "0"], "--size"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys, squeezenet):
    _bad_images(tmp_path)
    with pytest.raises(SystemExit) if argv[0] == "nonsense" else _no_raise() as ctx:
        code = main([a.format(tmp=tmp_path) for a in argv])
    code = ctx.value.code if argv[0] == "nonsense" else code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_subprocess_grey_rgba_16bit_and_errors(tmp_path, squeezenet):
    """Grey, RGBA and 16-bit files are accepted end to end; a bad one is one line, exit 2."""
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((40, 50, 4), 120, np.uint8), "RGBA").save(tmp_path / "a.png")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(tmp_path / "d.png")
    ok = subprocess.run([sys.executable, "-m", "jaxviz", "predict", "g.png", "a.png", "d.png", "--json"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "d.png", "g.png"]  # nothing written
    bad = subprocess.run([sys.executable, "-m", "jaxviz", "predict", "nope.jpg"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


ALLOCATOR_PROBE = """
import contextlib, ctypes, io, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "cli":
    from jaxviz.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["models"]) == 0

def outside_heap(address):
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= address < hi:
            return "[heap]" not in line
libc.free(libc.malloc(24 << 20))  # a freed 24 MiB mmapped block: glibc's dynamic threshold rises to it
print(outside_heap(libc.malloc(6 << 20)))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_cli_serves_large_buffers_by_mmap():
    """runtime.fix_mmap_threshold, applied by every command: after a large buffer is freed, a 6 MiB
    buffer still comes from mmap (returned to the system when freed), not from the heap as under
    glibc's default dynamic threshold; this kept 1000-image occlusion runs from creeping up."""
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, mode], capture_output=True, text=True,
                             timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]
    assert probe("plain") == "False"  # the default policy this guards against
    assert probe("cli") == "True"


def test_an_unusable_cache_folder_turns_the_cache_off_and_the_command_runs(tmp_path, monkeypatch, capsys, squeezenet):
    """The persistent cache is only a speed-up: a cache folder that cannot be made (a file in its
    path; a read-only HOME) is one line on stderr, the command still runs (rc 0)."""
    import jax

    from jaxviz.runtime import enable_compilation_cache
    before = jax.config.jax_compilation_cache_dir
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert enable_compilation_cache(blocker / "xla") is None
    assert jax.config.jax_compilation_cache_dir == before  # the suite's cache left as it was
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compilation cache off: cannot use" in err and "JAXVIZ_CACHE_DIR" in err
    monkeypatch.setenv("JAXVIZ_CACHE_DIR", str(blocker))  # a file, not a folder
    assert main(["predict", "chelsea", "--model", "squeezenet1_1", "--topk", "1"]) == 0
    captured = capsys.readouterr()
    assert "Egyptian cat" in captured.out and captured.err.count("\n") == 1, captured.err


def test_pillows_decompression_bomb_warning_stays_off_stderr(tmp_path, monkeypatch, capsys, squeezenet):
    """Pillow warns (two lines on stderr) from its own limit of 89 MP on, below jaxviz's
    MAX_PIXELS (here: Pillow's limit lowered so a small image is over it)."""
    import warnings

    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(path)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")  # what a plain Python process shows on stderr
        assert main(["predict", str(path), "--model", "squeezenet1_1", "--topk", "1"]) == 0
    assert [w.category.__name__ for w in shown] == [] and capsys.readouterr().err == ""
