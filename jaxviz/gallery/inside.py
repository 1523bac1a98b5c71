"""Inside-the-network figures: filters, digit templates, feature maps, neighbours, t-SNE maps."""
from __future__ import annotations

import time

import numpy as np

from jaxviz.gallery import Context, figure

MAP_LAYERS = {"squeezenet1_1": ("relu1", "fire4", "fire9"),
              "efficientnet_lite0": ("stem", "blocks.5", "head"),
              "vgg19_caffe": ("relu1_2", "relu3_4", "relu5_4")}
DATASET_SIZE = 300
FIGURE_QUERIES = ("chelsea", "astronaut", "coffee", "rocket")


def _model(ctx: Context, name: str):
    """The gallery's model, accelerated once (the front end's job; cached per model)."""
    from jaxviz.accel import accelerate
    return accelerate(ctx.model(name))


def _off(ax) -> None:
    ax.set_xticks([]), ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


DEEP_LAYERS = {"vgg19_caffe": "conv1_2", "squeezenet1_1": "fire2"}
DEEP_GROUPS, DEEP_PER_GROUP = 12, 16
SEP = np.asarray([0.16, 0.38, 0.72], np.float32)  # tile separators and group frames: not a grey value


def _zero_centred_groups(kernel: np.ndarray, groups: int, per_group: int) -> np.ndarray:
    """(kh, kw, C_in, C_out) -> (G, I, kh, kw) in [0, 1] with 0.5 = a zero weight: each output filter
    (group) divided by its largest |weight|, so black/white are -/+ that and near-zero weights are grey."""
    t = np.transpose(np.asarray(kernel, np.float32)[:, :, :per_group, :groups], (3, 2, 0, 1))
    m = np.abs(t).max(axis=(1, 2, 3), keepdims=True)
    return 0.5 + 0.5 * t / np.where(m > 0, m, 1.0)


