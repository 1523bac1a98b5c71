"""Class indices passed as traced arrays (under jit / vmap) mean what they mean eagerly: negative
counts from the end in every technique, and one out of range gives NaN (never another class, never
a plausible all-zero map)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz.cam import cam, cam_weights
from jaxviz.errors import JaxvizError
from jaxviz.interface.model import take_class
from tests.user_models import TwoConvCNN


@pytest.fixture(scope="module")
def setup():
    module = TwoConvCNN()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    model = jaxviz.from_linen(module, variables, input_size=16)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 20, 3))
    predicted = np.asarray(model.apply(model.params, x).argmax(-1))
    return model, x, predicted


def test_take_class_counts_from_the_end_and_gives_nan_values_and_gradients_out_of_range():
    logits = jnp.arange(10.0).reshape(2, 5)
    take = jax.jit(take_class)
    np.testing.assert_array_equal(take(logits, jnp.asarray([-1, 2])), [4.0, 7.0])
    assert np.isnan(np.asarray(take(logits, jnp.asarray([5, -6])))).all()
    grad = jax.grad(lambda v, i: take(v, i).sum())
    np.testing.assert_array_equal(grad(logits, jnp.asarray([-1, 2])), [[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]])
    assert np.isnan(np.asarray(grad(logits, jnp.asarray([7, 7])))).any()  # a NaN-filled gather alone: zeros
    maps = jnp.ones((2, 3, 4, 5))
    assert take_class(maps, jnp.asarray([0, 9])).shape == (2, 3, 4)
    assert not np.isnan(np.asarray(take_class(maps, jnp.asarray([0, 9]))[0])).any()
    assert np.isnan(np.asarray(take_class(maps, jnp.asarray([0, 9]))[1])).all()


def test_occlusion_traced_negative_class_is_counted_from_the_end(setup):
    model, x, predicted = setup
    occ = lambda p, x, i: jaxviz.occlusion_map(model, p, x, index=i, window=8, stride=4)  # noqa: E731
    last = occ(model.params, x, jnp.asarray([4, 4]))
    eager = occ(model.params, x, jnp.asarray([-1, -1]))
    jitted = jax.jit(occ)(model.params, x, jnp.asarray([-1, -1]))
    mapped = jax.vmap(lambda xi, i: occ(model.params, xi[None], i[None])[0])(x, jnp.asarray([-1, -1]))
    for m in (eager, jitted, mapped):
        np.testing.assert_allclose(m, last, atol=1e-5)
    # the clean image's predicted class is still the default (index None), and differs from the last
    assert (predicted != 4).any()
    np.testing.assert_allclose(occ(model.params, x, None), occ(model.params, x, jnp.asarray(predicted)), atol=1e-5)
    # out of range, traced: NaN (it read as "the predicted class" before)
    assert np.isnan(np.asarray(jax.jit(occ)(model.params, x, jnp.asarray([-7, -7])))).all()
    with pytest.raises(JaxvizError, match="out of range"):
        occ(model.params, x, jnp.asarray([-7, -7]))


def test_traced_out_of_range_class_gives_no_finite_map(setup):
    model, x, _ = setup
    bad = jnp.asarray([7, 7])
    weights = cam_weights(model, model.params, "conv2")
    cam_of = lambda p, x, i: cam(model, p, x, layer="conv2", weights=weights, index=i)  # noqa: E731
    techniques = {
        "cam": cam_of,  # indexing the weights clamped 7 to class 4's map
        "vanilla": lambda p, x, i: jaxviz.vanilla_saliency(model, p, x, index=i),  # all-zero maps before
        "gradcam": lambda p, x, i: jaxviz.grad_cam(model, p, x, layer="conv2", index=i),
        "guided": lambda p, x, i: jaxviz.guided_backprop(model, p, x, index=i),
    }
    for name, fn in techniques.items():
        good = np.asarray(jax.jit(fn)(model.params, x, jnp.asarray([4, 4])))
        assert np.isfinite(good).all() and np.abs(good).max() > 0, name
        np.testing.assert_allclose(jax.jit(fn)(model.params, x, jnp.asarray([-1, -1])), good, rtol=1e-5, atol=1e-6,
                                   err_msg=name)  # -1 is class 4
        out = np.asarray(jax.jit(fn)(model.params, x, bad))
        assert not np.isfinite(out).any(), name
        with pytest.raises(JaxvizError, match="out of range"):
            fn(model.params, x, bad)


def test_attacks_with_a_traced_class_out_of_range_give_nan_images(setup):
    """The attack loss selects through take_class: a NaN-filled gather gave a zero gradient, and the
    'adversarial' images came back unchanged."""
    model, x, _ = setup
    from jaxviz.adversarial import fgsm, projected_gradient_descent
    pgd = jax.jit(lambda c: projected_gradient_descent(model, None, x, c, eps=8 / 255, steps=2, random_start=False))
    step = jax.jit(lambda c: fgsm(model, None, x, c, eps=8 / 255))
    for attack in (pgd, step):
        assert np.isfinite(np.asarray(attack(jnp.asarray([1, -1])))).all()
        assert np.isnan(np.asarray(attack(jnp.asarray([7, 7])))).all()
