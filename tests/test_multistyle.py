"""The pretrained multistyle26 port (jaxviz.fast_style_pretrained): truth against onnxruntime's
outputs stored in tests/data (written by scripts/check_multistyle.py --write-reference; no onnx
here), hash pinning, CIN blending identities, batch == single, input validation, CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxviz import fast_style_pretrained as fsp
from jaxviz.errors import JaxvizError, WeightsError

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def multistyle():
    if not fsp.weights_path().is_file():  # ported by scripts/setup.sh; required under CI
        message = f"{fsp.NAME} is not ported here (scripts/port_multistyle.py)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return fsp.load_multistyle()


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    from jaxviz.images import load_image
    names = ("astronaut", "chelsea", "coffee")
    return np.stack([load_image(names[i % 3], (h, w), fit="stretch") for i in range(n)])


def test_weights_pinned_and_shapes(multistyle, tmp_path):
    net, params, names = multistyle
    assert names == tuple(f"style_{i}" for i in range(26))
    record = fsp.port_record()
    assert record["ported_sha256"] == fsp.PORTED_SHA256 and record["source_sha256"] == fsp.SOURCE_SHA256
    assert params["contract_0"]["conv"]["kernel"].shape == (9, 9, 3, 32)
    assert params["expand_2"]["norm"]["gamma"].shape == (26, 3)
    assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == 166104  # every ONNX initialiser
    bad = tmp_path / "multistyle26.safetensors"
    raw = bytearray(fsp.weights_path().read_bytes())
    raw[-100] ^= 1
    bad.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="sha256.*port_multistyle"):
        fsp.load_params(bad)
    with pytest.raises(WeightsError, match="not found"):
        fsp.load_params(tmp_path / "none.safetensors")


def test_port_is_plain_safetensors_in_the_stores_format(multistyle, tmp_path):
    """One format with the weights store: safetensors readable without jaxviz, the same bytes as
    the store's writer gives for these parameters, and the store's reader's checks."""
    import safetensors.numpy

    from jaxviz.weights import tensorfile
    _, params, _ = multistyle
    flat = safetensors.numpy.load_file(str(fsp.weights_path()))
    assert sorted(flat) == sorted(fsp.param_shapes())
    for key, value in tensorfile.flatten(params).items():
        np.testing.assert_array_equal(flat[key], np.asarray(value))
    again = tensorfile.save_params(jax.tree_util.tree_map(np.asarray, params), tmp_path / "x.safetensors",
                                   metadata={"format": "flax", "model": fsp.NAME})
    assert again == fsp.PORTED_SHA256
    # a file of the right hash but another network's shapes is refused from its header (unpinned read)
    wrong = dict(tensorfile.flatten(jax.tree_util.tree_map(np.asarray, params)))
    wrong["expand_2/norm/gamma"] = np.zeros((25, 3), np.float32)
    tensorfile.save_flat(wrong, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match=r"expand_2/norm/gamma: expected shape \(26, 3\)"):
        fsp.load_params(tmp_path / "w.safetensors", verify=False)


def test_old_npz_port_is_converted_once(multistyle, tmp_path):
    """A port made before safetensors (the pinned .npz bytes) is read once, checked, and rewritten
    as the pinned safetensors file, its record following; a tampered .npz is refused."""
    from jaxviz.weights import porting
    _, params, _ = multistyle
    old = tmp_path / "multistyle26.npz"
    assert porting.save_params(jax.tree_util.tree_map(np.asarray, params), old) == fsp.NPZ_SHA256
    (tmp_path / "multistyle26.json").write_text(json.dumps(
        {"model": fsp.NAME, "source_sha256": fsp.SOURCE_SHA256, "ported_sha256": fsp.NPZ_SHA256}))
    target = tmp_path / "multistyle26.safetensors"
    loaded = fsp.load_params(target)
    assert not old.exists() and fsp.port_record(target)["ported_sha256"] == fsp.PORTED_SHA256
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multistyle26.json", "multistyle26.safetensors"]
    target.unlink()
    porting.save_params(jax.tree_util.tree_map(lambda a: np.asarray(a) * 2, params), old)
    with pytest.raises(WeightsError, match="npz has sha256"):
        fsp.load_params(target)
    assert not target.exists()


@pytest.mark.parametrize("phase", [True, False])
def test_matches_onnxruntime_reference(multistyle, phase):
    """Our forward (both conv paths) equals onnxruntime on the original ONNX graph (non-square 32x40,
    one style and a three-style blend; reference computed one image at a time, here as one batch)."""
    _, params, _ = multistyle
    image = np.load(DATA / "multistyle_input.npy").astype(np.float32) / 255
    reference = np.load(DATA / "multistyle_reference.npy")
    weights = np.stack([fsp.style_vector(0), fsp.style_vector("3:0.5,12:0.3,25:0.2")])
    out = np.asarray(fsp.stylize(fsp.MultiStyleNet(phase=phase), params, np.stack([image, image]), weights))
    assert out.shape == reference.shape == (2, 32, 40, 3)
    np.testing.assert_allclose(out, reference, atol=2e-5, rtol=0)
    assert not np.allclose(out[0], out[1], atol=1e-2)  # the blend is a different style


@pytest.mark.parametrize("kernel,upsample,shape", [(9, False, (2, 12, 20, 3)), (3, False, (1, 10, 6, 4)),
                                                   (5, False, (1, 8, 14, 2)), (3, True, (2, 5, 7, 3))])
