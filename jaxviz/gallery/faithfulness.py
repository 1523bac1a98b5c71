"""Faithfulness figures: saliency segmentation (Simonyan et al. 2014 §3.1), deletion / insertion
curves (Petsiuk et al. 2018) and the cascading model-randomisation sanity check (Adebayo et al. 2018)."""
from __future__ import annotations

from functools import partial

import numpy as np

from jaxviz.gallery import Context, figure

SEGMENT_IMAGES = ["chelsea", "coffee", "rocket"]
CURVE_IMAGES = ["chelsea", "coffee", "rocket", "astronaut"]
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


@figure("saliency_segmentation", "Saliency -> object segmentation",
        "Simonyan et al. 2014 §3.1: the 5% most salient pixels (vanilla gradient, and SmoothGrad "
        "with 16 samples for comparison; maps lightly smoothed before seeding) seed the object and the 30% least salient the background; colour GMMs (5 components) and a "
        "graph cut (contrast-sensitive Potts, 8 neighbours, GrabCut-style, 5 rounds) give the mask.",
        order=330, images=SEGMENT_IMAGES, fg_fraction=0.05, bg_fraction=0.3)
def saliency_segmentation(ctx: Context):
    import matplotlib.pyplot as plt

    import jax

    from jaxviz.accel import accelerate
    from jaxviz.images import load_images
    from jaxviz.render import normalize
    from jaxviz.saliency import smoothgrad, vanilla_saliency
    from jaxviz.segment import mask_overlay, segment_from_saliency
    from jaxviz.targets import Target

    model = accelerate(ctx.model(ctx.classifiers()[0]))
    # stretched (not centre-cropped), so that the masks cover the whole photograph
    images = load_images(SEGMENT_IMAGES, model.input_size, "stretch")
    x = model.preprocess(images)
    smooth16 = partial(smoothgrad, key=jax.random.key(0), samples=16)
    maps = {"vanilla": np.asarray(_jit(model, vanilla_saliency)(model, model.params, x, Target())),
            "SmoothGrad": np.asarray(_jit(model, smooth16)(model, model.params, x, Target()))}
    predicted = np.asarray(model.apply(model.params, x)).argmax(-1)
    labels = model.labels
    fig, axes = plt.subplots(len(images), 5, figsize=(15, 3.1 * len(images)), squeeze=False)
    shares = {}
    for row, (name, image, cls) in enumerate(zip(SEGMENT_IMAGES, images, predicted)):
        tiles = [(image, f"{name}: {labels[cls][:24]}")]
        for method, m in maps.items():
            mask = segment_from_saliency(image, m[row])
            shares[f"{name} ({method})"] = f"{100 * mask.mean():.0f}%"
            # Clip at the 99th percentile: a few extreme gradients would otherwise hide the rest.
            tiles += [(normalize(m[row], 0.0, float(np.percentile(m[row], 99))), f"{method} saliency"),
                      (mask_overlay(image, mask), f"mask from {method}")]
        for ax, (tile, title) in zip(axes[row], tiles):
            ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            _off(ax)
    ctx.note(model=model.name, **{"object share of image": shares})
    fig.tight_layout()
    return fig


@figure("deletion_insertion", "Deletion and insertion curves",
        "Petsiuk et al. 2018 (RISE): pixels are replaced by a blurred copy (deletion) or restored on "
        "the blurred image (insertion) in decreasing order of saliency, 16 equal steps; the curve is "
        "the softmax probability of the predicted class, averaged over the images; legend: mean AUC "
        "(trapezoid rule). Lower deletion / higher insertion AUC = more faithful; the dashed line is "
        "a random pixel order.", order=331, images=CURVE_IMAGES, steps=CURVE_STEPS, baseline="blur")
