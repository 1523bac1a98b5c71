"""Linear-classifier templates: a softmax classifier on raw pixels, its weights seen as images.

The cs231n notes ("Linear classification", Karpathy) train a linear classifier on CIFAR-10 pixels
and show each class's weight vector reshaped as an image: a template the class is matched
against. No CIFAR is available offline, so we use scikit-learn's ``load_digits`` (1797 8x8 grey
handwritten digits, 10 classes) and say so in every caption.

Conventions: pixels scaled to [0, 1] (the raw 0..16 values / 16) and centred by the training
mean image (as cs231n does), softmax cross-entropy + L2 weight decay, full-batch Adam (optax)
for a fixed number of steps in one jitted ``lax.scan``; a deterministic stratified split.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError


@dataclass(frozen=True)
class LinearTemplates:
    """A trained linear classifier on 8x8 digits.

    templates: (10, 8, 8) weight vector of each class as an image; bias: (10,);
    accuracy: test accuracy; train_accuracy; class_means: (10, 8, 8) mean centred training
    image of each class (what a template should resemble); losses: (steps,) training loss.
    """

    templates: np.ndarray
    bias: np.ndarray
    accuracy: float
    train_accuracy: float
    class_means: np.ndarray
    losses: np.ndarray
    mean_image: np.ndarray


def load_digits_split(test_fraction: float = 0.25, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): pixels in [0, 1] flattened (N, 64), labels (N,) int."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    if not 0 < test_fraction < 1:
        raise JaxvizError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


@partial(jax.jit, static_argnames=("steps", "classes"))
def _fit(x: jax.Array, y: jax.Array, key: jax.Array, steps: int, classes: int, lr: float,
         weight_decay: float) -> tuple[dict, jax.Array]:
    params = {"w": 0.001 * jax.random.normal(key, (x.shape[1], classes)), "b": jnp.zeros((classes,))}
    opt = optax.adam(lr)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() \
            + 0.5 * weight_decay * jnp.sum(p["w"] ** 2)

    def step(carry, _):
        p, state = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params, losses


def train_digit_templates(*, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-3,
                          test_fraction: float = 0.25, seed: int = 0) -> LinearTemplates:
    """Train the softmax linear classifier on digits and return its templates and accuracy.

    Takes well under a second of compute on a CPU (plus one compile).
    """
    if steps < 1:
        raise JaxvizError(f"steps must be at least 1, got {steps}")
    if not (np.isfinite(lr) and lr > 0 and np.isfinite(weight_decay) and weight_decay >= 0):
        raise JaxvizError(f"lr must be > 0 and weight_decay >= 0, got {lr} and {weight_decay}")
    x_tr, y_tr, x_te, y_te = load_digits_split(test_fraction, seed)
    mean = x_tr.mean(axis=0)
    params, losses = _fit(jnp.asarray(x_tr - mean), jnp.asarray(y_tr), jax.random.key(seed), steps, 10,
                          float(lr), float(weight_decay))
    w, b = np.asarray(params["w"]), np.asarray(params["b"])

    def accuracy(x, y):
        return float(np.mean(np.argmax((x - mean) @ w + b, axis=1) == y))

    means = np.stack([(x_tr[y_tr == c] - mean).mean(axis=0) for c in range(10)])
    return LinearTemplates(templates=w.T.reshape(10, 8, 8), bias=b, accuracy=accuracy(x_te, y_te),
                           train_accuracy=accuracy(x_tr, y_tr), class_means=means.reshape(10, 8, 8),
                           losses=np.asarray(losses), mean_image=mean.reshape(8, 8))
