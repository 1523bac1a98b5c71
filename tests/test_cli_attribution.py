"""The ``jaxviz saliency`` command: every method writes a correct .npy; bad input is one line, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz.cli.attribution as cli_attr
from jaxviz import cam as camlib
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
    want = sal.vanilla_saliency(tiny_cli, tiny_cli.params, x, 3)[0]
    np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-7)
    assert fig.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "m.npy"]  # nothing else written


def _x(model, names):
    from jaxviz.images import load_images
    return model.preprocess(jnp.asarray(load_images(names, 16)))


@pytest.mark.parametrize("method", ["vanilla", "gradcam", "occlusion"])
def test_compute_map_predicts_in_the_same_call(method, tiny_cli):
    """The CLI's one call per chunk returns the classes it explained and the predicted ones
    (computed in the map's own program), equal to a separate forward pass and to the library."""
    from jaxviz.targets import parse_target
    x = _x(tiny_cli, ["chelsea", "coffee", "astronaut"])
    want = np.argmax(np.asarray(tiny_cli.apply(tiny_cli.params, x)), axis=-1)
    extra = {"occlusion": {"window": 4, "stride": 2}, "gradcam": {"layer": "features.1"}}.get(method, {})
    maps, attribution, index, predicted = cli_attr.compute_map(method, tiny_cli, x, parse_target(None, tiny_cli),
                                                               **extra)
    assert attribution is None
    np.testing.assert_array_equal(np.asarray(predicted), want)
    np.testing.assert_array_equal(np.asarray(index), want)
    if method == "vanilla":
        np.testing.assert_allclose(maps, sal.vanilla_saliency(tiny_cli, tiny_cli.params, x), rtol=1e-5, atol=1e-7)
    other = (want + 1) % tiny_cli.num_classes  # a class target: explained, while the prediction is kept
    maps3, _, index3, predicted3 = cli_attr.compute_map(method, tiny_cli, x, parse_target(None, tiny_cli),
                                                        index=jnp.asarray(other, jnp.int32), **extra)
    np.testing.assert_array_equal(np.asarray(index3), other)
    np.testing.assert_array_equal(np.asarray(predicted3), want)
    assert not np.allclose(maps3, maps)
    from jaxviz.targets import Target
    _, _, index_neg, _ = cli_attr.compute_map(method, tiny_cli, x, Target(index=-1), **extra)
    np.testing.assert_array_equal(np.asarray(index_neg), [tiny_cli.num_classes - 1] * 3)  # from the end
    maps_none, _, index_none, _ = cli_attr.compute_map(method, tiny_cli, x, None, **extra)  # a bare None
    np.testing.assert_array_equal(np.asarray(index_none), want)
    np.testing.assert_allclose(maps_none, maps, rtol=1e-6, atol=1e-7)
    neuron = parse_target("features.4:2", tiny_cli)  # a neuron: its channel for every image
    _, _, index_n, predicted_n = cli_attr.compute_map(method, tiny_cli, x, neuron, **extra)
    np.testing.assert_array_equal(np.asarray(index_n), [2, 2, 2])
    np.testing.assert_array_equal(np.asarray(predicted_n), want)


@pytest.mark.parametrize("method, library", [
    ("vanilla", lambda m, x, i: sal.gradients(m, m.params, x, index=i)),
    ("inputxgrad", lambda m, x, i: sal.input_x_gradient(m, m.params, x, index=i)),
    ("integrated", lambda m, x, i: sal.integrated_gradients_attributions(m, m.params, x, steps=4, index=i)),
    ("smoothgrad", lambda m, x, i: sal.smoothgrad_gradients(m, m.params, x, key=jax.random.key(5), samples=3,
                                                             noise_std=0.2, index=i)),
    ("guided-gradcam", lambda m, x, i: camlib.guided_grad_cam_attributions(m, m.params, x, index=i,
                                                                           resize="nearest")),
])
def test_signed_npy_is_the_library_attribution(method, library, tiny_cli, tmp_path, capsys):
    """--signed writes the signed NHWC attribution (issue 13 item 6), peer options passed through."""
    npy = tmp_path / "a.npy"
    extra = {"integrated": ["--steps", "4"], "smoothgrad": ["--samples", "3", "--noise-std", "0.2", "--seed", "5"],
             "guided-gradcam": ["--resize", "nearest"]}.get(method, [])
    assert main(["saliency", "chelsea", "coffee", "--method", method, "--signed", "--npy", str(npy), *extra]) == 0
    got = np.load(npy)
    x = _x(tiny_cli, ["chelsea", "coffee"])
    index = jnp.argmax(tiny_cli.apply(tiny_cli.params, x), axis=-1)
    want = np.asarray(library(tiny_cli, x, index))
    assert got.shape == (2, 16, 16, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert got.min() < 0 < got.max()  # signed
    one = tmp_path / "one.npy"
    assert main(["saliency", "coffee", "--method", method, "--signed", "--npy", str(one), *extra]) == 0
    np.testing.assert_allclose(np.load(one), got[1], rtol=1e-4, atol=1e-6 * np.abs(want).max())  # (H, W, 3)


def test_gradcam_peer_conventions(tiny_cli, tmp_path, capsys):
    """--no-relu --resize none is Captum's LayerGradCam (signed, the layer's own resolution)."""
    npy = tmp_path / "m.npy"
    assert main(["saliency", "chelsea", "coffee", "--method", "gradcam", "--no-relu", "--resize", "none",
                 "--target", "2", "--npy", str(npy)]) == 0
    x = _x(tiny_cli, ["chelsea", "coffee"])
    want = camlib.grad_cam(tiny_cli, tiny_cli.params, x, 2, relu=False, resize=None)
    got = np.load(npy)
    assert got.shape == (2, 8, 8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert main(["saliency", "chelsea", "--method", "cam", "--resize", "nearest", "--npy", str(npy)]) == 0
    want = camlib.cam(tiny_cli, tiny_cli.params, x[:1], resize="nearest")[0]
    np.testing.assert_allclose(np.load(npy), want, rtol=1e-4, atol=1e-6)


def test_smoothgrad_map_of_an_image_does_not_depend_on_the_others(tiny_cli, tmp_path, capsys):
    """Issue 13 item 5: `saliency coffee` and `saliency chelsea coffee` give the same coffee map."""
    alone, both = tmp_path / "alone.npy", tmp_path / "both.npy"
    for images, npy in ((["coffee"], alone), (["chelsea", "coffee"], both)):
        assert main(["saliency", *images, "--method", "smoothgrad", "--samples", "4", "--seed", "3",
                     "--npy", str(npy)]) == 0
    np.testing.assert_allclose(np.load(alone), np.load(both)[1], rtol=1e-5, atol=1e-7)
    x = _x(tiny_cli, ["coffee"])
    want = sal.smoothgrad(tiny_cli, tiny_cli.params, x, key=jax.random.key(3), samples=4)[0]
    np.testing.assert_allclose(np.load(alone), want, rtol=1e-4, atol=1e-7)


def test_failed_write_is_one_line_and_leaves_nothing(tiny_cli, tmp_path, capsys, monkeypatch):
    import jaxviz.io

    def full_disk(fd):  # the map was streamed into the temporary file; the disk fills on sync
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(jaxviz.io.os, "fsync", full_disk)
    err = _one_error_line(capsys, ["saliency", "chelsea", "--npy", str(tmp_path / "m.npy")])
    assert "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_gradcam_layer_and_neuron_target(tiny_cli, tmp_path, capsys):
    npy = tmp_path / "m.npy"
    assert main(["saliency", "chelsea", "--method", "gradcam", "--layer", "features.1",
                 "--target", "features.4:2", "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (16, 16)


def test_a_feature_network_explains_neuron_targets(monkeypatch, tmp_path, capsys):
    """A network without a classifier (vgg19_caffe) was refused by the command although the
    library explains its neurons: a LAYER:CHANNEL target now works (the same map as the library),
    a class target (the default: the predicted class) is one clear line."""
    import dataclasses

    from jaxviz.images import load_images
    from jaxviz.models import bundled_model
    from jaxviz.targets import parse_target
    from tests.conftest import TINY_SPEC
    spec = dataclasses.replace(TINY_SPEC, name="tiny-features", stages=TINY_SPEC.stages[:5], num_classes=None,
                               feature_layer="features.4", cam_layer=None)
    model = bundled_model(spec, {k: v for k, v in make_tiny_model(0).params.items() if k.startswith("features")})
    asked = []
    monkeypatch.setattr(cli_attr, "load_model_arg", lambda name, classifier=True: asked.append(classifier) or model)
    monkeypatch.setattr(cli_attr, "load_inputs", lambda m, sources, fit="stretch": load_images(sources, 16, fit))
    npy = tmp_path / "m.npy"
    assert main(["saliency", "chelsea", "--method", "gradcam", "--layer", "features.1",
                 "--target", "features.4:2", "--npy", str(npy)]) == 0, capsys.readouterr().err
    assert asked == [False] and "predicted" not in capsys.readouterr().out
    x = model.preprocess(jnp.asarray(load_images(["chelsea"], 16, "stretch")))
    expected = camlib.grad_cam(model, model.params, x, parse_target("features.4:2", model), layer="features.1")
    np.testing.assert_allclose(np.load(npy), np.asarray(expected)[0], rtol=1e-5, atol=1e-7)
    err = _one_error_line(capsys, ["saliency", "chelsea", "--method", "vanilla", "--npy", str(tmp_path / "v.npy")])
    assert "has no classifier: give a --target as LAYER:CHANNEL" in err
    assert not (tmp_path / "v.npy").exists()


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
    (["--out", "/proc/fig.png"], "cannot write to output directory /proc: it does not take new files"),
    (["--out", __file__ + "/fig.png"], "is a file, not a directory"),
    (["--npy", "map.txt"], ".npy"),
    (["--method", "occlusion", "--window", "4", "--stride", "8"], "--stride"),
    (["--method", "smoothgrad", "--noise", "inf"], "--noise"),
    (["--method", "smoothgrad", "--noise", "nan"], "--noise"),
    (["--method", "smoothgrad", "--noise-std", "-1"], "--noise-std"),
    (["--method", "smoothgrad", "--noise", "0.1", "--noise-std", "0.1"], "not both"),
    (["--method", "vanilla", "--noise-std", "0.1"], "--noise-std applies"),
    (["--method", "gradcam", "--signed", "--npy", "m.npy"], "--no-relu"),
    (["--method", "vanilla", "--signed"], "give --npy"),
    (["--method", "vanilla", "--no-relu"], "--no-relu applies"),
    (["--method", "vanilla", "--resize", "nearest"], "--resize applies"),
    (["--method", "guided-gradcam", "--resize", "none"], "guided-gradcam"),
    (["--method", "gradcam", "--resize", "none", "--metrics"], "--metrics"),
    (["--method", "gradcam", "--target", "features.1:0", "--layer", "features.4"], "must come after"),
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
