"""Attribution figures: vanilla saliency beside SmoothGrad, guided backprop vs gradient for fire9
neurons, CAM / Grad-CAM / guided Grad-CAM for two objects of two classes in one image, and one
panel comparing nine attribution methods on the same photographs.

The helpers here (``classifier``, ``sample_photos``, ``map_display``) are shared with the other
attribution-section modules (faithfulness, occlusion, foundation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxviz.gallery import Context, figure

# ImageNet class indices of the sample photographs each figure uses (one clear object each;
# SqueezeNet 1.1 classifies all of them correctly). Without ../shared the built-in photos are used.
SALIENCY_POOL_STEP, SALIENCY_BATCH = 6, 16     # saliency_vanilla ranks every 6th sample photo's map
SALIENCY_SHOWN, SALIENCY_MIN_P = 5, 0.6        # ... and shows the 5 most concentrated beside the median one
NEURON_CLASSES = [87, 340, 283]              # African grey, zebra, Persian cat
TWO_CLASSES = [242, 283]                     # boxer | Persian cat, side by side (Selvaraju et al. Fig. 1)
COMPARISON_CLASSES = [145, 417, 185, 937]    # king penguin, balloon, Norfolk terrier, broccoli
SMOOTH_SAMPLES, SMOOTH_NOISE = 32, 0.15      # SmoothGrad on EfficientNet-Lite0 (Smilkov et al.: 10-20% noise)
TITLE = 10  # pt: legible at the page's width (the runner checks every figure's smallest text)


# ------------------------------------------------------------------ shared helpers

def classifier(ctx: Context):
    """SqueezeNet 1.1 when available (the figures' numbers are measured on it), else the first
    classifier; accelerated by the context."""
    return ctx.model("squeezenet1_1" if "squeezenet1_1" in ctx.models else ctx.classifiers()[0])


GRADIENT_MODEL = "efficientnet_lite0"


def gradient_classifier(ctx: Context):
    """The classifier for pixel-space gradient maps: EfficientNet-Lite0 when available (its stem has no
    overlapping pool, so no 4 px grid; the bundled VGG19 has no classifier), else ``classifier``."""
    return ctx.model(GRADIENT_MODEL) if GRADIENT_MODEL in ctx.models else classifier(ctx)


@dataclass
class Photos:
    images: np.ndarray      # (N, H, W, 3) in [0, 1], the model's evaluation crop
    x: object               # (N, H, W, 3) preprocessed (jnp)
    index: np.ndarray       # (N,) the true class (the predicted one for built-in images)
    names: list[str]        # class names of ``index``
    probs: np.ndarray       # (N,) softmax probability of ``index``
    predicted: np.ndarray   # (N,) top-1 class
    rows: list[dict]        # the photos' records (path, class, label)


def sample_photos(ctx: Context, model, classes, *, count: int | None = None, size=None,
                  fit: str = "eval") -> Photos:
    """The sample photographs of ``classes`` (or the built-in ones), loaded for ``model``."""
    import jax
    import jax.numpy as jnp

    from jaxviz.images import load_images
    count = len(classes) if count is None else count
    rows = ctx.photos_or_builtin(list(classes)[:count], count=count)
    size = size or model.input_size
    images = load_images([r["path"] for r in rows], size, fit, transform=model.eval_transform)
    x = model.preprocess(jnp.asarray(images))
    probs = np.asarray(jax.nn.softmax(model.apply(model.params, x), axis=-1))
    predicted = probs.argmax(-1)
    index = np.array([r["class"] if r["class"] >= 0 else p for r, p in zip(rows, predicted)])
    names = [model.labels[int(i)] for i in index]
    return Photos(images, x, index, names, probs[np.arange(len(index)), index], predicted, rows)


def map_display(m: np.ndarray, q: float = 99.0) -> np.ndarray:
    """A non-negative map (H, W) -> [0, 1], clipped at its ``q``-th percentile (a few extreme
    gradients would otherwise hide the rest), as Simonyan et al. and Smilkov et al. show them."""
    from jaxviz.render import normalize
    m = np.asarray(m, np.float32)
    return normalize(m, 0.0, max(float(np.percentile(m, q)), 1e-12))


def map_concentration(m: np.ndarray, sigma: float = 8.0, area: float = 0.2) -> float:
    """How concentrated a non-negative map (H, W) is: the share of its mass, after a Gaussian blur of
    ``sigma`` px (the speckle averaged out), that lies in its brightest ``area`` fraction of pixels.
    ``area`` for a uniform map, 1.0 for a blob covering less than ``area`` of the image."""
    from scipy.ndimage import gaussian_filter
    blurred = gaussian_filter(np.asarray(m, np.float64), sigma)
    total = blurred.sum()
    if not total > 0:
        return float(area)
    top = np.sort(blurred.ravel())[::-1][: max(1, int(round(area * blurred.size)))]
    return float(top.sum() / total)


def phase_means(m: np.ndarray, period: int = 4) -> np.ndarray:
    """(period, period): a map's mean over each position of a period x period cell (the average
    cell of its grid; ragged edges cut)."""
    h, w = (s - s % period for s in m.shape)
    return np.asarray(m[:h, :w]).reshape(h // period, period, w // period, period).mean(axis=(0, 2))


def grid_contrast(m: np.ndarray, period: int = 4) -> float:
    """How strongly a map follows a ``period``-pixel grid: the spread (max / min) of its mean over
    each of the period x period phases (1.0 = no grid)."""
    phases = phase_means(m, period)
    return float(phases.max() / max(phases.min(), 1e-12))


def _signed_image(g: np.ndarray, q: float = 99.5) -> np.ndarray:
    """(h, w, 3) signed gradient -> displayable RGB: 0.5 grey is zero, symmetric scale clipped at the
    ``q``-th percentile of |g| (a few extreme values would otherwise leave the rest flat grey)."""
    return np.clip(0.5 + g / (2 * np.percentile(np.abs(g), q) + 1e-12), 0, 1)


def _ax_off(ax):
    ax.set_xticks([]), ax.set_yticks([])


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


# ------------------------------------------------------------------ figures

@figure("saliency_vanilla", "Vanilla gradient saliency beside SmoothGrad",
        "Simonyan, Vedaldi & Zisserman 2014 (Fig. 2): the class score's gradient picks out the object. Map = "
        "max over RGB of |d logit / d x| for the photo's class (row 2), clipped at its 99th percentile; "
        "EfficientNet-Lite0, since the bundled VGG lacks its classifier and SqueezeNet 1.1 puts a 4 px grid on "
        "its gradients. Chosen as Simonyan et al. chose theirs, but by a stated rule: of every 6th sample photo "
        "the network classifies correctly and confidently (p > 0.6), the five whose maps concentrate most "
        "(the share of the blurred map in its brightest fifth, 'conc.' in the titles), and in the last column "
        "the median photo for comparison. On four of the five the map is a silhouette of the animal (the "
        "dingo's brightest band is the tree trunk beside it); on a typical "
        "photo it is spread over edges all over the image. SmoothGrad (Smilkov et al. 2017; row 3; "
        "averaged over noisy copies) fills the silhouettes more evenly.",
        order=300, photos="every 6th ImageNet sample photo (150), ranked by map concentration",
        target="the photo's class (logit)", smoothgrad=f"{SMOOTH_SAMPLES} samples, noise {SMOOTH_NOISE}")
def saliency_vanilla(ctx: Context):
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.accel import xla
    from jaxviz.images import load_images
    from jaxviz.saliency import smoothgrad, vanilla_saliency

    model = gradient_classifier(ctx)
    rows = ctx.photos_or_builtin()[::SALIENCY_POOL_STEP]
    rows = rows[:12] if ctx.quick else rows
    samples = 4 if ctx.quick else SMOOTH_SAMPLES

    def scored(p, x, i):
        logits = model.apply(p, x)
        i = jnp.where(i < 0, logits.argmax(-1), i)  # a folder without classes: the predicted class
        return jax.nn.softmax(logits, -1), i, vanilla_saliency(model, p, x, index=i)
    scored = xla.jit(scored, model.compiler_options)
    pool = []  # (concentration, p(class), class, predicted, row): maps are dropped, memory stays flat
    for start in range(0, len(rows), SALIENCY_BATCH):
        batch = rows[start:start + SALIENCY_BATCH]
        images = load_images([r["path"] for r in batch], model.input_size, "eval", transform=model.eval_transform)
        probs, index, maps = (np.asarray(a) for a in scored(model.params, model.preprocess(jnp.asarray(images)),
                                                            jnp.asarray([r["class"] for r in batch])))
        for k, row in enumerate(batch):
            pool.append((map_concentration(maps[k]), float(probs[k, index[k]]), int(index[k]),
                         int(probs[k].argmax()), row))
    eligible = sorted((e for e in pool if e[2] == e[3] and e[1] > SALIENCY_MIN_P), key=lambda e: -e[0])
    if len(eligible) < SALIENCY_SHOWN + 1:  # a small folder: show what there is, most concentrated first
        eligible = sorted(pool, key=lambda e: -e[0])
    median = eligible[len(eligible) // 2]
    shown = eligible[:SALIENCY_SHOWN] + ([median] if median not in eligible[:SALIENCY_SHOWN] else [])

    images = load_images([e[4]["path"] for e in shown], model.input_size, "eval", transform=model.eval_transform)
    x = model.preprocess(jnp.asarray(images))
    index = jnp.asarray([e[2] for e in shown])

    def maps(p, x, i):
        return (vanilla_saliency(model, p, x, index=i),
                smoothgrad(model, p, x, index=i, key=jax.random.key(0), samples=samples, noise=SMOOTH_NOISE))
    vanilla, smooth = (np.asarray(a) for a in xla.jit(maps, model.compiler_options)(model.params, x, index))
    n = len(shown)
    fig, axes = plt.subplots(3, n, figsize=(2.6 * n, 8.4), squeeze=False)
    for col, (conc, prob, cls, _, _) in enumerate(shown):
        axes[0, col].imshow(images[col])
        head = "median photo: " if shown[col] is median else ""
        axes[0, col].set_title(f"{head}{_short(model.labels[cls], 20)}\np {prob:.2f}, conc. {conc:.2f}",
                               fontsize=TITLE + 1)
        axes[1, col].imshow(map_display(vanilla[col]), cmap="gray")
        axes[2, col].imshow(map_display(smooth[col]), cmap="gray")
        for ax in axes[:, col]:
            _ax_off(ax)
    for row, label in enumerate(["photo", "vanilla gradient", f"SmoothGrad ({samples} samples)"]):
        axes[row, 0].set_ylabel(label, fontsize=TITLE + 1)
    concs = [e[0] for e in eligible]
    ctx.note(model=model.name, **{
        "photos ranked": f"{len(pool)} (every {SALIENCY_POOL_STEP}th), {len(eligible)} correct with p > {SALIENCY_MIN_P}",
        "map concentration (share of the 8 px-blurred map in its brightest 20% of pixels; uniform = 0.20)":
            f"shown {', '.join(f'{c:.2f}' for c in concs[:SALIENCY_SHOWN])}; median {median[0]:.2f}; "
            f"lowest {concs[-1]:.2f}",
        "4 px grid contrast of the vanilla maps (1 = none; SqueezeNet 1.1: 3.4-4.3)":
            ", ".join(f"{grid_contrast(v):.2f}" for v in vanilla)})
    fig.tight_layout()
    return fig


@figure("guided_backprop_neurons", "Guided backprop vs gradient for fire9 (conv5-like) neurons",
        "Springenberg et al. 2015 / Zeiler & Fergus 2014: for the strongest fire9 unit of each photograph "
        "(channel and position of its largest activation; a different channel per photo), the image patch in "
        "its receptive field, the plain gradient of that unit and the guided-backprop signal (ReLU backward "
        "passes only positive gradients where the input was positive), cropped to the same box (grey = 0, "
        "symmetric scale clipped at the crop's 99.5th percentile of |signal|). Guided backprop shows the "
        "edges and parts that drive the unit; the plain gradient is noisy.",
        order=301, photos="ImageNet sample: African grey, zebra, Persian cat", layer="fire9")
def guided_backprop_neurons(ctx: Context):
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from jaxviz.accel import xla

    model = classifier(ctx)
    layer = model.resolve_layer("fire9" if "fire9" in model.aliases else model.feature_layer)
    ph = sample_photos(ctx, model, NEURON_CLASSES, count=2 if ctx.quick else None)
    images, x = ph.images, ph.x
    acts = np.asarray(model.activation(model.params, x, layer))  # (N, h, w, C)
    n, h, w, _ = acts.shape
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
    size = images.shape[1]
    fig, axes = plt.subplots(n, 4, figsize=(11, 2.9 * n), squeeze=False)
    for k, (ch, y, xx) in enumerate(neurons):
        top, left, bottom, right = rf.box(y, xx)
        t, l, b, r = max(top, 0), max(left, 0), min(bottom, size), min(right, size)
        ax = axes[k]
        ax[0].imshow(images[k])
        ax[0].add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, color="yellow", lw=1.5))
        ax[0].set_title(f"{_short(ph.names[k], 16)}: {layer} ch {ch} at ({y},{xx})", fontsize=9)
        ax[1].imshow(images[k][t:b, l:r])
        ax[1].set_title(f"receptive field {rf.size} px", fontsize=9)
        ax[2].imshow(_signed_image(plain[k][t:b, l:r]))
        ax[2].set_title("gradient", fontsize=9)
        ax[3].imshow(_signed_image(guided[k][t:b, l:r]))
        ax[3].set_title("guided backprop", fontsize=9)
        for a in ax:
            _ax_off(a)
    ctx.note(model=model.name, layer=layer, receptive_field=f"{rf.size}px, stride {rf.stride}",
             neurons="; ".join(f"{s}: ch {ch} ({y},{xx})" for s, (ch, y, xx) in zip(ph.names, neurons)))
    fig.tight_layout()
    return fig


@figure("cam_two_classes", "CAM, Grad-CAM and guided Grad-CAM for two objects of two classes",
        "Selvaraju et al. 2017, Fig. 1 logic: one image holding two objects of two classes (a boxer and a "
        "Persian cat, two sample photographs side by side, 224 x 448 px; SqueezeNet is fully convolutional). "
        "Each column explains one class: CAM (Zhou et al. 2016; SqueezeNet's class maps, classifier.2), Grad-CAM "
        "at fire9 (features.12; for a global-average-pooled network Grad-CAM is CAM up to the ReLU in the "
        "classifier, so the two agree here, as Selvaraju et al. §3.1 show), guided backprop (only weakly "
        "class-specific: its two columns differ in detail but share most of their structure) and guided Grad-CAM "
        "(guided backprop x Grad-CAM), which keeps mostly the evidence of the column's class (faint traces of "
        "the other object remain). The correlation of "
        "the two columns' maps, per method, is measured and printed above the panels: compare the class maps' with "
        "guided backprop's. The notes give each map's share on its own object's half.",
        order=302, photos="ImageNet sample: boxer, Persian cat", size="224 x 448",
        layer="CAM: classifier.2; Grad-CAM: features.12 (fire9)")
def cam_two_classes(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz import cam as camlib
    from jaxviz.accel import xla
    from jaxviz.render import overlay
    from jaxviz.saliency import guided_backprop

    model = classifier(ctx)
    labels = model.labels
    ph = sample_photos(ctx, model, TWO_CLASSES)
    if ph.rows[0]["class"] < 0:  # built-in photos (no ../shared): the cat and the coffee cup
        ph = sample_photos(ctx, model, [], count=2)
    image = np.concatenate([ph.images[0], ph.images[1]], axis=1)  # (224, 448, 3)
    x = model.preprocess(jnp.asarray(image[None]))
    classes = jnp.asarray(ph.index)
    x2 = jnp.repeat(x, 2, axis=0)
    cam_layer, feature_layer = model.cam_layer or model.feature_layer, model.feature_layer
    weights = camlib.cam_weights(model, layer=cam_layer)
    options = model.compiler_options

    def maps(p, x, i):
        return (camlib.cam(model, p, x, layer=cam_layer, weights=weights, index=i),
                camlib.grad_cam(model, p, x, layer=feature_layer, index=i),
                guided_backprop(model, p, x, index=i),
                camlib.guided_grad_cam(model, p, x, layer=feature_layer, index=i))
    cams, gcs, gbs, ggcs = (np.asarray(a) for a in xla.jit(maps, options)(model.params, x2, classes))
    logits = np.asarray(model.apply(model.params, x))[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    rank = {int(c): int((logits > logits[int(c)]).sum()) + 1 for c in ph.index}
    half = image.shape[1] // 2

    def own_share(m, row):  # the share of the map's mass on the row's own object
        side = m[:, :half] if row == 0 else m[:, half:]
        return float(side.sum() / max(m.sum(), 1e-12))

    fig, axes = plt.subplots(5, 2, figsize=(10.5, 13.2), squeeze=False)
    titles = [f"CAM ({cam_layer})", f"Grad-CAM ({feature_layer})", "guided backprop", "guided Grad-CAM"]
    for row in range(2):
        cls = int(ph.index[row])
        axes[0, row].imshow(image)
        axes[0, row].set_title(f"explaining '{labels[cls]}'\n(p {probs[cls]:.3f}, rank {rank[cls]} of 1000)",
                               fontsize=TITLE)
        panels = [overlay(image, cams[row]), overlay(image, gcs[row]), map_display(gbs[row], 99.5),
                  map_display(ggcs[row], 99.5)]
        for r, (panel, title) in enumerate(zip(panels, titles), start=1):
            axes[r, row].imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            axes[r, row].set_title(f"{title}: {_short(labels[cls], 18)}", fontsize=TITLE)
        for ax in axes[:, row]:
            _ax_off(ax)
        name = labels[cls]
        ctx.note(**{f"'{name}': share on its own object (CAM / Grad-CAM / guided Grad-CAM)":
                    f"{own_share(cams[row], row):.2f} / {own_share(gcs[row], row):.2f} / "
                    f"{own_share(ggcs[row], row):.2f}"})
    def corr(m):  # Pearson correlation of the two rows' maps (the issue's test: two classes, two places)
        return float(np.corrcoef(m[0].ravel(), m[1].ravel())[0, 1])
    corrs = {"CAM": corr(cams), "Grad-CAM": corr(gcs), "guided backprop": corr(gbs), "guided Grad-CAM": corr(ggcs)}
    top5 = np.argsort(logits)[::-1][:5]
    ctx.note(model=model.name, **{"top 5 on the pair": ", ".join(f"{labels[int(i)]} {probs[int(i)]:.2f}" for i in top5)},
             **{f"correlation of the two rows' maps, {k}": round(v, 3) for k, v in corrs.items()})
    fig.suptitle("correlation of the two classes' maps: " + ", ".join(f"{k} {v:.2f}" for k, v in corrs.items()),
                 fontsize=TITLE + 1)
    fig.tight_layout(rect=(0, 0, 1, 0.99))
    return fig


COMPARISON_METHODS = [
    ("vanilla gradient", "Simonyan 2014"), ("SmoothGrad", "Smilkov 2017"), ("Integrated Gradients", "Sundararajan 2017"),
    ("guided backprop", "Springenberg 2015"), ("deconvnet", "Zeiler 2014"), ("CAM", "Zhou 2016"),
    ("Grad-CAM", "Selvaraju 2017"), ("Grad-CAM++", "Chattopadhyay 2018"), ("occlusion", "Zeiler 2014")]
COLUMN_LABELS = {"vanilla gradient": "vanilla", "Integrated Gradients": "Integr. Gradients"}


@figure("attribution_comparison", "Nine attribution methods on the same photographs",
        "Nine methods explain each photo's class. CAM, Grad-CAM and Grad-CAM++ land on the object in every "
        "row. Vanilla, "
        "Integrated Gradients outline the penguin and broccoli (guided backprop: a speckled blob over them), "
        "but on the balloons also light the sky between them. On this network three pixel-space methods do not look like their "
        "papers' figures: SmoothGrad is a diffuse cloud, no sharper than the plain gradient (Smilkov et al. "
        "show it sharper on Inception), guided backprop is speckle without the crisp edges Springenberg et al. "
        "show on their all-convolutional net, and the deconvnet shows only the network's stride checkerboard, "
        "alike on every photo. EfficientNet-Lite0; occlusion on SqueezeNet 1.1 (cheaper forward "
        "passes). Grey: max over RGB of |attribution|, 99th-percentile clip; "
        f"SmoothGrad {SMOOTH_SAMPLES} copies, {SMOOTH_NOISE:.0%} noise; "
        "Integrated Gradients 16 steps from a zero baseline (the mean image). Heat: CAM, Grad-CAM and "
        "Grad-CAM++ on the 7 x 7 last feature map (CAM and Grad-CAM coincide under global average pooling; "
        "Grad-CAM++ weighs the channels differently and differs a little); occlusion "
        "(32 px grey window, logit drop) is coarser.",
        order=299, photos="ImageNet sample: king penguin, hot-air balloon, Norfolk terrier, broccoli",
        smoothgrad=f"{SMOOTH_SAMPLES} samples, noise {SMOOTH_NOISE}", integrated_gradients="16 steps, zero baseline",
        cam_layers="CAM and Grad-CAM(++): the last feature map (EfficientNet-Lite0 head, 7 x 7)",
        occlusion="SqueezeNet 1.1, window 32 px, stride 16, grey")
def attribution_comparison(ctx: Context):
    import time

    import jax
    import matplotlib.pyplot as plt

    from jaxviz import cam as camlib
    from jaxviz import saliency
    from jaxviz.accel import xla
    from jaxviz.occlusion import occlusion_map
    from jaxviz.render import overlay

    model = gradient_classifier(ctx)
    ph = sample_photos(ctx, model, COMPARISON_CLASSES, count=2 if ctx.quick else None)
    samples, steps = (4, 4) if ctx.quick else (SMOOTH_SAMPLES, 16)
    window, stride = (32, 16)
    cam_layer, feature_layer = model.cam_layer or model.feature_layer, model.feature_layer
    weights = camlib.cam_weights(model, layer=cam_layer)
    key = jax.random.key(0)

    def pixel_maps(p, x, i):
        return {"vanilla gradient": saliency.vanilla_saliency(model, p, x, index=i),
                "SmoothGrad": saliency.smoothgrad(model, p, x, index=i, key=key, samples=samples, noise=SMOOTH_NOISE),
                "Integrated Gradients": saliency.integrated_gradients(model, p, x, index=i, steps=steps),
                "guided backprop": saliency.guided_backprop(model, p, x, index=i),
                "deconvnet": saliency.deconvnet(model, p, x, index=i),
                "CAM": camlib.cam(model, p, x, layer=cam_layer, weights=weights, index=i),
                "Grad-CAM": camlib.grad_cam(model, p, x, layer=feature_layer, index=i),
                "Grad-CAM++": camlib.grad_cam_plus_plus(model, p, x, layer=feature_layer, index=i)}

    index = jax.numpy.asarray(ph.index)
    t0 = time.perf_counter()
    maps = {k: np.asarray(v) for k, v in xla.jit(pixel_maps, model.compiler_options)(model.params, ph.x, index).items()}
    t1 = time.perf_counter()
    # occlusion needs ~170 forward passes a photo: on SqueezeNet (cheap), which classifies these photos as well
    occ_model = classifier(ctx)
    occ = ph if occ_model is model else sample_photos(ctx, occ_model, COMPARISON_CLASSES, count=len(ph.images))
    maps["occlusion"] = np.asarray(occlusion_map(occ_model, occ_model.params, occ.x, index=jax.numpy.asarray(occ.index),
                                                 window=window, stride=stride, fill="grey", incremental=True))
    t2 = time.perf_counter()
    heat = {"CAM", "Grad-CAM", "Grad-CAM++", "occlusion"}
    n, cols = len(ph.images), 1 + len(COMPARISON_METHODS)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.72 * n + 0.9), squeeze=False)
    for row in range(n):
        axes[row, 0].imshow(ph.images[row])
        axes[row, 0].set_ylabel(f"{_short(ph.names[row], 16)}\np {ph.probs[row]:.2f}", fontsize=TITLE + 2)
        for col, (name, _) in enumerate(COMPARISON_METHODS, start=1):
            m = maps[name][row]
            if name in heat:
                image = occ.images[row] if name == "occlusion" else ph.images[row]
                axes[row, col].imshow(overlay(image, np.maximum(m, 0), alpha=0.5))
            else:
                axes[row, col].imshow(map_display(m), cmap="gray")
        for ax in axes[row]:
            _ax_off(ax)
    axes[0, 0].set_title("photo", fontsize=TITLE + 1)
    for col, (name, paper) in enumerate(COMPARISON_METHODS, start=1):
        label = COLUMN_LABELS.get(name, name) + ("\n(SqueezeNet)" if name == "occlusion" and occ_model is not model else "")
        axes[0, col].set_title(f"{label}\n{paper}", fontsize=TITLE + 1)
    ctx.note(model=model.name, **{"seconds, gradient and CAM methods": round(t1 - t0, 1),
                                  "seconds, occlusion": round(t2 - t1, 1),
                                  "predicted correctly": f"{int((ph.predicted == ph.index).sum())} of {n}"})
    fig.tight_layout(h_pad=0.5, w_pad=0.3)
    return fig
