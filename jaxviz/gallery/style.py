"""Texture and style figures (issue 6): Efros–Leung vs Gram synthesis, Gram layer sets, Gatys
style transfer (content/style ratio, style scale, two-style blend, colour preservation) and a
briefly trained conditional-instance-norm fast-style network with its blend strip.

Small on purpose (CPU budget of a few minutes in all): 48 px Efros–Leung, 64 px Gram textures,
128 px style transfer with a few dozen L-BFGS steps.
"""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

VGG = "vgg19_caffe"
TEXTURES = ("brick", "gravel")
CONTENT = "chelsea"
STYLES = ("hubble_deep_field", "ihc")
STYLE_SIZE, STYLE_STEPS = 128, 40
TEX_SIZE, TEX_STEPS = 128, 150  # at 64 px the deep layer sets have 4x4-8x8 maps: no structure to recover


def _vgg(ctx: Context):
    from jaxviz.accel import accelerate
    return accelerate(ctx.model(VGG))  # same results, faster on CPU (once per model: cached)


def _dense():
    """XLA options for the fast-style network (dense convolutions: XLA-CPU's Eigen path, ~3x fps)."""
    from jaxviz.accel.xla import compiler_options
    return compiler_options(dense_convolutions=True)


def _axes(n_rows: int, n_cols: int, scale: float = 2.2):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    return fig, axes


def _show(ax, image, title: str = "") -> None:
    ax.imshow(np.clip(np.asarray(image), 0, 1))
    ax.set_title(title, fontsize=8)


