"""SimBA (query-based black-box attack): it only ever calls the probability function (a numpy
callable that refuses gradients), counts queries exactly and within budget, reports success from
predictions of the returned 8-bit images, takes exactly the steps the paper's rule prescribes on a
linear model, keeps an orthonormal DCT basis, runs batch == single with one shared key, takes a
jaxviz Model directly, and fools the real SqueezeNet."""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from jaxviz import adversarial as adv
from jaxviz import blackbox as bb
from jaxviz.errors import JaxvizError
from jaxviz.images import load_image, load_images
from tests.conftest import make_tiny_model


class BlackBox:
    """A probability function seen from outside: numpy in, numpy out, counts calls and images.

    ``np.asarray`` on the input makes differentiation impossible (a JAX tracer cannot become a
    numpy array), so an attack that tried to take gradients through it would fail.
    """

    def __init__(self, fn):
        self.fn, self.calls, self.images, self.batches = fn, 0, 0, []

    def __call__(self, images):
        x = np.asarray(images)
        assert x.dtype == np.float32 and x.ndim == 4
        self.calls += 1
        self.images += len(x)
        self.batches.append(len(x))
        return np.asarray(self.fn(x))


def linear_softmax(w: np.ndarray, b: np.ndarray):
    """p = softmax(W x + b) over flattened images, in numpy float64."""
    def predict(x):
        z = x.reshape(len(x), -1).astype(np.float64) @ w.T + b
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)
    return predict


