"""Occlusion figure (Zeiler & Fergus 2014): heat maps of the score drop for three sample images."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

IMAGES = ["chelsea", "coffee", "rocket"]


@figure("occlusion", "Occlusion sensitivity",
        "Zeiler & Fergus (2014) occlusion on SqueezeNet 1.1 at 224 px: a 32 px window filled with the "
        "image's mean colour slides with stride 8; each pixel shows the drop of the predicted class's "
        "logit averaged over the windows covering it (red: occluding it lowers the score). Computed "
        "with the incremental (Krypton-style) method, which recomputes only the activations a window "
        "can change and equals the batched result. The box marks the window whose occlusion lowers "
        "the score most.", order=30, images=IMAGES, window=32, stride=8, fill="mean")
def occlusion_figure(ctx: Context):
    import time

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from jaxviz.accel import accelerate
    from jaxviz.images import load_images
    from jaxviz.labels import imagenet_labels
    from jaxviz.occlusion import flop_saving, incremental_occlusion, windows_to_pixels
    from jaxviz.render import overlay

    window, stride = 32, 8
    model = accelerate(ctx.model("squeezenet1_1"))
    labels = imagenet_labels()
    images = load_images(IMAGES, model.input_size, transform=model.eval_transform)
    x = model.preprocess(jnp.asarray(images))
    probs = jax.nn.softmax(model.apply(model.params, x), axis=-1)
    index = jnp.argmax(probs, axis=-1)
    t0 = time.perf_counter()
    drops = np.asarray(incremental_occlusion(model, model.params, x, index=index, window=window,
                                             stride=stride, chunk=32))
    seconds = time.perf_counter() - t0
    pixels = np.asarray(windows_to_pixels(jnp.asarray(drops), x.shape[1:3], window, stride))
    ctx.note(model="squeezenet1_1", window=window, stride=stride, fill="image mean colour",
             windows_per_image=int(drops[0].size), seconds_incl_compile=round(seconds, 1),
             flop_saving=round(flop_saving(model, input_size=224, window=window, stride=stride), 2))

    fig, axes = plt.subplots(len(IMAGES), 3, figsize=(10, 3.4 * len(IMAGES)), squeeze=False)
    for row, (image, d, pix) in enumerate(zip(images, drops, pixels)):
        c = int(index[row])
        name = labels[c][:28]
        i, j = np.unravel_index(np.argmax(d), d.shape)
        ax = axes[row, 0]
        ax.imshow(image)
        ax.add_patch(Rectangle((j * stride - 0.5, i * stride - 0.5), window, window, fill=False,
                               edgecolor="yellow", linewidth=2))
        ax.set_title(f"{IMAGES[row]}: {name} ({float(probs[row, c]):.2f})", fontsize=9)
        lim = float(np.abs(pix).max()) or 1.0
        im = axes[row, 1].imshow(pix, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[row, 1].set_title(f"logit drop of '{name}'", fontsize=9)
        fig.colorbar(im, ax=axes[row, 1], fraction=0.046, pad=0.04)
        axes[row, 2].imshow(overlay(image, np.maximum(pix, 0), alpha=0.5))
        axes[row, 2].set_title("positive drop over the image", fontsize=9)
        ctx.note(**{f"{IMAGES[row]} class": name,
                    f"{IMAGES[row]} largest drop": round(float(d.max()), 2)})
        for ax in axes[row]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig
