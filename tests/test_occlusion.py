"""Occlusion: batched == a loop of forward passes on any model, Captum's reference values and
window rule, incremental == batched on every kind of stage, the fallback, fills, FLOPs."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.interface import TORCHVISION, from_apply_fn
from jaxviz.models import bundled_model
from jaxviz.models.efficientnet import ConvBNReLU6, MBConv
from jaxviz.models.kinds import Dense, GlobalAvgPool
from jaxviz.models.registry import ModelSpec, get_spec, init_params
from jaxviz.occlusion import (IncrementalFallbackWarning, fill_images, flop_saving, incremental_occlusion,
                              incremental_plan, occlusion, occlusion_map, occlusion_outputs, window_positions,
                              windows_to_pixels)
from jaxviz.targets import Target
from tests.conftest import make_tiny_model
from tests.user_models import apply_fn_model


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _loop_occlusion(model, x, window, stride, base, target=None):
    """The definition, one occluded image at a time (numpy), Captum's positions (the last window
    cropped at the border), the class predicted for the clean image."""
    (wh, ww), (sh, sw) = [(v, v) if np.ndim(v) == 0 else v for v in (window, stride)]
    h, w = x.shape[1:3]
    hp, wp = -(-(h - wh) // sh) + 1, -(-(w - ww) // sw) + 1
    out = []
    for n in range(x.shape[0]):
        logits = np.asarray(model.apply(model.params, x[n:n + 1]))[0]
        c = int(np.argmax(logits)) if target is None else target
        drops = np.zeros((hp, wp))
        for i in range(hp):
            for j in range(wp):
                xo = np.array(x[n])
                ys, xs = slice(i * sh, i * sh + wh), slice(j * sw, j * sw + ww)
                xo[ys, xs] = np.asarray(base[n])[ys, xs]
                drops[i, j] = logits[c] - np.asarray(model.apply(model.params, jnp.asarray(xo)[None]))[0, c]
        out.append(drops)
    return np.stack(out)


def _assert_close_relative(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    span = max(float(b.max() - b.min()), 1e-12)
    assert np.abs(a - b).max() <= tol * span, (np.abs(a - b).max(), span)


# --------------------------------------------------------------------------- batched, any model

def test_batched_equals_loop_of_forward_passes(any_model):
    # 16 x 21 with window 5 / stride 3: the last window of each axis is cropped at the border
    x = _images((2, 16, 21, 3))
    drops = occlusion(any_model, any_model.params, x, window=5, stride=3, chunk=4)
    assert drops.shape == (2, 5, 7)
    expected = _loop_occlusion(any_model, x, 5, 3, fill_images(x, "mean"))
    np.testing.assert_allclose(drops, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(expected).max() > 1e-3  # the check is not vacuous
    assert np.abs(expected[:, -1]).max() > 0 and np.abs(expected[:, :, -1]).max() > 0  # cropped windows count


def test_batched_on_a_plain_apply_fn():
    model = apply_fn_model()
    x = _images((2, 12, 16, 3), seed=11)
    expected = _loop_occlusion(model, x, (4, 6), (3, 4), fill_images(x, "zeros"))
    for m in (model, model.apply_fn):  # the Model or the bare function
        drops = occlusion(m, model.params, x, window=(4, 6), stride=(3, 4), fill="zeros", chunk=5)
        np.testing.assert_allclose(drops, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected).max() > 1e-3


# --------------------------------------------------------------------------- Captum's rule and values

def _captum_multilayer(params, x):
    """Captum's tests/helpers/basic_models.py BasicModel_MultiLayer on the three values x[:, 0, :, 0]:
    linear0 = identity, linear1 = ones(4, 3) + [-10, 1, 1, 1], ReLU, linear2 = ones(2, 4) + [-1, 1]."""
    v = x[:, 0, :, 0]
    h = jax.nn.relu(v.sum(-1, keepdims=True) + jnp.array([-10.0, 1.0, 1.0, 1.0]))
    return h.sum(-1, keepdims=True) + jnp.array([-1.0, 1.0])


def _row(values):
    """(N, 3) values -> (N, 1, 3, 3) images carrying them in channel 0."""
    v = jnp.asarray(values, jnp.float32)
    return jnp.zeros(v.shape[:1] + (1, 3, 3)).at[:, 0, :, 0].set(v)


@pytest.mark.parametrize("values, window, stride, fill, expected", [
    ([[20.0, 50.0, 30.0]], 2, 2, 0.0, [[280.0, 280.0, 120.0]]),                # test_simple_input_shape_with_stride
    ([[20.0, 50.0, 30.0]], 2, 1, 10.0, [[200.0, 220.0, 240.0]]),               # test_simple_input_larger_shape
    ([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]], 1, 1, 0.0, [[8.0, 35.0, 12.0], [80.0, 200.0, 120.0]]),  # multi-sample
])
def test_captum_reference_values(values, window, stride, fill, expected):
    x = _row(values)
    pixels = occlusion_map(_captum_multilayer, None, x, 0, window=(1, window), stride=(1, stride), fill=fill)
    np.testing.assert_allclose(pixels[:, 0], expected, rtol=1e-6)


def test_every_pixel_is_covered_on_a_non_dividing_grid():
    """10 x 10, window 4, stride 4 (Captum: 3 positions per axis, the last cropped to 2 px): with a
    linear score and fill 0 each window's drop is the sum of its weighted pixels."""
    weights = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (10, 10, 3)), jnp.float32)
    model = from_apply_fn(lambda p, x: (x * p).sum((1, 2, 3))[:, None], weights)
    x = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.0, (2, 10, 10, 3)), jnp.float32)
    assert window_positions(10, 10, 4, 4) == (3, 3)
    drops = occlusion(model, weights, x, 0, window=4, stride=4, fill=0.0)
    prod = np.asarray(x * weights)
    expected = np.array([[[prod[n, i:i + 4, j:j + 4].sum() for j in (0, 4, 8)] for i in (0, 4, 8)] for n in range(2)])
    np.testing.assert_allclose(drops, expected, atol=1e-3)  # float32: the score is a sum of ~300
    pixels = np.asarray(occlusion_map(model, weights, x, 0, window=4, stride=4, fill=0.0))
    assert (np.abs(pixels) > 0).all()  # no zero rows or columns at the border
    np.testing.assert_allclose(pixels[:, 8:, 8:], np.broadcast_to(expected[:, 2:, 2:], (2, 2, 2)), atol=1e-3)


