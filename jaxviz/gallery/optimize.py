"""Figures of issue 5 (optimising the input): class and channel visualisation, feature inversion,
DeepDream — all through the one engine (``jaxviz.optimize``). Small sizes and step counts keep the
whole family to a few minutes on a 2-core CPU; the parameters are noted under each figure."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

CLASSES = [(130, "flamingo"), (76, "tarantula"), (9, "ostrich"), (963, "pizza")]


def _model(ctx: Context, name: str):
    """The bundled model, accelerated for this machine once (a front end's job)."""
    from jaxviz.accel import accelerate
    return accelerate(ctx.model(name))


def _lr_for(model, lr_torchvision: float = 25.0) -> float:
    """Scale the CS231n step (tuned for torchvision inputs, range ~4.4) to the model's input range."""
    lo, hi = model.valid_range()
    return float(lr_torchvision * np.mean(hi - lo) / 4.4)


def _axes(rows, cols, scale=2.0):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    return fig, axes


@figure("classviz_models", "Class visualisation on two networks",
        "x* = argmax s_c(x) - lambda ||x||^2 from small noise (Simonyan et al. 2014) with jitter, "
        "blur every 10 steps and clipping to the valid range (Yosinski et al. 2015; CS231n), one "
        "batch of classes per network through the shared engine. The title gives the final top-1.",
        order=500, size=112, steps=60, l2=1e-3, jitter=16, blur_every=10, blur_sigma=0.5)
def classviz_models(ctx: Context):
    import jax
    import jax.numpy as jnp

    from jaxviz.classviz import class_visualization, to_rgb
    from jaxviz.labels import imagenet_labels

    labels = imagenet_labels()
    names = ctx.classifiers()
    fig, axes = _axes(len(names), len(CLASSES), 2.2)
    classes = jnp.array([c for c, _ in CLASSES])
    for row, name in enumerate(names):
        model = _model(ctx, name)
        res = class_visualization(model, None, classes, size=112, steps=60, lr=_lr_for(model),
                                  key=jax.random.key(0))
        logits = jax.jit(model.apply)(model.params, res.images)
        top = np.asarray(jnp.argmax(logits, -1))
        ctx.note(**{f"{name} lr": round(_lr_for(model), 2),
                    f"{name} step/s": round(60 / max(res.seconds, 1e-9), 2),
                    f"{name} top-1 == target": f"{int((top == np.asarray(classes)).sum())}/{len(CLASSES)}"})
        for col, img in enumerate(to_rgb(model, res.images)):
            ax = axes[row, col]
            ax.imshow(img)
            ax.set_title(f"{CLASSES[col][1]}\n-> {labels[int(top[col])][:18]}", fontsize=8)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


@figure("classviz_params", "Class visualisation: iterations, learning rate, lambda",
        "One batched run of the engine (5 images: per-image learning rate and L2 weight) for the class "
        "flamingo on SqueezeNet 1.1; columns are snapshots after 10/25/50/100 iterations. Rows: the "
        "baseline (lr 25, lambda 1e-3), lr 5 and 100, lambda 0 and 1e-2.", order=501,
        size=96, steps=100, classes="flamingo")
def classviz_params(ctx: Context):
    import jax
    import jax.numpy as jnp

    from jaxviz import objectives as obj
    from jaxviz.classviz import noise_init, to_rgb
    from jaxviz.optimize import Snapshots, blur, clip_range, jitter, normalized_gradient, optimize

    model = _model(ctx, "squeezenet1_1")
    rows = [("lr 25, λ 1e-3", 25.0, 1e-3), ("lr 5", 5.0, 1e-3), ("lr 100", 100.0, 1e-3),
            ("λ 0", 25.0, 0.0), ("λ 1e-2", 25.0, 1e-2)]
    lrs = jnp.asarray([r[1] for r in rows]).reshape(-1, 1, 1, 1)
    lams = jnp.asarray([r[2] for r in rows])
    n = len(rows)
    params = model.prepare_params(model.params)
    loss = -obj.class_score(model, params, 130) + obj.l2() * lams
    lo, hi = model.valid_range()
    snaps = Snapshots(every=5)
    init = noise_init(model, jax.random.key(1), n, 96)  # one key: the same start and jitter for every row
    res = optimize(loss, init, optimizer=normalized_gradient(lrs), steps=100,
                   transforms=(jitter(16), blur(0.5, every=10), clip_range(lo, hi)),
                   key=jax.random.key(1), callbacks=(snaps,), compiler_options=model.compiler_options)
    keep = [10, 25, 50, 100]
    frames = {s: x for s, x in snaps.frames if s in keep}
    fig, axes = _axes(n, len(keep), 1.9)
    scores = np.asarray(jax.jit(model.apply)(model.params, res.images)[:, 130])
    for r, (label, _, _) in enumerate(rows):
        for c, s in enumerate(keep):
            axes[r, c].imshow(to_rgb(model, frames[s][r:r + 1])[0])
            if r == 0:
                axes[r, c].set_title(f"{s} iterations", fontsize=9)
        axes[r, 0].set_ylabel(f"{label}\ns={scores[r]:.0f}", fontsize=8)
    ctx.note(**{"final flamingo logits": ", ".join(f"{r[0]}: {s:.1f}" for r, s in zip(rows, scores)),
                "seconds (5 images, 100 steps)": round(res.seconds, 1)})
    fig.tight_layout()
    return fig


@figure("classviz_from_image", "Class visualisation from a real image of the class",
        "Starting from the photo instead of noise (init = the image): the optimisation exaggerates the "
        "class's features already present. SqueezeNet 1.1, lr 10, lambda 1e-3, jitter 8, blur every 10.",
        order=502, size=112, steps=40)
def classviz_from_image(ctx: Context):
    import jax
    import jax.numpy as jnp

    from jaxviz.classviz import class_visualization, to_rgb
    from jaxviz.images import load_images
    from jaxviz.labels import imagenet_labels

    labels = imagenet_labels()
    model = _model(ctx, "squeezenet1_1")
    pairs = [("chelsea", 285), ("coffee", 967)]  # Egyptian cat, espresso
    ctx.uses_builtin()
    images = load_images([p for p, _ in pairs], 112, "eval", model.eval_transform)
    x0 = model.preprocess(jnp.asarray(images))
    classes = jnp.array([c for _, c in pairs])
    res = class_visualization(model, None, classes, init=x0, steps=40, lr=10.0, jitter_px=8,
                              key=jax.random.key(0))
    apply = jax.jit(model.apply)
    p0 = jax.nn.softmax(apply(model.params, x0))[jnp.arange(2), classes]
    p1 = jax.nn.softmax(apply(model.params, res.images))[jnp.arange(2), classes]
    fig, axes = _axes(2, 2, 2.6)
    for r, ((name, c), img, out) in enumerate(zip(pairs, images, to_rgb(model, res.images))):
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"{name}: p({labels[c][:14]})={float(p0[r]):.2f}", fontsize=8)
        axes[r, 1].imshow(out)
        axes[r, 1].set_title(f"after 40 steps: {float(p1[r]):.2f}", fontsize=8)
    ctx.note(probabilities=", ".join(f"{n}: {float(a):.2f} -> {float(b):.2f}" for (n, _), a, b in zip(pairs, p0, p1)))
    fig.tight_layout()
    return fig


