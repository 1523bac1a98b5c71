"""Adversarial examples: exact FGSM, projections and 8-bit rounding inside the budget, reports that
agree with re-predictions (also of saved PNGs), batch == single runs (per-image and shared keys),
the accelerated model attacks alike, the compiled step is reused, and real SqueezeNet attacks.
(Any-model truth checks: tests/test_optimise_any_model.py.)"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import adversarial as adv
from jaxviz.errors import JaxvizError
from jaxviz.images import load_image, load_images, save_image
from jaxviz.testing import assert_grads_close, finite_difference_grad, random_indices, x64


def _grid_images(rng, n=3, h=16, w=16):
    """8-bit images (on the 1/255 grid) with saturated pixels, so clipping at 0 and 1 matters."""
    x = rng.integers(0, 256, size=(n, h, w, 3)).astype(np.float32) / 255.0
    x[:, :3] = 0.0
    x[:, -3:] = 1.0
    return x


# ---------------------------------------------------------------- parsing and small parts

@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.03", 0.03), (".5", 0.5), ("1e-2", 0.01),
                                         (" 2 / 255 ", 2 / 255), (0.25, 0.25)])
def test_parse_amount(text, value):
    assert adv.parse_amount(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["8/0", "abc", "-1", "0", "1/", "nan", "8/255/2", "inf"])
def test_parse_amount_rejects(text):
    with pytest.raises(JaxvizError):
        adv.parse_amount(text)


def test_unknown_method_and_bad_arguments(tiny_model, rng):
    x = _grid_images(rng, 1)
    with pytest.raises(JaxvizError, match="unknown attack method"):
        adv.attack(tiny_model, None, x, method="cw")
    with pytest.raises(JaxvizError, match="target class 7 is out of range for 5 classes"):
        adv.attack(tiny_model, None, x, method="ifgsm", target=7)
    with pytest.raises(JaxvizError, match="must be integers"):  # was truncated to class 1
        adv.attack(tiny_model, None, x, method="ifgsm", target=1.5)
    with pytest.raises(JaxvizError, match="must be integers"):
        adv.attack(tiny_model, None, x, method="ifgsm", label=[0.5])
    # negative from the end, as in attribution: -1 is the last class
    a = adv.attack(tiny_model, None, x, method="ifgsm", target=-1, steps=2, quantize=False)
    b = adv.attack(tiny_model, None, x, method="ifgsm", target=4, steps=2, quantize=False)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.report.target.tolist() == [4]
    with pytest.raises(JaxvizError, match="eps must be positive"):
        adv.attack(tiny_model, None, x, method="ifgsm", eps=-0.1)
    with pytest.raises(JaxvizError, match="shape"):
        adv.attack(tiny_model, None, x[0], method="ifgsm")


def test_images_outside_0_1_are_refused_when_concrete(tiny_model, rng):
    """The attacks clip to [0, 1]: preprocessed (or NaN) images would come back far outside the
    eps-ball, so concrete ones are refused; traced ones (inside jit) are not inspected."""
    x = _grid_images(rng, 2)
    cls = np.array([1, 2])
    bad = {"preprocessed": np.asarray(tiny_model.preprocess(x)), "times 3": x * 3, "nan": np.where(x > 0.5, np.nan, x)}
    for name, images in bad.items():
        for run in (lambda: adv.pgd(tiny_model, None, images, eps=0.1, steps=1),
                    lambda: adv.attack(tiny_model, None, images, method="fgsm", eps=0.1),
                    lambda: adv.fgsm(tiny_model, None, images, cls, eps=0.1),
                    lambda: adv.projected_gradient_descent(tiny_model, None, images, cls, eps=0.1, steps=1,
                                                          step=0.05, random_start=False)):
            with pytest.raises(JaxvizError, match=r"images must be RGB in \[0, 1\]"):
                run()
    # in range, and traced: unchecked values, same result as the eager call
    pure = functools.partial(adv.projected_gradient_descent, tiny_model, None, eps=0.1, steps=1, step=0.05,
                             random_start=False)
    np.testing.assert_allclose(jax.jit(pure)(x, cls), pure(x, cls), atol=1e-6)


def test_loss_gradient_matches_finite_differences(tiny_model, rng):
    """The attack loss (preprocessing inside) has the true gradient w.r.t. the [0, 1] image."""
    x = rng.uniform(0.2, 0.8, size=(2, 16, 16, 3))
    cls = jnp.asarray([1, 3])
    with x64():
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), tiny_model.params)
        for targeted, kind in [(True, "ce"), (False, "ce"), (True, "logit")]:
            f = lambda z: adv._loss_fn(tiny_model, params, cls, targeted, kind)(jnp.asarray(z)).sum()
            numeric = finite_difference_grad(f, x, indices=random_indices(x.shape, 25, seed=1))
            assert_grads_close(jax.grad(f)(jnp.asarray(x)), numeric, rtol=1e-4, atol=1e-8)


def test_fgsm_is_eps_sign_gradient_clipped(tiny_model, rng):
    x = _grid_images(rng, 3)
    labels, targets = np.array([0, 2, 4]), np.array([1, 1, 3])
    eps = 3 / 255

    def ce_grad(cls):
        def ce(z):
            logits = tiny_model.apply(tiny_model.params, tiny_model.preprocess(z))
            return -jax.nn.log_softmax(logits)[jnp.arange(3), cls].sum()
        return np.asarray(jax.grad(ce)(jnp.asarray(x)))

    expected_untargeted = np.clip(x + eps * np.sign(ce_grad(labels)), 0, 1)
    expected_targeted = np.clip(x - eps * np.sign(ce_grad(targets)), 0, 1)
    np.testing.assert_array_equal(adv.fgsm(tiny_model, tiny_model.params, x, labels, eps=eps), expected_untargeted)
    np.testing.assert_array_equal(adv.fgsm(tiny_model, tiny_model.params, x, targets, eps=eps, targeted=True),
                                  expected_targeted)
    # clipping happened somewhere, and the change is exactly eps elsewhere
    change = np.abs(expected_untargeted - x)
    assert (change < eps - 1e-7).any() and np.isclose(change, eps, atol=1e-7).mean() > 0.5


def test_gradient_sign_is_the_sign_of_the_true_ce_gradient(tiny_model, rng):
    """float64 central differences of CE(label) (untargeted: +sign) and CE(target) (targeted: -sign)
    at pixels whose gradient is clearly non-zero."""
    x = rng.uniform(0.2, 0.8, size=(2, 16, 20, 3))  # non-square
    cls = np.array([1, 3])
    with x64():
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), tiny_model.params)
        for targeted in (False, True):
            def ce(z):
                logits = tiny_model.apply(params, tiny_model.preprocess(jnp.asarray(z)))
                return -jax.nn.log_softmax(logits)[jnp.arange(2), cls].sum()
            idx = random_indices(x.shape, 40, seed=2)
            numeric = finite_difference_grad(lambda z: float(ce(z)), x, indices=idx).reshape(-1)[idx]
            got = np.asarray(adv.gradient_sign(tiny_model, params, x, cls, targeted=targeted)).reshape(-1)[idx]
            clear = np.abs(numeric) > 1e-3 * np.abs(numeric).max()
            assert clear.sum() >= 20
            np.testing.assert_array_equal(got[clear], (-1 if targeted else 1) * np.sign(numeric[clear]))


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
def test_gradient_sign_serves_every_eps_and_batch_equals_single(any_model, rng):
    """fgsm(eps) == clip(x + eps * gradient_sign) for several eps (one gradient for a sweep), the
    direction is in {-1, 0, 1}, and image i's direction does not depend on its batch."""
    x = _grid_images(rng, 3, 16, 20)
    labels = np.array([0, 1, 2]) % np.asarray(adv.proba_fn(any_model)(x)).shape[-1]
    for targeted in (False, True):
        d = np.asarray(adv.gradient_sign(any_model, None, x, labels, targeted=targeted))
        assert set(np.unique(d)) <= {-1.0, 0.0, 1.0} and (d != 0).mean() > 0.5
        for eps in (1 / 255, 4 / 255, 16 / 255):
            got = np.asarray(adv.fgsm(any_model, None, x, labels, eps=eps, targeted=targeted))
            np.testing.assert_array_equal(got, np.clip(x + eps * d, 0.0, 1.0))
        single = np.asarray(adv.gradient_sign(any_model, None, x[1:2], labels[1:2], targeted=targeted))
        clear = np.abs(single[0]) > 0  # a sign may flip where the gradient rounds to ~0
        assert (single[0] == d[1])[clear].mean() > 0.999


