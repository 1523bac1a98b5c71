"""Occlusion: batched == a plain loop, incremental == batched on every architecture, fills, FLOPs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.models.registry import Model, get_spec, init_params
from jaxviz.occlusion import (fill_images, flop_saving, incremental_occlusion, occlusion, occlusion_map,
                              window_positions, windows_to_pixels)
from jaxviz.targets import Target


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _loop_occlusion(model, x, window, stride, base, target=None):
    """The definition, one occluded image at a time (numpy), predicted class of the clean image."""
    out = []
    for n in range(x.shape[0]):
        logits = np.asarray(model.apply(model.params, x[n:n + 1]))[0]
        c = int(np.argmax(logits)) if target is None else target
        hp, wp = window_positions(x.shape[1], x.shape[2], window, stride)
        drops = np.zeros((hp, wp))
        for i in range(hp):
            for j in range(wp):
                xo = np.array(x[n])
                ys, xs = slice(i * stride, i * stride + window), slice(j * stride, j * stride + window)
                xo[ys, xs] = np.asarray(base[n])[ys, xs]
                drops[i, j] = logits[c] - np.asarray(model.apply(model.params, jnp.asarray(xo)[None]))[0, c]
        out.append(drops)
    return np.stack(out)


def _assert_close_relative(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    span = max(float(b.max() - b.min()), 1e-12)
    assert np.abs(a - b).max() <= tol * span, (np.abs(a - b).max(), span)


def test_batched_equals_plain_loop_non_square_batch(tiny_model):
    x = _images((2, 16, 20, 3))
    drops = occlusion(tiny_model.apply, tiny_model.params, x, window=5, stride=3, chunk=4)
    assert drops.shape == (2, 4, 6)
    base = fill_images(x, "mean")
    expected = _loop_occlusion(tiny_model, x, 5, 3, base)
    np.testing.assert_allclose(drops, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected).max() > 1e-3  # the check is not vacuous


@pytest.mark.parametrize("fill", ["zeros", "grey", "blur", 0.7])
def test_fills_do_what_they_say(tiny_model, fill):
    x = _images((2, 16, 18, 3), seed=1)
    base = np.asarray(fill_images(x, fill, window=6, preprocessing=tiny_model.spec.preprocessing))
    if fill == "zeros":
        assert np.all(base == 0)
    elif fill == "grey":  # the preprocessed 0.5 grey
        grey = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        np.testing.assert_allclose(base, np.broadcast_to(grey, base.shape), rtol=1e-6)
    elif fill == "blur":  # smoother than the image, same mean colour on a constant image
        assert np.abs(np.diff(base, axis=1)).mean() < 0.5 * np.abs(np.diff(np.asarray(x), axis=1)).mean()
        const = jnp.full((1, 16, 18, 3), 0.3)
        np.testing.assert_allclose(fill_images(const, "blur", window=6), const, rtol=1e-5)
    else:
        assert np.all(base == np.float32(0.7))
    drops = occlusion(tiny_model.apply, tiny_model.params, x, window=6, stride=4, fill=fill, chunk=3)
    np.testing.assert_allclose(drops, _loop_occlusion(tiny_model, x, 6, 4, base), rtol=1e-5, atol=1e-6)


def test_mean_fill_is_per_image_mean_colour():
    x = _images((2, 8, 10, 3), seed=2)
    base = np.asarray(fill_images(x, "mean"))
    np.testing.assert_allclose(base[1, 3, 4], np.asarray(x)[1].mean(axis=(0, 1)), rtol=1e-5)
    assert not np.allclose(base[0, 0, 0], base[1, 0, 0])


def test_occluding_with_the_image_itself_changes_nothing(tiny_model):
    # A fill equal to the image (a constant image's mean) must give zero drops everywhere.
    x = jnp.full((1, 16, 16, 3), 0.25)
    drops = occlusion(tiny_model.apply, tiny_model.params, x, window=4, stride=4)
    np.testing.assert_allclose(drops, 0.0, atol=1e-6)


def test_probability_score_and_explicit_class(tiny_model):
    x = _images((2, 16, 16, 3), seed=3)
    drops = occlusion(tiny_model.apply, tiny_model.params, x, 2, window=8, stride=8, score="prob")
    p = jax.nn.softmax(tiny_model.apply(tiny_model.params, x), axis=-1)[:, 2]
    xo = x.at[:, :8, 8:16].set(fill_images(x, "mean")[:, :8, 8:16])
    po = jax.nn.softmax(tiny_model.apply(tiny_model.params, xo), axis=-1)[:, 2]
    np.testing.assert_allclose(drops[:, 0, 1], p - po, rtol=1e-5, atol=1e-7)


def test_windows_to_pixels_averages_covering_windows():
    drops = jnp.asarray([[[1.0, 3.0]]])  # one row of two windows, width 4, stride 2 over 1x6
    pix = windows_to_pixels(drops, (4, 7), window=4, stride=2)
    np.testing.assert_allclose(pix[0, 0], [1, 1, 2, 2, 3, 3, 0])
    np.testing.assert_allclose(pix[0, :, 0], [1, 1, 1, 1])


def test_incremental_equals_batched_tiny_and_vmap_equals_loop(tiny_model):
    x = _images((3, 16, 22, 3), seed=4)
    batched = occlusion(tiny_model.apply, tiny_model.params, x, window=5, stride=3, chunk=7)
    inc = incremental_occlusion(tiny_model, tiny_model.params, x, window=5, stride=3, chunk=7)
    _assert_close_relative(inc, batched)
    for n in range(3):  # the batch over images equals one image at a time
        one = incremental_occlusion(tiny_model, tiny_model.params, x[n:n + 1], window=5, stride=3, chunk=7)
        np.testing.assert_allclose(inc[n:n + 1], one, rtol=1e-5, atol=1e-6)
    # the lax.map driver (jittable end to end) gives the same maps
    mapped = incremental_occlusion(tiny_model, tiny_model.params, x, window=5, stride=3, chunk=7, loop="map")
    np.testing.assert_allclose(mapped, inc, rtol=1e-5, atol=1e-6)
    mapped = occlusion(tiny_model.apply, tiny_model.params, x, window=5, stride=3, chunk=7, loop="map")
    np.testing.assert_allclose(mapped, batched, rtol=1e-5, atol=1e-6)
    # per-image targets (a batch of targets)
    idx = jnp.asarray([0, 3, 1])
    a = incremental_occlusion(tiny_model, tiny_model.params, x, index=idx, window=5, stride=3, fill="zeros")
    b = occlusion(tiny_model.apply, tiny_model.params, x, index=idx, window=5, stride=3, fill="zeros")
    _assert_close_relative(a, b)


def test_incremental_neuron_target(tiny_model):
    x = _images((2, 16, 16, 3), seed=5)
    t = Target(index=3, layer="features.4", y=2, x=5)
    a = incremental_occlusion(tiny_model, tiny_model.params, x, t, window=4, stride=2)
    b = occlusion(tiny_model.apply, tiny_model.params, x, t, window=4, stride=2)
    _assert_close_relative(a, b)
    assert np.abs(np.asarray(b)).max() > 0


def test_threshold_zero_is_exact_and_threshold_approximates(tiny_model):
    x = _images((2, 16, 16, 3), seed=6)
    exact = incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=4)
    zero = incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=4, threshold=0.0)
    np.testing.assert_allclose(zero, exact, rtol=1e-6, atol=1e-7)
    big = incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=4, threshold=1e6)
    np.testing.assert_allclose(big, 0.0, atol=1e-6)  # every change dropped


def test_max_box_caps_the_box(tiny_model):
    x = _images((2, 16, 20, 3), seed=10)
    exact = incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=3)
    full = incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=3, max_box=1.0)
    np.testing.assert_allclose(full, exact, rtol=1e-6, atol=1e-7)
    errors = [float(np.abs(np.asarray(incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=3,
                                                            max_box=tau)) - exact).max()) for tau in (0.6, 0.3)]
    span = float(np.ptp(np.asarray(exact)))
    assert 0 < errors[0] < 0.25 * span and errors[0] <= errors[1]
    spec = get_spec("squeezenet1_1")
    savings = [flop_saving(spec, input_size=224, window=16, stride=8, max_box=t) for t in (None, 0.5, 0.25)]
    assert savings[0] < savings[1] < savings[2]


def test_bad_input_is_rejected(tiny_model):
    x = _images((1, 16, 16, 3))
    with pytest.raises(JaxvizError, match="fill"):
        occlusion(tiny_model.apply, tiny_model.params, x, fill="purple")
    with pytest.raises(JaxvizError, match="larger"):
        occlusion(tiny_model.apply, tiny_model.params, x, window=20)
    with pytest.raises(JaxvizError, match="score"):
        occlusion(tiny_model.apply, tiny_model.params, x, score="odds")


def test_flop_saving():
    s11 = flop_saving(get_spec("squeezenet1_1"), input_size=224, window=16, stride=8)
    assert 1.8 <= s11 <= 2.6
    vgg = flop_saving(get_spec("vgg16"), input_size=224, window=16, stride=8)
    assert vgg > 2 * s11
    # a window as large as the image saves nothing
    assert flop_saving(get_spec("squeezenet1_1"), input_size=64, window=64, stride=8) == pytest.approx(1.0)


def test_incremental_equals_batched_squeezenet(squeezenet):
    x = _images((2, 64, 80, 3), seed=7)
    a = occlusion(squeezenet.apply, squeezenet.params, x, window=16, stride=16, chunk=20)
    b = incremental_occlusion(squeezenet, squeezenet.params, x, window=16, stride=16, chunk=20)
    _assert_close_relative(b, a)
    pix = occlusion_map(squeezenet.apply, squeezenet.params, x, window=16, stride=16, incremental=True)
    assert pix.shape == (2, 64, 80)


@pytest.mark.slow
def test_incremental_equals_batched_lite0(lite0):
    x = _images((1, 64, 64, 3), seed=8)
    a = occlusion(lite0.apply, lite0.params, x, window=16, stride=16, chunk=16)
    b = incremental_occlusion(lite0, lite0.params, x, window=16, stride=16, chunk=16)
    _assert_close_relative(b, a)


def _random_model(name: str, size: int) -> Model:
    spec = get_spec(name)
    if name == "vgg16":  # torchvision's conv part; a small GAP head instead of the 100M-weight classifier
        import dataclasses

        from jaxviz.models import vgg
        from jaxviz.models.network import Stage
        stages = vgg.vgg(16, include_classifier=False) + (Stage("pool", "global_avgpool"),
                                                           Stage("fc", "dense", (10,)))
        spec = dataclasses.replace(spec, stages=stages, num_classes=10)
    params = init_params(spec, seed=1, input_size=size)
    return Model(spec, params, spec.module())


@pytest.mark.parametrize("name,size,stride", [
    pytest.param("squeezenet1_0", (64, 72), 16, marks=pytest.mark.slow),
    pytest.param("vgg16", (32, 40), 8, marks=pytest.mark.slow)])
def test_incremental_equals_batched_random_params(name, size, stride):
    model = _random_model(name, size[0])
    x = _images((1,) + size + (3,), seed=9)
    a = occlusion(model.apply, model.params, x, window=16, stride=stride, chunk=32)
    b = incremental_occlusion(model, model.params, x, window=16, stride=stride, chunk=32)
    assert float(np.ptp(np.asarray(a))) > 0
    _assert_close_relative(b, a)
