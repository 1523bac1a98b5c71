"""The ``jaxviz saliency`` command: every method writes a correct .npy; bad input is one line, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz.cli.attribution as cli_attr
from jaxviz import saliency as sal
from jaxviz.cli import main
from jaxviz.cli.attribution import METHODS
from tests.conftest import make_tiny_model


@pytest.fixture()
def tiny_cli(monkeypatch):
    """Run the command on the tiny 16 px model (fast), images loaded at 16 px."""
    model = make_tiny_model(0)
    monkeypatch.setattr(cli_attr, "load_model_arg", lambda name, classifier=True: model)
    from jaxviz.images import load_images
    monkeypatch.setattr(cli_attr, "load_inputs", lambda m, sources, fit="stretch": load_images(sources, 16, fit))
    return model


def _one_error_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("jaxviz saliency: error:"), err
    return err


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_a_map_of_the_right_shape(method, tiny_cli, tmp_path, capsys):
    npy = tmp_path / "map.npy"
    extra = ["--window", "4", "--stride", "2"] if method == "occlusion" else []
    extra += ["--samples", "3"] if method == "smoothgrad" else []
    extra += ["--steps", "4"] if method == "integrated" else []
    code = main(["saliency", "chelsea", "coffee", "--method", method, "--npy", str(npy), *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    maps = np.load(npy)
    assert maps.dtype == np.float32 and maps.shape == (2, 16, 16)
    assert np.isfinite(maps).all() and np.abs(maps).max() > 0
    if method != "occlusion":
        assert maps.min() >= 0


def test_single_image_map_is_2d_and_equals_the_library(tiny_cli, tmp_path, capsys):
    npy, fig = tmp_path / "m.npy", tmp_path / "fig.png"
    assert main(["saliency", "chelsea", "--method", "vanilla", "--target", "3", "--npy", str(npy),
                 "--out", str(fig)]) == 0
    maps = np.load(npy)
    assert maps.shape == (16, 16)
    from jaxviz.images import load_images
    x = tiny_cli.preprocess(jnp.asarray(load_images(["chelsea"], 16)))
    want = sal.vanilla_saliency(tiny_cli.apply, tiny_cli.params, x, 3)[0]
    np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-7)
    assert fig.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "m.npy"]  # nothing else written


def test_gradcam_layer_and_neuron_target(tiny_cli, tmp_path, capsys):
    npy = tmp_path / "m.npy"
    assert main(["saliency", "chelsea", "--method", "gradcam", "--layer", "features.1",
                 "--target", "features.4:2", "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (16, 16)


def test_metrics_prints_aucs(tiny_cli, capsys):
    assert main(["saliency", "chelsea", "--method", "vanilla", "--metrics"]) == 0
    out = capsys.readouterr().out
    assert "deletion AUC" in out and "insertion AUC" in out


@pytest.mark.parametrize("argv,needle", [
    (["--method", "gradcm"], "unknown method"),
    (["--method", "gradcam", "--layer", "features.99"], "unknown layer"),
    (["--target", "no such class"], "class"),
    (["--target", "7"], "class"),  # the tiny model has 5 classes
    (["--method", "gradcam", "--layer", "classifier.2"], "no spatial map"),
    (["--out", "/nonexistent_dir/fig.png"], "output directory does not exist"),
    (["--npy", "map.txt"], ".npy"),
    (["--method", "occlusion", "--window", "4", "--stride", "8"], "--stride"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tiny_cli, capsys):
    err = _one_error_line(capsys, ["saliency", "chelsea", *argv])
    assert needle in err


def test_missing_image_is_one_line_and_exit_2(tiny_cli, capsys):
    err = _one_error_line(capsys, ["saliency", "/no/such/image.png"])
    assert "no such image" in err


def test_real_squeezenet_in_process(squeezenet, tmp_path, capsys):
    npy = tmp_path / "m.npy"
    assert main(["saliency", "chelsea", "--model", "squeezenet1_1", "--method", "cam", "--npy", str(npy)]) == 0
    maps = np.load(npy)
    assert maps.shape == (224, 224) and maps.dtype == np.float32 and maps.min() >= 0 and maps.max() > 0
    assert "285 Egyptian cat" in capsys.readouterr().out


def test_subprocess_cli(squeezenet, tmp_path):
    npy = tmp_path / "m.npy"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "jaxviz", "saliency", "chelsea", "coffee", "--model",
                           "squeezenet1_1", "--method", "gradcam", "--npy", str(npy)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.load(npy).shape == (2, 224, 224)
    bad = subprocess.run([sys.executable, "-m", "jaxviz", "saliency", "chelsea", "--method", "nope"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
