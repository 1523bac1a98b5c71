"""Bad input over EVERY subcommand (issue 13 items 7-10, 12-13): each case must end with exit code
2, exactly one line on stderr, no traceback, and no file left behind (temporary or final).

- option values: NaN, +-inf, 0, negative and huge values of every numeric flag, generated from
  the technique registry (so a new option is covered automatically);
- an unwritable output location (a read-only tmpfs when this machine lets us mount one, else a
  read-only folder for a non-root user, else an injected EROFS);
- a full disk (a tmpfs filled to the last page, else an injected ENOSPC) for every command that
  writes: the work runs and the write fails;
- damaged scan indexes, weights records, the weights manifest and fast-style checkpoints;
- two concurrent scans of the same index (the second is refused, or waits with --wait).

The CLI runs in-process (``jaxviz.cli.main``) with one cached SqueezeNet for the whole module.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from jaxviz.cli import main
from jaxviz.techniques import TECHNIQUES, techniques

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ harness

def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err


def _lines(err: str) -> list[str]:
    """What a terminal shows at the end: progress bars redraw with \\r, only the last state stays."""
    return [seg for line in err.split("\n") for seg in [line.split("\r")[-1]] if seg.strip()]


def _files(*folders: Path) -> list[str]:
    out = []
    for folder in folders:
        if folder.is_dir():
            out += sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != "filler")
    return out


def _assert_one_line_exit_2(code, err, *needles):
    lines = _lines(err)
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err[-2000:]}"
    assert "Traceback" not in err and lines[0].startswith("jaxviz"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def cached_models():
    """store.load_model cached by name for the module: the CLI loads SqueezeNet (and the others)
    once, not once per case."""
    from jaxviz.weights import store
    if store.status("squeezenet1_1") == "not ported":
        pytest.skip("the squeezenet1_1 weights are not available here")
    real, cache = store.load_model, {}

    def load(name, *args, **kwargs):
        if name not in cache:
            cache[name] = real(name, *args, **kwargs)
        return cache[name]
    mp = pytest.MonkeyPatch()
    mp.setattr(store, "load_model", load)
    yield real
    mp.undo()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cached_models):
    """A small scan index of SqueezeNet (3 images at 64 px), a content folder for fast-style."""
    from jaxviz.accel import accelerate
    from jaxviz.images import save_image, load_image
    from jaxviz.scan_index import scan
    from jaxviz.weights.store import load_model
    root = tmp_path_factory.mktemp("bad_input")
    scan(accelerate(load_model("squeezenet1_1")), ["chelsea", "coffee", "astronaut"], root / "ix",
         layers=["fire2"], topk=2, batch=3, input_size=64)
    content = root / "content"
    content.mkdir()
    save_image(load_image("coffee", 32, fit="stretch"), content / "a.png")
    return {"ix": root / "ix", "content": content, "root": root}


def _mount(path: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def readonly_dir(tmp_path_factory):
    """(folder, how): a read-only location."""
    path = tmp_path_factory.mktemp("readonly")
    if _mount(path, "ro,size=64k"):
        try:
            yield path, "mount"
        finally:
            _umount(path)
    elif os.geteuid() != 0:
        path.chmod(0o555)
        yield path, "chmod"
        path.chmod(0o755)
    else:
        yield path, "inject"


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    """(folder, how): a location with no space left (a tmpfs filled up by a file 'filler')."""
    path = tmp_path_factory.mktemp("full")
    if _mount(path, "size=256k"):
        try:
            with contextlib.suppress(OSError), open(path / "filler", "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)
            yield path, "mount"
        finally:
            _umount(path)
    else:
        yield path, "inject"


@contextlib.contextmanager
def _inject(how: str, code: int, folder: Path):
    """Without a mount: make writes into ``folder`` fail with errno ``code`` where they start
    (jaxviz.io creates its temporary files with tempfile.mkstemp, the scan its state with open)."""
    if how != "inject":
        yield
        return
    import jaxviz.io
    real = jaxviz.io.os.fsync

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))
    mp = pytest.MonkeyPatch()
    if code == errno.EROFS:
        real_mkstemp = jaxviz.io.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
                raise OSError(code, os.strerror(code))
            return real_mkstemp(*args, dir=dir, **kwargs)
        mp.setattr(jaxviz.io.tempfile, "mkstemp", mkstemp)
    else:
        mp.setattr(jaxviz.io.os, "fsync", failing_fsync)
    try:
        yield
    finally:
        mp.undo()
        del real


# ------------------------------------------------------------------ the commands

M = ["--model", "squeezenet1_1"]
# A valid, cheap invocation of every command that writes, with {out} the output folder.
WRITERS = {
    "saliency": ["saliency", "chelsea", *M, "--npy", "{out}/m.npy", "--out", "{out}/f.png"],
    "filters": ["filters", *M, "--out", "{out}/f.png"],
    "activations": ["activations", "chelsea", *M, "--layer", "fire2", "--out", "{out}/a.png"],
    "neighbors": ["neighbors", "{ix}", "chelsea", "--k", "1", "--space", "pixel", "--no-progress",
                  "--out", "{out}/n.png"],
    "embed": ["embed", "{ix}", "--method", "pca", "--thumb", "16", "--size", "64", "--no-progress",
              "--out", "{out}/e.png"],
    "patches": ["patches", "{ix}", "--layer", "fire2", "--channels", "0", "--out", "{out}/p.png"],
    "scan": ["scan", "chelsea", "coffee", *M, "--layers", "fire2", "--size", "64", "--no-progress",
             "--out", "{out}/ix2"],
    "classviz": ["classviz", "--target", "1", *M, "--steps", "1", "--size", "32", "-q", "--npy",
                 "--out", "{out}/c.png"],
    "neuron": ["neuron", "--layer", "fire2", "--channel", "0", *M, "--steps", "1", "--size", "32", "-q",
               "--out", "{out}/n.png"],
    "invert": ["invert", "chelsea", "--layer", "fire2", *M, "--steps", "1", "--size", "32", "-q",
               "--out", "{out}/i.png"],
    "dream": ["dream", "chelsea", "--layer", "fire2", *M, "--steps", "1", "--octaves", "1", "--size", "32",
              "-q", "--out", "{out}/d.png"],
    "adversarial": ["adversarial", "chelsea", *M, "--method", "fgsm", "--npy", "--out", "{out}/adv.png"],
    "texture": ["texture", "brick", "--method", "efros", "--size", "16", "--sample-size", "16", "--radius", "1",
                "--out", "{out}/t.png"],
    "style": ["style", "chelsea", "--style", "brick", "--size", "16", "--steps", "0", "--out", "{out}/s.png"],
    "fast-style apply": ["fast-style", "apply", "chelsea", "--model", "multistyle26", "--size", "16",
                         "--out", "{out}/fs.png"],
    "fast-style train": ["fast-style", "train", "--styles", "brick", "--content-dir", "{content}", "--steps", "0",
                         "--size", "16", "--batch", "1", "--width", "2", "--res-blocks", "0",
                         "--out", "{out}/ck.msgpack"],
    "bias": ["bias", *M, "--size", "32", "--steps", "1", "--sources", "2", "--min-confidence", "0",
             "--out", "{out}/b.png"],
    "segment": ["segment", "chelsea", *M, "--mask", "{out}/mask.png", "--out", "{out}/o.png"],
}
# Commands that write nothing (printing only): option cases only.
PRINTERS = {
    "predict": ["predict", "chelsea", *M],
    "layers": ["layers", "squeezenet1_1"],
    "models": ["models"],
}
# Full disk needs the whole run: these load VGG19 and optimise (tens of seconds): -m slow.
SLOW_TO_FILL = {"style", "fast-style train", "bias"}


def _argv(template, out: Path, ws: dict) -> list[str]:
    return [a.format(out=out, ix=ws["ix"], content=ws["content"]) for a in template]


def test_every_subcommand_is_covered():
    from jaxviz.cli import COMMANDS, build_parser
    build_parser()
    covered = {name.split()[0] for name in [*WRITERS, *PRINTERS]}
    assert covered == set(COMMANDS), set(COMMANDS) ^ covered


# ------------------------------------------------------------------ option values

def _command_of(name: str) -> str:
    return name.split()[0]


def _option_cases():
    """(id, argv) for every numeric flag of every command: NaN, inf, -inf, values below the lower
    bound (0, -1) and above the upper bound (huge)."""
    for name, template in {**WRITERS, **PRINTERS}.items():
        command = "fast-style" if name.startswith("fast-style") else name
        pool = techniques(command)
        if name.startswith("fast-style"):
            pool = [TECHNIQUES["fast-style-" + name.split()[1]]]
        for t in pool:
            for o in t.cli_options():
                if o.kind not in (int, float, "amount"):
                    continue
                values = ["nan", "inf", "-inf", "1e30"]
                lo = o.lo if isinstance(o.lo, (int, float)) else None
                if lo is not None:
                    values += [v for v in ("0", "-1") if float(v) < lo or (float(v) == lo and o.lo_open)]
                    if o.kind is int and lo >= 0:
                        values.append("1.5")  # not a whole number
                if o.hi is None:
                    values.remove("1e30")
                for value in values:
                    argv = [a for a in template]
                    # drop the template's own value for this flag, then give the bad one
                    if o.cli_flag in argv:
                        i = argv.index(o.cli_flag)
                        del argv[i:i + 2]
                    has_method = command in ("saliency", "adversarial", "embed", "texture")
                    if has_method and "--method" in argv:
                        i = argv.index("--method")
                        del argv[i:i + 2]
                    if has_method:
                        argv += ["--method", t.name]
                        # drop the template's flags of other methods (they would be refused first)
                        mine = {x.cli_flag for x in t.cli_options()}
                        others = {x.cli_flag for u in pool for x in u.cli_options()} - mine
                        for flag in others & set(argv):
                            i = argv.index(flag)
                            del argv[i:i + 2]
                    n = o.nargs if isinstance(o.nargs, int) else 1
                    if n > 1:
                        if value.startswith("-"):
                            continue
                        argv += [o.cli_flag] + [value] * n
                    else:
                        argv.append(f"{o.cli_flag}={value}")
                    yield pytest.param(argv, o.cli_flag, id=f"{name}-{t.name}-{o.cli_flag}={value}")


@pytest.mark.parametrize("template, flag", list(_option_cases()))
def test_bad_option_value_is_one_line_exit_2(template, flag, workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _argv(template, tmp_path, workspace)
    code, err = _run(argv, capsys)
    _assert_one_line_exit_2(code, err, flag)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("argv, needle", [
    (["predict", "chelsea", *M, "--topk", "1001"], "--topk must be between 1 and 1000"),
    (["predict", "chelsae", *M], "did you mean chelsea"),
    (["fast-style", "apply", "chelsea", "--model", "multistyle2", "--out", "{out}/x.png"], "did you mean multistyle26"),
    (["saliency", "chelsea", *M, "--method", "vanilla", "--samples", "3"], "--samples applies to --method smoothgrad"),
    (["classviz", "--target", "1", *M, "--size", "100000", "--out", "{out}/c.png"], "--size must be between"),
    (["scan", "chelsea", *M, "--layers", "fire2", "--size", "0", "--out", "{out}/ix"], "--size"),
    (["layers", "squeezenet1_1", "--size", "0"], "--size"),
    (["neighbors", "{ix}", "chelsea", "--k", "4", "--space", "pixel", "--no-progress"], "--k must be between 1 and 3"),
    (["embed", "{ix}", "--method", "tsne", "--perplexity", "nan", "--out", "{out}/e.png"], "--perplexity"),
    (["style", "chelsea", "--style", "brick", "--optimizer", "adam", "--lr", "-1", "--out", "{out}/s.png"],
     "--lr must be a finite number > 0"),
    (["adversarial", "chelsea", *M, "--eps", "8/0"], "division by zero"),
    (["fast-style", "apply", "chelsea", "--model", "multistyle26", "--style-mix", "3:0,4:0", "--out", "{out}/f.png"],
     "style weights are all 0"),
    (["fast-style", "train", "--styles", "brick", "--content-dir", "{content}", "--steps", "1", "--out", "{out}/ck.png"],
     "name it *.msgpack"),
    # options another option turns off were silently ignored (technique registry: Unused)
    (["classviz", "--target", "1", *M, "--blur-every", "0", "--clip-fraction", "0.5", "--out", "{out}/c.png"],
     "--clip-fraction 0.5 does nothing with --blur-every 0"),
    (["invert", "chelsea", *M, "--layer", "fire2", "--optimizer", "lbfgs", "--lr", "0.3", "--out", "{out}/i.png"],
     "--lr 0.3 does nothing with --optimizer lbfgs"),
    (["style", "chelsea", "--style", "brick", "--optimizer", "lbfgs-linesearch", "--lr", "2", "--out", "{out}/s.png"],
     "--lr 2.0 does nothing with --optimizer lbfgs-linesearch"),
    (["classviz", "--target", "1", *M, "--blur-every", "0", "--blur-sigma", "2", "--out", "{out}/c.png"],
     "--blur-sigma 2.0 does nothing with --blur-every 0"),
    (["invert", "chelsea", *M, "--layer", "fire2", "--tv-weight", "0", "--beta", "3", "--out", "{out}/i.png"],
     "--beta 3.0 does nothing with --tv-weight 0.0"),
    (["dream", "chelsea", *M, "--layer", "fire2", "--octaves", "1", "--octave-scale", "2", "--out", "{out}/d.png"],
     "--octave-scale 2.0 does nothing with --octaves 1"),
    (["style", "chelsea", "--style", "brick", "--seed", "3", "--out", "{out}/s.png"],
     "--seed 3 does nothing with --init content"),
    # --seed was accepted (and ignored) by every method without randomness
    (["classviz", "--target", "1", *M, "--init", "chelsea", "--jitter", "0", "--seed", "3", "--out", "{out}/c.png"],
     "--seed 3 does nothing with --init and --jitter 0"),
    (["dream", "chelsea", *M, "--layer", "fire2", "--jitter", "0", "--seed", "3", "--out", "{out}/d.png"],
     "--seed 3 does nothing with --jitter 0"),
    (["adversarial", "chelsea", *M, "--method", "fgsm", "--seed", "3"],
     "--seed applies to --method pgd-linf, pgd-l2, simba, not fgsm"),
    (["adversarial", "chelsea", *M, "--method", "ifgsm", "--seed", "3"], "not ifgsm"),
    (["saliency", "chelsea", *M, "--method", "vanilla", "--seed", "3"],
     "--seed applies to --method smoothgrad, not vanilla"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_more_bad_values(argv, needle, workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(_argv(argv, tmp_path, workspace), capsys)
    _assert_one_line_exit_2(code, err, needle)
    assert _files(tmp_path) == []


def test_a_thin_strip_image_is_refused_before_its_resize(workspace, tmp_path, capsys, monkeypatch):
    """A 300-byte 8000x1 PNG took 12.5 GB and 25 s in ``predict`` (the evaluation transform's
    intermediate is 2,048,000 x 256 pixels): one line and exit 2 instead."""
    from PIL import Image
    Image.new("RGB", (8000, 1)).save(tmp_path / "strip.png")
    monkeypatch.chdir(tmp_path)
    code, err = _run(["predict", tmp_path / "strip.png", *M], capsys)
    _assert_one_line_exit_2(code, err, "aspect ratio too extreme")


# ------------------------------------------------------------------ unwritable output, full disk

@pytest.mark.parametrize("name", sorted(WRITERS))
def test_unwritable_output(name, readonly_dir, workspace, capsys, monkeypatch, tmp_path):
    folder, how = readonly_dir
    monkeypatch.chdir(tmp_path)
    with _inject(how, errno.EROFS, folder):
        code, err = _run(_argv(WRITERS[name], folder, workspace), capsys)
    _assert_one_line_exit_2(code, err)
    assert ("Read-only" in err or "Permission denied" in err), err
    assert _files(folder, tmp_path) == []


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_FILL else n
                                  for n in sorted(WRITERS)])
def test_full_disk(name, full_dir, workspace, capsys, monkeypatch, tmp_path):
    folder, how = full_dir
    monkeypatch.chdir(tmp_path)
    with _inject(how, errno.ENOSPC, folder):
        code, err = _run(_argv(WRITERS[name], folder, workspace), capsys)
    _assert_one_line_exit_2(code, err, "No space left on device")
    left = _files(folder)
    for leftover in left:  # clean up for the next case before failing
        p = folder / leftover
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    assert left == []


def test_full_disk_keeps_a_replaced_file_and_leaves_no_temporary_file(tmp_path, capsys, workspace, monkeypatch):
    """A failing write never touches the file it would replace."""
    import jaxviz.io
    target = tmp_path / "m.npy"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(jaxviz.io.os, "fsync", full)
    code, err = _run(["saliency", "chelsea", *M, "--npy", target], capsys)
    _assert_one_line_exit_2(code, err, "No space left on device")
    assert target.read_bytes() == b"old" and _files(tmp_path) == ["m.npy"]


def test_a_failed_figure_after_the_npy_says_nothing_was_written(tmp_path, capsys, workspace, monkeypatch):
    """The .npy is written first; when the figure then fails, the .npy is removed again, and
    stdout must not have said 'wrote' it."""
    import jaxviz.cli._common

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(jaxviz.cli._common, "save_figure", full)
    code = main(["saliency", "chelsea", *M, "--npy", str(tmp_path / "m.npy"), "--out", str(tmp_path / "m.png")])
    captured = capsys.readouterr()
    _assert_one_line_exit_2(code, captured.err, "No space left on device")
    assert "wrote" not in captured.out and _files(tmp_path) == []


# ------------------------------------------------------------------ damaged files

def _damage_index(ix: Path, how: str) -> None:
    if how == "no features":
        (ix / "features.npy").unlink()
    elif how == "garbage meta":
        (ix / "meta.json").write_text("{not json")
    elif how == "garbage topk":
        next((ix / "topk").rglob("*.npz")).write_bytes(b"PK\x03\x04 not a zip")
    elif how == "csv header":
        lines = (ix / "images.csv").read_text().splitlines()
        (ix / "images.csv").write_text("\n".join(lines[1:]) + "\n")


@pytest.mark.parametrize("damage", ["no features", "garbage meta", "garbage topk", "csv header"])
@pytest.mark.parametrize("name", ["neighbors", "embed", "patches", "scan"])
def test_damaged_index(name, damage, workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ix = tmp_path / "ix"
    shutil.copytree(workspace["ix"], ix)
    _damage_index(ix, damage)
    before = _files(ix)
    template = WRITERS[name] if name != "scan" else [
        "scan", "chelsea", "coffee", "astronaut", *M, "--layers", "fire2", "--topk", "2", "--size", "64",
        "--no-progress", "--out", "{ix}"]
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(out=out, ix=ix, content=workspace["content"]) for a in template]
    code, err = _run(argv, capsys)  # scan: a complete index is read back (and checked), not rescanned
    _assert_one_line_exit_2(code, err)
    assert "damaged" in err or "corrupt" in err, err
    assert _files(out) == [] and _files(ix) == before


@pytest.fixture()
def weights_copy(tmp_path, monkeypatch, cached_models):
    """A copy of the weights folder (SqueezeNet only) that the test may damage; the real,
    uncached store.load_model reads it."""
    from jaxviz.weights import sources, store
    src = sources.weights_dir()
    dst = tmp_path / "weights"
    dst.mkdir()
    for name in ("MANIFEST.json", "squeezenet1_1.json", "squeezenet1_1.safetensors"):
        shutil.copy(src / name, dst / name)
    monkeypatch.setenv("JAXVIZ_WEIGHTS", str(dst))
    monkeypatch.setattr(store, "load_model", cached_models)
    store.load_params.cache_clear()  # parameters are cached by name: read this folder's
    yield dst
    store.load_params.cache_clear()


@pytest.mark.parametrize("damage", ["record garbage", "record not an object", "manifest garbage"])
def test_damaged_weights_records(damage, weights_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if damage == "record garbage":
        (weights_copy / "squeezenet1_1.json").write_text("{garbage")
    elif damage == "record not an object":
        (weights_copy / "squeezenet1_1.json").write_text("[1, 2]")
    else:
        (weights_copy / "MANIFEST.json").write_text("{garbage")
    code, err = _run(["predict", "chelsea", *M], capsys)
    _assert_one_line_exit_2(code, err)
    assert "damaged" in err or "MANIFEST" in err, err


def test_damaged_fast_style_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ck.msgpack"
    ckpt.write_bytes(b"\x81\xa6config\xc1 not msgpack")
    code, err = _run(["fast-style", "apply", "chelsea", "--model", ckpt, "--out", tmp_path / "o.png"], capsys)
    _assert_one_line_exit_2(code, err, "checkpoint")
    assert _files(tmp_path) == ["ck.msgpack"]


# ------------------------------------------------------------------ concurrent scans

def test_two_concurrent_scans(workspace, tmp_path, capsys, monkeypatch):
    """While one scan writes an index, a second scan of the same index is refused with one line
    (nothing of it left); with --wait it waits and then finds the complete index. The complete
    index holds no running state and no temporary file."""
    from jaxviz.accel import accelerate
    from jaxviz.scan_index import read_index, scan
    from jaxviz.weights.store import load_model
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ix"
    images = ["chelsea", "coffee", "astronaut", "rocket"]
    started, errors = threading.Event(), []

    def first():
        try:
            scan(accelerate(load_model("squeezenet1_1")), images, out, layers=["fire2"], topk=2, batch=1,
                 input_size=64, on_batch=lambda done: (started.set(), time.sleep(0.5)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(120), "the first scan did not start"
        argv = ["scan", *images, *M, "--layers", "fire2", "--topk", "2", "--batch", "1", "--size", "64",
                "--no-progress", "--out", out]
        code, err = _run(argv, capsys)
        _assert_one_line_exit_2(code, err, "being written by another scan")
        code, err = _run([*argv, "--wait"], capsys)  # waits for the first, then reads its index
        assert code == 0, err
    finally:
        thread.join()
    assert not errors, errors
    index = read_index(out)
    assert index.meta["complete"] and index.meta["count"] == 4 and len(index.features) == 4
    assert not (out / ".scan").exists() and not list(out.rglob("*.tmp"))


def test_scan_killed_while_finishing_leaves_no_temporary_files(workspace, tmp_path, monkeypatch):
    """A kill between the last array and the final meta.json: the index is incomplete but holds no
    running state or temporary file, and the next run completes it."""
    import jaxviz.scan_index as S
    from jaxviz.accel import accelerate
    from jaxviz.weights.store import load_model
    model = accelerate(load_model("squeezenet1_1"))
    out = tmp_path / "ix"
    real = S._write_json

    def killed(path, obj):
        if obj.get("complete"):
            raise KeyboardInterrupt
        return real(path, obj)
    monkeypatch.setattr(S, "_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        S.scan(model, ["chelsea", "coffee"], out, layers=["fire2"], topk=2, batch=2, input_size=64)
    assert json.loads((out / "meta.json").read_text())["complete"] is False
    assert not (out / ".scan").exists() and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(S, "_write_json", real)
    index = S.scan(model, ["chelsea", "coffee"], out, layers=["fire2"], topk=2, batch=2, input_size=64)
    assert index.meta["complete"] and not list(out.rglob("*.tmp"))