def deletion_insertion_curves(ctx: Context):
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.accel import accelerate
    from jaxviz.images import load_images
    from jaxviz.metrics import deletion_insertion, random_order_maps
    from jaxviz.targets import Target

    model = accelerate(ctx.model(ctx.classifiers()[0]))
    x = model.preprocess(load_images(CURVE_IMAGES, model.input_size))
    index = jnp.argmax(model.apply(model.params, x), axis=-1)
    maps = {name: _jit(model, method)(model, model.params, x, Target(), index=index)
            for name, method in _methods(model).items()}
    maps["random order"] = random_order_maps(jax.random.key(0), x.shape[:3])
    fractions = np.linspace(0, 1, CURVE_STEPS + 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    aucs = {}
    for name, m in maps.items():
        out = deletion_insertion(model, model.params, x, m, index, steps=CURVE_STEPS)
        style = dict(ls="--", color="gray") if name == "random order" else {}
        for ax, kind in zip(axes, ["deletion", "insertion"]):
            auc = float(out[f"{kind}_auc"].mean())
            ax.plot(fractions, np.asarray(out[kind]).mean(0), label=f"{name}: AUC {auc:.3f}", **style)
            aucs[f"{kind} AUC, {name}"] = ", ".join(f"{v:.3f}" for v in np.asarray(out[f"{kind}_auc"]))
    for ax, kind in zip(axes, ["deletion", "insertion"]):
        ax.set(xlabel=f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}",
               ylabel="p(predicted class)", title=f"{kind} ({model.name}, mean over {len(CURVE_IMAGES)} images)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ctx.note(model=model.name, **{f"{k} (per image: {', '.join(CURVE_IMAGES)})": v for k, v in aucs.items()})
    fig.tight_layout()
    return fig


def _edge_detector(model, params, x, target=None, index=None):
    """A control 'saliency method' that never looks at the model: image gradient magnitude."""
    import jax.numpy as jnp
    grey = x.mean(axis=-1)
    return (jnp.abs(jnp.diff(grey, axis=1, append=grey[:, -1:]))
            + jnp.abs(jnp.diff(grey, axis=2, append=grey[:, :, -1:])))


@figure("sanity_check", "Model-randomisation sanity check",
        "Adebayo et al. 2018, cascading randomisation: the layers are re-initialised from the logits "
        "down (same shape and scale, new random values) and the map recomputed; the title gives the "
        "Spearman rank correlation with the trained model's map. An edge detector, which ignores the "
        "model, is the control that must be flagged (mean |rho| > 0.5 with every layer random).",
        order=332, image="chelsea", threshold=0.5)
def sanity_check(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz.accel import accelerate
    from jaxviz.images import load_images
    from jaxviz.metrics import cascading_maps, randomisation_flag, spearman
    from jaxviz.render import normalize
    from jaxviz.targets import Target

    model = accelerate(ctx.model(ctx.classifiers()[0]))
    x = model.preprocess(load_images(["chelsea"], model.input_size))
    methods = _methods(model, with_smoothgrad=False)
    methods["edge detector (control)"] = _edge_detector
    key = jax.random.key(0)
    rows = []
    for name, method in methods.items():
        layers, original, randomised = cascading_maps(method, model, model.params, x, Target(), key=key)
        results = [(layer, spearman(original, m)) for layer, m in zip(layers, randomised)]
        maps = [original[0]] + [m[0] for m in randomised]
        rows.append((name, results, maps))
        ctx.note(**{f"{name}: rho by layer": ", ".join(f"{l} {float(r[0]):.2f}" for l, r in results),
                    f"{name}: flagged": randomisation_flag(results)})
    cols = len(rows[0][2])
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.25 * cols, 1.55 * len(rows)), squeeze=False)
    for r, (name, results, maps) in enumerate(rows):
        flagged = randomisation_flag(results)
        for c, m in enumerate(maps):
            ax = axes[r, c]
            ax.imshow(normalize(np.asarray(m)), cmap="gray")
            _off(ax)
            ax.set_title("trained" if c == 0 else f"-> {results[c - 1][0]}\nrho {float(results[c - 1][1][0]):.2f}",
                         fontsize=6)
        axes[r, 0].set_ylabel(f"{name}\n{'FLAGGED' if flagged else 'passes'}", fontsize=7)
    fig.tight_layout()
    return fig