def test_window_positions_follow_captum():
    assert window_positions(224, 224, 50, 40) == (6, 6)  # windows at 200..250, cropped: rows 210-223 covered
    assert window_positions(224, 224, 16, 8) == (27, 27)
    assert window_positions(3, 5, (1, 2), (1, 2)) == (3, 3)


def test_windows_to_pixels_averages_covering_windows():
    drops = jnp.asarray([[[1.0, 3.0, 5.0]]])  # one row of three windows, width 4, stride 2 over 1x7
    pix = windows_to_pixels(drops, (4, 7), window=4, stride=2)
    np.testing.assert_allclose(pix[0, 0], [1, 1, 2, 2, 4, 4, 5])  # the last window is cropped to 3 px
    np.testing.assert_allclose(pix[0, :, 0], [1, 1, 1, 1])


# --------------------------------------------------------------------------- fills

@pytest.mark.parametrize("fill", ["zeros", "grey", "blur", 0.7, "image", "per-image"])
def test_fills_do_what_they_say(tiny_model, fill):
    x = _images((2, 16, 18, 3), seed=1)
    rng = np.random.default_rng(2)
    if fill == "image":
        fill = jnp.asarray(rng.normal(size=(16, 18, 3)), jnp.float32)
    elif fill == "per-image":
        fill = jnp.asarray(rng.normal(size=(2, 16, 18, 3)), jnp.float32)
    base = np.asarray(fill_images(x, fill, window=6, preprocessing=tiny_model.preprocessing))
    if isinstance(fill, str) and fill == "zeros":
        assert np.all(base == 0)
    elif isinstance(fill, str) and fill == "grey":  # the preprocessed 0.5 grey
        grey = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        np.testing.assert_allclose(base, np.broadcast_to(grey, base.shape), rtol=1e-6)
    elif isinstance(fill, str) and fill == "blur":  # smoother than the image, a constant image unchanged
        assert np.abs(np.diff(base, axis=1)).mean() < 0.5 * np.abs(np.diff(np.asarray(x), axis=1)).mean()
        const = jnp.full((1, 16, 18, 3), 0.3)
        np.testing.assert_allclose(fill_images(const, "blur", window=6), const, rtol=1e-5)
    elif isinstance(fill, float):
        assert np.all(base == np.float32(0.7))
    else:
        np.testing.assert_array_equal(base, np.broadcast_to(np.asarray(fill), base.shape))
    drops = occlusion(tiny_model, tiny_model.params, x, window=6, stride=4, fill=fill, chunk=3)
    np.testing.assert_allclose(drops, _loop_occlusion(tiny_model, x, 6, 4, base), rtol=1e-5, atol=1e-6)
    inc = incremental_occlusion(tiny_model, tiny_model.params, x, window=6, stride=4, fill=fill, chunk=3)
    _assert_close_relative(inc, drops)


