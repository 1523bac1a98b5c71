"""Texture-vs-shape bias figures (issue 7; Geirhos et al., ICLR 2019): the cue-conflict grid with
each classifier's decision under each image, and the shape bias per model with its counts.

Both figures share one cue-conflict set (built once per process, ``_study``). CPU budget: the
set is VGG19 Gatys style transfer of every ordered pair of 4 sources (12 pairs) at a small size,
all pairs in one batched Adam optimisation. ``grid_figure``, ``bar_figure`` and ``study_figure``
also draw the ``jaxviz bias`` command's output.
"""
from __future__ import annotations

import math

import numpy as np

from jaxviz.bias import STYLE_DEFAULTS
from jaxviz.gallery import Context, figure

SIZE, CLASSES, STEPS = 112, 4, 60
LEARNING_RATE = 4.0
CUE_COLOURS = {"shape": "tab:blue", "texture": "tab:orange", "other": "0.45"}
SHORT = {"squeezenet1_1": "SqN1.1", "squeezenet1_0": "SqN1.0", "efficientnet_lite0": "Lite0"}

_CACHE: dict = {}


def _short(name: str) -> str:
    return SHORT.get(name, name[:10])


def _study(ctx: Context):
    """The gallery's cue-conflict study (cached per process: both figures use the same set)."""
    from jaxviz import bias
    from jaxviz.accel import accelerate
    names = tuple(ctx.classifiers())
    key = (names, SIZE, CLASSES, STEPS, LEARNING_RATE)
    if key not in _CACHE:
        classifiers = [accelerate(ctx.model(n)) for n in names]
        sources = bias.select_sources(classifiers, bias.candidate_images(SIZE), max_classes=CLASSES)
        _CACHE[key] = bias.bias_study(classifiers, accelerate(ctx.model(bias.STYLE_NETWORK)), sources, steps=STEPS,
                                      learning_rate=LEARNING_RATE)
    study = _CACHE[key]
    ctx.note(sources=", ".join(f"{s.name} ({_label(s.label)})" for s in study.sources),
             pairs=len(study.pairs), build_seconds=round(study.seconds, 1),
             style_weight=study.settings["style_weight"], learning_rate=study.settings["learning_rate"],
             **{f"shape bias {m}": _bias_text(c) for m, c in study.bias.items()},
             **{f"shape bias {m} (unrestricted top-1)": _bias_text(c) for m, c in study.bias_top1.items()})
    return study


def _label(index: int, width: int = 16) -> str:
    from jaxviz.labels import imagenet_labels
    return imagenet_labels()[index][:width]


def _bias_text(count) -> str:
    return f"{count.text} (shape {count.shape}, texture {count.texture}, other {count.other} of {count.total})"


