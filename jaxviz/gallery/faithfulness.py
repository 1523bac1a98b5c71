"""Faithfulness figures: saliency segmentation (Simonyan et al. 2014 §3.1), deletion / insertion
curves (Petsiuk et al. 2018) and the cascading model-randomisation sanity check (Adebayo et al. 2018)."""
from __future__ import annotations

from functools import partial

import numpy as np

from jaxviz.gallery import Context, figure

# ImageNet classes of the sample photographs (one clear object on a distinct background each for
# the segmentation, as Simonyan et al.'s examples). Without ../shared the built-in photos are used.
SEGMENT_CLASSES = [22, 145, 1, 15]          # bald eagle, king penguin, goldfish, robin
CURVE_CLASSES = [263, 323, 388, 145, 417, 185]  # Pembroke, monarch, giant panda, king penguin, balloon, Norfolk terrier
SANITY_CLASS = 263                           # Pembroke: the dog stands off-centre (see sanity_check)
CURVE_STEPS = 16


def _methods(model, with_smoothgrad: bool = True) -> dict:
    """Name -> ``method(model, params, x, target, index=...)`` from jaxviz.saliency / jaxviz.cam."""
    import jax

    from jaxviz import saliency
    from jaxviz.cam import grad_cam
    methods = {"vanilla gradient": saliency.vanilla_saliency}
    if with_smoothgrad:
        methods["SmoothGrad (16 samples)"] = partial(saliency.smoothgrad, key=jax.random.key(0), samples=16)
    methods[f"Grad-CAM ({model.feature_layer})"] = partial(grad_cam, layer=model.feature_layer)
    return methods


def _jit(model, method):
    """``method(model, params, x, target, index=)`` jitted with the model's compiler options."""
    from jaxviz.accel import xla
    return xla.jit(method, model.compiler_options, static_argnums=(0, 3))


def _off(ax):
    ax.set_xticks([]), ax.set_yticks([])