def test_seed_method_first_step_is_normalised_target_logit_ascent(tiny_model, rng):
    x = rng.uniform(0.2, 0.8, size=(2, 16, 16, 3)).astype(np.float32)
    target, eta = np.array([3, 0]), 0.05
    logit = lambda z: tiny_model.apply(tiny_model.params, tiny_model.preprocess(z))[jnp.arange(2), target].sum()
    g = np.asarray(jax.grad(logit)(jnp.asarray(x)))
    expected = x + eta * g / np.linalg.norm(g.reshape(2, -1), axis=1)[:, None, None, None]
    result = adv.attack(tiny_model, None, x, method="seed", target=target, step=eta, steps=1,
                        early_stop=False, quantize=False)
    np.testing.assert_allclose(result.images, expected, atol=1e-6)
    np.testing.assert_allclose(result.report.l2, eta, rtol=1e-4)  # the step has L2 length eta


@pytest.mark.parametrize("norm, eps", [("linf", 2.6 / 255), ("l2", 0.3)])
def test_project_and_quantize_stay_in_ball_and_range(norm, eps, rng):
    x0 = _grid_images(rng, 4)
    x = x0 + rng.normal(0, 0.05, size=x0.shape).astype(np.float32)
    p = np.asarray(adv.project(jnp.asarray(x), jnp.asarray(x0), norm=norm, eps=eps))
    q = np.asarray(adv.quantize_8bit(p, x0, norm=norm, eps=eps))
    for z in (p, q):
        assert z.min() >= 0 and z.max() <= 1
        l2, linf = adv.perturbation_norms(x0, z)
        assert ((linf if norm == "linf" else l2) <= eps * (1 + 1e-5)).all()
    np.testing.assert_allclose(q * 255, np.round(q * 255), atol=1e-4)  # on the 8-bit grid
    # a point already inside the ball and box is left alone; an 8-bit one is not re-rounded
    inside = np.clip(x0 + 0.2 * (p - x0), 0, 1)
    np.testing.assert_allclose(adv.project(jnp.asarray(inside), jnp.asarray(x0), norm=norm, eps=eps), inside,
                               atol=1e-7)
    np.testing.assert_array_equal(adv.quantize_8bit(q, x0, norm=norm, eps=eps), q)
    if norm == "linf":  # the L-inf projection is the exact Euclidean projection onto ball ∩ box
        np.testing.assert_allclose(p, np.clip(np.clip(x, x0 - eps, x0 + eps), 0, 1), atol=1e-7)


