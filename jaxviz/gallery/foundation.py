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
        "For every spatial layer of each available model, in forward order and named on the axis: its "
        "receptive field (the input pixels one unit sees, composed from every kernel, stride and padding; "
        "left axis, blue) and its activation size per image (values, log scale; right axis, orange), "
        "at 224 px input. The receptive field grows with depth while the activation shrinks at each "
        "stride-2 layer; EfficientNet-Lite0's nominal field exceeds the image.", order=1)
def model_summary(ctx: Context):
    import matplotlib.pyplot as plt

    names = ctx.models
    loaded = []
    for name in names:
        model = ctx.model(name)
        fields, shapes = model.receptive_fields(224), model.layer_shapes(224)
        loaded.append((model, fields, shapes))
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 3.3 * len(names)), squeeze=False,
                             gridspec_kw={"hspace": 0.95})
    for ax, (model, fields, shapes) in zip(axes[:, 0], loaded):
        short = {v: k for k, v in model.aliases.items() if not k.startswith(("relu", "conv10"))}
        spatial = [n for n in model.layer_names if len(shapes[n]) == 3 and fields and n in fields]
        x = np.arange(len(spatial))
        ax.plot(x, [fields[n].size for n in spatial], marker="o", ms=4, color="tab:blue")
        ax.set_ylabel("receptive field (px)", fontsize=9, color="tab:blue")
        ax.axhline(224, color="0.6", lw=0.8, ls=":")
        right = ax.twinx()
        right.plot(x, [np.prod(shapes[n]) for n in spatial], marker="s", ms=3.5, color="tab:orange")
        right.set_yscale("log")
        right.set_ylabel("activation values", fontsize=9, color="tab:orange")
        labels = [f"{short[n]} ({n})" if n in short and short[n] != n else n for n in spatial]
        ax.set_xticks(x, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=9)
        ax.set_xlim(-0.6, len(spatial) - 0.4)
        ax.grid(alpha=0.3)
        for a in (ax, right):
            a.tick_params(axis="y", labelsize=9)
        params = int(sum(np.prod(p.shape) for p in _leaves(model.params)))
        ax.set_title(f"{model.name}: {len(model.layer_names)} named layers, {params / 1e6:.2f} M parameters",
                     fontsize=10, loc="left")
        ctx.note(**{f"{model.name} layers": len(model.layer_names), f"{model.name} parameters": params})
    return fig


def _leaves(tree):
    import jax
    return jax.tree_util.tree_leaves(tree)
