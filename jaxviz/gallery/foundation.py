"""Foundation figures: predictions of every available model, and a model/layer summary."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

SAMPLE_PHOTOS = ["chelsea", "coffee", "astronaut", "rocket"]


@figure("predictions", "Predictions on the sample images",
        "Top-3 ImageNet classes of each available classifier on scikit-image's sample photos "
        "(resized and centre-cropped by the evaluation transform).", order=0, images=SAMPLE_PHOTOS, topk=3)
def predictions(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.accel import accelerate, xla
    from jaxviz.classify import top_k
    from jaxviz.images import load_images

    names = ctx.classifiers()
    fig, axes = plt.subplots(len(names), len(SAMPLE_PHOTOS), figsize=(3.2 * len(SAMPLE_PHOTOS), 3.6 * len(names)),
                             squeeze=False)
    for row, name in enumerate(names):
        model = accelerate(ctx.model(name))
        labels = model.labels
        images = load_images(SAMPLE_PHOTOS, model.input_size)
        probs, idx = xla.jit(lambda p, x: top_k(model, p, x, 3), model.compiler_options)(
            model.params, model.preprocess(images))
        ctx.note(**{f"{name} top-1": ", ".join(f"{s}: {labels[int(i[0])]} {float(p[0]):.3f}"
                                                 for s, p, i in zip(SAMPLE_PHOTOS, probs, idx))})
        for col, (image, p, i) in enumerate(zip(images, probs, idx)):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title("\n".join(f"{float(pp):.2f} {labels[int(ii)][:22]}" for pp, ii in zip(p, i)),
                         fontsize=8, loc="left")
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    fig.tight_layout()
    return fig


@figure("model_summary", "Models and their layers",
        "Output size, stride and receptive field of every named layer, computed from the architecture "
        "(kernel, stride, padding) of each available model at 224 px.", order=1)
def model_summary(ctx: Context):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name in ctx.models:
        model = ctx.model(name)
        fields, shapes = model.receptive_fields(), model.layer_shapes()
        spatial = [n for n in model.layer_names if len(shapes[n]) == 3 and fields and n in fields]
        depth = np.arange(len(spatial))
        axes[0].plot(depth, [fields[n].size for n in spatial], marker=".", label=name)
        axes[1].plot(depth, [np.prod(shapes[n]) / 1e3 for n in spatial], marker=".", label=name)
        ctx.note(**{f"{name} layers": len(model.layer_names),
                    f"{name} parameters": int(sum(np.prod(p.shape) for p in _leaves(model.params)))})
    axes[0].set(xlabel="layer (spatial layers, in order)", ylabel="receptive field (px)",
                title="Receptive field grows with depth")
    axes[1].set(xlabel="layer (spatial layers, in order)", ylabel="activation size (k values)",
                yscale="log", title="Activation size per image")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _leaves(tree):
    import jax
    return jax.tree_util.tree_leaves(tree)
