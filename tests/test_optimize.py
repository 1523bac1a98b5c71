"""The engine: batch == separate runs (same seeds), L-BFGS on a convex quadratic, projection,
per-image stop, parameterisations, transforms and callbacks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxviz import objectives as obj
from jaxviz.errors import JaxvizError
from jaxviz.interface import CAFFE, LITE, TORCHVISION
from jaxviz.optimize import (ProgressBar, Snapshots, adam, blur, clip_range, clip_small_contribution,
                             clip_small_norm, gaussian_blur, gaussian_kernel1d, image_keys, jitter, lbfgs,
                             normalized_gradient, optimize, sgd, sign_gradient, valid_range,
                             valid_range_projection)
from jaxviz.param import fourier, fourier_noise


def _classviz_loss(model, classes):
    return -obj.class_score(model, model.params, jnp.asarray(classes)) + 1e-2 * obj.l2()


@pytest.mark.parametrize("optimizer", [sgd(0.05), adam(0.05)], ids=["sgd", "adam"])
def test_batch_equals_separate_runs(tiny_model, optimizer):
    """Several classes with random jitter, periodic blur and clipping: the batch run equals N
    separate runs with the per-image keys (non-square images)."""
    n, classes = 3, [0, 2, 4]
    init = 0.1 * jax.random.normal(jax.random.key(1), (n, 14, 18, 3))
    keys = jax.random.split(jax.random.key(7), n)
    lo, hi = valid_range(TORCHVISION)
    transforms = (jitter(3), blur(0.6, every=3), clip_range(lo, hi), clip_small_norm(0.05, every=4))
    kw = dict(optimizer=optimizer, steps=9, transforms=transforms)
    batch = optimize(_classviz_loss(tiny_model, classes), init, key=keys, **kw)
    assert batch.losses.shape == (9, n)
    for i in range(n):
        one = optimize(_classviz_loss(tiny_model, classes[i:i + 1]), init[i:i + 1], key=keys[i:i + 1], **kw)
        np.testing.assert_allclose(one.images[0], batch.images[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(one.losses[:, 0], batch.losses[:, i], rtol=1e-4, atol=1e-5)
    # the run did something and the images differ (different classes and jitter)
    assert not np.allclose(batch.images, init)
    assert not np.allclose(batch.images[0], batch.images[1])


def test_same_key_same_result_different_key_different(tiny_model):
    init = jnp.zeros((2, 16, 16, 3))
    kw = dict(optimizer=adam(0.05), steps=5, transforms=(jitter(4),))
    a = optimize(_classviz_loss(tiny_model, [1, 1]), init, key=jax.random.key(3), **kw)
    b = optimize(_classviz_loss(tiny_model, [1, 1]), init, key=jax.random.key(3), **kw)
    c = optimize(_classviz_loss(tiny_model, [1, 1]), init, key=jax.random.key(4), **kw)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.allclose(a.images, c.images)
    # one key is shared by every image: same class, same start -> the same image
    np.testing.assert_array_equal(a.images[0], a.images[1])
    # two images with the same class but different per-image keys differ (jitter is per image)
    d = optimize(_classviz_loss(tiny_model, [1, 1]), init, key=jax.random.split(jax.random.key(3), 2), **kw)
    assert not np.allclose(d.images[0], d.images[1])


def _quadratic(n=1, d=6, seed=0):
    r = np.random.default_rng(seed)
    m = r.normal(size=(d, d))
    a = jnp.asarray(m @ m.T + d * np.eye(d), jnp.float32)
    b = jnp.asarray(r.normal(size=(n, d)), jnp.float32)

    def loss(x, keys):
        v = x.reshape(x.shape[0], d)
        return 0.5 * jnp.einsum("ni,ij,nj->n", v, a, v) - jnp.sum(v * b, 1)
    xstar = np.linalg.solve(np.asarray(a), np.asarray(b).T).T
    fstar = -0.5 * np.sum(np.asarray(b) * xstar, 1)
    return loss, xstar, fstar


def test_lbfgs_reaches_minimum_of_convex_quadratic():
    loss, xstar, fstar = _quadratic()
    res = optimize(loss, jnp.zeros((1, 2, 3, 1)), optimizer=lbfgs(), steps=30)
    np.testing.assert_allclose(np.asarray(res.images).reshape(1, -1), xstar, rtol=1e-3, atol=1e-4)
    final = float(loss(res.images, None)[0])
    assert abs(final - fstar[0]) < 1e-5 * max(1.0, abs(fstar[0]))
    # the line search makes L-BFGS monotone
    assert np.all(np.diff(res.losses[:, 0]) <= 1e-6)


@pytest.mark.parametrize("optimizer", ["lbfgs", "lbfgs-fixed", "adam"])
def test_the_step_is_traced_once(optimizer):
    """A second step reuses the first one's program: optax's L-BFGS initial state holds weak-typed
    scalars that its update returns strong, which made jit trace and compile the step again."""
    traced = []

    def loss(x, keys):  # a fresh function: no step compiled by another test is reused
        traced.append(1)  # runs only while tracing
        return jnp.sum((x - 1.0) ** 2, axis=(1, 2, 3))
    opt = {"lbfgs": lbfgs(), "lbfgs-fixed": lbfgs(line_search=False), "adam": adam(0.1)}[optimizer]
    optimize(loss, jnp.zeros((2, 3, 3, 1)), optimizer=opt, steps=1)
    once = len(traced)
    optimize(loss, jnp.zeros((2, 3, 3, 1)), optimizer=opt, steps=4)
    assert once > 0 and len(traced) == once  # the steps of the second run: no new trace at all


def test_lbfgs_batch_minimises_the_sum():
    loss, xstar, fstar = _quadratic(n=3, seed=1)
    res = optimize(loss, jnp.zeros((3, 6, 1, 1)), optimizer=lbfgs(), steps=40)
    np.testing.assert_allclose(np.asarray(res.images).reshape(3, -1), xstar, rtol=1e-3, atol=1e-4)
    assert res.losses.shape[1] == 3


@pytest.mark.parametrize("pre", [TORCHVISION, LITE, CAFFE], ids=["torchvision", "lite", "caffe"])
def test_valid_range_is_preprocessing_of_unit_interval(pre):
    lo, hi = valid_range(pre)
    np.testing.assert_allclose(pre.invert(lo.reshape(1, 1, 1, 3)).reshape(3), 0.0, atol=1e-6)
    np.testing.assert_allclose(pre.invert(hi.reshape(1, 1, 1, 3)).reshape(3), 1.0, atol=1e-5)


def test_projection_keeps_images_in_range(tiny_model):
    lo, hi = valid_range(TORCHVISION)
    push = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], size=(2, 16, 16, 3)), jnp.float32)
    loss = _classviz_loss(tiny_model, [0, 3]) - obj.Objective(lambda x, k: jnp.sum((x * push).reshape(2, -1), 1))
    res = optimize(loss, jnp.zeros((2, 16, 16, 3)), optimizer=sgd(0.5), steps=6,
                   project=valid_range_projection(TORCHVISION))
    x = np.asarray(res.images)
    assert np.all(x >= np.asarray(lo) - 1e-6) and np.all(x <= np.asarray(hi) + 1e-6)
    # large steps really push against the bounds
    assert np.isclose(x, np.asarray(lo), atol=1e-5).any() or np.isclose(x, np.asarray(hi), atol=1e-5).any()
    back = np.asarray(TORCHVISION.invert(res.images))
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5


def test_projection_receives_init_as_x0():
    eps = 0.05
    init = jnp.full((2, 4, 4, 3), 0.5)
    res = optimize(lambda x, k: -jnp.sum(x.reshape(2, -1), 1), init, optimizer=sign_gradient(0.02), steps=10,
                   project=lambda x, x0: jnp.clip(x, x0 - eps, x0 + eps))
    np.testing.assert_allclose(res.images, 0.55, atol=1e-6)


def test_active_freezes_images_individually():
    """Image i stops once its loss < 0.1: it is frozen from then on; others go on."""
    loss = lambda x, k: jnp.sum(jnp.square(x).reshape(x.shape[0], -1), 1)
    init = jnp.stack([jnp.full((2, 2, 1), v) for v in (0.2, 1.0, 3.0)])
    res = optimize(loss, init, optimizer=sgd(0.1), steps=50, active=lambda x: loss(x, None) >= 0.1)
    # x <- 0.8 x per step; ||x||^2 = 4 v^2 0.64^t < 0.1
    expected = [int(np.ceil(np.log(0.1 / (4 * v * v)) / np.log(0.64))) for v in (0.2, 1.0, 3.0)]
    expected = [max(e, 0) for e in expected]
    np.testing.assert_array_equal(res.steps_run, expected)
    for i, v in enumerate((0.2, 1.0, 3.0)):
        np.testing.assert_allclose(res.images[i], v * 0.8 ** expected[i], rtol=1e-5)
    assert res.losses.shape[0] == max(expected)  # the loop ends when none is active


def test_sign_and_normalized_steps():
    g_loss = lambda x, k: jnp.sum((x * jnp.arange(1.0, 1.0 + x[0].size).reshape(x.shape[1:])).reshape(x.shape[0], -1), 1)
    x0 = jnp.zeros((2, 2, 2, 1))
    res = optimize(g_loss, x0, optimizer=sign_gradient(0.1), steps=1)
    np.testing.assert_allclose(res.images, -0.1)
    res = optimize(g_loss, x0, optimizer=normalized_gradient(0.5), steps=1)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(res.images).reshape(2, -1), axis=1), 0.5, rtol=1e-6)


def test_fourier_parameterisation_roundtrip_range_and_descent(tiny_model):
    p = fourier(12, 16, to_input=TORCHVISION, from_input=TORCHVISION.invert)
    x = p.image(fourier_noise(jax.random.key(0), 2, 12, 16, sd=0.3))
    np.testing.assert_allclose(p.image(p.encode(x)), x, atol=1e-4)
    lo, hi = valid_range(TORCHVISION)
    assert np.all(np.asarray(x) >= np.asarray(lo) - 1e-6) and np.all(np.asarray(x) <= np.asarray(hi) + 1e-6)
    loss = -obj.channel(tiny_model, tiny_model.params, "features.4", jnp.array([1, 5]))
    res = optimize(loss, x, optimizer=adam(0.05), steps=15, parameterization=p)
    assert np.all(res.losses[-1] < res.losses[0])
    assert np.all(np.asarray(res.images) >= np.asarray(lo) - 1e-6)
    assert res.params.shape == (2, 12, 9, 3, 2)


def test_fourier_parameterisation_and_engine_start_lower_few_programs(tiny_model, lowerings):
    """The noise, the start image, its encoding and the optimiser's state are one program each
    (run eagerly, outside the engine's step, they were ~30 one-operation programs, each lowered
    again in every process, persistent cache or not)."""
    h, w = 23, 19  # a size no other test uses: nothing of it is cached in this process yet
    p = fourier(h, w, to_input=TORCHVISION, from_input=TORCHVISION.invert)
    key = jax.random.key(0)
    loss = -obj.channel(tiny_model, tiny_model.params, "features.4", jnp.array([1, 5]))
    with lowerings() as setup:
        x = p.image(fourier_noise(key, 2, h, w))
        params = p.encode(x)
    assert setup.count <= 4  # noise, keys, image, encode
    with lowerings() as engine:
        res = optimize(loss, x, optimizer=adam(0.05), steps=2, parameterization=p)
    # encode, its copy, the optimiser's state, the step, the final image (+ small host-side ones)
    assert engine.count <= 8, engine.count
    np.testing.assert_allclose(res.params.shape, params.shape)


def test_gaussian_blur_kernel_and_constant():
    x = jnp.zeros((1, 15, 15, 3)).at[0, 7, 7, :].set(1.0)
    y = np.asarray(gaussian_blur(x, 1.0))
    k = gaussian_kernel1d(1.0)
    r = len(k) // 2
    np.testing.assert_allclose(y[0, 7 - r:8 + r, 7 - r:8 + r, 0], np.outer(k, k), rtol=1e-5, atol=1e-7)
    c = jnp.full((2, 5, 7, 3), 0.3)  # reflect padding: a constant image stays constant
    np.testing.assert_allclose(gaussian_blur(c, 2.0), 0.3, rtol=1e-5)


def test_clip_small_contribution_zeros_least_contributing(tiny_model):
    loss = -obj.class_score(tiny_model, tiny_model.params, 1)
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    res = optimize(loss, x, optimizer=sgd(0.0), steps=1, transforms=(clip_small_contribution(0.25),))
    zero = np.all(np.asarray(res.images[0]) == 0.0, axis=-1)
    assert abs(zero.mean() - 0.25) < 0.02


def test_callbacks_progress_and_snapshots(tiny_model):
    snaps = Snapshots(every=3)
    res = optimize(_classviz_loss(tiny_model, [2]), jnp.zeros((1, 16, 16, 3)), optimizer=adam(0.1), steps=7,
                   callbacks=(ProgressBar(disable=True), snaps))
    assert [s for s, _ in snaps.frames] == [3, 6, 7]
    np.testing.assert_allclose(snaps.frames[-1][1], res.images)
    assert res.compile_seconds > 0 and res.seconds >= res.compile_seconds


def test_bad_inputs():
    with pytest.raises(JaxvizError):
        optimize(lambda x, k: x.sum((1, 2, 3)), jnp.zeros((2, 4, 4, 3)), optimizer=sgd(0.1), steps=-1)
    with pytest.raises(JaxvizError):
        image_keys(jax.random.split(jax.random.key(0), 3), 2)
    with pytest.raises(JaxvizError):
        jitter(-1)
    with pytest.raises(JaxvizError):
        blur(1.0, every=0)
    assert image_keys(None, 4).shape == (4,)
    # one key (raw or typed) is shared by every image
    np.testing.assert_array_equal(jax.random.key_data(image_keys(jax.random.PRNGKey(1), 2)),
                                  jax.random.key_data(jnp.stack([jax.random.key(1)] * 2)))


def test_optax_chain_with_extra_args_works():
    loss = lambda x, k: jnp.sum(jnp.square(x - 1.0).reshape(x.shape[0], -1), 1)
    res = optimize(loss, jnp.zeros((2, 3, 3, 1)), optimizer=optax.chain(optax.clip(0.5), optax.sgd(0.2)), steps=40)
    np.testing.assert_allclose(res.images, 1.0, atol=1e-3)


_TRACES = []


def _data_loss(x, keys, data):
    _TRACES.append(1)  # runs only while tracing: counts compilations of the step
    return jnp.sum((x - data["target"]) ** 2 * data["scale"], axis=(1, 2, 3))


def test_data_is_traced_not_baked_in_and_equals_the_closure_version():
    """``data`` reaches loss / project / active as an argument: results equal the closure version,
    and new data values of the same shapes reuse the compiled step (no retrace)."""
    target = jnp.linspace(-1, 1, 2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    init = jnp.zeros_like(target)
    project = lambda x, x0, data: jnp.clip(x, -data["bound"], data["bound"])
    active = lambda x, data: jnp.abs(x - data["target"]).max(axis=(1, 2, 3)) > 0.05
    opt = sgd(0.1)
    data = {"target": target, "scale": jnp.float32(1.0), "bound": jnp.float32(0.5)}
    _TRACES.clear()
    with_data = optimize(_data_loss, init, optimizer=opt, steps=6, project=project, active=active, data=data)
    closure = optimize(lambda x, keys: _data_loss(x, keys, data), init, optimizer=opt, steps=6,
                       project=lambda x, x0: project(x, x0, data), active=lambda x: active(x, data))
    np.testing.assert_allclose(np.asarray(with_data.images), np.asarray(closure.images), atol=1e-6)
    np.testing.assert_allclose(with_data.losses, closure.losses, rtol=1e-6)
    assert float(jnp.abs(with_data.images).max()) <= 0.5 + 1e-6
    traced = len(_TRACES)
    other = optimize(_data_loss, init, optimizer=opt, steps=6, project=project, active=active,
                     data={"target": -target, "scale": jnp.float32(2.0), "bound": jnp.float32(0.25)})
    assert len(_TRACES) == traced  # no new trace for new values
    assert float(jnp.abs(other.images).max()) <= 0.25 + 1e-6
    assert not np.allclose(np.asarray(other.images), np.asarray(with_data.images))


def test_lbfgs_without_line_search_one_evaluation_per_step():
    """``lbfgs(line_search=False)``: one loss evaluation per step (counted with a host callback)
    and it still minimises a convex quadratic."""
    calls = []
    a = jnp.array([1.0, 10.0, 100.0])

    def loss(x, keys):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.sum(a * (x.reshape(x.shape[0], -1) - 1.0) ** 2, axis=1)
    init = jnp.zeros((1, 1, 1, 3))
    r = optimize(loss, init, optimizer=lbfgs(line_search=False), steps=25)
    jax.effects_barrier()
    assert len(calls) == 25
    np.testing.assert_allclose(np.asarray(r.images).ravel(), 1.0, atol=1e-3)


def test_objective_weights_travel_as_data_and_reuse_the_compiled_step(tiny_model):
    """An Objective's arrays (weights, classes, term weights) are the step's data: other weights,
    classes and lambda reuse the compiled step, and the result equals the closure version."""
    from jaxviz import optimize as engine
    init = 0.1 * jax.random.normal(jax.random.key(2), (2, 16, 12, 3))
    kw = dict(optimizer=normalized_gradient(0.5), steps=4, transforms=(jitter(2), clip_range((-2.0,) * 3, (2.0,) * 3)),
              key=jax.random.key(1))
    loss = -obj.class_score(tiny_model, tiny_model.params, jnp.array([0, 3])) + 1e-2 * obj.l2()
    first = optimize(loss, init, **kw)
    closure = optimize(lambda x, k: loss(x, k), init, **kw)  # the same objective as a plain function
    np.testing.assert_allclose(first.images, closure.images, rtol=1e-5, atol=1e-6)
    before = engine._compiled.cache_info()
    other = jax.tree_util.tree_map(lambda p: 0.9 * p, tiny_model.params)
    second = optimize(-obj.class_score(tiny_model, other, jnp.array([4, 1])) + 3e-2 * obj.l2(), init, **kw)
    after = engine._compiled.cache_info()
    assert after.misses == before.misses and after.hits > before.hits
    assert not np.allclose(second.images, first.images)


class _EveryStep:
    """A callback that wants the images after every update (the default ``sync_every`` of 1)."""

    def __init__(self):
        self.calls = []

    def start(self, total, n):
        pass

    def step(self, i, losses, active, images):
        self.calls.append((i, np.array(losses), np.array(active), np.asarray(images())))

    def end(self):
        pass


@pytest.mark.parametrize("kind", ["adam-jitter-blur", "lbfgs", "active"])
def test_steps_in_one_program_equal_one_program_per_step(tiny_model, kind):
    """Up to STEPS_PER_CALL updates run in one program (a device loop); a callback with
    ``sync_every = 1`` brings the loop back to the host after every update. Both give the same
    images, losses and per-image counts, across a chunk boundary (40 > 32 steps) and with
    per-image early stopping."""
    lo, hi = valid_range(TORCHVISION)
    init = 0.1 * jax.random.normal(jax.random.key(2), (3, 14, 18, 3))
    kw = dict(optimizer=adam(0.05), steps=40, key=jax.random.split(jax.random.key(5), 3),
              transforms=(jitter(2), blur(0.5, every=7), clip_range(lo, hi)))
    loss = _classviz_loss(tiny_model, [0, 2, 4])
    if kind == "lbfgs":
        kw = dict(optimizer=lbfgs(), steps=36)
    if kind == "active":  # images stop one by one, at different steps
        quad = lambda x, k: jnp.sum(jnp.square(x).reshape(x.shape[0], -1), 1)
        init = jnp.stack([jnp.full((2, 2, 1), v) for v in (0.2, 1.0, 30.0)])
        loss = quad
        kw = dict(optimizer=sgd(0.05), steps=100, active=lambda x: quad(x, None) >= 0.1)
    fused = optimize(loss, init, **kw)
    every = _EveryStep()
    stepwise = optimize(loss, init, callbacks=(every,), **kw)
    np.testing.assert_array_equal(fused.images, stepwise.images)
    np.testing.assert_array_equal(fused.losses, stepwise.losses)
    np.testing.assert_array_equal(fused.steps_run, stepwise.steps_run)
    # the callback saw every update in order, with that update's losses and the images after it
    assert [c[0] for c in every.calls] == list(range(len(stepwise.losses)))
    np.testing.assert_array_equal(np.stack([c[1] for c in every.calls]), stepwise.losses)
    np.testing.assert_array_equal(every.calls[-1][3], stepwise.images)
    if kind == "active":
        assert len(set(fused.steps_run.tolist())) == 3 and fused.steps_run.max() > 32
        assert len(fused.losses) == fused.steps_run.max()
        # the active masks: image i was moved by update t exactly when t < steps_run[i]
        actives = np.stack([c[2] for c in every.calls])
        np.testing.assert_array_equal(actives, np.arange(len(actives))[:, None] < fused.steps_run[None, :])
    else:
        assert len(fused.losses) == kw["steps"]
        assert not np.array_equal(fused.images, init)


def test_callback_images_only_where_it_syncs():
    """A callback that syncs every 5 updates gets the images at those updates and at the last one;
    elsewhere ``images()`` says why it has none; a bad ``sync_every`` is refused."""
    class Sparse(_EveryStep):
        sync_every = 5

        def step(self, i, losses, active, images):
            try:
                self.calls.append((i, np.asarray(images())))
            except JaxvizError as e:
                self.calls.append((i, str(e)))
    loss = lambda x, k: jnp.sum(jnp.square(x - 1.0).reshape(x.shape[0], -1), 1)
    cb = Sparse()
    res = optimize(loss, jnp.zeros((2, 3, 3, 1)), optimizer=sgd(0.1), steps=12, callbacks=(cb,))
    got = [i for i, x in cb.calls if not isinstance(x, str)]
    assert got == [4, 9, 11] and [i for i, _ in cb.calls] == list(range(12))
    np.testing.assert_allclose(cb.calls[4][1], 1.0 - 0.8 ** 5, rtol=1e-6)
    np.testing.assert_array_equal(cb.calls[11][1], res.images)
    assert "sync_every" in cb.calls[0][1]
    for bad in (0, 1.5, "2", True):
        cb.sync_every = bad
        with pytest.raises(JaxvizError, match="sync_every"):
            optimize(loss, jnp.zeros((2, 3, 3, 1)), optimizer=sgd(0.1), steps=2, callbacks=(cb,))


def test_dtypes_are_kept_through_the_device_loop():
    """The loop's carry keeps its dtypes: bfloat16 images under a float32 projection stay
    bfloat16, and an optimiser state that an update would promote keeps its first dtype."""
    loss = lambda x, k: jnp.sum(jnp.square(x.astype(jnp.float32) - 1.0).reshape(x.shape[0], -1), 1)
    res = optimize(loss, jnp.zeros((2, 3, 3, 1), jnp.bfloat16), optimizer=sgd(0.1), steps=5,
                   project=lambda x, x0: jnp.clip(x, jnp.zeros(1, jnp.float32), 0.3))
    assert res.images.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(res.images, np.float32), 0.3, atol=2e-3)
    promoting = optax.GradientTransformation(
        lambda p: jnp.zeros((), jnp.float16),
        lambda u, s, p=None: (jax.tree_util.tree_map(lambda g: -0.1 * g, u), s.astype(jnp.float32) + 1))
    res = optimize(loss, jnp.zeros((2, 3, 3, 1)), optimizer=promoting, steps=40)
    np.testing.assert_allclose(res.images, 1.0 - 0.8 ** 40, rtol=1e-5)


def test_line_search_below_float32_is_one_clear_error():
    """L-BFGS on bfloat16 / float16 images failed with a TypeError deep in optax's line search
    (a ``cond`` whose branches return float32 and bfloat16); without a line search it runs."""
    loss = lambda x, k: jnp.sum(jnp.square(x.astype(jnp.float32) - 0.3).reshape(x.shape[0], -1), 1)
    for dtype in (jnp.bfloat16, jnp.float16):
        with pytest.raises(JaxvizError, match=f"line search .* float32 or float64 images, got {jnp.dtype(dtype).name}"):
            optimize(loss, jnp.zeros((1, 3, 3, 1), dtype), optimizer=lbfgs(), steps=2)
    res = optimize(loss, jnp.zeros((1, 3, 3, 1), jnp.bfloat16), optimizer=lbfgs(line_search=False,
                   learning_rate=0.2), steps=3)
    assert res.images.dtype == jnp.bfloat16
    res = optimize(loss, jnp.zeros((1, 3, 3, 1), jnp.float32), optimizer=lbfgs(), steps=3)
    np.testing.assert_allclose(res.images, 0.3, atol=1e-5)
    # no step, nothing to refuse: the images back as they were
    res = optimize(loss, jnp.zeros((1, 3, 3, 1), jnp.bfloat16), optimizer=lbfgs(), steps=0)
    assert res.images.dtype == jnp.bfloat16 and not np.asarray(res.images, np.float32).any()
    # float32 images, a loss computed in bfloat16: the line search runs (it failed in optax's cond)
    low = lambda x, k: jnp.sum(jnp.square(x.astype(jnp.bfloat16) - 0.3).reshape(x.shape[0], -1), 1)  # noqa: E731
    res = optimize(low, jnp.zeros((1, 3, 3, 1), jnp.float32), optimizer=lbfgs(), steps=3)
    np.testing.assert_allclose(res.images, 0.3, atol=3e-3)


def test_another_callbacks_exception_is_not_hidden_by_snapshots():
    """A callback raising inside a program call's updates: its exception reaches the caller (the
    snapshots' end does not ask for images that stayed on the device)."""
    class Stop(Exception):
        pass

    class Raiser(_EveryStep):
        sync_every = 50

        def step(self, i, losses, active, images):
            if i == 7:
                raise Stop
    snaps = Snapshots(every=5)
    loss = lambda x, k: jnp.sum(jnp.square(x).reshape(x.shape[0], -1), 1)
    with pytest.raises(Stop):
        optimize(loss, jnp.ones((2, 3, 3, 1)), optimizer=sgd(0.1), steps=20, callbacks=(snaps, Raiser()))
    assert [s for s, _ in snaps.frames] == [5]