@figure("channel_viz", "Channel visualisation at three depths",
        "Maximise a channel's mean activation (Erhan et al. 2009; Olah et al. 2017) in Lucid's "
        "Fourier-space, decorrelated-colour parameterisation with Adam and jitter, SqueezeNet 1.1: "
        "shallow layers want colours and edges, deeper layers textures and parts.", order=503,
        size=96, steps=64, lr=0.05, layers="fire2, fire5, fire9",
        channels="4 evenly spaced among those active on the starting noise (a channel at 0 after "
                 "its ReLU has no gradient)")
def channel_viz(ctx: Context):
    import jax

    from jaxviz.classviz import channel_visualization, to_rgb
    from jaxviz.objectives import layer_activation
    from jaxviz.param import fourier, fourier_noise

    model = _model(ctx, "squeezenet1_1")
    layers = ["fire2", "fire5", "fire9"]
    start = fourier(96, 96, to_input=model.preprocess).image(fourier_noise(jax.random.key(5), 1, 96, 96))
    fig, axes = _axes(len(layers), 4, 1.9)
    for r, layer in enumerate(layers):
        acts = np.asarray(layer_activation(model, model.params, start, layer)).mean(axis=(0, 1, 2))
        alive = np.flatnonzero(acts > 0)
        channels = [int(c) for c in alive[np.linspace(0, len(alive) - 1, 4).astype(int)]]
        res = channel_visualization(model, None, layer, channels, size=96, steps=64, lr=0.05, jitter_px=4,
                                    key=jax.random.key(r))
        ctx.note(**{f"{layer} activation start -> end": ", ".join(
            f"{-a:.2f}->{-b:.2f}" for a, b in zip(res.losses[0], res.losses[-1]))})
        for c, img in enumerate(to_rgb(model, res.images)):
            axes[r, c].imshow(img)
            axes[r, c].set_title(f"{layer}:{channels[c]}", fontsize=8)
    fig.tight_layout()
    return fig


