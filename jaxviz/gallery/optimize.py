"""Figures of issue 5 (optimising the input): class and channel visualisation, feature inversion,
DeepDream — all through the one engine (``jaxviz.optimize``). Small sizes and step counts keep the
whole family to a few minutes on a 2-core CPU; the parameters are noted under each figure."""
from __future__ import annotations

import functools

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


def _quick(ctx: Context, full, small):
    return small if ctx.quick else full


@functools.lru_cache(maxsize=8)  # one object per setting: the engine's compiled step is reused
def _random_affine(scale: float, degrees: float):
    """Lucid's random scale and rotation as an engine transform (``stage="loss"``): each step every
    image is resampled (bilinear, reflected edges) about its centre at a scale in 1 +- ``scale`` and
    an angle in +- ``degrees``, drawn from its own key, so features must survive small zooms and turns."""
    import jax
    import jax.numpy as jnp

    from jaxviz.optimize import Transform

    def one(img, key):
        k1, k2 = jax.random.split(jax.random.fold_in(key, 7))  # apart from jitter's use of the key
        s = 1.0 + jax.random.uniform(k1, (), minval=-scale, maxval=scale)
        a = jnp.deg2rad(jax.random.uniform(k2, (), minval=-degrees, maxval=degrees))
        h, w = img.shape[:2]
        yy, xx = jnp.meshgrid(jnp.arange(h, dtype=img.dtype) - (h - 1) / 2,
                              jnp.arange(w, dtype=img.dtype) - (w - 1) / 2, indexing="ij")
        ys = (jnp.cos(a) * yy - jnp.sin(a) * xx) / s + (h - 1) / 2
        xs = (jnp.sin(a) * yy + jnp.cos(a) * xx) / s + (w - 1) / 2
        return jnp.stack([jax.scipy.ndimage.map_coordinates(img[..., c], [ys, xs], order=1, mode="reflect")
                          for c in range(img.shape[-1])], -1)

    lifted = jax.vmap(one)
    return Transform(lambda x, keys, grad: lifted(x, keys), "loss", 1, f"random_affine({scale}, {degrees})")


def _feature_vis(model, loss, n: int, size: int, steps: int, key, lr: float = 0.05, jitter_px: int = 8):
    """Olah et al. (2017)'s recipe through the engine: Fourier-space, decorrelated-colour images
    (``jaxviz.param.fourier``), Adam, and each step jitter, random scale (+-10%) and rotation
    (+-10 degrees), then a small jitter (Lucid's standard transforms)."""
    import jax

    from jaxviz.optimize import adam, jitter, optimize
    from jaxviz.param import fourier, fourier_noise

    param = fourier(size, size, to_input=model.preprocess, from_input=model.deprocess)
    init = param.image(fourier_noise(jax.random.fold_in(key, 1), n, size, size))
    return optimize(loss, init, optimizer=adam(lr), steps=steps, parameterization=param,
                    transforms=(jitter(jitter_px), _random_affine(0.1, 10.0), jitter(4)), key=key,
                    compiler_options=model.compiler_options)


CV_SIZE, CV_STEPS = 160, 72


@figure("classviz_models", "Class visualisation on two networks",
        "Each network's idea of four classes: SqueezeNet draws recognisable parts (flamingo heads and "
        "pink plumage, tarantula legs, ostrich heads and necks, pizza toppings). EfficientNet-Lite0's "
        "are fainter and busier (the ostrich's dark plumage and neck, spider-like legs, flamingo pink only in "
        "patches) although each reaches p = 1.00. The images maximise the class logit (Simonyan "
        "et al. 2014) from noise, regularised as in Olah et al. (2017): optimised in Fourier space with "
        "decorrelated colours, and each step sees them randomly jittered, scaled (+-10%) and rotated "
        "(+-10 degrees); Adam. Titles: the final top-1 and its probability.",
        order=500, size=CV_SIZE, steps=CV_STEPS, lr=0.05, jitter="8 px, then 4 px", scale="0.9-1.1",
        rotation="+-10 degrees")