def test_normalised_step_has_length_lr_per_image(rng):
    g = jnp.asarray(rng.normal(size=(3, 5, 4, 3)) * np.array([1e-3, 1.0, 50.0])[:, None, None, None])
    opt = adv.step_transform("normalized", 0.7)
    updates, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(updates).reshape(3, -1), axis=1), 0.7, rtol=1e-5)
    opt = adv.step_transform("sign", 0.1)
    updates, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(updates, -0.1 * np.sign(g))


def test_assess_counts_from_predictions():
    """Success, classes, confidences and norms from a hand-made probability function."""
    probs = {0.0: [0.7, 0.2, 0.1], 1.0: [0.1, 0.3, 0.6], 2.0: [0.5, 0.45, 0.05]}
    predict = lambda images: jnp.asarray([probs[float(im[0, 0, 0])] for im in np.asarray(images)])
    originals = np.zeros((3, 2, 2, 3), np.float32)
    adversarial = np.zeros_like(originals)
    adversarial[0, 0, 0, 0] = 1.0          # -> probs[1]: class 2 with 0.6
    adversarial[1, 0, 0, 0] = 2.0          # -> probs[2]: class 0 with 0.5
    adversarial[1, 1, 1, 1] = 0.5
    adversarial[2, 0, 0, 0] = 1.0
    report = adv.assess(predict, originals, adversarial, label=[0, 0, 0], target=[2, -1, 2])
    np.testing.assert_array_equal(report.success, [True, False, True])
    np.testing.assert_array_equal(report.final_class, [2, 0, 2])
    np.testing.assert_allclose(report.final_confidence, [0.6, 0.5, 0.6])
    np.testing.assert_allclose(report.label_confidence, [0.7, 0.7, 0.7])
    np.testing.assert_allclose(report.l2, [1.0, np.sqrt(4.25), 1.0])
    np.testing.assert_allclose(report.linf, [1.0, 2.0, 1.0])
    strict = adv.assess(predict, originals, adversarial, label=[0, 0, 0], target=[2, -1, 2], confidence=0.65)
    np.testing.assert_array_equal(strict.success, [False, False, False])
    rows = report.records(["a", "b", "c"])
    assert rows[0]["target"] == {"index": 2, "label": "c", "confidence": pytest.approx(0.6)}
    assert rows[1]["target"] is None and rows[1]["final"]["label"] == "a"
    json.dumps(rows)


