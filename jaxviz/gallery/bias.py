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

SIZE, STEPS = 128, 32
PER_CATEGORY = 3  # sources per category (the most confident photographs)
TEXTURES_PER_SHAPE = 2  # texture sources (of other categories) per shape source
PAIRS = 48  # cue-conflict images at most (the time budget: one batched run of every pair, about 200 s)
TEXTURE_TILES = 4  # a texture image is a 4 x 4 mosaic of small crops (``texture_mosaic``)
TEXTURE_PHOTOS = 6  # candidate photographs per category for the texture mosaics
TEXTURES_PER_CATEGORY = 2  # texture mosaics kept per category (the best recognised)
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


def _spread_by_category(rows: list[dict], per_category: int) -> list[list[dict]]:
    """Per Geirhos category (in first-seen order), up to ``per_category`` of the photo rows,
    spread evenly over the category's classes (dogs: 118 breeds)."""
    from jaxviz import bias
    members = {c: name for name, group in bias.GEIRHOS_CATEGORIES.items() for c in group}
    by_category: dict[str, list] = {}
    for r in rows:
        if r["class"] in members:
            by_category.setdefault(members[r["class"]], []).append(r)
    return [group[::max(1, len(group) // per_category)][:per_category] for group in by_category.values()]


def _candidates(ctx: Context, size: int, per_category: int):
    """Photographs of the 16 categories (a few per category), else the built-in photos."""
    from jaxviz import datasets
    rows = ctx.photos()
    if not rows:
        return datasets.candidate_images(size), "built-in sample photos and their crops"
    chosen = [r for group in _spread_by_category(rows, per_category) for r in group]
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


def texture_mosaic(photo: np.ndarray, size: int, tiles: int = TEXTURE_TILES, seed: int = 0) -> np.ndarray:
    """A texture image with no global shape: ``tiles`` x ``tiles`` small square crops of ``photo``
    taken at random from its central half (where the object is), each turned and mirrored at random,
    placed on a grid and cross-faded where they overlap (a quarter of a tile) so that no seam is a
    hard edge. ``photo`` is (S, S, 3), S = 2 ``size``: a crop is 3/(8 tiles) of the photograph's side
    and the material is shown at twice the scale of the content photographs (a close-up).
    Returns (size, size, 3) in [0, 1]; the same ``seed`` gives the same mosaic."""
    photo = np.asarray(photo, np.float32)
    step = size // tiles
    overlap = max(1, step // 4)
    side = step + 2 * overlap
    box = photo.shape[0] // 4, photo.shape[0] - photo.shape[0] // 4  # the central half
    if box[1] - box[0] < side:
        box = 0, photo.shape[0]
    rng = np.random.default_rng(seed)
    ramp = np.minimum(np.arange(side) + 0.5, side - np.arange(side) - 0.5) / (2 * overlap)
    window = np.clip(ramp, 1e-3, 1.0)
    window = (window[:, None] * window[None, :])[..., None]
    canvas = np.zeros((tiles * step + 2 * overlap,) * 2 + (3,), np.float32)
    weight = np.zeros(canvas.shape[:2] + (1,), np.float32)
    for r in range(tiles):
        for c in range(tiles):
            y, x = (int(rng.integers(box[0], box[1] - side + 1)) for _ in range(2))
            tile = np.rot90(photo[y:y + side, x:x + side], int(rng.integers(4)))
            if rng.integers(2):
                tile = tile[:, ::-1]
            canvas[r * step:r * step + side, c * step:c * step + side] += window * tile
            weight[r * step:r * step + side, c * step:c * step + side] += window
    out = (canvas / weight)[overlap:overlap + tiles * step, overlap:overlap + tiles * step]
    if out.shape[0] != size:
        from jaxviz.images import fit_image
        out = fit_image(np.ascontiguousarray(out), size, "stretch")
    return np.clip(out, 0.0, 1.0)


def _texture_photos(ctx: Context, size: int, per_category: int, sources):
    """(name, photo at 2 ``size``, class set) texture candidates: photographs of the 16 categories
    (``per_category`` spread over each), else the shape sources' own images."""
    from jaxviz import bias
    from jaxviz.images import fit_image, load_image
    rows = ctx.photos()
    if not rows:
        return [(s.name, fit_image(s.image, 2 * size, "stretch"), tuple(s.classes)) for s in sources]
    return [(r["label"], load_image(r["path"], 2 * size, "eval"), bias.class_set(int(r["class"])))
            for group in _spread_by_category(rows, per_category) for r in group]


def select_textures(classifiers, candidates, size: int, per_category: int, cats, seeds: int = 3):
    """Texture sources: ``seeds`` ``texture_mosaic`` s of each candidate photograph, kept when every classifier's forced
    choice among the categories ``cats`` is the candidate's category (the texture carries its
    category for the networks); per category the ``per_category`` with the highest lowest
    category probability (one mosaic per photograph). Returns ``bias.Source`` objects (name
    "texture: <photograph>")."""
    from jaxviz import bias
    tries = [(name, classes, texture_mosaic(photo, size, seed=k * seeds + t))
             for k, (name, photo, classes) in enumerate(candidates) for t in range(seeds)]
    images = np.stack([image for _, _, image in tries])
    scores = [bias.category_scores(bias.predict(m, images), cats) for m in classifiers]
    kept: dict = {}
    for k, (name, classes, image) in enumerate(tries):
        own = [c for c, members in enumerate(cats) if set(members) == set(classes)]
        if not own or any(int(s[k].argmax()) != own[0] for s in scores):
            continue
        confidence = {m.name: float(s[k, own[0]]) for m, s in zip(classifiers, scores)}
        best = kept.setdefault(frozenset(classes), {})
        if name not in best or min(confidence.values()) > min(best[name].confidence.values()):
            best[name] = bias.Source(f"texture: {name}", image, classes, confidence)  # one per photograph
    groups = [sorted(v.values(), key=lambda s: -min(s.confidence.values()))[:per_category] for v in kept.values()]
    return [s for g in groups for s in g]


def design_pairs(n_shapes: int, textures, shapes, per_shape: int, limit: int) -> np.ndarray:
    """(P, 2) pairs (shape index, texture index into ``shapes + textures``): each shape source
    takes ``per_shape`` texture sources of other categories (of different categories where it can),
    the least used so far first (ties: cyclic order), so that every texture is used about equally;
    at most ``limit`` pairs (the first shapes first)."""
    uses = np.zeros(len(textures), np.int64)
    out = []
    for i, s in enumerate(shapes):
        options = [j for j in range(len(textures)) if not set(s.classes) & set(textures[j].classes)]
        chosen: list[int] = []
        for _ in range(min(per_shape, len(options))):
            taken = {frozenset(textures[j].classes) for j in chosen}
            j = min((j for j in options if j not in chosen),
                    key=lambda j: (frozenset(textures[j].classes) in taken, uses[j], (j - i) % len(textures)))
            chosen.append(j)
            uses[j] += 1
        out += [(i, n_shapes + j) for j in chosen]
    return np.asarray(out[:limit], np.int64).reshape(-1, 2)


def _study(ctx: Context):
    """The gallery's cue-conflict study (cached per process: both figures use the same set)."""
    import time

    from jaxviz import bias
    names = tuple(ctx.classifiers())
    size, steps = (48, 3) if ctx.quick else (SIZE, STEPS)
    key = (names, size, steps, ctx.quick, ctx.real_input)
    if key not in _CACHE:
        start = time.perf_counter()
        classifiers = [ctx.model(n) for n in names]
        vgg = ctx.model(bias.STYLE_NETWORK)
        candidates, where = _candidates(ctx, size, 2 if ctx.quick else PHOTOS_PER_CATEGORY)
        shapes = bias.select_sources(classifiers, candidates, min_confidence=0.0,
                                     per_class=1 if ctx.quick else PER_CATEGORY,
                                     max_classes=3 if ctx.quick else CLASSES)
        shapes = _interleave(shapes)
        cats = bias.categories(shapes)
        textures = select_textures(classifiers, _texture_photos(ctx, size, 2 if ctx.quick else TEXTURE_PHOTOS, shapes),
                                   size, TEXTURES_PER_CATEGORY, cats)
        if len({frozenset(t.classes) for t in textures}) < 2:  # (tiny quick runs) fall back to every mosaic
            from jaxviz.errors import JaxvizError
            raise JaxvizError(f"only {len(textures)} texture mosaic(s) are classified as their category; "
                              "the study needs textures of at least 2 categories")
        sources = shapes + textures
        index = design_pairs(len(shapes), textures, shapes, TEXTURES_PER_SHAPE, 4 if ctx.quick else PAIRS)
        weights = bias.gatys_code_weights(vgg, size)
        bar = ctx.progress(steps, f"cue-conflict images ({len(index)} pairs)")

        class _Bar:
            sync_every = 10  # no images needed: the engine may run up to 10 updates per program call
            def start(self, total, n): pass
            def step(self, i, losses, active, images): bar.update(1)
            def end(self): bar.close()
        contents = np.stack([sources[i].image for i in index[:, 0]])
        styles = np.stack([sources[j].image for j in index[:, 1]])
        images, seconds = bias.cue_conflict_images(vgg, vgg.params, contents, styles, steps=steps, optimizer="lbfgs",
                                                   callbacks=(_Bar(),), **weights)
        records = bias.decision_records(classifiers, images, sources, index)
        settings = {**weights, "optimizer": "lbfgs", "learning_rate": 1.0, "steps": steps, "init": "content",
                    "style_network": vgg.name, "size": [size, size], "texture_fraction": 1.0,
                    "textures": f"{TEXTURE_TILES}x{TEXTURE_TILES} mosaic of crops of the central half"}
        study = bias.BiasStudy(sources, index, images, records, bias.shape_bias(records), seconds, settings,
                               bias.shape_bias(records, "top1"))
        strength = bias.cue_probabilities(classifiers, study)
        _CACHE[key] = (study, strength, where, len(shapes), time.perf_counter() - start)
    study, strength, where, n_shapes, total = _CACHE[key]
    textures = study.sources[n_shapes:]
    ctx.declare_input(f"real photographs ({where}; {n_shapes} shape sources, {len(textures)} texture mosaics)"
                      if ctx.real_input else where, real=ctx.real_input)
    tcats = sorted({_category(s.classes) for s in textures})
    ctx.note(**{"shape sources": f"{n_shapes} photographs of {len({frozenset(s.classes) for s in study.sources[:n_shapes]})} categories",
                "texture sources": f"{len(textures)} mosaics of {len(tcats)} categories: {', '.join(tcats)}",
                "cue-conflict images": len(study.pairs),
                "build time (s)": f"{total:.0f} (style transfer {study.seconds:.0f})"},
             **{f"shape bias, {_short(m)}": _bias_text(c) for m, c in study.bias.items()},
             **{f"{_short(m)}: p(shape category), photo -> cue-conflict":
                f"{v['shape_on_content']:.2f} -> {v['shape_on_conflict']:.2f}" for m, v in strength.items()},
             **{f"{_short(m)}: p(texture category), texture -> cue-conflict":
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
        open_ = not math.isnan(lo) and lo < 0.5 < hi
        ax.text(1.02, y[k], f"{c.text}, 95% CI {lo:.2f}–{hi:.2f}{': NOT DECIDED' if open_ else ''}\n"
                f"shape {c.shape}, texture {c.texture}, other {c.other} of {c.total}",
                va="center", fontsize=9, transform=ax.get_yaxis_transform(), color="tab:red" if open_ else "black")
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
        keys = (("shape_on_content", "shape cat., photograph", "tab:blue", None),
                ("shape_on_conflict", "shape cat., cue-conflict", "tab:blue", "//"),
                ("texture_on_style", "texture cat., texture mosaic", "tab:orange", None),
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


@figure("bias_cue_conflict", "Texture vs shape: cue-conflict images and each model's decision",
        "Cue-conflict images (Geirhos et al., ICLR 2019): the shape of one photograph in the texture of another "
        "category; under each, each network's 16-way decision, coloured by the cue it followed. Shapes: "
        "ImageNet-sample photographs both networks classify correctly. Textures: close-ups with no global shape "
        f"(a {TEXTURE_TILES}x{TEXTURE_TILES} mosaic of small crops from the middle of a photograph, shown above "
        "right), kept when both networks put the mosaic in its category. Images: Gatys style transfer on VGG19 "
        f"with the loss of the code the study used, {STEPS} L-BFGS steps at {SIZE} px (the study: 500 steps, "
        "larger images). These stimuli are cruder than the study's: some mosaics show little texture a person "
        "would name (blocks of colour for bird or clock), both cues weaken (6.2, right), and many decisions go "
        "to a third category, most often bottle.", order=720, size_px=SIZE, steps=STEPS, pairs=f"up to {PAIRS}",
        textures=f"{TEXTURE_TILES}x{TEXTURE_TILES} mosaic of crops of the central half, up to "
                 f"{TEXTURES_PER_CATEGORY} per category", textures_per_shape=TEXTURES_PER_SHAPE)
def bias_cue_conflict(ctx: Context):
    study, _ = _study(ctx)
    return grid_figure(study, rows=3)


@figure("bias_shape_bar", "Texture vs shape: shape bias per model, beside the study's",
        f"On the {PAIRS} cue-conflict images of 6.1 (method there) both networks' estimates lie below 0.5, "
        "towards texture, like the ImageNet CNNs in the study (0.09-0.25 in its repository README; people 0.96 "
        "in the paper). An estimate is decided when its 95% Wilson interval excludes 0.5; a bar whose interval "
        "includes 0.5 is marked NOT DECIDED (in red). More than half the decisions are a third category, so "
        "each interval rests on about 20 decisions: one or two decisions flipping (float rounding in the style "
        "transfer can do that; SqueezeNet 1.1's upper bound has been seen on both sides of 0.5) decide or undecide "
        "a network, and the images weaken both cues (right), so this is a "
        "small-sample check of the study's direction, not a replication of its numbers. Shape bias = shape / "
        "(shape + texture) decisions. Right: the shape category's "
        "probability on the photograph and on the "
        "cue-conflict image, the texture category's on the mosaic and on the cue-conflict image: the images "
        "weaken both cues.",
        order=721, size_px=SIZE, steps=STEPS)
def bias_shape_bar(ctx: Context):
    study, strength = _study(ctx)
    return bar_figure(study, strength=strength)