def classviz_models(ctx: Context):
    import jax
    import jax.numpy as jnp

    from jaxviz import objectives as obj
    from jaxviz.classviz import to_rgb
    from jaxviz.labels import imagenet_labels

    labels = imagenet_labels()
    names = ctx.classifiers()
    size, steps = _quick(ctx, CV_SIZE, 64), _quick(ctx, CV_STEPS, 4)
    fig, axes = _axes(len(names), len(CLASSES), 2.9)
    classes = jnp.array([c for c, _ in CLASSES])
    for row, name in enumerate(names):
        model = _model(ctx, name)
        params = model.prepare_params(model.params)
        res = _feature_vis(model, -obj.class_score(model, params, classes), len(CLASSES), size, steps,
                           jax.random.key(0))
        probs = np.asarray(jax.nn.softmax(jax.jit(model.apply)(model.params, res.images), -1))
        top = probs.argmax(-1)
        ctx.note(**{f"{name}: seconds ({steps} steps, {len(CLASSES)} images)": round(res.seconds, 1),
                    f"{name}: top-1 is the target": f"{int((top == np.asarray(classes)).sum())} of {len(CLASSES)}",
                    f"{name}: p(target)": ", ".join(f"{n} {probs[i, c]:.2f}" for i, (c, n) in enumerate(CLASSES))})
        for col, img in enumerate(to_rgb(model, res.images)):
            ax = axes[row, col]
            ax.imshow(img)
            ax.set_title(f"{CLASSES[col][1]} -> {labels[int(top[col])][:16]} {probs[col, top[col]]:.2f}",
                         fontsize=11)
            if col == 0:
                ax.set_ylabel(name, fontsize=12)
    fig.tight_layout()
    return fig