def _seed_overlay(m: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """A saliency map in grey with the object seeds tinted red and the background seeds blue."""
    from jaxviz.gallery.attribution import map_display
    grey = np.repeat(map_display(m)[..., None], 3, axis=-1)
    out = np.where(fg[..., None], 0.45 * grey + 0.55 * np.array([1.0, 0.1, 0.1]), grey)
    return np.where(bg[..., None], 0.6 * grey + 0.4 * np.array([0.15, 0.35, 1.0]), out)


@figure("saliency_segmentation", "Saliency -> object segmentation",
        "Simonyan, Vedaldi & Zisserman 2014 §3.1 on photographs with one clear object: the saliency map (max "
        "over RGB of |d logit / d x| for the photo's class, full resolution) seeds the object with its 5% most "
        "salient pixels (red: the 95% quantile) and the background with its 30% least salient (blue); colour "
        "Gaussian mixtures (5 components each) are fitted to the seeds and a graph cut (contrast-sensitive "
        "Potts, 8 neighbours, 112 px grid) labels every pixel; the mixtures are refitted to the labelling "
        "and the cut repeated until it no longer changes (GrabCut iterations, at most 10). Seeds come from the "
        "map lightly smoothed (sigma 4 px): the raw gradient is speckled. Columns 2-3 use the vanilla gradient "
        "(the paper's), 4-5 SmoothGrad (Smilkov et al. 2017, 16 samples) for comparison; the mask is the "
        "tinted region, outlined in yellow. Both cover the objects; the vanilla-gradient masks follow the "
        "outlines but miss parts whose colour differs from the seeded body (the goldfish's fins and tail, the "
        "robin's dark head, the eagle's wing tips); SmoothGrad's wider seeds give fuller masks (tail and head "
        "included) with a few blocky spills into the background (a patch of sky beside the eagle's wing).",
        order=330, photos="ImageNet sample: bald eagle, king penguin, goldfish, robin", fg_quantile=0.95,
        bg_quantile=0.3, gmm_components=5, max_rounds=10)
def saliency_segmentation(ctx: Context):
    import time

    import jax
    import matplotlib.pyplot as plt

    from jaxviz.accel import xla
    from jaxviz.gallery.attribution import TITLE, classifier, sample_photos
    from jaxviz.saliency import smoothgrad, vanilla_saliency
    from jaxviz.segment import mask_overlay, saliency_seeds, segment_from_saliency

    model = classifier(ctx)
    ph = sample_photos(ctx, model, SEGMENT_CLASSES, count=2 if ctx.quick else None)
    samples = 4 if ctx.quick else 16
    index = jax.numpy.asarray(ph.index)

    def maps(p, x, i):
        return (vanilla_saliency(model, p, x, index=i),
                smoothgrad(model, p, x, index=i, key=jax.random.key(0), samples=samples))
    vanilla, smooth = (np.asarray(a) for a in xla.jit(maps, model.compiler_options)(model.params, ph.x, index))
    n = len(ph.images)
    fig, axes = plt.subplots(n, 5, figsize=(14.5, 3.05 * n + 0.3), squeeze=False)
    shares, t0 = {}, time.perf_counter()
    for row, image in enumerate(ph.images):
        tiles = [(image, f"{ph.names[row]} (p {ph.probs[row]:.2f})", None)]
        for method, m in (("vanilla", vanilla[row]), ("SmoothGrad", smooth[row])):
            fg, bg = saliency_seeds(m)
            mask = segment_from_saliency(image, m)
            shares[f"{ph.names[row]} ({method})"] = f"{100 * mask.mean():.0f}%"
            tiles += [(_seed_overlay(m, fg, bg), f"{method}: seeds", None),
                      (mask_overlay(image, mask), f"mask from {method}", mask)]
        for ax, (tile, title, mask) in zip(axes[row], tiles):
            ax.imshow(tile)
            if mask is not None:  # the mask's outline, so the cut reads at a glance
                ax.contour(mask.astype(float), levels=[0.5], colors="yellow", linewidths=1.2)
            ax.set_title(title, fontsize=TITLE)
            _off(ax)
    ctx.note(model=model.name, seconds_graph_cuts=round(time.perf_counter() - t0, 1),
             **{"object share of image": shares})
    fig.tight_layout()
    return fig


@figure("deletion_insertion", "Deletion and insertion curves",
        "Petsiuk et al. 2018 (RISE): pixels are replaced by a blurred copy (deletion) or restored on the "
        "blurred image (insertion) in decreasing order of saliency, 16 equal steps; the curve is the softmax "
        "probability of the photo's class, averaged over six sample photographs; legend: mean AUC (trapezoid "
        "rule). Lower deletion / higher insertion AUC = more faithful; the dashed line is a random pixel "
        "order, the baseline a method has to beat. Under the plots, computed from the plotted numbers: each "
        "panel's ranking by mean AUC and the photos on which a method does worse than the random order "
        "(per-photo AUCs in the notes). Six photos and no error band: close means do not rank methods "
        "reliably. The vanilla gradient's top pixels are the scattered high-frequency speckle and 4 px grid of "
        "its map (saliency_vanilla), where SmoothGrad and Grad-CAM put the object's region first. "
        "Insertion separates the methods more clearly than deletion.", order=331, photos="ImageNet sample: Pembroke, monarch, giant panda, king penguin, "
        "balloon, Norfolk terrier", steps=CURVE_STEPS, baseline="blur (sigma 5 px)")
def deletion_insertion_curves(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz.gallery.attribution import classifier, sample_photos
    from jaxviz.metrics import deletion_insertion, random_order_maps
    from jaxviz.targets import Target

    model = classifier(ctx)
    ph = sample_photos(ctx, model, CURVE_CLASSES, count=2 if ctx.quick else None)
    steps = 4 if ctx.quick else CURVE_STEPS
    x, index = ph.x, jax.numpy.asarray(ph.index)
    maps = {name: _jit(model, method)(model, model.params, x, Target(), index=index)
            for name, method in _methods(model).items()}
    maps["random order"] = random_order_maps(jax.random.key(0), x.shape[:3])
    fractions = np.linspace(0, 1, steps + 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    aucs, per_photo = {}, {"deletion": {}, "insertion": {}}
    for name, m in maps.items():
        out = deletion_insertion(model, model.params, x, m, index, steps=steps)
        style = {"ls": "--", "color": "gray"} if name == "random order" else {}
        for ax, kind in zip(axes, ["deletion", "insertion"]):
            auc = float(out[f"{kind}_auc"].mean())
            ax.plot(fractions, np.asarray(out[kind]).mean(0), label=f"{name}: AUC {auc:.3f}", **style)
            per_photo[kind][name] = np.asarray(out[f"{kind}_auc"], np.float64)
            aucs[f"{kind} AUC, {name}"] = ", ".join(f"{v:.3f}" for v in per_photo[kind][name])
    summary = _auc_summary(per_photo, ph.names)
    for ax, kind in zip(axes, ["deletion", "insertion"]):
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}", fontsize=11)
        ax.set_ylabel("p(class)", fontsize=11)
        ax.set_title(f"{kind} ({model.name}, mean over {len(ph.images)} photos)", fontsize=12)
        ax.legend(fontsize=10)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
    ctx.note(model=model.name, **{"per-photo AUCs, in the order": ", ".join(ph.names)}, **aucs,
             **{f"{kind} (from the plotted AUCs)": text for kind, text in summary.items()})
    fig.text(0.01, 0.01, "\n".join(f"{kind}: {text}".replace("; worse", ";\n    worse")
                                   for kind, text in summary.items()), fontsize=9.5, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


def _auc_summary(per_photo: dict, names) -> dict:
    """Per kind: the methods ranked by mean AUC (most faithful first) and, per method, the photos on
    which it does worse than the random order (deletion: higher AUC; insertion: lower)."""
    out = {}
    for kind, by_method in per_photo.items():
        better_low = kind == "deletion"
        means = {m: float(v.mean()) for m, v in by_method.items()}
        ranked = sorted(means, key=lambda m: means[m], reverse=not better_low)
        text = ("mean AUC, best to worst: " + ", ".join(f"{m} {means[m]:.3f}" for m in ranked))
        random = by_method.get("random order")
        if random is not None:
            worse = []
            for m, v in by_method.items():
                if m == "random order":
                    continue
                bad = [n for n, a, r in zip(names, v, random) if (a > r if better_low else a < r)]
                if bad:
                    worse.append(f"{m} on {', '.join(bad)}")
            text += "; worse than random: " + ("; ".join(worse) if worse else "no method on any photo")
        out[kind] = text
    return out


def _edge_detector(model, params, x, target=None, index=None):
    """A control 'saliency method' that never looks at the model: image gradient magnitude."""
    import jax.numpy as jnp
    grey = x.mean(axis=-1)
    return (jnp.abs(jnp.diff(grey, axis=1, append=grey[:, -1:]))
            + jnp.abs(jnp.diff(grey, axis=2, append=grey[:, :, -1:])))


@figure("sanity_check", "Model-randomisation sanity check",
        "Adebayo et al. 2018, cascading randomisation on a sample photograph (Pembroke): the layers are "
        "re-initialised from the logits down (same shape and scale, new random values) and the map "
        "recomputed; each title gives the layer randomised last and the Spearman rank correlation (rho) with "
        "the trained model's map. The check's verdict (jaxviz.metrics.randomisation_flag) looks at the fully "
        "randomised network: a method passes when |rho| <= 0.5 there; an edge detector, which ignores the "
        "model, is the control that must be flagged (rho 1 everywhere). The depth at which a map lets go "
        "matters as much (mean |rho| over the depths under each verdict): the vanilla gradient changes as soon "
        "as the logits are randomised (0.59) and keeps falling; guided backprop, as Adebayo et al. found, "
        "barely notices the top of the network (rho 0.97 with random logits, still 0.62 with every layer "
        "down to fire3 random; the dog stays visible) and only passes once the first layers go. "
        "Grad-CAM maps of the randomised networks keep a fixed spatial pattern from the zero padding (bright "
        "or dark borders and centre, right-hand columns), so their rho never falls to 0, and a photo whose "
        "object is centred can correlate with that pattern by position alone; the object here stands "
        "off-centre.",
        order=332, photo="ImageNet sample: Pembroke", threshold=0.5)
def sanity_check(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz.gallery.attribution import classifier, map_display, sample_photos
    from jaxviz.metrics import cascading_maps, randomisation_flag, spearman
    from jaxviz.targets import Target

    model = classifier(ctx)
    ph = sample_photos(ctx, model, [SANITY_CLASS])
    x = ph.x
    from jaxviz.saliency import guided_backprop
    base = _methods(model, with_smoothgrad=False)
    gradcam = next(k for k in base if k.startswith("Grad-CAM"))
    # Adebayo et al.'s headline contrast: the gradient passes, guided backprop barely changes
    methods = {"vanilla gradient": base["vanilla gradient"], "guided backprop": guided_backprop,
               gradcam: base[gradcam], "edge detector (control)": _edge_detector}
    key = jax.random.key(0)
    rows = []
    for name, method in methods.items():
        layers, original, randomised = cascading_maps(method, model, model.params, x, Target(index=int(ph.index[0])),
                                                      key=key)
        results = [(layer, spearman(original, m)) for layer, m in zip(layers, randomised)]
        maps = [original[0]] + [m[0] for m in randomised]
        rows.append((name, results, maps))
        ctx.note(**{f"{name}: rho by layer": ", ".join(f"{l} {float(r[0]):.2f}" for l, r in results),
                    f"{name}: flagged": randomisation_flag(results)})
    cols = len(rows[0][2]) + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.08 * cols, 1.62 * len(rows) + 0.2), squeeze=False)
    for r, (name, results, maps) in enumerate(rows):
        flagged = randomisation_flag(results)
        axes[r, 0].imshow(ph.images[0])
        mean = float(np.mean([abs(float(np.mean(rho))) for _, rho in results]))
        axes[r, 0].set_ylabel(f"{name.replace(' (', chr(10) + '(')}\n{'FLAGGED' if flagged else 'passes'}\n"
                              f"mean |rho| {mean:.2f}", fontsize=9.5)
        for c, m in enumerate(maps, start=1):
            m = np.asarray(m)
            axes[r, c].imshow(map_display(m) if "Grad-CAM" not in name else m / max(float(m.max()), 1e-12),
                              cmap="gray")
            axes[r, c].set_title("trained" if c == 1 else
                                 f"{results[c - 2][0].replace('features', 'feat')}\nrho {float(results[c - 2][1][0]):.2f}",
                                 fontsize=9)
        for ax in axes[r]:
            _off(ax)
    fig.tight_layout(h_pad=0.4, w_pad=0.2)
    return fig