@pytest.mark.parametrize("method", ["pgd-linf", "pgd-l2", "seed"])
def test_batch_equals_single_runs(tiny_model, rng, method):
    """Independent per-image optimisation: a batch run == N single runs with the same per-image keys,
    including per-image early stopping (images stop at different steps)."""
    x = _grid_images(rng, 3)
    targets = np.array([1, 2, 4])
    keys = jax.random.split(jax.random.key(3), 3)
    kw = dict(method=method, eps=0.5 if method == "pgd-l2" else (None if method == "seed" else 8 / 255),
              steps=12, quantize=False)
    batch = adv.attack(tiny_model, None, x, target=targets, key=keys, **kw)
    shared = adv.attack(tiny_model, None, x, target=targets, key=jax.random.key(5), **kw)  # one key for all
    for i in range(3):
        single = adv.attack(tiny_model, None, x[i:i + 1], target=targets[i:i + 1], key=keys[i:i + 1], **kw)
        np.testing.assert_allclose(single.images[0], batch.images[i], atol=2e-6)
        assert single.report.steps[0] == batch.report.steps[i]
        assert single.report.success[0] == batch.report.success[i]
        alone = adv.attack(tiny_model, None, x[i:i + 1], target=targets[i:i + 1], key=jax.random.key(5), **kw)
        np.testing.assert_allclose(alone.images[0], shared.images[i], atol=2e-6)
        assert alone.report.steps[0] == shared.report.steps[i]


@pytest.mark.parametrize("any_model,method", [("bundled", "pgd-linf"), ("linen", "pgd-l2"), ("nnx", "ifgsm"),
                                              ("nnx", "pgd-linf")], indirect=["any_model"])