def test_grey_comes_from_the_models_preprocessing():
    model = apply_fn_model()  # declares TORCHVISION preprocessing
    x = _images((1, 8, 8, 3))
    grey = np.asarray(fill_images(x, "grey", preprocessing=model.preprocessing))[0, 0, 0]
    np.testing.assert_allclose(grey, np.asarray(TORCHVISION(jnp.full((1, 1, 1, 3), 0.5)))[0, 0, 0], rtol=1e-6)
    a = occlusion(model, model.params, x, window=4, stride=4, fill="grey")
    b = occlusion(model, model.params, x, window=4, stride=4, fill=jnp.broadcast_to(grey, (8, 8, 3)))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_mean_fill_is_per_image_mean_colour():
    x = _images((2, 8, 10, 3), seed=2)
    base = np.asarray(fill_images(x, "mean"))
    np.testing.assert_allclose(base[1, 3, 4], np.asarray(x)[1].mean(axis=(0, 1)), rtol=1e-5)
    assert not np.allclose(base[0, 0, 0], base[1, 0, 0])


def test_occluding_with_the_image_itself_changes_nothing(tiny_model):
    x = jnp.full((1, 16, 16, 3), 0.25)  # a constant image is its own mean colour
    np.testing.assert_allclose(occlusion(tiny_model, tiny_model.params, x, window=4, stride=4), 0.0, atol=1e-6)


def test_probability_score_and_explicit_class(tiny_model):
    x = _images((2, 16, 16, 3), seed=3)
    drops = occlusion(tiny_model, tiny_model.params, x, 2, window=8, stride=8, score="prob")
    p = jax.nn.softmax(tiny_model.apply(tiny_model.params, x), axis=-1)[:, 2]
    xo = x.at[:, :8, 8:16].set(fill_images(x, "mean")[:, :8, 8:16])
    po = jax.nn.softmax(tiny_model.apply(tiny_model.params, xo), axis=-1)[:, 2]
    np.testing.assert_allclose(drops[:, 0, 1], p - po, rtol=1e-5, atol=1e-7)


