"""Texture-vs-shape bias figures (Geirhos et al., ICLR 2019): cue-conflict images (the shape of
one photograph, the texture of another) with each classifier's decision, and the shape bias per
model beside the numbers the study reports.

Both figures share one cue-conflict set (built once per process, ``_study``): photographs of
Geirhos et al.'s 16 categories from the ImageNet sample (the built-in photos without it), the
sources every classifier puts in their category (up to PER_CATEGORY each), each source's shape
in the texture of TEXTURES_PER_SHAPE source(s) of other categories. The images are made as the study made its stimuli: Gatys style
transfer at the loss of Gatys's PytorchNeuralStyleTransfer defaults (``bias.gatys_code_weights``),
L-BFGS from the content image, all pairs in one batched run with per-image L-BFGS memories.
``grid_figure``, ``bar_figure`` and ``study_figure`` also draw the ``jaxviz bias`` command's output.
"""
from __future__ import annotations

import math

import numpy as np

from jaxviz.gallery import Context, figure

SIZE, STEPS = 128, 40
PER_CATEGORY = 3  # sources per category (the most confident photographs)
TEXTURES_PER_SHAPE = 1  # texture sources per shape source (the budget: one batched run of every pair)
TEXTURE_FRACTION = 0.5  # the style image is the central half of the texture source (a close-up)
PHOTOS_PER_CATEGORY = 6  # candidate photographs loaded per category (dog and bird have 100+)
CLASSES = 16  # categories at most (all of Geirhos et al.'s)
CUE_COLOURS = {"shape": "tab:blue", "texture": "tab:orange", "other": "0.4"}
SHORT = {"squeezenet1_1": "SqueezeNet 1.1", "squeezenet1_0": "SqueezeNet 1.0", "efficientnet_lite0": "EffNet-Lite0"}
# What Geirhos et al. report (shape bias = shape / (shape + texture) decisions on their 1,280
# cue-conflict images): humans in the paper (Fig. 4), ResNet-50 with the mean-probability
# mapping we use, AlexNet and VGG-16 in torchvision (rgeirhos/texture-vs-shape README).
REPORTED = (("humans (paper)", 0.959), ("ResNet-50 (repo README)", 0.2139), ("AlexNet, torchvision (README)", 0.253),
            ("VGG-16, torchvision (README)", 0.092))

_CACHE: dict = {}


def _short(name: str) -> str:
    return SHORT.get(name, name[:14])


def _category(classes) -> str:
    from jaxviz.bias import category_name
    from jaxviz.labels import imagenet_labels
    return category_name(classes) or imagenet_labels()[classes[0]][:14]