def test_pure_pgd_equals_the_host_loop_and_runs_under_jit_and_vmap(any_model, rng, method):
    """``projected_gradient_descent`` (fori_loop) == ``attack(early_stop=False, quantize=False)``
    (the engine's host loop), jitted and vmapped over eps; inside a jitted training-style gradient."""
    spec = adv.METHODS[method]
    x = _grid_images(rng, 2, 16, 20)
    labels = jnp.asarray([1, 3])
    eps = {"linf": 6 / 255, "l2": 0.5}[spec.norm]
    keys = jax.random.split(jax.random.key(2), 2)
    host = adv.attack(any_model, None, x, method=method, label=labels, eps=eps, steps=5, early_stop=False,
                      quantize=False, key=keys).images
    pure = lambda p, x, e: adv.projected_gradient_descent(  # noqa: E731
        any_model, p, x, labels, eps=e, steps=5, norm=spec.norm, random_start=spec.random_start, key=keys)
    eager = np.asarray(pure(any_model.params, x, eps))
    jitted = np.asarray(jax.jit(pure)(any_model.params, x, eps))
    for out in (eager, jitted):
        # sign steps are discrete: a gradient component rounding across 0 may flip one step somewhere
        assert np.mean(np.abs(out - host) <= 1e-6) > 0.999
        l2, linf = adv.perturbation_norms(x, out)
        assert ((linf if spec.norm == "linf" else l2) <= eps * (1 + 1e-5)).all() and out.min() >= 0 and out.max() <= 1
    loss = lambda z: float(adv.attack_loss(any_model.apply(any_model.params, any_model.preprocess(z)), labels,  # noqa: E731
                                           targeted=False).sum())
    assert loss(jitted) < loss(x)  # the attack loss is minimised: the labels' cross-entropy went up
    epsilons = jnp.asarray([eps / 2, eps])
    swept = jax.vmap(lambda e: pure(any_model.params, x, e))(epsilons)
    np.testing.assert_allclose(swept[1], jitted, atol=1e-5)
    norms = [adv.perturbation_norms(x, np.asarray(z))[0 if spec.norm == "l2" else 1] for z in swept]
    assert (norms[0] <= eps / 2 * (1 + 1e-5)).all()

    def robust_loss(params):  # adversarial training: the loss on PGD images, its gradient w.r.t. the params
        z = jax.lax.stop_gradient(pure(params, x, eps))
        return adv.attack_loss(any_model.apply(params, any_model.preprocess(z)), labels, targeted=True).sum()
    grads = jax.jit(jax.grad(robust_loss))(any_model.params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_host_loop_techniques_under_a_transformation_are_one_clear_error(tiny_model, rng):
    import jaxviz
    x = _grid_images(rng, 2)
    for fn in (lambda x: jaxviz.pgd(tiny_model, None, x, steps=2).images,
               lambda x: jaxviz.class_visualization(tiny_model, None, [1, 2], steps=1, init=x).images,
               lambda x: jaxviz.invert(tiny_model, None, x, tiny_model.feature_layer, steps=1).images,
               lambda x: jaxviz.deepdream(tiny_model, None, x, tiny_model.feature_layer, steps=1, octaves=1)):
        with pytest.raises(JaxvizError, match="host.*cannot run under jax.jit"):
            jax.jit(fn)(x)


@pytest.mark.parametrize("method", list(adv.METHODS))
@pytest.mark.parametrize("targeted", [False, True])
def test_every_method_returns_8bit_images_in_budget_and_honest_reports(tiny_model, rng, method, targeted):
    x = _grid_images(rng, 2, 16, 20)  # non-square
    spec = adv.METHODS[method]
    eps = {"linf": 5.5 / 255, "l2": 0.4}[spec.norm]  # not multiples of 1/255: rounding must respect them
    result = adv.attack(tiny_model, None, x, method=method, target=[3, 1] if targeted else None, eps=eps,
                        steps=6, key=jax.random.key(1))
    z = result.images
    assert z.dtype == np.float32 and z.min() >= 0 and z.max() <= 1
    np.testing.assert_array_equal(z, np.round(z * 255).astype(np.uint8) / np.float32(255))  # PNG-exact
    l2, linf = adv.perturbation_norms(x, z)
    assert ((linf if spec.norm == "linf" else l2) <= eps * (1 + 1e-5)).all()
    again = adv.assess(adv.proba_fn(tiny_model), x, z, label=result.report.label, target=result.report.target)
    np.testing.assert_array_equal(again.success, result.report.success)
    np.testing.assert_array_equal(again.final_class, result.report.final_class)
    assert (result.report.steps <= 6 + 5 * 3).all() and (result.report.steps >= 0).all()  # 0: already there


def test_an_image_already_at_its_goal_comes_back_unchanged_in_0_steps(tiny_model, rng):
    """Early stop: a targeted attack whose target is already the prediction (or an untargeted one
    whose given label is already wrong) returns the original image, not its random start."""
    x = _grid_images(rng, 2)
    pred = np.asarray(tiny_model.apply(tiny_model.params, tiny_model.preprocess(x))).argmax(-1)
    other = (pred + 1) % 5
    target = np.array([pred[0], other[1]])  # image 0: already there; image 1: must move
    result = adv.pgd(tiny_model, None, x, target=target, eps=8 / 255, steps=5)
    np.testing.assert_array_equal(result.images[0], x[0])
    assert result.report.steps[0] == 0 and bool(result.report.success[0])
    assert result.report.steps[1] > 0 and not np.array_equal(result.images[1], x[1])
    result = adv.attack(tiny_model, None, x, method="pgd-l2", label=other, eps=0.5, steps=5)
    np.testing.assert_array_equal(result.images, x)
    assert list(result.report.steps) == [0, 0] and result.report.success.all()


def test_transfer_to_the_same_model_repeats_the_white_box_result(tiny_model, rng):
    x = _grid_images(rng, 3)
    result = adv.attack(tiny_model, None, x, method="ifgsm", eps=8 / 255)
    again = adv.transfer_report(result.images, x, tiny_model, source=result.report)
    np.testing.assert_array_equal(again.success, result.report.success)
    np.testing.assert_allclose(again.l2, result.report.l2)
    assert again.method == "ifgsm from tiny"


def test_difference_image_and_triplet():
    a = np.full((4, 5, 3), 0.5, np.float32)
    b = a.copy()
    b[0, 0, 0] += 0.01
    d = adv.difference_image(a, b)
    assert d[0, 0, 0] == pytest.approx(0.6) and (d[1:] == 0.5).all()
    assert adv.triplet(a, b, pad=2).shape == (4, 3 * 5 + 4, 3)


# ---------------------------------------------------------------- the real SqueezeNet (224 px)

SAMPLES = ["chelsea", "coffee", "astronaut", "rocket"]


@pytest.fixture(scope="module")
def sample_images():
    x = load_images(SAMPLES, 224)
    return np.concatenate([x, x[:, :, ::-1]])  # + horizontal flips: 8 images


def test_targeted_pgd_linf_2_over_255_on_squeezenet(squeezenet, sample_images, tmp_path):
    targets = np.random.default_rng(5).integers(0, 1000, len(sample_images))
    eps = 2 / 255
    result = adv.attack(squeezenet, None, sample_images, method="pgd-linf", target=targets, eps=eps,
                        key=jax.random.key(0))
    report = result.report
    assert report.success_rate >= 0.9, report.records()
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert (report.linf <= eps + 1e-6).all()
    # save as 8-bit PNGs, read back: same pixels, same norms, same success on re-prediction
    paths = [tmp_path / f"adv_{i}.png" for i in range(len(result.images))]
    for image, path in zip(result.images, paths):
        save_image(image, path)
    reread = np.stack([load_image(p) for p in paths])
    np.testing.assert_array_equal(reread, result.images)
    l2, linf = adv.perturbation_norms(sample_images, reread)
    np.testing.assert_allclose(report.l2, l2, rtol=1e-9)
    np.testing.assert_allclose(report.linf, linf, rtol=1e-9)
    again = adv.assess(adv.proba_fn(squeezenet), sample_images, reread, label=report.label, target=targets)
    np.testing.assert_array_equal(again.success, report.success)
    np.testing.assert_array_equal(again.final_class[report.success], targets[report.success])


def test_seed_method_fools_squeezenet_on_every_image(squeezenet, sample_images):
    images = sample_images[::2]
    targets = np.random.default_rng(7).integers(0, 1000, len(images))
    result = adv.fooling_images(squeezenet, None, images, targets)
    assert result.report.success.all(), result.report.records()
    np.testing.assert_array_equal(result.report.final_class, targets)
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_pgd_l2_stays_in_the_ball_on_squeezenet(squeezenet, sample_images):
    images = sample_images[1:3]
    result = adv.pgd(squeezenet, None, images, norm="l2", eps=1.0, steps=8)
    assert (result.report.l2 <= 1.0 * (1 + 1e-6)).all()
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.report.success.all(), result.report.records()  # untargeted, L2 1.0


# ---------------------------------------------------------------- command line

def test_cli_end_to_end_saved_files_still_fool(squeezenet, tmp_path, capsys):
    from jaxviz.cli import main
    out = tmp_path / "adv.png"
    code = main(["adversarial", "chelsea", "rocket", "--model", "squeezenet1_1", "--target", "goldfish",
                 "--eps", "2/255", "--out", str(out), "--npy", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adv_0.npy", "adv_0.png", "adv_1.npy", "adv_1.png"]
    originals = load_images(["chelsea", "rocket"], 224)
    reread = np.stack([load_image(tmp_path / f"adv_{i}.png") for i in range(2)])
    np.testing.assert_array_equal(np.stack([np.load(tmp_path / f"adv_{i}.npy") for i in range(2)]), reread)
    probs = np.asarray(adv.proba_fn(squeezenet)(reread))
    l2, linf = adv.perturbation_norms(originals, reread)
    for i, row in enumerate(rows):
        assert row["saved"] == str(tmp_path / f"adv_{i}.png")
        assert row["success"] == (probs[i].argmax() == 1)  # goldfish is class 1
        assert row["success"]
        assert row["final"]["index"] == probs[i].argmax()
        assert row["l2"] == pytest.approx(l2[i]) and row["linf"] == pytest.approx(linf[i])
        assert row["linf_255"] <= 2 + 1e-4 and row["target"]["index"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--eps", "8/0"], "division by zero"),
    (["--method", "deepfool"], "unknown attack method"),
    (["--target", "not a class at all"], "unknown class"),
    (["--eps", "2"], "<= 1"),
    (["--out", "nowhere/adv.png"], "does not exist"),
    (["--out", "adv.jpg"], ".png"),
    (["--npy"], "--npy needs --out"),
])
def test_cli_bad_input_is_one_line_exit_2(squeezenet, argv, message, capsys, tmp_path, monkeypatch):
    from jaxviz.cli import main
    monkeypatch.chdir(tmp_path)
    code = main(["adversarial", "chelsea", "--model", "squeezenet1_1", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_accelerated_model_gives_the_same_attack(tiny_model, rng):
    """The front ends attack ``jaxviz.accel.accelerate(model)`` (faster max-pool backward, XLA
    options): the same gradients, hence the same attack, as the plain model."""
    from jaxviz.accel import accelerate
    fast = accelerate(tiny_model)
    assert fast is not tiny_model and accelerate(tiny_model) is fast
    x = jnp.asarray(rng.uniform(size=(2, 16, 20, 3)).astype(np.float32))  # non-square
    g = lambda m: jax.grad(lambda z: m.apply(m.params, m.preprocess(z))[:, 2].sum())(x)
    np.testing.assert_allclose(g(fast), g(tiny_model), atol=1e-6)
    kw = dict(method="pgd-linf", eps=6 / 255, steps=5, key=jax.random.key(0), quantize=False)
    a, b = adv.attack(fast, None, x, **kw), adv.attack(tiny_model, None, x, **kw)
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    np.testing.assert_array_equal(a.report.success, b.report.success)


def test_second_attack_reuses_the_compiled_engine_step(tiny_model):
    """Weights, originals, classes and budgets travel as engine data: a new batch, eps and even
    new weights reuse the step compiled by the first call (no new engine entry)."""
    from jaxviz import optimize as engine
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32)
    kw = dict(method="pgd-linf", step=0.01, steps=3, early_stop=False, quantize=False)
    adv.attack(tiny_model, None, x, eps=0.05, **kw)
    before = engine._compiled.cache_info()
    other = jax.tree_util.tree_map(lambda p: p * 0.9, tiny_model.params)
    y = jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32)
    r = adv.attack(tiny_model, other, y, eps=0.03, **kw)
    after = engine._compiled.cache_info()
    assert after.misses == before.misses and after.hits > before.hits
    assert float(np.abs(r.images - np.asarray(y)).max()) <= 0.03 + 1e-6


def test_random_start_and_8bit_rounding_are_one_program_each(lowerings):
    """Outside the attack's jitted steps they were ~10 and ~30 eager operations, each lowered again
    in every process; one program each now, with the same guarantees (ball, box, 8-bit grid)."""
    x0 = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 13, 11, 3)) / 255.0, jnp.float32)
    key = jax.random.key(1)
    for norm in ("linf", "l2"):
        with lowerings() as count:
            x = adv.random_init(key, x0, norm=norm, eps=0.05)
            q = adv.quantize_8bit(x, x0, norm=norm, eps=0.05)
        assert count.count <= 2, (norm, count.count)  # (0 if this process compiled these shapes before)
        q = np.asarray(q)
        np.testing.assert_array_equal(q, np.round(q * 255).astype(np.float32) / np.float32(255))  # the 8-bit grid
        assert q.min() >= 0 and q.max() <= 1
        l2, linf = adv.perturbation_norms(np.asarray(x0), q)
        assert np.all((linf if norm == "linf" else l2) <= 0.05 * (1 + 1e-6) + 1e-7)