@figure("classviz_params", "Class visualisation: iterations, learning rate, lambda",
        "The learning rate matters most: at lr 5 the flamingo is still faint after 100 iterations, at lr 100 "
        "it drowns in saturated noise (and scores lowest); the L2 weight lambda changes little at these "
        "settings (lambda 0: more background clutter, 1e-2: slightly dimmer). At the baseline the flamingo "
        "appears by 25 iterations and sharpens to 100. One batched run of the engine (5 images: per-image "
        "learning rate and lambda), class flamingo, SqueezeNet 1.1; columns: snapshots after 10/25/50/100 "
        "iterations; s = the final flamingo logit.", order=501,
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


CH_SIZE = 128
CH_LAYERS = (("fire2", 128), ("fire5", 192), ("fire9", 256))  # (layer, Adam steps): deeper needs more


@figure("channel_viz", "Channel visualisation at three depths",
        "Shallow channels want colours and stripes (fire2), middle ones textures and eye-like spots "
        "(fire5), deep ones object parts and scenes: a dog's face, white fur with eyes (fire9). Not every deep "
        "channel gives a part: the fourth fire9 channel (284) ends as a nearly flat grey-blue field, at an "
        "activation within the others' range (5.8 -> 122 after a rerun at a smaller step; the others 84-216; "
        "notes), so a flat colour drives it strongly, though a better optimum may exist. "
        "Images that maximise one channel's mean "
        "activation (Erhan et al. 2009) in SqueezeNet 1.1, made as in Olah et al. (2017): Fourier-space, "
        "decorrelated-colour image, Adam, and random jitter, scale and rotation every step; deeper layers "
        "get more steps.", order=503,
        size=CH_SIZE, steps=", ".join(f"{layer} {n}" for layer, n in CH_LAYERS), lr=0.05,
        jitter="8 px, then 4 px", scale="0.9-1.1", rotation="+-10 degrees",
        channels="4 evenly spaced among those active on the starting noise (a channel at 0 after "
                 "its ReLU has no gradient)")
def channel_viz(ctx: Context):
    import jax

    from jaxviz import objectives as obj
    from jaxviz.classviz import to_rgb
    from jaxviz.objectives import layer_activation
    from jaxviz.param import fourier, fourier_noise

    model = _model(ctx, "squeezenet1_1")
    params = model.prepare_params(model.params)
    size = _quick(ctx, CH_SIZE, 64)
    start = fourier(size, size, to_input=model.preprocess).image(fourier_noise(jax.random.key(5), 1, size, size))
    fig, axes = _axes(len(CH_LAYERS), 4, 2.7)
    for r, (layer, steps) in enumerate(CH_LAYERS):
        acts = np.asarray(layer_activation(model, model.params, start, layer)).mean(axis=(0, 1, 2))
        alive = np.flatnonzero(acts > 0)
        channels = [int(c) for c in alive[np.linspace(0, len(alive) - 1, 4).astype(int)]]
        steps = _quick(ctx, steps, 4)
        res = _feature_vis(model, -obj.channel(model, params, layer, np.asarray(channels)), 4, size, steps,
                           jax.random.key(r))
        images, first, last = np.array(res.images), np.array(res.losses[0]), np.array(res.losses[-1])
        dead = [i for i in range(4) if last[i] >= 0]  # the channel went to 0 everywhere: no gradient left
        if dead:  # rule: such a channel is rerun once with a 5x smaller step (the first steps overshot)
            again = _feature_vis(model, -obj.channel(model, params, layer, np.asarray([channels[i] for i in dead])),
                                 len(dead), size, steps, jax.random.key(r), lr=0.01)
            images[dead], last[dead] = np.asarray(again.images), np.asarray(again.losses[-1])
            ctx.note(**{f"{layer}: rerun with Adam lr 0.01": ", ".join(
                f"channel {channels[i]} (had ended at 0 with lr 0.05)" for i in dead)})
        ctx.note(**{f"{layer}: mean activation, start -> end ({steps} steps)": ", ".join(
            f"{-a:.1f} -> {-b:.1f}" for a, b in zip(first, last))})
        for c, img in enumerate(to_rgb(model, images)):
            axes[r, c].imshow(img)
            axes[r, c].set_title(f"{layer} channel {channels[c]}", fontsize=11)
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


INV_SIZE, INV_STEPS = 128, 160
# (layer, TV weight): deeper codes constrain the image less, so the prior gets more weight (as
# Mahendran & Vedaldi tune lambda per layer)
INV_LAYERS = (("relu1", 0.5), ("fire3", 0.5), ("fire5", 1.5), ("fire7", 3.0), ("fire9", 6.0), ("classifier.3", 8.0))
INV_CLASSES = (207, 417, 817, 951, 980, 1)  # candidates in order: the first three in the sample are used


@figure("inversion_depths", "Feature inversion from six depths",
        "Deeper codes keep less of the photo, but position survives up to fire9: relu1 gives the photo "
        "back; fire3 keeps its detail with duller colour; fire5 to fire9 keep the outlines of the dog, "
        "balloons and car in place while colour and detail go; the logits (1000 numbers, no map) keep only "
        "faint class-typical fragments and almost no layout. x* = argmin ||Phi(x) - Phi(x0)||^2 / "
        "||Phi(x0)||^2 + lambda TV^2(x) (Mahendran & Vedaldi 2015) from small noise, Adam, lambda growing "
        "with depth, SqueezeNet 1.1. Notes: layout correlation of blurred grey images and colour spread "
        "against the photo.", order=504, size=INV_SIZE, steps=INV_STEPS, lr=0.05,
        tv_weights=", ".join(f"{layer.replace('classifier.3', 'logits')} {w:g}" for layer, w in INV_LAYERS))
def inversion_depths(ctx: Context):
    import jax.numpy as jnp

    from jaxviz.classviz import to_rgb
    from jaxviz.images import load_images
    from jaxviz.inversion import invert

    model = _model(ctx, "squeezenet1_1")
    size, steps = _quick(ctx, INV_SIZE, 64), _quick(ctx, INV_STEPS, 4)
    rows = ctx.photos_or_builtin(classes=list(INV_CLASSES), count=3)
    images = load_images([r["path"] for r in rows], size, "eval", model.eval_transform)
    x0 = model.preprocess(jnp.asarray(images))
    names = {"classifier.3": "logits"}
    fig, axes = _axes(len(rows), len(INV_LAYERS) + 1, 1.75)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_ylabel(row["label"][:16], fontsize=11)
    axes[0, 0].set_title("photo", fontsize=11)
    for c, (layer, tv) in enumerate(INV_LAYERS):
        res = invert(model, None, x0, layer, steps=steps, lr=0.05, tv_weight=tv)
        before, after = (np.asarray(a) for a in res.extras["feature_loss"])
        out = to_rgb(model, res.images)
        likeness = np.asarray([_likeness(o, im) for o, im in zip(out, images)])
        for r in range(len(rows)):
            axes[r, c + 1].imshow(out[r])
        axes[0, c + 1].set_title(names.get(layer, layer), fontsize=11)
        ctx.note(**{f"{names.get(layer, layer)}: feature loss, start -> end (per photo)": ", ".join(
                        f"{a:.2f} -> {b:.3f}" for a, b in zip(before, after)),
                    f"{names.get(layer, layer)}: layout correlation / colour spread (mean of photos)":
                        f"{likeness[:, 0].mean():.2f} / {likeness[:, 1].mean():.2f}"})
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