def grid_figure(study, fig=None):
    """Rows = shape (content) source, columns = texture (style) source; the first row/column show
    the sources; under each cue-conflict image, each model's forced choice among the study's
    categories, coloured by the cue it followed, then its unrestricted top-1 with probability."""
    import matplotlib.pyplot as plt
    n = len(study.sources)
    models = list(study.bias)
    if fig is None:
        fig = plt.figure(figsize=(1.9 * (n + 1), (1.9 + 0.4 * len(models)) * (n + 1)))
    axes = fig.subplots(n + 1, n + 1, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    axes[0, 0].text(0.5, 0.5, "shape ↓\ntexture →", ha="center", va="center", fontsize=9,
                    transform=axes[0, 0].transAxes)
    for i, s in enumerate(study.sources):
        for ax in (axes[i + 1, 0], axes[0, i + 1]):
            ax.imshow(np.clip(s.image, 0, 1))
            ax.set_title(f"{s.name[:18]}\n{_label(s.label)}", fontsize=7)
    for (i, j), image, rec in zip(study.pairs, study.images, study.records):
        ax = axes[int(i) + 1, int(j) + 1]
        ax.imshow(np.clip(image, 0, 1))
        for k, (m, d) in enumerate(rec["decisions"].items()):
            choice, top = d["choice"], d["top1"]
            text = f"{_short(m)}: {choice['label'][:14]}\n(top-1 {top['label'][:13]} {top['prob']:.2f})"
            ax.text(0.5, -0.03 - 0.2 * k, text, fontsize=5.5, ha="center", va="top",
                    color=CUE_COLOURS[choice["cue"]], transform=ax.transAxes)
    names = {"shape": "follows the shape (row)", "texture": "follows the texture (column)",
             "other": "a third category"}
    handles = [plt.Line2D([], [], color=c, marker="s", ls="", label=names[cue]) for cue, c in CUE_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def bar_figure(study, fig=None):
    """Shape bias per model (shape / (shape + texture)) with the decision counts."""
    import matplotlib.pyplot as plt
    if fig is None:
        fig = plt.figure(figsize=(1.8 + 1.6 * len(study.bias), 3.2))
    ax = fig.subplots()
    names = list(study.bias)
    values = [0.0 if math.isnan(c.bias) else c.bias for c in study.bias.values()]
    ax.bar(range(len(names)), values, color="tab:blue", width=0.6)
    for k, (m, c) in enumerate(study.bias.items()):
        text = f"{c.text}\nS {c.shape} / T {c.texture}\nother {c.other} of {c.total}"
        t1 = study.bias_top1.get(m)
        if t1 is not None:
            text += f"\ntop-1: {t1.text}\nS {t1.shape} / T {t1.texture} / o {t1.other}"
        ax.text(k, values[k] + 0.02, text, ha="center", va="bottom", fontsize=7)
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), [_short(n) for n in names])
    ax.set_ylim(0, 1.6)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("shape bias")
    ax.set_title("shape / (shape + texture) decisions", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def study_figure(study):
    """The grid above and the shape-bias bars below, in one figure (``jaxviz bias --out``)."""
    import matplotlib.pyplot as plt
    n = len(study.sources)
    width = max(1.9 * (n + 1), 5.0)
    grid_h = (1.9 + 0.4 * len(study.bias)) * (n + 1)
    fig = plt.figure(figsize=(width, grid_h + 3.2))
    top, bottom = fig.subfigures(2, 1, height_ratios=[grid_h, 3.2])
    grid_figure(study, top)
    bar_figure(study, bottom)
    return fig


CAPTION = (f"Cue-conflict images made with our Gatys style transfer (VGG19, original weights; content "
           f"conv4_2, styles conv1_1…conv5_1, α = {STYLE_DEFAULTS['content_weight']:g}, "
           f"β = {STYLE_DEFAULTS['style_weight']:g}; Adam, lr {LEARNING_RATE:g}, {STEPS} steps from the content "
           f"image; all pairs in one batched optimisation) at {SIZE} px: the shape of the row's source "
           f"in the texture of the column's. Sources: sample photos and their centre crops / mirror images that "
           f"every classifier puts top-1 in the source's class with p ≥ 0.5 at {SIZE} px, the most confident "
           f"image of each of the {CLASSES} most confident classes. Decision (as Geirhos et al.'s 16-way "
           f"mapping): the study category with the highest mean probability over its classes at {SIZE} px; "
           "it follows the shape if it is the row source's class, the texture if the column's (a class of one of "
           "Geirhos et al.'s 16 categories counts as its category, e.g. cat = ImageNet 281–286, lynx excluded; "
           "any other class alone). The unrestricted ImageNet top-1 is recorded too.")


@figure("bias_cue_conflict", "Texture vs shape: cue-conflict images and each model's decision",
        CAPTION + " Text under each image: each model's decision (coloured by the cue it followed: blue "
        "shape, orange texture, grey a third category) and its unrestricted top-1 with probability "
        "(Geirhos et al., ICLR 2019).", order=720, size_px=SIZE, classes=CLASSES, steps=STEPS)
def bias_cue_conflict(ctx: Context):
    return grid_figure(_study(ctx))


@figure("bias_shape_bar", "Texture vs shape: shape bias per model",
        "Shape bias = shape decisions / (shape + texture decisions) over the cue-conflict images of the "
        "previous figure, recounted from the saved per-image decisions; counts under each value (S = shape, "
        "T = texture; 'other' = a third category), then the same for the unrestricted ImageNet top-1. "
        "Geirhos et al. (ICLR 2019) found ImageNet CNNs texture-biased (shape bias well below 0.5 for "
        "AlexNet, VGG-16, GoogLeNet, ResNet-50) and people shape-biased (above 0.9); "
        "ours are a handful of images from a few sample photos, so read the counts, not only the fraction; "
        "and the number depends on how strongly the images are stylised (the style weight β; "
        "scripts/bench_bias.py --style-weight measures it). The measured numbers are in the notes. "
        + CAPTION, order=721, size_px=SIZE, classes=CLASSES, steps=STEPS)
def bias_shape_bar(ctx: Context):
    return bar_figure(_study(ctx))
