"""Filters as pictures and linear-classifier templates: tiles equal the normalised kernels."""
from __future__ import annotations

import numpy as np
import pytest

from jaxviz import filters as F
from jaxviz.cli import main
from jaxviz.errors import JaxvizError


def _norm(a):
    a = np.asarray(a, np.float32)
    return (a - a.min()) / (a.max() - a.min())


def test_first_layer_tiles_equal_normalised_kernels(squeezenet):
    kernel = np.asarray(squeezenet.params["features.0"]["kernel"])  # (3, 3, 3, 64), RGB input
    tiles = F.first_layer_filters(squeezenet)
    assert tiles.shape == (64, 3, 3, 3)
    for c in (0, 17, 63):
        np.testing.assert_allclose(tiles[c], _norm(kernel[:, :, :, c]), rtol=0, atol=1e-6)
        assert tiles[c].min() == 0.0 and tiles[c].max() == pytest.approx(1.0)
    shared = F.first_layer_filters(squeezenet, shared_scale=True)
    lo, hi = kernel.min(), kernel.max()
    np.testing.assert_allclose(shared[5], (kernel[:, :, :, 5] - lo) / (hi - lo), rtol=0, atol=1e-6)
    # A shared scale keeps relative magnitudes: only the extreme filters reach 0 and 1.
    assert (shared.reshape(64, -1).max(1) < 1).sum() >= 62


def test_bgr_model_is_shown_in_rgb(vgg19):
    kernel = np.asarray(vgg19.params["features.0"]["kernel"])  # input channels B, G, R
    tiles = F.first_layer_filters(vgg19)
    np.testing.assert_allclose(tiles[3, :, :, 0], _norm(kernel[:, :, :, 3])[:, :, 2], atol=1e-6)  # red = R
    np.testing.assert_allclose(tiles[3, :, :, 2], _norm(kernel[:, :, :, 3])[:, :, 0], atol=1e-6)  # blue = B


def test_lite0_stem(lite0):
    assert F.first_conv_path(lite0) == "stem/conv/kernel"  # a conv inside a stage, found via layer_params
    tiles = F.first_layer_filters(lite0)
    kernel = np.asarray(lite0.params["stem"]["conv"]["kernel"])
    np.testing.assert_allclose(tiles[7], _norm(kernel[..., 7]), atol=1e-6)


def test_grey_group_layout(rng):
    kernel = rng.normal(size=(5, 5, 6, 4)).astype(np.float32)
    tiles = F.grey_filters(kernel)
    assert tiles.shape == (4, 6, 5, 5)
    for g in range(4):
        group = kernel[:, :, :, g]
        lo, hi = group.min(), group.max()
        for i in range(6):  # group g, tile i is kernel[:, :, i, g] on the group's scale
            np.testing.assert_allclose(tiles[g, i], (kernel[:, :, i, g] - lo) / (hi - lo), atol=1e-6)
    per_tile = F.grey_filters(kernel, scale="tile", groups=3, per_group=2)
    assert per_tile.shape == (3, 2, 5, 5)
    np.testing.assert_allclose(per_tile[2, 1], _norm(kernel[:, :, 1, 2]), atol=1e-6)
    shared = F.grey_filters(kernel, scale="shared")
    np.testing.assert_allclose(shared[1, 3], (kernel[:, :, 3, 1] - kernel.min()) / np.ptp(kernel), atol=1e-6)
    with pytest.raises(JaxvizError):
        F.grey_filters(kernel, groups=0)
    with pytest.raises(JaxvizError):
        F.grey_filters(kernel, scale="nope")


def test_group_grid_image_places_tiles(rng):
    tiles = rng.uniform(size=(3, 4, 3, 3)).astype(np.float32)
    image = F.group_grid_image(tiles, min_tile=6, pad=1, group_pad=5, columns=3)
    # Group 0 starts after its 1-px dark frame; tile 0 is enlarged 2x (nearest).
    np.testing.assert_allclose(image[1:7, 1:7, 0], np.kron(tiles[0, 0], np.ones((2, 2))), atol=1e-6)
    # Tile 1 of group 0 is to its right, after 1 px of padding.
    np.testing.assert_allclose(image[1:7, 8:14, 1], np.kron(tiles[0, 1], np.ones((2, 2))), atol=1e-6)
    assert image[0, 0].tolist() == [0.0, 0.0, 0.0]  # the frame