def _style(ctx: Context, styles=STYLES[:1], **kw):
    from jaxviz.images import load_image
    from jaxviz.style import style_transfer
    model = _vgg(ctx)
    content = load_image(CONTENT, (STYLE_SIZE * 2 // 3 // 4 * 4, STYLE_SIZE), fit="stretch")
    imgs = [load_image(s, STYLE_SIZE, fit="stretch") for s in styles]
    kw.setdefault("steps", STYLE_STEPS)
    return content, imgs, style_transfer(model, model.params, content, imgs, **kw)


@figure("texture_efros_vs_gram", "Texture synthesis: Efros–Leung vs Gram matrices",
        "Left: sample. Middle: Efros & Leung (1999) non-parametric sampling in scan-line order (causal "
        "neighbourhood matched against every sample neighbourhood, random choice among matches within 10% of "
        "the best). Right: Gatys et al. (2015) Gram-matrix synthesis from white noise on VGG19 conv1_1…conv5_1 "
        "(original weights), L-BFGS through the shared engine.", order=600,
        efros_sample_px=64, efros_out_px=48, efros_radius=4, gram_px=TEX_SIZE, gram_steps=TEX_STEPS)
def texture_efros_vs_gram(ctx: Context):
    import time

    import jax

    from jaxviz.images import load_image
    from jaxviz.texture import GRAM_LAYER_SETS, efros_leung, gram_texture
    model = _vgg(ctx)
    fig, axes = _axes(len(TEXTURES), 3)
    for row, name in enumerate(TEXTURES):
        sample = load_image(name, 64, fit="stretch")
        t = time.perf_counter()
        el = np.asarray(efros_leung(sample, 48, key=jax.random.key(row), radius=4))
        ctx.note(**{f"efros {name} s": round(time.perf_counter() - t, 1)})
        gram, res = gram_texture(model, model.params, load_image(name, TEX_SIZE, fit="stretch"), TEX_SIZE,
                                 layers=GRAM_LAYER_SETS[-1], key=jax.random.key(row), steps=TEX_STEPS)
        ctx.note(**{f"gram {name} loss": f"{res.losses[0, 0]:.3g} -> {res.losses[-1, 0]:.3g}"})
        _show(axes[row, 0], sample, f"sample: {name}")
        _show(axes[row, 1], el, "Efros–Leung 48 px")
        _show(axes[row, 2], gram, f"Gram conv1–5, {TEX_STEPS} L-BFGS")
    fig.tight_layout()
    return fig


@figure("texture_gram_layers", "Gram synthesis from increasingly deep layers",
        "Gatys et al. (2015), Fig. 2: matching Gram matrices of conv1_1 only reproduces colours and fine grain; "
        "adding conv2_1 … conv5_1 recovers ever larger structures of the sample.", order=601,
        sample="brick", size_px=TEX_SIZE, steps=TEX_STEPS)
def texture_gram_layers(ctx: Context):
    import jax

    from jaxviz.images import load_image
    from jaxviz.texture import GRAM_LAYER_SETS, gram_texture
    model = _vgg(ctx)
    sample = load_image("brick", TEX_SIZE, fit="stretch")
    fig, axes = _axes(1, len(GRAM_LAYER_SETS) + 1)
    _show(axes[0, 0], sample, "sample")
    for i, layers in enumerate(GRAM_LAYER_SETS):
        image, _ = gram_texture(model, model.params, sample, TEX_SIZE, layers=layers, key=jax.random.key(0),
                                steps=TEX_STEPS)
        _show(axes[0, i + 1], image, "conv1" if i == 0 else f"conv1–{i + 1}")
    fig.tight_layout()
    return fig


# With the original (un-normalised) VGG19 weights the style term is ~1e3x larger than in the paper's
# normalised network, so the visible content -> style transition sits near alpha/beta = 1, not 1e-3.
RATIOS = (1e-2, 1e0, 1e2)


@figure("style_ratios", "Style transfer: content/style ratio",
        "Gatys et al. (2016) on VGG19 (original weights): content at conv4_2, styles at conv1_1…conv5_1, "
        f"{STYLE_STEPS} L-BFGS steps from white noise (as in the paper's ratio figure) at {STYLE_SIZE} px; "
        "style weight β grows left to right with content weight α = 1. With the original, un-normalised "
        "weights the transition sits near α/β = 1 (the paper's 1e-3 is for its rescaled network).",
        order=610, style_weights=RATIOS, steps=STYLE_STEPS, size_px=STYLE_SIZE, init="noise")
def style_ratios(ctx: Context):
    fig, axes = _axes(1, len(RATIOS) + 2)
    for i, beta in enumerate(RATIOS):
        content, styles, r = _style(ctx, style_weight=beta, init="noise")
        _show(axes[0, i + 2], r.image, f"α/β = 1e{-int(np.log10(beta))}")
        ctx.note(**{f"beta {beta:g} loss": f"{r.losses[0]:.3g} -> {r.losses[-1]:.3g}"})
    _show(axes[0, 0], content, "content")
    _show(axes[0, 1], styles[0], "style")
    fig.tight_layout()
    return fig


@figure("style_scale", "Style transfer: style scale",
        "The style image is resized (×0.5 and ×2 of the content size) before its Gram matrices are taken: "
        "larger scale, larger strokes.", order=611, scales=(0.5, 2.0), steps=STYLE_STEPS)
def style_scale(ctx: Context):
    scales = (0.5, 2.0)
    fig, axes = _axes(1, len(scales) + 1)
    for i, s in enumerate(scales):
        content, styles, r = _style(ctx, styles=STYLES[1:], style_scale=s)
        _show(axes[0, i + 1], r.image, f"style scale {s:g}")
    _show(axes[0, 0], styles[0], "style")
    fig.tight_layout()
    return fig


@figure("style_blend", "Style transfer: two styles blended",
        "Weighted blend of two styles' Gram targets (equal to the weighted sum of the two style losses), "
        "weights 0.5/0.5.", order=612, styles=STYLES, blend=(0.5, 0.5), steps=STYLE_STEPS)
def style_blend(ctx: Context):
    fig, axes = _axes(1, 4)
    content, styles, r = _style(ctx, styles=STYLES, style_blend=(0.5, 0.5))
    _show(axes[0, 0], content, "content")
    _show(axes[0, 1], styles[0], STYLES[0])
    _show(axes[0, 2], styles[1], STYLES[1])
    _show(axes[0, 3], r.image, "blend 0.5 / 0.5")
    fig.tight_layout()
    return fig


@figure("style_preserve_color", "Style transfer: colour preservation",
        "Gatys et al. (2016b): off; luminance-only transfer (YIQ, style luminance matched to the content's, "
        "content I/Q put back); colour histogram (mean/covariance) matching of the style first.", order=613,
        modes=("off", "luminance", "histogram"), steps=STYLE_STEPS)
def style_preserve_color(ctx: Context):
    modes = (None, "luminance", "histogram")
    fig, axes = _axes(1, len(modes) + 1)
    for i, m in enumerate(modes):
        content, styles, r = _style(ctx, styles=STYLES[1:], preserve_color=m)
        _show(axes[0, i + 1], r.image, f"preserve colour: {m or 'off'}")
    _show(axes[0, 0], styles[0], "style")
    fig.tight_layout()
    return fig


FAST = dict(steps=60, size=64, width=16, res_blocks=3, batch=2)


@figure("fast_style_cin", "Fast style transfer with conditional instance norm",
        "One Johnson et al. (2016) transformation network with conditional instance norm (Dumoulin et al. "
        f"2017) trained on two styles at once for only {FAST['steps']} Adam steps on {FAST['size']} px crops of "
        "four sample photos (width 16, 3 residual blocks) — a demonstration of the mechanism, far from "
        "converged. Bottom: γ/β mixed from style 1 (0) to style 2 (1); every image is one forward pass.",
        order=620, **FAST)
def fast_style_cin(ctx: Context):
    import time

    import jax
    import jax.numpy as jnp

    from jaxviz import fast_style as fs
    from jaxviz.images import load_image
    model = _vgg(ctx)
    config = fs.FastStyleConfig(num_styles=2, width=FAST["width"], res_blocks=FAST["res_blocks"],
                                size=FAST["size"], batch=FAST["batch"], learning_rate=1e-2)
    content = np.stack([load_image(n, 80, fit="stretch") for n in ("chelsea", "coffee", "astronaut", "rocket")])
    styles = [load_image(s, FAST["size"], fit="stretch") for s in STYLES]
    step = fs.make_train_step(config, model, model.params, styles)
    t = time.perf_counter()
    state = fs.train(config, fs.init_state(config, jax.random.key(0)), step, content, FAST["steps"])
    ctx.note(train_seconds=round(time.perf_counter() - t, 1),
             train_loss=f"{state.losses[0]:.3g} -> {np.mean(state.losses[-5:]):.3g}")
    net = config.network()
    test = load_image(CONTENT, (84, 128), fit="stretch")
    mixes = np.linspace(0, 1, 5)
    fig, axes = _axes(2, 5)
    _show(axes[0, 0], test, "input")
    _show(axes[0, 1], styles[0], "style 1")
    _show(axes[0, 2], styles[1], "style 2")
    for j, name in enumerate(("coffee", "astronaut")):
        img = load_image(name, 128, fit="stretch")
        out = fs.stylize(net, state.params, img[None], jnp.array([1.0, 0.0]), compiler_options=_dense())[0]
        _show(axes[0, 3 + j], out, f"{name}, style 1")
    t = time.perf_counter()
    for i, a in enumerate(mixes):
        out = fs.stylize(net, state.params, test[None], jnp.array([1 - a, a]), compiler_options=_dense())[0]
        _show(axes[1, i], out, f"mix {a:.2f}")
    ctx.note(blend_strip_seconds=round(time.perf_counter() - t, 2))
    fig.tight_layout()
    return fig