def _likeness(x: np.ndarray, photo: np.ndarray, blur: float = 8.0) -> tuple[float, float]:
    """(layout, colour) of an inversion ``x`` against the ``photo`` (both (H, W, 3) in [0, 1]):
    Pearson correlation of their grey images after a Gaussian blur of ``blur`` px (where things are), and
    the ratio of their chroma spreads (std of each pixel's deviation from its grey value; 1 = as colourful)."""
    from scipy.ndimage import gaussian_filter
    x, photo = np.asarray(x, np.float64), np.asarray(photo, np.float64)
    gx, gp = (gaussian_filter(a.mean(-1), blur / 2) for a in (x, photo))
    layout = float(np.corrcoef(gx.ravel(), gp.ravel())[0, 1])
    chroma = [float(np.std(a - a.mean(-1, keepdims=True))) for a in (x, photo)]
    return layout, chroma[0] / max(chroma[1], 1e-12)


@figure("inversion_depths", "Feature inversion from four depths",
        "x* = argmin ||Phi_l(x) - Phi_l(x0)||^2/||Phi_l(x0)||^2 + lambda TV^2(x)/(H W B^2) (Mahendran & "
        "Vedaldi 2015) from small noise, Adam 120 steps, SqueezeNet 1.1 at 96 px. Position survives: at "
        "every depth the eyes and nose are drawn where they are in the photo. What goes with depth is the "
        "photo's colour (towards grey), its broad light-and-dark pattern and its fine detail, replaced by "
        "stroke-like texture (at fire8 the eyes are sets of rings on a grey ground). The notes measure two of "
        "these per layer: the correlation of the inversion's grey image with the photo's after an 8 px blur, "
        "and its colour spread relative to the photo's (1 = as colourful).", order=504,
        size=96, steps=120, lr=0.05, tv_weight=0.5, layers="pool1, fire3, fire5, fire8")
def inversion_depths(ctx: Context):
    import jax.numpy as jnp

    from jaxviz.classviz import to_rgb
    from jaxviz.images import load_images
    from jaxviz.inversion import invert

    model = _model(ctx, "squeezenet1_1")
    ctx.uses_builtin()
    image = load_images(["chelsea"], 96, "eval", model.eval_transform)
    x0 = model.preprocess(jnp.asarray(image))
    layers = ["pool1", "fire3", "fire5", "fire8"]
    fig, axes = _axes(1, len(layers) + 1, 2.2)
    axes[0, 0].imshow(image[0])
    axes[0, 0].set_title("original", fontsize=9)
    for c, layer in enumerate(layers):
        res = invert(model, None, x0, layer, steps=120, lr=0.05, tv_weight=0.5)
        before, after = res.extras["feature_loss"]
        axes[0, c + 1].imshow(to_rgb(model, res.images)[0])
        axes[0, c + 1].set_title(f"{layer}: loss {float(after[0]):.3f}", fontsize=8)
        layout, colour = _likeness(to_rgb(model, res.images)[0], image[0])
        ctx.note(**{f"{layer} feature loss": f"{float(before[0]):.3f} -> {float(after[0]):.4f}",
                    f"{layer}: layout correlation / colour spread vs the photo": f"{layout:.2f} / {colour:.2f}"})
    fig.tight_layout()
    return fig


@figure("deepdream_layers", "DeepDream at two layers",
        "Gradient ascent on 1/2 sum f^2 of one layer (its gradient at the layer is the activation) from "
        "a photo, 3 octaves (scale 1.4), 8 normalised steps each (g/mean|g|, 1.5/255 of the range), "
        "jitter 16, SqueezeNet 1.1 at 160 px.", order=505, size=160, octaves=3, steps=8)
def deepdream_layers(ctx: Context):
    import jax
    import jax.numpy as jnp

    from jaxviz.classviz import to_rgb
    from jaxviz.dream import deepdream
    from jaxviz.images import load_images

    model = _model(ctx, "squeezenet1_1")
    ctx.uses_builtin()
    image = load_images(["chelsea"], 160, "eval", model.eval_transform)
    x0 = model.preprocess(jnp.asarray(image))
    layers = ["fire3", "fire7"]
    fig, axes = _axes(1, 3, 3.0)
    axes[0, 0].imshow(image[0])
    axes[0, 0].set_title("original", fontsize=9)
    for c, layer in enumerate(layers):
        d = deepdream(model, None, x0, layer, octaves=3, steps=8, jitter_px=16, key=jax.random.key(c))
        axes[0, c + 1].imshow(to_rgb(model, d)[0])
        axes[0, c + 1].set_title(f"dream on {layer}", fontsize=9)
    fig.tight_layout()
    return fig