def test_bad_input_is_rejected(tiny_model):
    x = _images((1, 16, 16, 3))
    m, p = tiny_model, tiny_model.params
    for kwargs, match in [({"fill": "purple"}, "fill"), ({"window": 20}, "larger"), ({"window": (4, 17)}, "larger"),
                          ({"window": 4, "stride": 5}, "never be occluded"), ({"score": "odds"}, "score"),
                          ({"fill": jnp.zeros((8, 8, 3))}, "baseline"), ({"fill": float("nan")}, "finite"),
                          ({"window": (1, 2, 3)}, "pair"), ({"loop": "while"}, "loop")]:
        with pytest.raises(JaxvizError, match=match):
            occlusion(m, p, x, **kwargs)
    with pytest.raises(JaxvizError, match="max_box"):
        incremental_occlusion(m, p, x, max_box=1.5)
    with pytest.raises(JaxvizError, match="layer"):  # a neuron target needs named layers
        occlusion(apply_fn_model(), None, x, Target(index=0, layer="stem"))


# --------------------------------------------------------------------------- incremental == batched

def test_incremental_equals_batched_tiny_and_vmap_equals_loop(tiny_model):
    x = _images((3, 16, 22, 3), seed=4)
    batched = occlusion(tiny_model, tiny_model.params, x, window=5, stride=3, chunk=7)
    inc = incremental_occlusion(tiny_model, tiny_model.params, x, window=5, stride=3, chunk=7)
    _assert_close_relative(inc, batched)
    for n in range(3):  # the batch over images equals one image at a time
        one = incremental_occlusion(tiny_model, tiny_model.params, x[n:n + 1], window=5, stride=3, chunk=7)
        np.testing.assert_allclose(inc[n:n + 1], one, rtol=1e-5, atol=1e-6)
    # the lax.map driver (jittable end to end) gives the same maps, also inside a caller's jit
    mapped = incremental_occlusion(tiny_model, tiny_model.params, x, window=5, stride=3, chunk=7, loop="map")
    np.testing.assert_allclose(mapped, inc, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(lambda p, v: occlusion(tiny_model, p, v, window=5, stride=3, chunk=7, loop="map"))
    np.testing.assert_allclose(jitted(tiny_model.params, x), batched, rtol=1e-5, atol=1e-6)
    # per-image targets (a batch of targets), per-axis windows and strides
    idx = jnp.asarray([0, 3, 1])
    a = incremental_occlusion(tiny_model, tiny_model.params, x, index=idx, window=(4, 6), stride=(3, 5), fill="zeros")
    b = occlusion(tiny_model, tiny_model.params, x, index=idx, window=(4, 6), stride=(3, 5), fill="zeros")
    assert a.shape == (3, 5, 5)
    _assert_close_relative(a, b)


def test_incremental_under_x64_with_float64_images(tiny_model):
    # jax_enable_x64: float64 images meet float32 weights (promoted, as flax's Conv does) and
    # Python zeros become int64 start indices; both once raised TypeErrors in the incremental path
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 16, 22, 3)), jnp.float64)
        batched = occlusion(tiny_model, tiny_model.params, x, window=5, stride=3)
        for loop in ("python", "map"):
            inc = incremental_occlusion(tiny_model, tiny_model.params, x, window=5, stride=3, loop=loop)
            assert inc.dtype == batched.dtype == jnp.float64
            _assert_close_relative(inc, batched)


def test_cropped_windows_on_a_non_dividing_grid_both_engines(tiny_model):
    x = _images((2, 10, 10, 3), seed=12)
    a = occlusion(tiny_model, tiny_model.params, x, window=4, stride=4, fill=0.0)
    b = incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=4, fill=0.0)
    np.testing.assert_allclose(a, _loop_occlusion(tiny_model, x, 4, 4, fill_images(x, "zeros")), rtol=1e-5, atol=1e-6)
    _assert_close_relative(b, a)
    pixels = np.asarray(occlusion_map(tiny_model, tiny_model.params, x, window=4, stride=4, fill=0.0, incremental=True))
    assert (np.abs(pixels[:, 8:]) > 0).any(axis=(1, 2)).all() and (np.abs(pixels[:, :, 8:]) > 0).any(axis=(1, 2)).all()


