"""Occlusion figure (Zeiler & Fergus 2014, Fig. 7): a grey square slides over sample photographs;
for each position, the strongest fire9 feature map's activity, the probability of the true class
and the most probable class (the classifier's label map)."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

# pug, hare, beach wagon: photos whose label changes when the object is covered (found by a
# coarse occlusion scan of the sample; Zeiler & Fergus showed a Pomeranian, a car wheel and an
# Afghan hound, the first two of which the sample lacks)
CLASSES = [254, 331, 436]
WINDOW, STRIDE = 48, 8


@figure("occlusion", "Occlusion sensitivity: the classifier's output as a grey square slides",
        "Zeiler & Fergus 2014, Fig. 7, on SqueezeNet 1.1 (224 px): a 48 px grey square (yellow box: the "
        "position that lowers p(true class) most) slides with stride 8; each map pixel is one position of the "
        "square. (b) The activity (spatial mean) of the fire9 feature map that responds most to the "
        "unoccluded photo; (c) that feature map's strongest activation projected down to pixels with the "
        "deconvnet (Zeiler & Fergus's visualisation, grey = 0); (d) the probability of the true class; (e) the most probable "
        "class at each position (the label map; legend: the classes by share of positions). Covering the "
        "object drops the feature map's activity and p(true class), and can hand the label to another class "
        "(the pug's face covered: boxer, llama, muzzle), covering the background does not: the network "
        "localises the object rather than using its surroundings. The beach wagon's fire9 map 279 answers to the "
        "front wheel (its projection lands there and covering the wheel silences it) while p(beach wagon) "
        "depends on the windows, like Zeiler & Fergus's car-wheel example. Computed with the incremental engine "
        "(jaxviz.occlusion.occlusion_outputs / incremental_occlusion), which recomputes only what each square "
        "changes.",
        order=305, photos="ImageNet sample: pug, hare, beach wagon", window=WINDOW, stride=STRIDE, fill="grey")
def occlusion_figure(ctx: Context):
    import time

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    from jaxviz.accel import xla
    from jaxviz.gallery.attribution import TITLE, _short, classifier, sample_photos
    from jaxviz.occlusion import flop_saving, incremental_occlusion, occlusion_outputs
    from jaxviz.targets import Target

    model = classifier(ctx)
    labels = model.labels
    ph = sample_photos(ctx, model, CLASSES, count=2 if ctx.quick else None)
    window, stride = (WINDOW, 32) if ctx.quick else (WINDOW, STRIDE)
    layer = model.resolve_layer("fire9" if "fire9" in model.aliases else model.feature_layer)
    t0 = time.perf_counter()
    out = np.asarray(occlusion_outputs(model, model.params, ph.x, window=window, stride=stride, fill="grey"))
    t1 = time.perf_counter()
    probs = np.asarray(jax.nn.softmax(jnp.asarray(out), axis=-1))
    acts = np.asarray(model.activation(model.params, ph.x, layer))  # (N, h, w, C)
    channels = acts.mean(axis=(1, 2)).argmax(-1)  # the feature map with the largest mean activity
    chan = jnp.asarray(channels)
    # the channel's mean activity under each occluder position: clean mean - drop (one channel
    # per photo, given as a traced index: one compiled engine for all photos)
    drops = np.asarray(incremental_occlusion(model, model.params, ph.x, Target(layer=layer), index=chan,
                                             window=window, stride=stride, fill="grey"))
    activity = acts.mean(axis=(1, 2))[np.arange(len(channels)), channels][:, None, None] - drops
    t2 = time.perf_counter()
    # (c): the feature map's strongest activation projected down to pixels by the deconvnet (as
    # Zeiler & Fergus project the top activation; the max routes the signal to that one position)
    deconv = model.with_backward("deconv")

    def map_score(x):
        a = deconv.activation(model.params, x, layer)
        return jnp.take_along_axis(a, chan[:, None, None, None], axis=-1).max(axis=(1, 2, 3)).sum()
    projection = np.asarray(xla.jit(jax.grad(map_score), model.compiler_options)(ph.x))

    n = len(ph.images)
    fig, axes = plt.subplots(n, 5, figsize=(15.5, 3.2 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.2, 1.55]})
    size = ph.images.shape[1]
    for k in range(n):
        c = int(ph.index[k])
        p_true = probs[k, :, :, c]
        i, j = np.unravel_index(np.argmin(p_true), p_true.shape)
        ax = axes[k]
        ax[0].imshow(ph.images[k])
        ax[0].add_patch(Rectangle((j * stride - 0.5, i * stride - 0.5), window, window, fill=False,
                                  edgecolor="yellow", linewidth=2))
        ax[0].set_title(f"(a) {_short(ph.names[k], 20)} (p {ph.probs[k]:.2f})", fontsize=TITLE)
        im = ax[1].imshow(activity[k], cmap="viridis")
        ax[1].set_title(f"(b) {layer} map {int(channels[k])}:\nactivity vs square position", fontsize=TITLE)
        fig.colorbar(im, ax=ax[1], fraction=0.046, pad=0.03).ax.tick_params(labelsize=TITLE)
        g = projection[k]
        ax[2].imshow(np.clip(0.5 + g / (2 * np.percentile(np.abs(g), 99.5) + 1e-12), 0, 1))
        ax[2].set_title("(c) its top activation\nprojected (deconvnet)", fontsize=TITLE)
        im = ax[3].imshow(p_true, cmap="jet", vmin=0, vmax=1)
        ax[3].set_title(f"(d) p({_short(ph.names[k], 16)})\nvs square position", fontsize=TITLE)
        fig.colorbar(im, ax=ax[3], fraction=0.046, pad=0.03).ax.tick_params(labelsize=TITLE)
        label_map = probs[k].argmax(-1)
        classes, counts = np.unique(label_map, return_counts=True)
        order = [c] + [int(a) for a in classes[np.argsort(-counts)] if a != c]
        shown = order[:5]
        palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f"]
        codes = np.array([shown.index(int(v)) if int(v) in shown else len(shown) for v in label_map.ravel()])
        ax[4].imshow(codes.reshape(label_map.shape), cmap=ListedColormap(palette[:len(shown) + 1]),
                     vmin=-0.5, vmax=len(shown) + 0.5, interpolation="nearest")
        share = {int(a): b / label_map.size for a, b in zip(classes, counts)}
        handles = [Patch(color=palette[m], label=f"{_short(labels[cls], 18)} {100 * share.get(cls, 0):.0f}%")
                   for m, cls in enumerate(shown) if share.get(cls, 0) > 0]
        if len(order) > len(shown):
            rest = sum(share[int(a)] for a in order[len(shown):])
            handles.append(Patch(color=palette[len(shown)], label=f"other {100 * rest:.0f}%"))
        ax[4].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=TITLE, frameon=False)
        ax[4].set_title("(e) most probable class", fontsize=TITLE)
        for a in ax:
            a.set_xticks([]), a.set_yticks([])
        ctx.note(**{f"{ph.names[k]}: lowest p(true class)": round(float(p_true.min()), 3),
                    f"{ph.names[k]}: positions with another top class": f"{100 * (label_map != c).mean():.0f}%"})
    positions = out.shape[1] * out.shape[2]
    ctx.note(model=model.name, positions_per_photo=positions,
             seconds_outputs=round(t1 - t0, 1), seconds_feature_map=round(t2 - t1, 1),
             flop_saving=round(flop_saving(model, input_size=size, window=window, stride=stride), 2))
    fig.tight_layout(w_pad=1.0)
    return fig
