"""Maximally activating patches over a dataset (Zeiler & Fergus 2014, fig. 2)."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

LAYERS = ("fire3", "fire6", "fire9")
CHANNELS = 8


def choose_channels(topk, count: int) -> list[int]:
    """Channels with the strongest top-k mean whose best images differ (a varied selection)."""
    order = np.argsort(-topk.values.mean(axis=1), kind="stable")
    chosen, seen = [], set()
    for c in order:
        best = int(topk.image[c, 0])
        if best not in seen and np.isfinite(topk.values[c, 0]) and topk.values[c, 0] > 0:
            chosen.append(int(c))
            seen.add(best)
        if len(chosen) == count:
            break
    return chosen


@figure("scan_patches", "Top-9 patches per channel at three depths",
        "For 8 channels of SqueezeNet 1.1's fire3, fire6 and fire9, the image patches (each unit's exact "
        "receptive field, grey where it hangs over the image edge) of the 9 dataset images that activate "
        "the channel most, found by a streaming top-k scan (jaxviz.scan) of a deterministic 300-image "
        "set built offline from scikit-image and scikit-learn sample photos, textures, LFW faces and "
        "their random crops/flips (jaxviz.datasets). Deeper layers see larger patches and respond to "
        "more complex structure (Zeiler & Fergus 2014, fig. 2).", order=40,
        model="squeezenet1_1", layers=LAYERS, topk=9, images=300, input_size=224)
def scan_patches(ctx: Context):
    import tempfile
    import time

    import matplotlib.pyplot as plt

    from jaxviz.accel import accelerate
    from jaxviz.datasets import figure_index
    from jaxviz.patches import layer_field, top_patches
    from jaxviz.render import grid

    name = "squeezenet1_1" if "squeezenet1_1" in ctx.models else ctx.models[0]
    model = accelerate(ctx.model(name))  # the scan jits with model.compiler_options
    layers = LAYERS if name.startswith("squeezenet") else _three_depths(model)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index = figure_index(model, f"{tmp}/index", layers=layers, count=300, topk=9)
        seconds = time.perf_counter() - start
        fig, axes = plt.subplots(len(layers), CHANNELS, figsize=(2.0 * CHANNELS, 2.3 * len(layers)), squeeze=False)
        picked = {}
        for row, layer in enumerate(layers):
            canonical = model.resolve_layer(layer)
            channels = choose_channels(index.topk[canonical], CHANNELS)
            picked[layer] = channels
            tiles, values = top_patches(model, index, layer, channels, k=9)
            field = layer_field(model, canonical, index.meta["input_size"])
            for col, (channel, t, v) in enumerate(zip(channels, tiles, values)):
                ax = axes[row, col]
                ax.imshow(grid(t, columns=3, pad=max(1, t.shape[1] // 24)))
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"ch {channel}  max {v[0]:.1f}", fontsize=8)
                if col == 0:
                    ax.set_ylabel(f"{layer}\nfield {field.size} px", fontsize=9)
    ctx.note(model=name, images=index.meta["count"], input_size=index.meta["input_size"],
             scan_seconds=round(seconds, 1), images_per_second=round(index.meta["count"] / seconds, 1),
             channels=picked)
    fig.tight_layout()
    return fig


def _three_depths(model) -> tuple[str, ...]:
    """Three spatial layers at a quarter, half and all of the depth (by forward order), skipping
    layers whose output has the shape of the one before (activations after their convolution)."""
    shapes = model.layer_shapes()
    names = [n for n in model.layer_names if len(shapes.get(n, ())) == 3]
    distinct = [n for i, n in enumerate(names) if i == 0 or shapes[n] != shapes[names[i - 1]]] or names
    return (distinct[len(distinct) // 4], distinct[len(distinct) // 2], distinct[-1])
