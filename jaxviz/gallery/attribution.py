"""Attribution figures: vanilla saliency, guided backprop vs gradient for fire9 neurons, CAM / Grad-CAM
for two classes of one image."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

SALIENCY_IMAGES = ["chelsea", "coffee", "astronaut", "rocket"]
NEURON_IMAGES = ["chelsea", "astronaut", "coffee"]


def _signed_image(g: np.ndarray) -> np.ndarray:
    """(h, w, 3) signed gradient -> displayable RGB: 0.5 grey is zero, symmetric scale."""
    return np.clip(0.5 + g / (2 * np.abs(g).max() + 1e-12), 0, 1)


def _ax_off(ax):
    ax.set_xticks([]), ax.set_yticks([])


@figure("saliency_vanilla", "Vanilla gradient saliency",
        "Simonyan et al. 2014: max over RGB of |d logit / d x| for the predicted class (x preprocessed), "
        "one backward pass for the batch; top: image, bottom: saliency (99th-percentile clipped).",
        order=300, images=SALIENCY_IMAGES, target="predicted class (logit)")
def saliency_vanilla(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.accel import accelerate, xla
    from jaxviz.images import load_images
    from jaxviz.saliency import vanilla_saliency

    model = accelerate(ctx.model(ctx.classifiers()[0]))
    labels = model.labels
    images = load_images(SALIENCY_IMAGES, model.input_size)
    x = model.preprocess(jnp.asarray(images))
    index = jnp.argmax(model.apply(model.params, x), axis=-1)
    maps = np.asarray(xla.jit(lambda p, x, i: vanilla_saliency(model, p, x, index=i), model.compiler_options)(
        model.params, x, index))
    ctx.note(model=model.name, classes=", ".join(labels[int(i)] for i in index))
    fig, axes = plt.subplots(2, len(images), figsize=(3 * len(images), 6.2))
    for col, (image, m, i) in enumerate(zip(images, maps, index)):
        axes[0, col].imshow(image)
        axes[0, col].set_title(labels[int(i)][:24], fontsize=9)
        axes[1, col].imshow(np.clip(m / np.percentile(m, 99), 0, 1), cmap="gray")
        _ax_off(axes[0, col]), _ax_off(axes[1, col])
    fig.tight_layout()
    return fig


@figure("guided_backprop_neurons", "Guided backprop vs gradient for fire9 (conv5-like) neurons",
        "Springenberg et al. 2015 / Zeiler & Fergus 2014: for the strongest fire9 unit of each image (channel "
        "and position of its largest activation), the image patch in its receptive field, the plain "
        "gradient of that unit and the guided-backprop signal (custom_vjp ReLU), cropped to the same box.",
        order=301, images=NEURON_IMAGES, layer="fire9")
def guided_backprop_neurons(ctx: Context):
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from jaxviz.accel import accelerate, xla
    from jaxviz.images import load_images

    model = accelerate(ctx.model("squeezenet1_1" if "squeezenet1_1" in ctx.models else ctx.classifiers()[0]))
    layer = model.resolve_layer("fire9" if "fire9" in model.aliases else model.feature_layer)
    images = load_images(NEURON_IMAGES, model.input_size)
    x = model.preprocess(jnp.asarray(images))
    acts = np.asarray(model.activation(model.params, x, layer))  # (N, h, w, C)
    n, h, w, c = acts.shape
    chosen, neurons = set(), []
    for k in range(n):  # the strongest unit of each image, a different channel each time
        order = np.argsort(acts[k].max(axis=(0, 1)))[::-1]
        ch = int(next(o for o in order if o not in chosen))
        chosen.add(ch)
        y, xx = np.unravel_index(np.argmax(acts[k, :, :, ch]), (h, w))
        neurons.append((ch, int(y), int(xx)))
    chan = jnp.array([u[0] for u in neurons])
    ys, xs = jnp.array([u[1] for u in neurons]), jnp.array([u[2] for u in neurons])

    def unit_grads(net):
        def score(x):  # one unit per image; positions are traced, so one compiled call for all
            a = net.activation(model.params, x, layer)
            return a[jnp.arange(n), ys, xs, chan].sum()
        return xla.jit(jax.grad(score), model.compiler_options)(x)

    plain = np.asarray(unit_grads(model))
    guided = np.asarray(unit_grads(model.with_backward("guided")))
    rf = model.receptive_fields()[layer]
    size = model.input_size
    fig, axes = plt.subplots(n, 4, figsize=(11, 2.9 * n), squeeze=False)
    for k, (ch, y, xx) in enumerate(neurons):
        top, left, bottom, right = rf.box(y, xx)
        t, l, b, r = max(top, 0), max(left, 0), min(bottom, size), min(right, size)
        ax = axes[k]
        ax[0].imshow(images[k])
        ax[0].add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, color="yellow", lw=1.5))
        ax[0].set_title(f"{NEURON_IMAGES[k]}: {layer} ch {ch} at ({y},{xx})", fontsize=8)
        ax[1].imshow(images[k][t:b, l:r])
        ax[1].set_title(f"receptive field {rf.size}px", fontsize=8)
        ax[2].imshow(_signed_image(plain[k][t:b, l:r]))
        ax[2].set_title("gradient", fontsize=8)
        ax[3].imshow(_signed_image(guided[k][t:b, l:r]))
        ax[3].set_title("guided backprop", fontsize=8)
        for a in ax:
            _ax_off(a)
    ctx.note(model=model.name, layer=layer, receptive_field=f"{rf.size}px, stride {rf.stride}",
             neurons="; ".join(f"{s}: ch {ch} ({y},{xx})" for s, (ch, y, xx) in zip(NEURON_IMAGES, neurons)))
    fig.tight_layout()
    return fig


@figure("cam_two_classes", "CAM and Grad-CAM for two classes in one image",
        "Zhou et al. 2016 (CAM) and Selvaraju et al. 2017 (Grad-CAM, guided Grad-CAM) for the top-1 class and "
        "the top-5 class whose CAM differs most from it (lowest correlation), in one image.",
        order=302, image="astronaut", layer="model's feature layer (SqueezeNet: features.12 = fire9)")
def cam_two_classes(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz import cam as camlib
    from jaxviz.accel import accelerate, xla
    from jaxviz.images import load_images
    from jaxviz.render import normalize, overlay

    model = accelerate(ctx.model(ctx.classifiers()[0]))
    labels = model.labels
    cam_layer, feature_layer = model.cam_layer or model.feature_layer, model.feature_layer
    image = load_images(["astronaut"], model.input_size)
    x = model.preprocess(jnp.asarray(image))
    logits = np.asarray(model.apply(model.params, x))[0]
    top5 = np.argsort(logits)[::-1][:5]
    weights = camlib.cam_weights(model, layer=cam_layer)
    options = model.compiler_options
    cam_fn = xla.jit(lambda p, x, i: camlib.cam(model, p, x, layer=cam_layer, weights=weights, index=i), options)
    xs = jnp.repeat(x, 5, axis=0)
    cams = np.asarray(cam_fn(model.params, xs, jnp.asarray(top5)))
    corr = [np.corrcoef(cams[0].ravel(), cams[k].ravel())[0, 1] for k in range(1, 5)]
    second = 1 + int(np.argmin(corr))
    classes = jnp.asarray([top5[0], top5[second]])
    x2 = jnp.repeat(x, 2, axis=0)
    gc = np.asarray(xla.jit(lambda p, x, i: camlib.grad_cam(model, p, x, layer=feature_layer, index=i), options)(
        model.params, x2, classes))
    ggc = np.asarray(xla.jit(lambda p, x, i: camlib.guided_grad_cam(model, p, x, layer=feature_layer, index=i),
                             options)(model.params, x2, classes))
    cams = cams[[0, second]]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    for row in range(2):
        cls = int(classes[row])
        panels = [(image[0], f"{labels[cls][:26]} (rank {1 if row == 0 else second + 1})"),
                  (overlay(image[0], cams[row]), f"CAM ({cam_layer})"),
                  (overlay(image[0], gc[row]), f"Grad-CAM ({feature_layer})"),
                  (normalize(ggc[row], hi=float(np.percentile(ggc[row], 99.5))), "guided Grad-CAM")]
        for ax, (panel, title) in zip(axes[row], panels):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            _ax_off(ax)
    ctx.note(model=model.name, top5=", ".join(labels[int(i)] for i in top5),
             classes=f"{labels[int(classes[0])]} vs {labels[int(classes[1])]}",
             cam_correlation_between_classes=round(float(corr[second - 1]), 3))
    fig.tight_layout()
    return fig