def test_incremental_on_the_accelerated_model(tiny_model):
    from jaxviz.accel import accelerate  # a front end's model: FastPoolNet, XLA options
    fast = accelerate(tiny_model)
    x = _images((2, 16, 20, 3), seed=13)
    a = incremental_occlusion(fast, fast.params, x, window=5, stride=3)
    b = occlusion(tiny_model, tiny_model.params, x, window=5, stride=3)
    _assert_close_relative(a, b)
    pixels = occlusion_map(fast.apply, fast.params, x, window=5, stride=3, incremental=True)  # a bound apply works
    _assert_close_relative(pixels, windows_to_pixels(b, (16, 20), 5, 3))
    # inside a caller's jit the model's XLA options cannot apply: the plain jit is used, same values
    nested = jax.jit(lambda p, v: incremental_occlusion(fast, p, v, window=5, stride=3, loop="map"))(fast.params, x)
    _assert_close_relative(nested, b)


def test_incremental_neuron_target(tiny_model):
    x = _images((2, 16, 16, 3), seed=5)
    for t in (Target(index=3, layer="features.4", y=2, x=5), Target(index=1, layer="features.3")):
        a = incremental_occlusion(tiny_model, tiny_model.params, x, t, window=4, stride=2)
        b = occlusion(tiny_model, tiny_model.params, x, t, window=4, stride=2)
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


def test_a_class_logit_stops_the_increments_before_the_selected_head(tiny_model):
    """A class logit: the incremental stages end before the 1x1 class head, whose one selected
    class the tail computes (``selected_logits``); a probability (every class needed) or the
    outputs mode run the head incrementally where the box allows. Exact maps equal batched ones."""
    from jaxviz.occlusion import _Incremental
    names, head = tiny_model.spec.layer_names, tiny_model.class_head
    assert names[head] == "classifier.0"

    def last(target, **kw):
        engine = _Incremental(tiny_model, target, (4, 4), (3, 3), max_box=0.3, **kw)
        return engine._plan(tiny_model.params, (16, 20))[2]
    assert names.index(last(Target(index=1))) < head
    assert last(Target(index=1, score="prob")) == last(Target(index=1), outputs=True) == "classifier.1"
    x = _images((2, 16, 20, 3), seed=11)
    for score in ("logit", "prob"):
        _assert_close_relative(incremental_occlusion(tiny_model, tiny_model.params, x, window=4, stride=3, score=score),
                               occlusion(tiny_model, tiny_model.params, x, window=4, stride=3, score=score))