def _candidates(ctx: Context, size: int, per_category: int):
    """Photographs of the 16 categories (a few per category), else the built-in photos."""
    from jaxviz import bias, datasets
    rows = ctx.photos()
    if not rows:
        return datasets.candidate_images(size), "built-in sample photos and their crops"
    members = {c: name for name, group in bias.GEIRHOS_CATEGORIES.items() for c in group}
    by_category: dict[str, list] = {}
    for r in rows:
        if r["class"] in members:
            by_category.setdefault(members[r["class"]], []).append(r)
    chosen = []
    for group in by_category.values():  # spread over the category's classes (dogs: 118 breeds)
        step = max(1, len(group) // per_category)
        chosen += group[::step][:per_category]
    return datasets.photo_candidates(chosen, size), f"{len(chosen)} ImageNet-sample photographs of the 16 categories"


def _interleave(sources):
    """Sources ordered first-of-each-category, then second-of-each...: the cyclic pairing
    (``bias.pairs``) then gives each shape textures of different categories."""
    groups: dict = {}
    for s in sources:
        groups.setdefault(frozenset(s.classes), []).append(s)
    out, k = [], 0
    while len(out) < len(sources):
        out += [g[k] for g in groups.values() if k < len(g)]
        k += 1
    return out


def _study(ctx: Context):
    """The gallery's cue-conflict study (cached per process: both figures use the same set)."""
    from jaxviz import bias
    names = tuple(ctx.classifiers())
    size, steps = (48, 3) if ctx.quick else (SIZE, STEPS)
    key = (names, size, steps, ctx.quick, ctx.real_input)
    if key not in _CACHE:
        classifiers = [ctx.model(n) for n in names]
        vgg = ctx.model(bias.STYLE_NETWORK)
        candidates, where = _candidates(ctx, size, 2 if ctx.quick else PHOTOS_PER_CATEGORY)
        sources = bias.select_sources(classifiers, candidates, min_confidence=0.0,
                                      per_class=1 if ctx.quick else PER_CATEGORY,
                                      max_classes=3 if ctx.quick else CLASSES)
        sources = _interleave(sources)
        weights = bias.gatys_code_weights(vgg, size)
        per = TEXTURES_PER_SHAPE
        n_pairs = len(bias.pairs(sources, per))
        bar = ctx.progress(steps, f"cue-conflict images ({n_pairs} pairs)")

        class _Bar:
            def start(self, total, n): pass
            def step(self, i, losses, active, images): bar.update(1)
            def end(self): bar.close()
        study = bias.bias_study(classifiers, vgg, sources, steps=steps, optimizer="lbfgs",
                                texture_fraction=TEXTURE_FRACTION, textures_per_shape=per, callbacks=(_Bar(),),
                                **weights)
        strength = bias.cue_probabilities(classifiers, study)
        _CACHE[key] = (study, strength, where)
    study, strength, where = _CACHE[key]
    # Both figures show the one cached study: the page's input line names its photos, not the
    # runner's count of draws (0 for the second figure, the whole pool for the first).
    ctx.declare_input(f"real photographs ({where}; {len(study.sources)} used as shape/texture sources)"
                      if ctx.real_input else where, real=ctx.real_input)
    cats = sorted({_category(s.classes) for s in study.sources})
    ctx.note(candidates=where, sources=len(study.sources), categories=f"{len(cats)}: {', '.join(cats)}",
             pairs=len(study.pairs), build_seconds=round(study.seconds, 1),
             **{f"shape bias {_short(m)}": _bias_text(c) for m, c in study.bias.items()},
             **{f"{_short(m)}: p(shape category) content -> cue-conflict":
                f"{v['shape_on_content']:.2f} -> {v['shape_on_conflict']:.2f}" for m, v in strength.items()},
             **{f"{_short(m)}: p(texture category) texture crop -> cue-conflict":
                f"{v['texture_on_style']:.2f} -> {v['texture_on_conflict']:.2f}" for m, v in strength.items()})
    return study, strength


def _label(index: int, width: int = 16) -> str:
    from jaxviz.labels import imagenet_labels
    return imagenet_labels()[index][:width]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n ((nan, nan) for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _bias_text(count) -> str:
    lo, hi = wilson(count.shape, count.shape + count.texture)
    ci = "" if math.isnan(lo) else f", 95% CI {lo:.2f}–{hi:.2f}"
    return f"{count.text}{ci} (shape {count.shape}, texture {count.texture}, other {count.other} of {count.total})"


def _pick_examples(study, n: int) -> list[int]:
    """Up to ``n`` pairs, one per shape source first (so the examples show different shapes)."""
    seen, first, rest = set(), [], []
    for k, (i, _) in enumerate(np.asarray(study.pairs)):
        (rest if int(i) in seen else first).append(k)
        seen.add(int(i))
    return (first + rest)[:n]


def grid_figure(study, fig=None, columns: int = 5, rows: int = 2):
    """Example cue-conflict images: per example the shape source and the texture close-up (small,
    above) and the cue-conflict image (large), each model's decision under it, coloured by the cue
    it followed (forced choice among the study's categories)."""
    import matplotlib.pyplot as plt

    from jaxviz.bias import texture_crop
    examples = _pick_examples(study, columns * rows)
    rows = max(1, math.ceil(len(examples) / columns))
    models = list(study.bias)
    fraction = float(study.settings.get("texture_fraction", 1.0))
    if fig is None:
        fig = plt.figure(figsize=(2.2 * columns, rows * (3.6 + 0.22 * len(models))))
    outer = fig.add_gridspec(rows, columns, hspace=0.25 + 0.12 * len(models), wspace=0.08)
    for n, k in enumerate(examples):
        i, j = (int(v) for v in study.pairs[k])
        shape, texture = study.sources[i], study.sources[j]
        cell = outer[n // columns, n % columns].subgridspec(2, 2, height_ratios=[1, 2], hspace=0.15, wspace=0.05)
        # two-line titles: "shape: keyboard" and "texture: bicycle" side by side ran into each other
        for ax_spec, img, title in ((cell[0, 0], shape.image, f"shape\n{_category(shape.classes)}"),
                                    (cell[0, 1], texture_crop(texture.image, fraction),
                                     f"texture\n{_category(texture.classes)}")):
            ax = fig.add_subplot(ax_spec)
            ax.imshow(np.clip(img, 0, 1))
            ax.set_title(title, fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        ax = fig.add_subplot(cell[1, :])
        ax.imshow(np.clip(study.images[k], 0, 1))
        ax.set_xticks([]), ax.set_yticks([])
        for m_i, (m, d) in enumerate(study.records[k]["decisions"].items()):
            choice = d["choice"]
            ax.text(0.5, -0.04 - 0.13 * m_i, f"{_short(m)}: {_category_of(choice['class'], study)}",
                    fontsize=10, ha="center", va="top", color=CUE_COLOURS[choice["cue"]], transform=ax.transAxes)
    names = {"shape": "decision follows the shape", "texture": "follows the texture", "other": "a third category"}
    handles = [plt.Line2D([], [], color=c, marker="s", ls="", label=names[cue]) for cue, c in CUE_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    return fig


def _category_of(cls: int, study) -> str:
    """The name of the study category whose first class is ``cls``."""
    for s in study.sources:
        if s.classes[0] == cls or cls in s.classes:
            return _category(s.classes)
    return _label(cls)


def bar_figure(study, fig=None, strength: dict | None = None):
    """Shape bias per model (shape / (shape + texture) decisions, 95% Wilson interval, counts)
    beside the values Geirhos et al. report; with ``strength`` (``bias.cue_probabilities``) a
    second panel shows how much each cue's category probability the images carry."""
    import matplotlib.pyplot as plt
    if fig is None:
        fig = plt.figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 2 if strength else 1, squeeze=False,
                        gridspec_kw={"width_ratios": [1.35, 1]} if strength else None)[0]
    ax = axes[0]
    rows = [(f"{_short(m)} (ours)", c) for m, c in study.bias.items()]
    labels = [r[0] for r in rows] + [name for name, _ in REPORTED]
    y = np.arange(len(labels))[::-1]
    for k, (label, c) in enumerate(rows):
        value = 0.0 if math.isnan(c.bias) else c.bias
        lo, hi = wilson(c.shape, c.shape + c.texture)
        err = None if math.isnan(lo) else [[value - lo], [hi - value]]
        ax.barh(y[k], value, color="tab:blue", height=0.6, xerr=err, capsize=3)
        ax.text(1.02, y[k], f"{c.text}  (S {c.shape} / T {c.texture}, other {c.other} of {c.total})",
                va="center", fontsize=9, transform=ax.get_yaxis_transform())
    for k, (label, value) in enumerate(REPORTED, len(rows)):
        ax.barh(y[k], value, color="0.75", height=0.6, hatch="//", edgecolor="0.45")
        ax.text(1.02, y[k], f"{value:.2f}  reported", va="center", fontsize=9, transform=ax.get_yaxis_transform())
    ax.axvline(0.5, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(y, labels, fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_xlabel("shape bias = shape / (shape + texture) decisions", fontsize=10)
    ax.tick_params(axis="x", labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    if strength:
        ax = axes[1]
        names = list(strength)
        keys = (("shape_on_content", "shape cat., content photo", "tab:blue", None),
                ("shape_on_conflict", "shape cat., cue-conflict", "tab:blue", "//"),
                ("texture_on_style", "texture cat., texture crop", "tab:orange", None),
                ("texture_on_conflict", "texture cat., cue-conflict", "tab:orange", "//"))
        width = 0.8 / len(keys)
        for q, (key, label, colour, hatch) in enumerate(keys):
            xs = np.arange(len(names)) + (q - 1.5) * width
            ax.bar(xs, [strength[m][key] for m in names], width, color=colour, hatch=hatch, edgecolor="white",
                   label=label, alpha=1.0 if hatch is None else 0.6)
        ax.set_xticks(np.arange(len(names)), [_short(m) for m in names], fontsize=10)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean probability of the category", fontsize=10)
        ax.tick_params(axis="y", labelsize=9)
        ax.legend(fontsize=9, frameon=False, loc="upper right", bbox_to_anchor=(1.0, 1.25), ncol=2)
        ax.spines[["top", "right"]].set_visible(False)
    if hasattr(fig, "tight_layout"):  # a SubFigure (study_figure's lower half) has no layout of its own
        fig.tight_layout()
    return fig


def study_figure(study):
    """The example grid above and the shape-bias bars below, in one figure (``jaxviz bias --out``)."""
    import matplotlib.pyplot as plt
    models = len(study.bias)
    grid_h = 2 * (3.6 + 0.22 * models)
    fig = plt.figure(figsize=(11, grid_h + 3.6))
    top, bottom = fig.subfigures(2, 1, height_ratios=[grid_h, 3.6])
    grid_figure(study, top)
    bar_figure(study, bottom)
    return fig


CAPTION = ("Cue-conflict images as Geirhos et al. (ICLR 2019) made theirs: Gatys style transfer on VGG19 (original "
           "weights) with the loss of Gatys's PytorchNeuralStyleTransfer at its defaults, the code the study used "
           "(content relu4_2 MSE, styles relu1_1 … relu5_1 with weights 1e3 / C_l² on Gram / (H W) MSEs), "
           f"{STEPS} L-BFGS steps from the content photograph at {SIZE} px (the study: 500 at 512 px, then 224 px). "
           "Sources: ImageNet-sample photographs of the study's 16 categories that both classifiers put in their "
           f"category, up to {PER_CATEGORY} per category; each shape source gets the texture of "
           f"{'one source' if TEXTURES_PER_SHAPE == 1 else f'{TEXTURES_PER_SHAPE} sources'} of another category (the central {TEXTURE_FRACTION:.0%} of the photograph: a close-up, as the "
           "study's texture images are). Decision: the 16-way choice among the study's categories (mean "
           "probability over each category's ImageNet classes, Geirhos et al.'s mapping).")


@figure("bias_cue_conflict", "Texture vs shape: cue-conflict images and each model's decision",
        "Ten of the cue-conflict images, each under its shape source and texture close-up; under each image "
        "each classifier's decision, coloured by the cue it followed (blue: the shape's category, orange: the "
        "texture's, grey: a third). " + CAPTION, order=720, size_px=SIZE, steps=STEPS,
        textures_per_shape=TEXTURES_PER_SHAPE, texture_fraction=TEXTURE_FRACTION)
def bias_cue_conflict(ctx: Context):
    study, _ = _study(ctx)
    return grid_figure(study)


@figure("bias_shape_bar", "Texture vs shape: shape bias per model, beside the study's",
        "Left: shape bias = shape / (shape + texture) decisions over all cue-conflict images of the previous "
        "figure (recounted from the saved per-image decisions; bars: 95% Wilson intervals; counts beside), and "
        "the values Geirhos et al. report (grey): people 0.96, ImageNet CNNs far below 0.5 — texture-biased "
        "(ResNet-50 0.21 with this mapping; AlexNet 0.25 and VGG-16 0.09 in torchvision, from the study's "
        "repository). Right: the stylisation strength — the mean probability of the shape source's category "
        "on the content photograph and on the cue-conflict image, and of the texture source's category on the "
        "texture close-up and on the cue-conflict image: a stimulus as strong as the study's moves most of the "
        "shape category's probability away (people still see the shape in the study's images), a weak one (a "
        "colour cast) leaves it; the notes give the numbers. Our images are smaller and stylised for fewer steps "
        "than the study's, and our classifiers (SqueezeNet 1.1, EfficientNet-Lite0) are not the study's. "
        + CAPTION, order=721, size_px=SIZE, steps=STEPS)
def bias_shape_bar(ctx: Context):
    study, strength = _study(ctx)
    return bar_figure(study, strength=strength)