def test_phase_conv_equals_direct_conv(kernel, upsample, shape):
    """phase_conv == [nearest x2] + reflect pad + conv, in float64 (non-square, odd sizes when upsampling)."""
    from jaxviz.testing import x64
    rng = np.random.default_rng(kernel)
    with x64():
        x = jnp.asarray(rng.standard_normal(shape))
        k = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], 4)))
        y = jnp.repeat(jnp.repeat(x, 2, 1), 2, 2) if upsample else x
        p = kernel // 2
        direct = jax.lax.conv_general_dilated(jnp.pad(y, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect"), k,
                                              (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        fast = fsp.phase_conv(x, k, upsample)
        assert fast.shape == direct.shape == (shape[0], *y.shape[1:3], 4)
        np.testing.assert_allclose(np.asarray(fast), np.asarray(direct), rtol=1e-12, atol=1e-12)


def test_unit_mix_is_exactly_the_style_and_blend_is_gamma_beta_mix(multistyle):
    net, params, _ = multistyle
    x = _images(1, 16, 24)
    s = 7
    full = fsp.stylize(net, params, x, fsp.style_vector(s))
    # a 1-style network holding only style s's γ/β rows: (1, 0, ...) must be exactly that style
    one = jax.tree_util.tree_map(lambda p: p[s:s + 1] if p.ndim == 2 and p.shape[0] == 26 else p, params)
    single = fsp.stylize(fsp.MultiStyleNet(num_styles=1), one, x, jnp.ones((1, 1)))
    np.testing.assert_array_equal(np.asarray(full), np.asarray(single))
    # blending = mixing γ and β: 0.3 style 2 + 0.7 style 9 == a 1-style net with the mixed rows
    w = fsp.style_vector({2: 0.3, 9: 0.7})
    mixed = jax.tree_util.tree_map(lambda p: (0.3 * p[2] + 0.7 * p[9])[None] if p.ndim == 2 and p.shape[0] == 26
                                   else p, params)
    np.testing.assert_allclose(np.asarray(fsp.stylize(net, params, x, w)),
                               np.asarray(fsp.stylize(fsp.MultiStyleNet(num_styles=1), mixed, x, jnp.ones((1, 1)))),
                               atol=2e-5)


def test_batch_equals_single_and_range(multistyle):
    net, params, _ = multistyle
    x = _images(3, 24, 16)
    w = np.stack([fsp.style_vector(i) for i in (0, 13, 25)])
    batch = np.asarray(fsp.stylize(net, params, x, w))
    assert batch.shape == (3, 24, 16, 3) and batch.min() >= 0 and batch.max() <= 1
    for i in range(3):
        np.testing.assert_allclose(batch[i], np.asarray(fsp.stylize(net, params, x[i:i + 1], w[i]))[0], atol=2e-5)


def test_style_vector_parsing():
    e = np.eye(26, dtype=np.float32)
    np.testing.assert_array_equal(fsp.style_vector("style_7"), e[7])
    np.testing.assert_array_equal(fsp.style_vector("7"), e[7])
    np.testing.assert_array_equal(fsp.style_vector(np.int64(7)), e[7])
    np.testing.assert_allclose(fsp.style_vector("3:0.5,style_12:0.5"), 0.5 * e[3] + 0.5 * e[12])
    np.testing.assert_allclose(fsp.style_vector({"style_1": 0.8, 7: 0.6}), 0.8 * e[1] + 0.6 * e[7])
    np.testing.assert_array_equal(fsp.style_vector(",".join(["0"] * 25 + ["1"])), e[25])
    for bad in ("style_26", "26", "stlye_3", "3:x", "3,12", "", [1.0, 2.0], {40: 1.0}, "3:nan"):
        with pytest.raises(JaxvizError):
            fsp.style_vector(bad)
    with pytest.raises(JaxvizError, match="did you mean style_3"):
        fsp.style_vector("stlye_3")
    with pytest.raises(JaxvizError, match="must be >= 0, got -1"):  # as a trained checkpoint's --style-mix
        fsp.style_vector("3:-1,4:2")


def test_bad_shapes(multistyle):
    net, params, _ = multistyle
    for shape in ((1, 30, 40, 3), (1, 4, 8, 3), (1, 16, 16, 1)):
        with pytest.raises(JaxvizError):
            fsp.stylize(net, params, np.zeros(shape, np.float32))
    with pytest.raises(JaxvizError):
        fsp.stylize(net, params, np.zeros((2, 8, 8, 3), np.float32), np.zeros((3, 26), np.float32))


def test_cli_apply_multistyle(tmp_path, multistyle):
    from jaxviz.cli import main
    from jaxviz.images import load_image
    net, params, _ = multistyle
    out = tmp_path / "out.png"
    assert main(["fast-style", "apply", "coffee", "--model", "multistyle26", "--style", "style_19",
                 "--size", "48", "--out", str(out)]) == 0
    saved = np.asarray(Image.open(out).convert("RGB"), np.float32) / 255
    h, w = saved.shape[:2]
    assert max(h, w) == 48 and h % 4 == 0 and w % 4 == 0
    image = load_image("coffee", (h, w), fit="stretch")
    expected = np.asarray(fsp.stylize(net, params, image[None], fsp.style_vector(19)))[0]
    assert np.abs(saved - expected).max() <= 1 / 255 + 1e-6
    for argv in (["--style", "style_99"], ["--style", "3", "--style-mix", "3:1"], ["--style-mix", "1,2"]):
        assert main(["fast-style", "apply", "coffee", "--model", "multistyle26", "--size", "48", *argv,
                     "--out", str(tmp_path / "bad.png")]) == 2
    assert not (tmp_path / "bad.png").exists()