def _grid(rng, n, h, w, lo=0, hi=256):
    return (rng.integers(lo, hi, size=(n, h, w, 3)) / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def tiny2():
    """A tiny CNN whose classes 0 and 1 are close, so attacks succeed within a few hundred queries."""
    return make_tiny_model(2)


# ---------------------------------------------------------------- directions

@pytest.mark.parametrize("shape", [(6, 5), (4, 4)])
def test_dct_basis_is_orthonormal_and_is_scipys_inverse_dct(shape):
    h, w = shape
    index = np.arange(h * w * 3)
    q = bb.basis_images(index, shape, "dct").reshape(len(index), -1).astype(np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(len(index)), atol=1e-5)
    for i in np.random.default_rng(0).choice(index, 8, replace=False):
        (u, v), c = divmod(i // 3, w), i % 3
        coeff = np.zeros((h, w))
        coeff[u, v] = 1.0
        expected = np.zeros((h, w, 3))
        expected[:, :, c] = scipy.fft.idctn(coeff, norm="ortho")
        np.testing.assert_allclose(bb.basis_images(np.array([i]), shape, "dct")[0], expected, atol=1e-6)
    m = bb.dct_matrix(7)
    np.testing.assert_allclose(m.T @ m, np.eye(7), atol=1e-12)
    pixel = bb.basis_images(np.array([5, 0]), shape, "pixel").reshape(2, -1)
    assert pixel[0, 5] == 1 and pixel[1, 0] == 1 and pixel.sum() == 2


def test_direction_orders_low_frequencies_first_and_vmap_equals_per_key():
    keys = jax.random.split(jax.random.key(3), 3)
    shape = (20, 12)  # non-square: low block 3 x 2 frequencies x 3 channels
    orders = bb.direction_order(keys, shape, "dct", freq_ratio=1 / 8)
    assert orders.shape == (3, 20 * 12 * 3)
    low = np.flatnonzero(bb.low_frequency_mask(shape, 1 / 8))
    assert len(low) == 3 * 2 * 3
    for k, order in zip(keys, orders):
        assert sorted(order[:len(low)]) == sorted(low)
        assert sorted(order) == list(range(20 * 12 * 3))
        np.testing.assert_array_equal(order, bb.direction_order(k, shape, "dct"))
    assert not np.array_equal(orders[0], orders[1])
    pixel = bb.direction_order(keys, shape, "pixel", count=50)
    assert pixel.shape == (3, 50) and all(len(set(p)) == 50 for p in pixel)


# ---------------------------------------------------------------- exact behaviour on a linear model

def test_pixel_simba_takes_exactly_the_papers_steps_on_a_linear_model():
    """Two classes, margin too large to flip: every direction is accepted with sign -sign(g_c),
    g = w_label - w_other; + is tried first and costs 1 query if it helps, else 2."""
    rng = np.random.default_rng(1)
    h, w, budget = 5, 4, 40
    x0 = _grid(rng, 2, h, w, 64, 192)  # steps of 51 levels never clip
    wts = 0.1 * rng.standard_normal((2, h * w * 3))  # logit margin ~10 (p not saturated), steps ~0.02
    box = BlackBox(linear_softmax(wts, np.array([10.0, 0.0])))
    key = jax.random.key(7)
    result = bb.simba(box, x0, basis="pixel", eps=0.2, max_queries=budget, key=key)
    orders = [bb.direction_order(key, (h, w), "pixel")] * 2  # one key is shared by every image
    g = wts[0] - wts[1]
    for i in range(2):
        used, expected = 1, np.round(x0[i].reshape(-1) * 255)
        for c in orders[i]:
            if used + 1 > budget:
                break
            used += 1
            if g[c] < 0:
                expected[c] += 51
            elif used + 1 <= budget:
                used += 1
                expected[c] -= 51
        assert result.report.queries[i] == used
        np.testing.assert_array_equal(result.images[i].reshape(-1), (expected / 255).astype(np.float32))
    assert result.report.queries.sum() == box.images and not result.report.success.any()
    assert (result.report.extra["accepted"] == result.report.steps).all()


def test_dct_simba_trace_is_the_analytic_probability_on_a_linear_model():
    """p(label) after t accepted DCT steps = sigmoid(margin0 - eps * sum |g . q_t|)."""
    rng = np.random.default_rng(2)
    h, w = 8, 8
    x0 = _grid(rng, 1, h, w, 100, 156)
    wts = rng.standard_normal((2, h * w * 3)) * 0.5
    b = np.array([-(wts[0] - wts[1]) @ x0.reshape(-1) + 3.0, 0.0])  # margin 3
    result = bb.simba(BlackBox(linear_softmax(wts, b)), x0, basis="dct", eps=0.2, max_queries=60,
                      key=jax.random.key(0))
    order = bb.direction_order(jax.random.key(0), (h, w), "dct")
    gq = bb.basis_images(order, (h, w), "dct").reshape(len(order), -1) @ (wts[0] - wts[1])
    trace = result.report.extra["trace"][:, 0]
    steps = len(trace) - 1
    assert steps == result.report.steps[0] == result.report.extra["accepted"][0]
    margin = 3.0 - 0.2 * np.concatenate([[0], np.cumsum(np.abs(gq[:steps]))])
    np.testing.assert_allclose(trace, 1 / (1 + np.exp(-margin)), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- black box only, budgets, honesty

def test_the_black_box_refuses_gradients_and_simba_still_works(tiny2):
    box = BlackBox(adv.proba_fn(tiny2))
    x = _grid(np.random.default_rng(0), 3, 16, 16)
    with pytest.raises(Exception):  # the wrapper cannot be differentiated ...
        jax.grad(lambda z: jnp.sum(box(z)))(jnp.asarray(x))
    box.calls = box.images = 0
    result = bb.simba(box, x, basis="dct", max_queries=400, key=jax.random.key(0))
    assert result.report.success.all(), result.report.records()  # ... and SimBA needs none
    assert box.images == result.report.queries.sum() and box.calls == result.report.extra["calls"]


@pytest.mark.parametrize("basis", ["pixel", "dct"])
@pytest.mark.parametrize("both_signs", [False, True])
@pytest.mark.parametrize("budget", [2, 3, 8, 60])
def test_queries_are_counted_exactly_and_never_exceed_the_budget(tiny2, basis, both_signs, budget):
    rng = np.random.default_rng(budget)
    # off-grid originals (the final rounding needs its own query) and 8-bit ones
    x = np.concatenate([rng.uniform(0, 1, (2, 12, 20, 3)), _grid(rng, 2, 12, 20)]).astype(np.float32)
    top = np.asarray(adv.proba_fn(tiny2)(x)).argmax(1)
    for target in (None, np.where(top == 1, 0, 1)):  # a target that is not already on top
        box = BlackBox(adv.proba_fn(tiny2))
        result = bb.simba(box, x, basis=basis, target=target, max_queries=budget, both_signs=both_signs,
                          key=jax.random.key(budget))
        q = result.report.queries
        assert (q >= 1).all() and (q <= budget).all(), q
        assert q.sum() == box.images
        assert result.report.extra["calls"] == box.calls
        _assert_honest(result, x, adv.proba_fn(tiny2), target)


def _assert_honest(result, x0, predict, target=None):
    """8-bit images in [0, 1]; success, classes and norms equal a fresh re-prediction."""
    images, report = result.images, result.report
    np.testing.assert_array_equal(images, np.round(images * 255).astype(np.float32) / np.float32(255))
    assert images.min() >= 0 and images.max() <= 1
    p = np.asarray(predict(images))
    expected = p.argmax(1) == target if target is not None else p.argmax(1) != report.label
    np.testing.assert_array_equal(report.success, expected)
    np.testing.assert_array_equal(report.final_class, p.argmax(1))
    np.testing.assert_allclose(report.final_confidence, p.max(1), rtol=1e-5)
    l2, linf = adv.perturbation_norms(x0, images)
    np.testing.assert_allclose(report.l2, l2)
    np.testing.assert_allclose(report.linf, linf)


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_targeted_success_and_monotone_probability(tiny2, basis):
    x = _grid(np.random.default_rng(3), 3, 16, 16)
    predict = adv.proba_fn(tiny2)
    top = np.asarray(predict(x)).argmax(1)
    assert set(top) <= {0, 1}
    target = 1 - top  # the other of the two close classes, per image
    result = bb.simba(BlackBox(predict), x, basis=basis, target=target, max_queries=600, key=jax.random.key(1))
    assert result.report.success.all(), result.report.records()
    assert (result.report.final_class == target).all() and (result.report.queries < 600).all()
    _assert_honest(result, x, predict, target=target)
    trace = result.report.extra["trace"]  # p(target) of the accepted state: only ever rises
    assert (np.diff(trace, axis=0) >= 0).all() and (trace[-1] > trace[0]).all()
    untargeted = bb.simba(BlackBox(predict), x, basis=basis, max_queries=600, key=jax.random.key(1))
    trace = untargeted.report.extra["trace"]  # p(label): only ever falls
    assert (np.diff(trace, axis=0) <= 0).all() and (trace[-1] < trace[0]).all()
    assert untargeted.report.success.all()
    _assert_honest(untargeted, x, predict)


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_l2_budget_is_respected(tiny2, basis):
    x = _grid(np.random.default_rng(4), 3, 16, 16)
    predict = adv.proba_fn(tiny2)
    free = bb.simba(predict, x, basis=basis, max_queries=300, key=jax.random.key(2))
    budget = 0.6
    assert (free.report.l2 > budget).any()  # the budget binds
    result = bb.simba(predict, x, basis=basis, max_queries=300, max_l2=budget, key=jax.random.key(2))
    assert (result.report.l2 <= budget * (1 + 1e-6)).all(), result.report.l2
    assert result.report.eps == budget
    _assert_honest(result, x, predict)


def test_batch_equals_single_runs(tiny2):
    x = _grid(np.random.default_rng(5), 3, 16, 16)
    predict = adv.proba_fn(tiny2)
    keys = jax.random.split(jax.random.key(9), 3)
    batch = bb.simba(predict, x, basis="dct", max_queries=200, key=keys)
    for i in range(3):
        one = bb.simba(predict, x[i:i + 1], basis="dct", max_queries=200, key=keys[i:i + 1])
        np.testing.assert_array_equal(one.images[0], batch.images[i])
        assert one.report.queries[0] == batch.report.queries[i]


def test_one_shared_key_batch_equals_single_runs(tiny2):
    """One key is shared by every image (not split by the batch size): image i's run in a batch
    equals its run alone with the same key."""
    x = _grid(np.random.default_rng(12), 3, 12, 16)  # non-square
    predict = adv.proba_fn(tiny2)
    batch = bb.simba(predict, x, basis="pixel", max_queries=60, key=jax.random.key(4))
    for i in range(3):
        one = bb.simba(predict, x[i:i + 1], basis="pixel", max_queries=60, key=jax.random.key(4))
        np.testing.assert_array_equal(one.images[0], batch.images[i])
        assert one.report.queries[0] == batch.report.queries[i]


def test_a_model_is_queried_through_its_probabilities(tiny2):
    """``simba(model, ...)`` (a Model, or an apply_fn made one) equals ``simba(proba_fn(model), ...)``."""
    from tests.user_models import apply_fn_model
    x = _grid(np.random.default_rng(13), 2, 16, 16)
    for model in (tiny2, apply_fn_model()):
        via_model = bb.simba(model, x, max_queries=40, key=jax.random.key(1))
        via_proba = bb.simba(adv.proba_fn(model), x, max_queries=40, key=jax.random.key(1))
        np.testing.assert_array_equal(via_model.images, via_proba.images)
        np.testing.assert_array_equal(via_model.report.queries, via_proba.report.queries)
        assert via_model.report.model == model.name
        _assert_honest(via_model, x, adv.proba_fn(model))
    with pytest.raises(JaxvizError, match="params apply to a jaxviz Model"):
        bb.simba(adv.proba_fn(tiny2), x, params=tiny2.params)


def test_chunks_and_padding_change_calls_not_results(tiny2):
    x = _grid(np.random.default_rng(6), 5, 16, 16)
    predict = adv.proba_fn(tiny2)
    plain = bb.simba(predict, x, max_queries=100, key=jax.random.key(0))
    box = BlackBox(predict)
    chunked = bb.simba(box, x, max_queries=100, key=jax.random.key(0), chunk=2, pad=True)
    np.testing.assert_array_equal(plain.images, chunked.images)
    np.testing.assert_array_equal(plain.report.queries, chunked.report.queries)
    assert set(box.batches) <= {1, 2} and box.images >= chunked.report.queries.sum()
    box = BlackBox(predict)
    padded = bb.simba(box, x, max_queries=100, key=jax.random.key(0), pad=True)
    np.testing.assert_array_equal(plain.images, padded.images)
    np.testing.assert_array_equal(plain.report.queries, padded.report.queries)  # copies are no queries
    assert set(box.batches) <= {1, 2, 4, 8} and 8 in box.batches
    assert padded.report.extra["images_sent"] == box.images > padded.report.queries.sum()


def test_raw_uint32_keys_work_and_equal_typed_keys(tiny2):
    """jax.random.PRNGKey (raw uint32) keys, one or N, give the runs of the same typed keys."""
    x = _grid(np.random.default_rng(8), 2, 8, 8)
    predict = adv.proba_fn(tiny2)
    raw = jax.random.PRNGKey(3)
    typed = bb.simba(predict, x, max_queries=20, key=jax.random.wrap_key_data(raw))
    for key in (raw, jax.random.split(raw, 2)):
        expected = typed if key.ndim == 1 else bb.simba(
            predict, x, max_queries=20, key=jax.random.wrap_key_data(key))
        run = bb.simba(predict, x, max_queries=20, key=key)
        np.testing.assert_array_equal(run.images, expected.images)
        np.testing.assert_array_equal(run.report.queries, expected.report.queries)
    np.testing.assert_array_equal(bb.direction_order(raw, (8, 8), "dct"),
                                  bb.direction_order(jax.random.wrap_key_data(raw), (8, 8), "dct"))


def test_free_directions_do_not_end_the_run_before_the_budget():
    """At the edge of the L2 ball, sub-level pixel steps round back to the current image (no query),
    so directions run out long before the budget: all H*W*3 are tried (not max_queries of them)."""
    rng = np.random.default_rng(2)
    h, w, budget = 4, 5, 20
    x0 = _grid(rng, 1, h, w, 64, 192)
    box = BlackBox(linear_softmax(0.1 * rng.standard_normal((2, h * w * 3)), np.array([10.0, 0.0])))
    result = bb.simba(box, x0, basis="pixel", eps=0.6 / 255, max_queries=budget, max_l2=np.sqrt(3) / 255,
                      key=jax.random.key(0))
    report = result.report
    assert report.extra["accepted"][0] == 3  # three 1-level steps fill the ball
    assert report.steps[0] == h * w * 3 > budget and report.queries[0] < budget
    assert report.queries.sum() == box.images
    np.testing.assert_allclose(report.l2, np.sqrt(3) / 255, rtol=1e-6)


def test_sub_level_pixel_steps_and_budgets_are_refused():
    """A pixel step under half a grey level (or an L2 budget under one) can never change an 8-bit image."""
    box = BlackBox(linear_softmax(np.zeros((3, 48)), np.zeros(3)))
    x = np.full((1, 4, 4, 3), 0.5, np.float32)
    with pytest.raises(JaxvizError, match="half a grey level"):
        bb.simba(box, x, basis="pixel", eps=0.001)
    with pytest.raises(JaxvizError, match="one grey level"):
        bb.simba(box, x, max_l2=0.5 / 255)
    assert box.calls == 0  # refused before any query
    bb.simba(box, x, basis="dct", eps=0.001, max_queries=3)  # DCT candidates are not rounded per step
    bb.simba(box, x, basis="pixel", eps=0.5 / 255, max_queries=3, max_l2=1 / 255)


def test_target_already_on_top_is_refused_per_image():
    """A target that the black box already predicts for the original is no attack (it would report
    success at 1 query and L2 = 0): a JaxvizError naming the image."""
    wts = np.zeros((3, 48))
    wts[0, 0] = wts[1, 1] = 10.0  # class 0 wins when red(0, 0) is bright, class 1 when green is
    x = np.zeros((2, 4, 4, 3), np.float32)
    x[0, 0, 0, 0] = x[1, 0, 0, 1] = 1.0
    predict = linear_softmax(wts, np.zeros(3))
    assert (np.asarray(predict(x)).argmax(1) == [0, 1]).all()
    with pytest.raises(JaxvizError, match="image 1: target class 1 is already"):
        bb.simba(predict, x, target=1)
    with pytest.raises(JaxvizError, match="image 0: target class 0 is already"):
        bb.simba(predict, x, target=[0, 2])
    result = bb.simba(predict, x, target=[2, 2], max_queries=5)  # a real target is attacked
    assert (result.report.queries > 1).all()


def test_bad_arguments():
    box = BlackBox(linear_softmax(np.zeros((3, 48)), np.zeros(3)))
    x = np.zeros((1, 4, 4, 3), np.float32)
    for kwargs, message in [(dict(max_queries=1), "max_queries"), (dict(eps=0), "eps"),
                            (dict(basis="wavelet"), "basis"), (dict(max_l2=-1.0), "max_l2"),
                            (dict(target=3), "target"), (dict(label=[7]), "label"),
                            (dict(label=[0, 1]), "label"), (dict(target=1.5), "target")]:
        with pytest.raises(JaxvizError, match=message):
            bb.simba(box, x, **kwargs)
    with pytest.raises(JaxvizError, match="shape"):
        bb.simba(box, x[0])
    with pytest.raises(JaxvizError, match="predict_proba must return"):
        bb.simba(lambda z: np.zeros((1, 3)), np.zeros((2, 4, 4, 3), np.float32))


# ---------------------------------------------------------------- the real SqueezeNet

def test_simba_fools_squeezenet_at_112_px(squeezenet):
    x = load_images(["chelsea", "coffee"], 112)
    predict = adv.proba_fn(squeezenet)
    box = BlackBox(predict)
    result = bb.simba(box, x, basis="dct", max_queries=1000, key=jax.random.key(0), pad=True)
    report = result.report
    assert report.success.all(), report.records()
    assert (report.queries <= 1000).all() and (report.label == [285, 967]).all()  # Egyptian cat, espresso
    assert (report.l2 < 5).all()
    _assert_honest(result, x, predict)


# ---------------------------------------------------------------- command line

def test_cli_simba_saved_file_is_what_was_assessed(squeezenet, tmp_path, capsys, monkeypatch, request):
    from jaxviz import techniques
    from jaxviz.cli import main
    calls = []
    real = bb.simba

    @functools.wraps(real)  # the registry reads the signature's defaults through __wrapped__
    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(bb, "simba", spy)
    # the registry caches the functions it has imported: after an earlier test ran it (test_techniques)
    # the CLI called the cached real simba, not the spy; cleared now, and after the test (no spy left)
    techniques._load.cache_clear()
    request.addfinalizer(techniques._load.cache_clear)
    out = tmp_path / "adv.png"
    code = main(["adversarial", "chelsea", "--model", "squeezenet1_1", "--method", "simba", "--queries", "800",
                 "--basis", "dct", "--out", str(out), "--json"])
    assert code == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adv.png"]
    reread = load_image(out)[None]
    p = np.asarray(adv.proba_fn(squeezenet)(reread))[0]
    assert row["success"] and row["success"] == (p.argmax() != 285)
    assert row["final"]["index"] == p.argmax() and row["final"]["confidence"] == pytest.approx(p.max(), rel=1e-4)
    assert 1 < row["queries"] <= 800 and row["method"] == "simba-dct"
    assert calls[0].get("pad")  # the jitted model sees a few batch shapes (padding is no query)
    l2, linf = adv.perturbation_norms(load_images(["chelsea"], 224), reread)
    assert row["l2"] == pytest.approx(l2[0]) and row["linf"] == pytest.approx(linf[0])


@pytest.mark.parametrize("argv, message", [
    (["--queries", "0"], "--queries"),
    (["--basis", "wavelet"], "unknown basis"),
    (["--step", "2"], "--step"),
    (["--steps", "10"], "--queries"),
    (["--confidence", "0.9"], "simba"),
    (["--eps", "8/0"], "division by zero"),
    (["--target", "285"], "already the black box's top class"),  # chelsea is an Egyptian cat (285)
])
def test_cli_simba_bad_input_is_one_line_exit_2(squeezenet, argv, message, capsys, tmp_path, monkeypatch):
    from jaxviz.cli import main
    monkeypatch.chdir(tmp_path)
    code = main(["adversarial", "chelsea", "--model", "squeezenet1_1", "--method", "simba", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_queries_and_basis_need_simba(capsys, squeezenet):
    from jaxviz.cli import main
    code = main(["adversarial", "chelsea", "--model", "squeezenet1_1", "--queries", "100"])
    assert code == 2 and "--method simba" in capsys.readouterr().err


def test_numpy_rounding_is_quantize_8bit(rng):
    assert bb._LEVELS is adv._LEVELS  # one table of the 8-bit levels, not a copy
    x = rng.uniform(-0.1, 1.1, (2, 7, 9, 3)).astype(np.float32)
    x[0, 0, 0] = [0.5 / 255, 1.5 / 255, 254.5 / 255]  # ties
    np.testing.assert_array_equal(bb._quantize(x, x, None),
                                  np.asarray(adv.quantize_8bit(x, x, norm="l2", eps=None)))