def test_confidence_and_eps_given_as_arrays():
    """A JAX-scalar confidence (not hashable: it cannot be a static argument) and a per-image eps
    array for the 8-bit rounding work as before."""
    x0 = jnp.asarray(np.random.default_rng(4).integers(0, 256, (2, 9, 7, 3)) / 255.0, jnp.float32)
    probs = jnp.asarray([[0.2, 0.8], [0.9, 0.1]])
    ok = adv._succeeded(probs, jnp.asarray([0, 0]), jnp.asarray([-1, -1]), jnp.float32(0.5))
    np.testing.assert_array_equal(ok, [True, False])
    x = jnp.clip(x0 + 0.02, 0, 1)
    eps = jnp.asarray([0.01, 0.03]).reshape(2, 1, 1, 1)
    q = np.asarray(adv.quantize_8bit(x, x0, norm="linf", eps=eps))
    for i, e in enumerate((0.01, 0.03)):
        np.testing.assert_array_equal(q[i], np.asarray(adv.quantize_8bit(x[i:i + 1], x0[i:i + 1], norm="linf", eps=e))[0])


def test_one_label_for_the_batch_and_a_wrong_count(tiny_model):
    """A scalar label applies to every image (it raised numpy's reshape error for N > 1); a
    label list of another length is one clear error."""
    x = jax.nn.sigmoid(jax.random.normal(jax.random.key(8), (2, 16, 16, 3)))
    one = adv.attack(tiny_model, None, x, method="ifgsm", eps=0.03, steps=2, label=1)
    both = adv.attack(tiny_model, None, x, method="ifgsm", eps=0.03, steps=2, label=[1, 1])
    np.testing.assert_array_equal(one.images, both.images)
    np.testing.assert_array_equal(one.report.label, [1, 1])
    with pytest.raises(JaxvizError, match=r"label must be one class or \(2,\) classes"):
        adv.attack(tiny_model, None, x, method="ifgsm", eps=0.03, steps=2, label=[1, 2, 3])