def _mbconv_model(seed: int = 0):
    """Every MBConv case (expand 1 with residual, stride 2, expand 6 with residual) and the
    conv-BN-ReLU6 stem/head, small widths, random weights and BN statistics."""
    stages = (ConvBNReLU6("stem", 8, 3, 2), MBConv("blocks.0", 8, 8, 1, 3, 1), MBConv("blocks.1", 8, 12, 6, 5, 2),
              MBConv("blocks.2", 12, 12, 6, 3, 1), ConvBNReLU6("head", 16, 1, 1), GlobalAvgPool("pool"),
              Dense("classifier", 5))
    spec = ModelSpec(name="mbconv", description="small MBConv net", stages=stages, preprocessing=TORCHVISION,
                     input_size=32, num_classes=5)
    # shapes by abstract evaluation, values from numpy: no compilation (seconds on a busy CPU)
    shapes = jax.eval_shape(lambda: spec.module().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
    rng = np.random.default_rng(seed)

    def fix(path, s):  # He-scaled kernels; BN statistics that do something
        name, shape = path[-1].key, s.shape
        if name == "kernel":
            value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif name == "var":
            value = 1.0 + rng.uniform(size=shape)
        elif name == "scale":
            value = 0.5 + rng.uniform(size=shape)
        else:  # mean, bias
            value = 0.2 * rng.normal(size=shape)
        return jnp.asarray(value, jnp.float32)
    return bundled_model(spec, jax.tree_util.tree_map_with_path(fix, shapes))


def test_incremental_equals_batched_mbconv_non_square():
    model = _mbconv_model()
    x = _images((2, 23, 31, 3), seed=14)  # odd sizes: TF SAME padding is asymmetric
    plan = incremental_plan(model.incremental_stages, (23, 31), (7, 7))
    assert [s.name for s, *_ in plan][:3] == ["stem", "blocks.0", "blocks.1"]
    a = occlusion(model, model.params, x, window=7, stride=(5, 6), chunk=16)
    b = incremental_occlusion(model, model.params, x, window=7, stride=(5, 6), chunk=16)
    assert float(np.ptp(np.asarray(a))) > 0
    _assert_close_relative(b, a)


def test_incremental_equals_batched_squeezenet(squeezenet):
    x = _images((2, 64, 80, 3), seed=7)
    # strides 10 x 12: the last window of each axis is cropped (64: 50..66, 80: 72..88)
    a = occlusion(squeezenet, squeezenet.params, x, window=16, stride=(10, 12), chunk=21)
    b = incremental_occlusion(squeezenet, squeezenet.params, x, window=16, stride=(10, 12), chunk=21)
    assert a.shape == (2, 6, 7)
    _assert_close_relative(b, a)
    # a neuron target inside a fire module (the plan stops before that stage)
    t = Target(index=5, layer="features.4/squeeze")
    a = occlusion(squeezenet, squeezenet.params, x[:1], t, window=16, stride=16)
    b = incremental_occlusion(squeezenet, squeezenet.params, x[:1], t, window=16, stride=16)
    _assert_close_relative(b, a)


@pytest.mark.slow
def test_incremental_equals_batched_lite0(lite0):
    x = _images((1, 64, 72, 3), seed=8)
    a = occlusion(lite0, lite0.params, x, window=16, stride=12, chunk=16)
    b = incremental_occlusion(lite0, lite0.params, x, window=16, stride=12, chunk=16)
    _assert_close_relative(b, a)


@pytest.mark.parametrize("name,size,stride", [
    pytest.param("squeezenet1_0", (64, 72), 16, marks=pytest.mark.slow),
    pytest.param("vgg16", (32, 40), 8, marks=pytest.mark.slow)])
def test_incremental_equals_batched_random_params(name, size, stride):
    spec = get_spec(name)
    if name == "vgg16":  # torchvision's conv part; a small GAP head instead of the 100M-weight classifier
        import dataclasses

        from jaxviz.models import vgg
        spec = dataclasses.replace(spec, stages=vgg.vgg(16, include_classifier=False)
                                   + (GlobalAvgPool("pool"), Dense("fc", 10)), num_classes=10)
    model = bundled_model(spec, init_params(spec, seed=1, input_size=size[0]))
    x = _images((1,) + size + (3,), seed=9)
    a = occlusion(model, model.params, x, window=16, stride=stride, chunk=32)
    b = incremental_occlusion(model, model.params, x, window=16, stride=stride, chunk=32)
    assert float(np.ptp(np.asarray(a))) > 0
    _assert_close_relative(b, a)


# --------------------------------------------------------------------------- whole outputs (Zeiler & Fergus Fig. 7)

def _loop_outputs(model, x, window, stride, base):
    """Every occluded copy's logits: the copies built one by one in numpy (Captum's positions),
    then one forward pass over all of them."""
    (wh, ww), (sh, sw) = [(v, v) if np.ndim(v) == 0 else v for v in (window, stride)]
    h, w = x.shape[1:3]
    hp, wp = -(-(h - wh) // sh) + 1, -(-(w - ww) // sw) + 1
    copies = []
    for n in range(x.shape[0]):
        for i in range(hp):
            for j in range(wp):
                xo = np.array(x[n])
                ys, xs = slice(i * sh, i * sh + wh), slice(j * sw, j * sw + ww)
                xo[ys, xs] = np.asarray(base[n])[ys, xs]
                copies.append(xo)
    out = np.asarray(model.apply(model.params, jnp.asarray(np.stack(copies))))
    return out.reshape(x.shape[0], hp, wp, -1)


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
def test_outputs_equal_loop_of_forward_passes_and_the_drops(any_model):
    # non-square, batch 2, a non-dividing grid (the last windows cropped)
    x = _images((2, 16, 21, 3), seed=21)
    expected = _loop_outputs(any_model, x, 5, 3, fill_images(x, "mean"))
    batched = occlusion_outputs(any_model, None, x, window=5, stride=3, chunk=4, incremental=False)
    assert batched.shape == expected.shape == (2, 5, 7, expected.shape[-1])
    np.testing.assert_allclose(batched, expected, rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():  # user models fall back to the batched engine (tested below)
        warnings.simplefilter("ignore", IncrementalFallbackWarning)
        inc = occlusion_outputs(any_model, None, x, window=5, stride=3, chunk=4)
    _assert_close_relative(inc, expected)
    # the predicted class's column gives occlusion's drops
    clean = np.asarray(any_model.apply(any_model.params, x))
    c = clean.argmax(-1)
    drops = occlusion(any_model, None, x, window=5, stride=3, chunk=4)
    _assert_close_relative(clean[np.arange(2), c][:, None, None] - expected[np.arange(2), :, :, c], drops)
    # the label map is not constant: the check is not vacuous
    assert np.ptp(expected, axis=(1, 2)).max() > 1e-3


def test_outputs_incremental_per_image_map_driver_and_fallback(tiny_model):
    x = _images((3, 16, 22, 3), seed=22)
    a = occlusion_outputs(tiny_model, None, x, window=(4, 6), stride=(3, 5), fill="zeros", chunk=7)
    b = occlusion_outputs(tiny_model, None, x, window=(4, 6), stride=(3, 5), fill="zeros", chunk=7, incremental=False)
    assert a.shape == (3, 5, 5, b.shape[-1])
    _assert_close_relative(a, b)
    for n in range(3):  # one image at a time == the batch
        one = occlusion_outputs(tiny_model, None, x[n:n + 1], window=(4, 6), stride=(3, 5), fill="zeros")
        np.testing.assert_allclose(a[n:n + 1], one, rtol=1e-5, atol=1e-6)
    mapped = occlusion_outputs(tiny_model, None, x, window=(4, 6), stride=(3, 5), fill="zeros", loop="map")
    np.testing.assert_allclose(mapped, a, rtol=1e-5, atol=1e-6)
    model = apply_fn_model()
    with pytest.warns(IncrementalFallbackWarning, match="every occluded copy"):
        occlusion_outputs(model, None, x, window=5, stride=3)


def test_outputs_need_one_vector_per_image():
    spatial = from_apply_fn(lambda p, x: x * p, jnp.float32(2.0))
    with pytest.raises(JaxvizError, match="one output vector"):
        occlusion_outputs(spatial, None, _images((1, 8, 8, 3)), window=4, stride=4, incremental=False)


# --------------------------------------------------------------------------- fallback

@pytest.mark.parametrize("kind", ["linen", "nnx", "apply_fn"])
def test_models_without_structure_fall_back_to_batched_and_say_so(kind):
    from tests.user_models import linen_model, nnx_model
    model = {"linen": linen_model, "nnx": nnx_model, "apply_fn": apply_fn_model}[kind]()
    x = _images((2, 16, 20, 3), seed=15)
    with pytest.warns(IncrementalFallbackWarning, match="batched occlusion instead"):
        inc = incremental_occlusion(model, model.params, x, window=5, stride=3)
    np.testing.assert_array_equal(inc, occlusion(model, model.params, x, window=5, stride=3))
    with pytest.warns(IncrementalFallbackWarning):
        occlusion_map(model, model.params, x, window=5, stride=3, incremental=True)
    with warnings.catch_warnings():  # the bundled model runs incrementally: no warning
        warnings.simplefilter("error", IncrementalFallbackWarning)
        tiny = make_tiny_model()
        incremental_occlusion(tiny, tiny.params, x, window=5, stride=3)
    with pytest.raises(JaxvizError, match="structure"):
        flop_saving(model, input_size=16, window=4, stride=4)


# --------------------------------------------------------------------------- FLOPs

def _abstract(name: str):
    """A bundled model whose params are shapes only: FLOP counts need no weights."""
    spec = get_spec(name)
    shapes = jax.eval_shape(lambda: spec.module().init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))["params"]
    return bundled_model(spec, shapes)


def test_flop_saving():
    squeeze, vgg = _abstract("squeezenet1_1"), _abstract("vgg16")
    s11 = flop_saving(squeeze, input_size=224, window=16, stride=8)
    assert 2.8 <= s11 <= 3.4  # one class of the 1x1 classifier (2.04 counting all 1000 in every copy)
    assert flop_saving(vgg, input_size=224, window=16, stride=8) > 2 * s11
    # a window as large as the image saves nothing
    assert flop_saving(squeeze, input_size=64, window=64, stride=8) == pytest.approx(1.0)
    savings = [flop_saving(squeeze, input_size=224, window=16, stride=8, max_box=t) for t in (None, 0.5, 0.25)]
    assert savings[0] < savings[1] < savings[2]
    assert flop_saving(squeeze, input_size=(224, 160), window=(16, 8), stride=8) > 1.0  # non-square


def test_full_flops_by_hand():
    """The kinds' count of a full SqueezeNet 1.1 pass: 2 x MACs of every conv at its output size."""
    from jaxviz.occlusion import _flops
    model = _abstract("squeezenet1_1")
    shapes = model.layer_shapes(224)
    total, prev = 0, (224, 224, 3)
    for stage in model.incremental_stages:
        p = model.layer_params(model.params, stage.name) or {}
        if "kernel" in p and len(p["kernel"].shape) == 4:  # conv
            total += 2 * np.prod(shapes[stage.name][:2]) * np.prod(p["kernel"].shape)
        elif "squeeze" in p:  # fire: squeeze at the input size, expands at the output size
            total += 2 * np.prod(prev[:2]) * np.prod(p["squeeze"]["kernel"].shape)
            total += 2 * np.prod(shapes[stage.name][:2]) * (np.prod(p["expand1x1"]["kernel"].shape)
                                                             + np.prod(p["expand3x3"]["kernel"].shape))
        prev = shapes[stage.name]
    assert _flops(model, (224, 224), None) == pytest.approx(total)
    assert 0.5e9 < total < 0.8e9  # SqueezeNet 1.1: ~0.35 GMACs


def test_a_traced_scalar_fill_sweeps_under_vmap_and_jit():
    """A sweep of fill values under vmap (float() of a traced fill raised ConcretizationTypeError)."""
    model = make_tiny_model()
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))

    def occ(fill):
        return occlusion(model, model.params, x, fill=fill, window=8, stride=4, index=jnp.asarray([1, 2]))
    fills = jnp.asarray([0.0, 0.5])
    swept = jax.vmap(occ)(fills)
    for i, f in enumerate([0.0, 0.5]):
        np.testing.assert_allclose(swept[i], occ(f), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(occ)(fills[1]), occ(0.5), rtol=1e-5, atol=1e-6)
    assert not np.allclose(swept[0], swept[1])
    with pytest.raises(JaxvizError, match="finite"):
        occ(float("nan"))