def _group_mosaic(tiles: np.ndarray, columns: int, tile_px: int) -> np.ndarray:
    """(G, I, kh, kw) grey tiles -> an RGB mosaic: each group a square block of its tiles (nearest-
    enlarged to ``tile_px``) on a blue frame, the blocks on light grey, ``columns`` per row."""
    g, n, kh, kw = tiles.shape
    per_row = int(np.ceil(np.sqrt(n)))
    f = max(1, tile_px // kh)
    th, tw = kh * f, kw * f
    bh = per_row * (th + 2) + 2
    block_rows = int(np.ceil(n / per_row))
    bh, bw = block_rows * (th + 2) + 2, per_row * (tw + 2) + 2
    gap = max(8, tile_px // 2)
    rows = int(np.ceil(g / columns))
    out = np.full((rows * (bh + gap) - gap, columns * (bw + gap) - gap, 3), 0.96, np.float32)
    for gi in range(g):
        y0, x0 = (gi // columns) * (bh + gap), (gi % columns) * (bw + gap)
        out[y0:y0 + bh, x0:x0 + bw] = SEP
        for i in range(n):
            ty, tx = y0 + 2 + (i // per_row) * (th + 2), x0 + 2 + (i % per_row) * (tw + 2)
            tile = np.repeat(np.repeat(tiles[gi, i], f, 0), f, 1)
            out[ty:ty + th, tx:tx + tw] = tile[..., None]
    return out


def _adjacent_correlation(kernel: np.ndarray) -> float:
    """Correlation of horizontally and vertically adjacent weights inside the k x k slices: ~0 for
    spatially unstructured (noise-like) kernels, high for smooth templates."""
    k = np.asarray(kernel, np.float64)
    a = np.concatenate([k[:, :-1].ravel(), k[:-1, :].ravel()])
    b = np.concatenate([k[:, 1:].ravel(), k[1:, :].ravel()])
    return float(np.corrcoef(a, b)[0, 1])


@figure("filters_first_layer", "First-layer filters of every model",
        "The first convolution's kernels of each available model as RGB tiles, each filter "
        "normalised to its own min/max (Krizhevsky et al. 2012, fig. 3). vgg19_caffe was trained on "
        "BGR input: its kernels are flipped to RGB for display. 3x3 kernels show colour-opponent "
        "blobs and oriented edges rather than AlexNet's large Gabors.", order=40)
def filters_first_layer(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.filters import filter_grid_image, first_conv_path, first_layer_filters

    names = ctx.models
    width = min(11.0, 3.7 * len(names))  # the page shows figures at most ~1100 px wide
    fig, axes = plt.subplots(1, len(names), figsize=(width, width / len(names) * 1.08 + 0.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        model = _model(ctx, name)
        tiles = first_layer_filters(model)
        ax.imshow(filter_grid_image(tiles, min_tile=24), interpolation="nearest")
        ax.set_title(f"{name}\n{first_conv_path(model)}: {len(tiles)} x {tiles.shape[1]}x{tiles.shape[2]}x3",
                     fontsize=9)
        _off(ax)
        ctx.note(**{f"{name} first layer": f"{first_conv_path(model)} {tiles.shape}"})
    fig.tight_layout()
    return fig


@figure("filters_deep", "A deeper layer's filters as grey groups, one panel per model",
        "VGG19's conv1_2 filters are small spatial templates (blobs, bars and corner-like "
        "patterns), many of their slices near zero; SqueezeNet 1.1's fire2 slices look like noise. Each "
        "framed group is one output filter, its tiles the 3x3 slices on its first 16 input channels "
        "(12 groups shown), grey zero-centred per group: mid-grey 0, black and white "
        "-/+ the group's largest |weight|. The notes measure both: correlation of adjacent weights "
        "(0 = spatial noise) and the share of weights under 10% of their filter's largest.",
        order=41, groups=DEEP_GROUPS, per_group=DEEP_PER_GROUP, layers="vgg19_caffe conv1_2, squeezenet1_1 fire2")
def filters_deep(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.filters import get_kernel

    names = [n for n in DEEP_LAYERS if n in ctx.models] or ctx.models[:1]
    heights = [1.0 if i == 0 else 0.8 for i in range(len(names))]
    fig = plt.figure(figsize=(12, 4.3 * sum(heights)))
    panels = np.atleast_1d(fig.subfigures(len(names), 1, hspace=0.06, height_ratios=heights))
    for panel, name in zip(panels, names):
        model = _model(ctx, name)
        layer = DEEP_LAYERS.get(name, model.feature_layer)
        path, kernel = get_kernel(model, layer)
        groups = DEEP_GROUPS if name == names[0] else DEEP_GROUPS // 2 * 2
        tiles = _zero_centred_groups(kernel, groups, DEEP_PER_GROUP)
        k = np.asarray(kernel, np.float32)
        near = float((np.abs(k) < 0.1 * np.abs(k).max(axis=(0, 1, 2), keepdims=True)).mean())
        smooth = _adjacent_correlation(k)
        panel.set_facecolor("0.96")
        ax = panel.add_axes([0.005, 0.02, 0.99, 0.80])
        ax.imshow(_group_mosaic(tiles, columns=6, tile_px=36 if name == names[0] else 27),
                  interpolation="nearest")
        _off(ax)
        panel.suptitle(f"{name} {layer} ({path}, kernel {k.shape[0]}x{k.shape[1]}, {k.shape[2]} in -> "
                       f"{k.shape[3]} out): first {tiles.shape[0]} filters x first {tiles.shape[1]} "
                       f"input channels\nadjacent-weight correlation {smooth:.2f}; "
                       f"{100 * near:.0f}% of weights under 10% of their filter's largest |w|",
                       fontsize=12, y=0.985)
        ctx.note(**{f"{name} layer": f"{layer} ({path}, kernel {k.shape})",
                    f"{name} adjacent-weight correlation": round(smooth, 2),
                    f"{name} weights under 10% of their filter's max": f"{100 * near:.0f}%"})
    return fig


@figure("digit_templates", "Linear-classifier templates (scikit-learn digits)",
        "A softmax linear classifier trained with optax on the raw 8x8 pixels of scikit-learn's "
        "handwritten DIGITS (load_digits; not CIFAR-10, which is not available offline), as in the "
        "cs231n linear-classification notes: each class's weight vector shown as an image (top, "
        "red positive / blue negative) beside the class's mean centred image (bottom).", order=42,
        steps=300, lr=0.05, weight_decay=1e-3)
def digit_templates(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.linear import train_digit_templates

    ctx.declare_input("scikit-learn's DIGITS (8x8 handwritten digits; no photographs)")
    result = train_digit_templates(steps=300, lr=0.05, weight_decay=1e-3)
    t, m = result.templates.reshape(10, -1), result.class_means.reshape(10, -1)
    corr = np.diag(np.corrcoef(t, m)[:10, 10:])
    ctx.note(test_accuracy=round(result.accuracy, 4), train_accuracy=round(result.train_accuracy, 4),
             template_vs_mean_correlation=f"{corr.min():.2f}..{corr.max():.2f}")
    fig, axes = plt.subplots(2, 10, figsize=(11, 2.9))
    for c in range(10):
        for row, (img, cmap) in enumerate(((result.templates[c], "bwr"), (result.class_means[c], "bwr"))):
            lim = np.abs(img).max()
            axes[row, c].imshow(img, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
            _off(axes[row, c])
        axes[0, c].set_title(str(c))
    axes[0, 0].set_ylabel("template", fontsize=9)
    axes[1, 0].set_ylabel("class mean", fontsize=9)
    fig.suptitle(f"digits: test accuracy {result.accuracy:.1%}", fontsize=10)
    fig.tight_layout()
    return fig


@figure("feature_maps", "Feature maps of one image at three depths",
        "All channels of three layers of SqueezeNet 1.1 for one image, each map normalised on its own "
        "(Yosinski et al. 2015; Zeiler & Fergus 2014); the channel with the largest mean activation is "
        "framed in red (the largest single value picked, at fire4, a channel firing only along the padded "
        "border). Early maps are edge/colour detectors at high resolution; deep ones are coarse and sparse.", order=43, image="chelsea")
def feature_maps(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.accel import xla
    from jaxviz.activations import activation_panel, check_spatial, feature_maps
    from jaxviz.images import load_images

    name = "squeezenet1_1" if "squeezenet1_1" in ctx.models else ctx.models[0]
    model = _model(ctx, name)
    layers = MAP_LAYERS.get(name) or (model.feature_layer,)
    ctx.uses_builtin()
    image = load_images(["chelsea"], model.input_hw())
    maps = xla.jit(feature_maps, model.compiler_options, static_argnums=(0, 3))
    fig, axes = plt.subplots(len(layers), 1, figsize=(12, 5.2 * len(layers)), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        canonical = check_spatial(model, layer)
        acts = maps(model, model.params, model.preprocess(jnp.asarray(image)), canonical)
        panel, best = activation_panel(image[0], acts[0], by="mean")
        ax.imshow(panel)
        ax.set_title(f"{name} {layer} ({canonical}): {acts.shape[-1]} channels of {acts.shape[1]}x{acts.shape[2]}; "
                     f"strongest channel {best}", fontsize=10)
        _off(ax)
        ctx.note(**{f"{layer} strongest channel": best})
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- dataset
# The dataset figures share one scan of the photograph pool per gallery run (jaxviz.gallery.scan):
# its pooled features (the figure model's feature layer) and its thumbnails.

# Queries of the neighbour figure: classes with many related classes in ImageNet (and one without).
NEIGHBOR_QUERIES = (207, 281, 11, 817)  # golden retriever, tabby cat, goldfinch, sports car
THUMB = 128


def _queries(sample, count: int) -> list[int]:
    """Rows of the query photographs: NEIGHBOR_QUERIES where the pool has them, else evenly spread
    photographs (the built-in set: crops of the named sample photos)."""
    where = {int(c): r for r, c in enumerate(sample.classes) if c >= 0}
    rows = [where[c] for c in NEIGHBOR_QUERIES if c in where]
    if len(rows) < count and not sample.real:
        for base in FIGURE_QUERIES:
            hits = [i for i, r in enumerate(sample.rows) if r["label"] == base and "_crop" in r["path"]]
            rows += hits[:1]
    n = len(sample.rows)
    rows += [i for i in range(0, n, max(1, n // count)) if i not in rows]
    return rows[:count]


def _same(sample) -> np.ndarray:
    """(N,) the category neighbours are judged by: the coarse group of the ImageNet class where it
    has one, else the class itself (the built-in set: the source photo)."""
    groups, labels = sample.groups, sample.labels
    return np.asarray([g if g else lab for g, lab in zip(groups, labels)])


def _small(images: np.ndarray, size: int) -> np.ndarray:
    import jax
    import jax.numpy as jnp
    n, _, _, c = images.shape
    small = jax.image.resize(jnp.asarray(images), (n, size, size, c), "linear", antialias=True)
    return np.clip(np.asarray(small), 0.0, 1.0)


@figure("neighbors_feature_vs_pixel", "Nearest neighbours: feature space vs pixel space",
        "Krizhevsky et al. 2012, fig. 4, on a pool of real photographs (the ImageNet sample: one "
        "photograph for each of 900 classes, so the nearest photographs are of other, related classes). "
        "For each query (left), its 6 nearest other photographs by SqueezeNet 1.1's pooled fire9 "
        "features (cosine; top row) and by raw pixels (32x32, Euclidean; bottom row). Each thumbnail "
        "is labelled with its ImageNet class; a green label marks a neighbour in the query's coarse "
        "group (dogs, cats, birds, road vehicles, ...: ranges of the WordNet-ordered class list, as in "
        "RestrictedImageNet). Feature neighbours land more often on related classes (other dog breeds, "
        "other vehicles; the notes give the same-group precision of both), but colour still counts in "
        "them: a strongly coloured query (a yellow bird, an orange cat) also draws animals of that colour "
        "from unrelated classes. Pixel neighbours share only overall brightness, colour and layout (grass "
        "under the dog, a dark surround) and are mostly unrelated classes.", order=44,
        k=6, feature_metric="cosine", pixel_metric="l2", pixel_size=32)
def neighbors_feature_vs_pixel(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.embedding import nearest_neighbors, pixel_features
    from jaxviz.gallery.scan import sample_scan

    sample = sample_scan(ctx)
    feats = sample.index.features
    thumbs = sample.thumbnails(THUMB)
    pixels = np.asarray(pixel_features(jnp.asarray(thumbs), 32))
    k = 6
    # k + 1: the query itself (distance 0) is dropped from its own list.
    _, fi = nearest_neighbors(feats, feats, k + 1, metric="cosine")
    _, pi = nearest_neighbors(pixels, pixels, k + 1, metric="l2")
    fi, pi = _drop_self(fi), _drop_self(pi)
    same, labels = _same(sample), sample.labels
    grouped = np.flatnonzero(sample.groups != "") if sample.real and np.any(sample.groups != "") \
        else np.arange(len(same))
    f_prec = float(np.mean(same[fi[grouped]] == same[grouped, None]))
    p_prec = float(np.mean(same[pi[grouped]] == same[grouped, None]))
    sample.note(ctx)
    ctx.note(feature_layer=f"{sample.index.meta['feature_layer']} (global average, {feats.shape[1]} values)",
             **{f"same-group precision@{k} over the {len(grouped)} grouped photographs":
                f"features {f_prec:.2f}, pixels {p_prec:.2f}"})
    queries = _queries(sample, 2 if ctx.quick else 4)
    feature = _alias(sample.model, sample.index.meta["feature_layer"])
    fig, axes = plt.subplots(2 * len(queries), k + 1, figsize=(11, 2.1 * 2 * len(queries)), squeeze=False,
                             gridspec_kw={"wspace": 0.08, "hspace": 0.62})
    for row, q in enumerate(queries):
        for j, (idx, what) in enumerate(((fi, "features"), (pi, "pixels"))):
            r = 2 * row + j
            ax = axes[r, 0]
            _off(ax)
            if j == 0:
                ax.imshow(thumbs[q])
                ax.set_xlabel(f"query: {_short(labels[q])}", fontsize=9, labelpad=2, fontweight="bold")
            else:
                ax.axis("off")
            for c, n in enumerate(idx[q]):
                ax = axes[r, c + 1]
                ax.imshow(thumbs[n])
                _off(ax)
                ax.set_xlabel(_short(labels[n]), fontsize=9, labelpad=2,
                              color="#0a7d20" if same[n] == same[q] else "black")
            axes[r, 1].set_title(f"nearest in {feature} features (cosine)" if what == "features"
                                 else "nearest in pixels (32x32, L2)", fontsize=9, loc="left", pad=3)
    return fig


def _alias(model, layer: str) -> str:
    """A layer's short name where the model has one (SqueezeNet's features.12 -> fire9)."""
    return {v: k for k, v in model.aliases.items()}.get(layer, layer)


def _short(label: str, n: int = 17) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


def _drop_self(idx: np.ndarray) -> np.ndarray:
    """Remove each row's own index (or, for exact duplicates, the last column) -> (N, k)."""
    n, k1 = idx.shape
    out = np.empty((n, k1 - 1), idx.dtype)
    for i in range(n):
        row = idx[i][idx[i] != i]
        out[i] = row[:k1 - 1]
    return out


@figure("tsne_embedding", "PCA and t-SNE of CNN codes: scatter and grid of photographs",
        "Van der Maaten & Hinton's t-SNE (scikit-learn, PCA init, perplexity 30) of "
        "SqueezeNet 1.1's pooled fire9 features of the photograph pool (the ImageNet sample: 900 "
        "photographs, one per class), beside PCA, as in Karpathy's 'CNN codes' t-SNE visualisation: "
        "scatters coloured by coarse class group (ranges of the WordNet-ordered ImageNet classes; "
        "grey: the rest); the t-SNE points snapped one-to-one to a grid by a linear assignment (scipy "
        "linear_sum_assignment) and drawn as the photographs; below, two windows of that grid "
        "enlarged (framed in the grid) with each photograph's class. Related classes gather: t-SNE "
        "gives dog breeds and birds regions of their own; PCA already groups dogs and road vehicles "
        "partly, and t-SNE's vehicles are a small clump plus scattered points.",
        order=45, perplexity=30)
def tsne_embedding(ctx: Context):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from jaxviz.embedding import (
        grid_assignment,
        grid_costs,
        grid_image,
        grid_shape,
        pca,
        tsne,
    )
    from jaxviz.gallery.scan import sample_scan

    sample = sample_scan(ctx)
    feats = sample.index.features
    n = len(feats)
    start = time.perf_counter()
    points = tsne(feats, perplexity=30, seed=0)
    t_tsne = time.perf_counter() - start
    start = time.perf_counter()
    rows, cols = grid_shape(n)
    cells = grid_assignment(points, rows, cols)
    t_grid = time.perf_counter() - start
    cost = grid_costs(points, rows, cols)
    rand = np.random.default_rng(0).permutation(rows * cols)[:n]
    sample.note(ctx)
    ctx.note(tsne_seconds=round(t_tsne, 1), grid_assignment_seconds=round(t_grid, 2), grid=f"{rows}x{cols}",
             grid_cost_vs_random_assignment=round(float(cost[np.arange(n), cells].sum()
                                                         / cost[np.arange(n), rand].sum()), 3))
    cat = _same(sample) if sample.real and np.any(sample.groups != "") else np.asarray(sample.labels)
    if sample.real and np.any(sample.groups != ""):
        cat = np.where(sample.groups != "", cat, "")
    names, counts = np.unique(cat[cat != ""], return_counts=True)
    top = list(names[np.argsort(-counts, kind="stable")][:10])
    colours = {c: plt.cm.tab10(i) for i, c in enumerate(top)}

    thumbs = sample.thumbnails(THUMB)
    cell = 36 if not ctx.quick else 24
    small = _small(thumbs, cell)
    canvas = grid_image(cells, small, rows, cols)
    fig = plt.figure(figsize=(11, 4.6 + 10.8 * rows / cols + 5.6))
    outer = fig.add_gridspec(3, 1, height_ratios=[4.6, 10.8 * rows / cols, 5.6], hspace=0.07,
                             left=0.01, right=0.99, top=0.99, bottom=0.01)
    top_row = outer[0].subgridspec(1, 3, width_ratios=[1, 1, 0.62], wspace=0.05)
    pc = pca(feats)
    for i, (pts, title) in enumerate(((pc, "PCA"), (points, "t-SNE"))):
        ax = fig.add_subplot(top_row[i])
        ax.invert_yaxis()  # y down, as in the grid below
        ax.scatter(pts[:, 0], pts[:, 1], s=7, c="#cccccc", linewidths=0)
        for c in top:
            sel = cat == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=11, color=colours[c], label=c, linewidths=0)
        ax.set_title(f"{title} of pooled {_alias(sample.model, sample.index.meta['feature_layer'])}", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    legend_ax = fig.add_subplot(top_row[2])
    legend_ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[c], label=f"{c} ({int(np.sum(cat == c))})")
               for c in top] + [plt.Line2D([], [], marker="o", ls="", color="#cccccc", label="other classes")]
    legend_ax.legend(handles=handles, fontsize=9, loc="center left", frameon=False)
    ax = fig.add_subplot(outer[1])
    ax.imshow(canvas, interpolation="antialiased")
    ax.set_title(f"t-SNE snapped to a {rows}x{cols} grid (each cell one photograph)", fontsize=10)
    _off(ax)
    windows = _windows(cells, cat, rows, cols, top, size=4)
    zoom = outer[2].subgridspec(1, len(windows), wspace=0.08)
    for w, (r0, c0, size, what) in enumerate(windows):
        ax.add_patch(Rectangle((c0 * cell - 0.5, r0 * cell - 0.5), size * cell, size * cell, fill=False,
                               edgecolor="red", linewidth=2))
        ax.text(c0 * cell + 3, r0 * cell + 3, "AB"[w], color="red", fontsize=11, fontweight="bold", va="top",
                ha="left", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
        inner = zoom[w].subgridspec(size, size, wspace=0.05, hspace=0.3)
        at = {int(c): i for i, c in enumerate(cells)}
        for dr in range(size):
            for dc in range(size):
                a = fig.add_subplot(inner[dr, dc])
                _off(a)
                i = at.get((r0 + dr) * cols + c0 + dc)
                if i is None:
                    continue
                a.imshow(thumbs[i])
                a.set_xlabel(_short(sample.labels[i], 15), fontsize=9, labelpad=1)
        fig.add_subplot(zoom[w], frameon=False, xticks=[], yticks=[]).set_title(
            f"{'AB'[w]}: window around {what}", fontsize=10, pad=4)
    return fig


def _windows(cells: np.ndarray, cat: np.ndarray, rows: int, cols: int, top: list, size: int) -> list:
    """Two size x size windows of the grid: where the two largest categories are densest."""
    out, where = [], np.full((rows, cols), "", dtype=object)
    for i, c in enumerate(cells):
        where[c // cols, c % cols] = cat[i]
    for c in top:
        if len(out) == 2:
            break
        best, at = -1, (0, 0)
        for r0 in range(rows - size + 1):
            for c0 in range(cols - size + 1):
                hits = int(np.sum(where[r0:r0 + size, c0:c0 + size] == c))
                if hits > best:
                    best, at = hits, (r0, c0)
        if any(abs(at[0] - o[0]) < size and abs(at[1] - o[1]) < size for o in out):
            continue  # overlaps the first window: try the next category
        out.append((at[0], at[1], size, c))
    return out