def test_get_kernel_names(squeezenet):
    assert F.get_kernel(squeezenet, "fire2")[0] == "features.3/expand3x3/kernel"
    assert F.get_kernel(squeezenet, "features.3/expand1x1")[0] == "features.3/expand1x1/kernel"
    path, k = F.get_kernel(squeezenet, "features.0")
    assert path == "features.0/kernel" and k.shape == (3, 3, 3, 64)
    with pytest.raises(JaxvizError, match="no convolution"):
        F.get_kernel(squeezenet, "features.2")
    with pytest.raises(JaxvizError, match="expand3x3"):
        F.get_kernel(squeezenet, "fire2/nope")
    with pytest.raises(JaxvizError, match="unknown layer"):
        F.get_kernel(squeezenet, "fire99")


def test_user_models_first_layer_and_kernels(any_model):
    """Linen (params under "params", BatchNorm stats beside them), nnx (an nnx.State) and bundled
    models: the first convolution and named kernels come through the interface, tiles == kernels."""
    path, kernel = F.first_conv(any_model)
    want = {"tiny": "features.0/kernel", "user_linen": "stem/kernel", "user_nnx": "stem/kernel",
            "resnet18": "conv1/kernel"}
    assert path == want[any_model.name]
    owner = any_model.layer_params(any_model.params, path.rsplit("/", 1)[0])
    np.testing.assert_array_equal(kernel, np.asarray(F._flat(owner)["kernel"]))
    tiles = F.first_layer_filters(any_model)
    assert tiles.shape == (kernel.shape[3], kernel.shape[0], kernel.shape[1], 3)
    np.testing.assert_allclose(tiles[1], _norm(kernel[..., 1]), atol=1e-6)
    # A deeper layer's kernel: one of the layer's own, the largest spatially (the last of equals).
    owners = [n for n in any_model.layer_names if F._kernels(any_model, any_model.params, n)]
    deep = owners[1]
    name, k = F.get_kernel(any_model, deep)
    mine = F._kernels(any_model, any_model.params, deep)
    assert name.startswith(deep + "/") and name.endswith("/kernel")
    np.testing.assert_array_equal(k, np.asarray(mine[name[len(deep) + 1:]]))
    assert k.shape[0] * k.shape[1] == max(v.shape[0] * v.shape[1] for v in mine.values())
    if any_model.name == "user_linen":  # a residual block with two convs: by sub-path
        assert F.get_kernel(any_model, "block")[0] == "block/conv2/kernel"
        assert F.get_kernel(any_model, "block/conv1")[0] == "block/conv1/kernel"
        assert F.get_kernel(any_model, "block.conv1.kernel")[0] == "block/conv1/kernel"
        with pytest.raises(JaxvizError, match="no convolution"):
            F.get_kernel(any_model, "head")


def test_bgr_flip_comes_from_the_preprocessing(tiny_model):
    from jaxviz.interface import CAFFE
    bgr = tiny_model.derive(preprocessing=CAFFE)
    kernel = np.asarray(tiny_model.params["features.0"]["kernel"])
    np.testing.assert_allclose(F.first_layer_filters(bgr)[2], _norm(kernel[:, :, ::-1, 2]), atol=1e-6)
    np.testing.assert_allclose(F.first_layer_filters(tiny_model)[2], _norm(kernel[:, :, :, 2]), atol=1e-6)


def test_digit_templates():
    from jaxviz.linear import train_digit_templates
    result = train_digit_templates()
    assert result.accuracy >= 0.90
    assert result.templates.shape == (10, 8, 8)
    assert result.losses[-1] < 0.5 * result.losses[0]
    t = result.templates.reshape(10, -1)
    m = result.class_means.reshape(10, -1)
    corr = np.corrcoef(t, m)[:10, 10:]
    # Each template resembles its own class's (centred) mean image more than any other class's.
    assert np.all(np.argmax(corr, axis=1) == np.arange(10))
    assert np.diag(corr).min() > 0.5
    # Same seed, same classifier.
    np.testing.assert_array_equal(train_digit_templates().templates, result.templates)


def test_cli_filters(squeezenet, tmp_path, capsys):
    from PIL import Image
    out = tmp_path / "f.png"
    assert main(["filters", "--model", "squeezenet1_1", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 64
    out2 = tmp_path / "g.png"
    assert main(["filters", "--model", "squeezenet1_1", "--layer", "fire2", "--groups", "4",
                 "--shared-scale", "--out", str(out2)]) == 0
    assert "4 groups of 16 3x3" in capsys.readouterr().out
    bad = tmp_path / "bad.png"
    assert main(["filters", "--model", "squeezenet1_1", "--layer", "features.2", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no convolution" in err
    assert not bad.exists()
    assert main(["filters", "--model", "squeezenet1_1", "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["filters", "--model", "nosuchnet", "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 2
