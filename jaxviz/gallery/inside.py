"""Inside-the-network figures: filters, digit templates, feature maps, neighbours, t-SNE maps."""
from __future__ import annotations

import re
import tempfile
from functools import lru_cache

import numpy as np

from jaxviz.gallery import Context, figure

# A deeper layer per model for the grey filter groups (the seed's "20 groups of 16 maps").
DEEP_LAYERS = {"squeezenet1_1": "fire2", "vgg19_caffe": "conv1_2"}
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


@figure("filters_first_layer", "First-layer filters of every model",
        "The first convolution's kernels of each available model as RGB tiles, each filter "
        "normalised to its own min/max (Krizhevsky et al. 2012, fig. 3). vgg19_caffe was trained on "
        "BGR input: its kernels are flipped to RGB for display. 3x3 kernels show colour-opponent "
        "blobs and oriented edges rather than AlexNet's large Gabors.", order=40)
def filters_first_layer(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.filters import filter_grid_image, first_conv_path, first_layer_filters

    names = ctx.models
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.9), squeeze=False)
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


@figure("filters_deep", "A deeper layer's filters as grey groups",
        "Each group is one output filter of a deeper convolution; its tiles are the filter's k x k "
        "slices on each input channel (grey, one scale per group), as in the seed's '20 groups of 16 "
        "maps'. SqueezeNet fire2 expand3x3: first 20 of 64 filters, each over the 16 squeeze "
        "channels; VGG19 conv1_2: first 20 of 64 filters, first 16 of their 64 input channels.", order=41, groups=20)
def filters_deep(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.filters import get_kernel, grey_filters, group_grid_image

    names = [n for n in ctx.models if n in DEEP_LAYERS][:2] or ctx.models[:1]
    fig, axes = plt.subplots(1, len(names), figsize=(7.5 * len(names), 7), squeeze=False)
    for ax, name in zip(axes[0], names):
        model = _model(ctx, name)
        path, kernel = get_kernel(model, DEEP_LAYERS.get(name, model.feature_layer))
        tiles = grey_filters(kernel, groups=20, per_group=16)
        ax.imshow(group_grid_image(tiles, columns=5), interpolation="nearest")
        ax.set_title(f"{name} {path}\n{tiles.shape[0]} groups of {tiles.shape[1]} "
                     f"{tiles.shape[2]}x{tiles.shape[3]} maps (kernel {kernel.shape})", fontsize=9)
        _off(ax)
        ctx.note(**{f"{name} layer": path, f"{name} kernel shape": str(kernel.shape)})
    fig.tight_layout()
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

    result = train_digit_templates(steps=300, lr=0.05, weight_decay=1e-3)
    t, m = result.templates.reshape(10, -1), result.class_means.reshape(10, -1)
    corr = np.diag(np.corrcoef(t, m)[:10, 10:])
    ctx.note(test_accuracy=round(result.accuracy, 4), train_accuracy=round(result.train_accuracy, 4),
             template_vs_mean_correlation=f"{corr.min():.2f}..{corr.max():.2f}")
    fig, axes = plt.subplots(2, 10, figsize=(13, 3.2))
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
        "(Yosinski et al. 2015; Zeiler & Fergus 2014); the channel with the largest activation is "
        "framed in red. Early maps are edge/colour detectors at high resolution; deep ones are "
        "coarse and sparse.", order=43, image="chelsea")
def feature_maps(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.accel import xla
    from jaxviz.activations import activation_panel, check_spatial, feature_maps
    from jaxviz.images import load_images

    name = "squeezenet1_1" if "squeezenet1_1" in ctx.models else ctx.models[0]
    model = _model(ctx, name)
    layers = MAP_LAYERS.get(name) or (model.feature_layer,)
    image = load_images(["chelsea"], model.input_hw())
    maps = xla.jit(feature_maps, model.compiler_options, static_argnums=(0, 3))
    fig, axes = plt.subplots(len(layers), 1, figsize=(12, 5.2 * len(layers)), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        canonical = check_spatial(model, layer)
        acts = maps(model, model.params, model.preprocess(jnp.asarray(image)), canonical)
        panel, best = activation_panel(image[0], acts[0])
        ax.imshow(panel)
        ax.set_title(f"{name} {layer} ({canonical}): {acts.shape[-1]} channels of {acts.shape[1]}x{acts.shape[2]}; "
                     f"strongest channel {best}", fontsize=10)
        _off(ax)
        ctx.note(**{f"{layer} strongest channel": best})
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- dataset

_TMP: list = []  # keeps the figure dataset's temporary folder alive for the whole gallery run


def _base(path: str) -> str:
    """The source image of a figure-dataset file: '0123_chelsea_crop0042_flip.png' -> 'chelsea'."""
    stem = re.sub(r"^\d+_", "", path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    stem = re.sub(r"(_crop\d+)?(_flip)?$", "", stem)
    return "face" if stem.startswith("face") else stem


@lru_cache(maxsize=2)
def _dataset(model_name: str, size: int):
    """(paths, images (N, S, S, 3), pooled features (N, C), logits or None) of the figure dataset."""
    import jax.numpy as jnp

    from jaxviz.accel import accelerate, xla
    from jaxviz.embedding import load_thumbnails
    from jaxviz.weights.store import load_model

    try:
        from jaxviz.datasets import figure_dataset
    except ImportError:  # engineer 4b's module absent: a small deterministic set of our own
        figure_dataset = _own_dataset
    tmp = tempfile.TemporaryDirectory(prefix="jaxviz-inside-")
    _TMP.append(tmp)
    paths = figure_dataset(tmp.name, count=DATASET_SIZE, size=size)
    images = load_thumbnails(paths, size)
    model = accelerate(load_model(model_name))
    layer = model.feature_layer

    def features_and_output(params, x):
        out, acts = model.run(params, model.preprocess(x), capture=(layer,))
        return acts[layer].mean(axis=(1, 2)), out

    run = xla.jit(features_and_output, model.compiler_options)
    feats, logits = [], []
    batch = 30
    for s in range(0, len(images), batch):
        chunk = images[s:s + batch]
        m = len(chunk)
        chunk = np.concatenate([chunk, np.zeros((batch - m,) + chunk.shape[1:], np.float32)]) if m < batch else chunk
        f, o = run(model.params, jnp.asarray(chunk))
        feats.append(np.asarray(f)[:m])
        logits.append(np.asarray(o)[:m])
    has_classes = model.num_classes is not None
    return paths, images, np.concatenate(feats), np.concatenate(logits) if has_classes else None


def _own_dataset(root: str, count: int = DATASET_SIZE, size: int = 224) -> list[str]:
    """Fallback figure set: sample photos plus deterministic crops and flips of them."""
    from jaxviz.images import SAMPLES, fit_image, load_image, save_image
    rng = np.random.default_rng(0)
    names = ["chelsea", "coffee", "astronaut", "rocket", "cat", "camera", "brick", "gravel", "grass",
             "hubble_deep_field", "coins", "horse", "immunohistochemistry"]
    names = [n for n in names if n in SAMPLES]
    bases = {n: load_image(n) for n in names}
    paths = []
    for i in range(count):
        name = names[i % len(names)]
        img = bases[name]
        if i >= len(names):
            h, w = img.shape[:2]
            ch, cw = int(h * rng.uniform(0.4, 1)), int(w * rng.uniform(0.4, 1))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = img[top:top + ch, left:left + cw]
            img = img[:, ::-1] if rng.integers(0, 2) else img
        path = f"{root}/{i:04d}_{name}{'' if i < len(names) else f'_crop{i:04d}'}.png"
        save_image(fit_image(np.ascontiguousarray(img), size), path)
        paths.append(path)
    return paths


def _figure_model(ctx: Context) -> str:
    return "squeezenet1_1" if "squeezenet1_1" in ctx.models else (ctx.classifiers() or ctx.models)[0]


@figure("neighbors_feature_vs_pixel", "Nearest neighbours: feature space vs pixel space",
        "For query images (crops of the sample photos), the 6 nearest other images of a ~300-image "
        "set built from scikit-image/scikit-learn sample photos, LFW faces and random crops/flips of "
        "them: top rows in SqueezeNet's pooled fire9 features (cosine), bottom rows in raw pixels "
        "(32x32, L2), as in Krizhevsky et al. 2012, fig. 4. Feature neighbours share the source image "
        "across crops, flips and scales; pixel neighbours share colour and layout.", order=44,
        k=6, feature_metric="cosine", pixel_metric="l2", pixel_size=32)
def neighbors_feature_vs_pixel(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.embedding import nearest_neighbors, pixel_features
    from jaxviz.render import grid

    name = _figure_model(ctx)
    model = _model(ctx, name)
    paths, images, feats, _ = _dataset(name, max(model.input_hw()))
    pixels = np.asarray(pixel_features(jnp.asarray(images), 32))
    bases = np.array([_base(p) for p in paths])
    k = 6
    # k + 1: the query itself (distance 0) is dropped from its own list.
    _, fi = nearest_neighbors(feats, feats, k + 1, metric="cosine")
    _, pi = nearest_neighbors(pixels, pixels, k + 1, metric="l2")
    fi, pi = _drop_self(fi), _drop_self(pi)
    # Precision@k: neighbours cut from the same source photo (faces: any face).
    f_prec = float(np.mean(bases[fi] == bases[:, None]))
    p_prec = float(np.mean(bases[pi] == bases[:, None]))
    ctx.note(model=name, images=len(paths), feature_layer=model.feature_layer,
             same_source_precision_at_6_feature=round(f_prec, 3),
             same_source_precision_at_6_pixel=round(p_prec, 3))
    queries = []
    for base in FIGURE_QUERIES:
        hits = [i for i, p in enumerate(paths) if _base(p) == base and "_crop" in p]
        if hits:
            queries.append(hits[0])
    thumb = 96
    small = np.stack([_resize(im, thumb) for im in images])
    fig, axes = plt.subplots(2 * len(queries), 1, figsize=(10, 1.55 * 2 * len(queries)), squeeze=False)
    for row, q in enumerate(queries):
        for j, (idx, label) in enumerate(((fi, "feature (cosine)"), (pi, "pixels 32x32 (L2)"))):
            ax = axes[2 * row + j, 0]
            strip = grid(small[idx[q]], columns=k, pad=3)
            left = small[q] if j == 0 else np.ones_like(small[q])
            ax.imshow(np.concatenate([left, np.ones((thumb, 16, 3), np.float32), strip], axis=1))
            ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
            _off(ax)
        axes[2 * row, 0].set_title(f"query: {paths[q].rsplit('/', 1)[-1]}", fontsize=8, loc="left")
    fig.suptitle(f"same-source precision@{k}: features {f_prec:.2f}, pixels {p_prec:.2f}", fontsize=10)
    fig.tight_layout()
    return fig


def _drop_self(idx: np.ndarray) -> np.ndarray:
    """Remove each row's own index (or, for exact duplicates, the last column) -> (N, k)."""
    n, k1 = idx.shape
    out = np.empty((n, k1 - 1), idx.dtype)
    for i in range(n):
        row = idx[i][idx[i] != i]
        out[i] = row[:k1 - 1]
    return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from jaxviz.images import fit_image
    return fit_image(image, size)


@figure("tsne_embedding", "PCA and t-SNE of CNN codes: scatter, thumbnail map and grid",
        "t-SNE (scikit-learn, PCA init, perplexity 30) of SqueezeNet's pooled fire9 features of the "
        "~300-image figure set (sample photos, LFW faces, crops/flips), beside PCA: scatters coloured by "
        "the predicted ImageNet class (the 9 most frequent; others grey), each image drawn at its t-SNE point, "
        "and the points snapped to a dense grid by a linear assignment (scipy "
        "linear_sum_assignment), as in Karpathy's cnnembed.", order=45, perplexity=30)
def tsne_embedding(ctx: Context):
    import time

    import matplotlib.pyplot as plt

    from jaxviz.embedding import grid_assignment, grid_costs, grid_image, grid_shape, pca, thumbnail_map, tsne

    name = _figure_model(ctx)
    model = _model(ctx, name)
    paths, images, feats, logits = _dataset(name, max(model.input_hw()))
    start = time.perf_counter()
    points = tsne(feats, perplexity=30, seed=0)
    t_tsne = time.perf_counter() - start
    start = time.perf_counter()
    rows, cols = grid_shape(len(points))
    cells = grid_assignment(points, rows, cols)
    t_grid = time.perf_counter() - start
    cost = grid_costs(points, rows, cols)
    rand = np.random.default_rng(0).permutation(rows * cols)[:len(points)]
    ctx.note(model=name, images=len(paths), tsne_seconds=round(t_tsne, 2), grid_assignment_seconds=round(t_grid, 3),
             grid=f"{rows}x{cols}",
             grid_cost_vs_random=round(float(cost[np.arange(len(points)), cells].sum()
                                             / cost[np.arange(len(points)), rand].sum()), 3))
    thumbs = np.stack([_resize(im, 40) for im in images])
    fig, axes = plt.subplots(1, 4, figsize=(24, 6.6), gridspec_kw={"width_ratios": [1, 1, 1.1, 1.1]})
    pc = pca(feats)
    pred = logits.argmax(1) if logits is not None else np.zeros(len(points), int)
    classes, counts = np.unique(pred, return_counts=True)
    top = classes[np.argsort(-counts)][:9] if logits is not None else []
    labels = (model.labels or [f"class {c}" for c in range(model.num_classes or 0)]) if logits is not None else []
    for ax, pts, title in ((axes[0], pc, "PCA"), (axes[1], points, "t-SNE")):
        ax.scatter(pts[:, 0], pts[:, 1], s=10, c="lightgrey")
        for j, c in enumerate(top):
            sel = pred == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=14, color=plt.cm.tab10(j), label=labels[int(c)][:18])
        ax.set_title(f"{title} of pooled {model.feature_layer}, coloured by predicted class", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    if len(top):
        axes[1].legend(fontsize=7, loc="best")
    # t-SNE's y axis points up in the scatter, the canvas's down: flip so the panels agree.
    axes[2].imshow(thumbnail_map(points * [1, -1], thumbs, size=1000))
    axes[2].set_title("t-SNE thumbnail map", fontsize=10)
    axes[2].set_xticks([]), axes[2].set_yticks([])
    cells = grid_assignment(points * [1, -1], rows, cols)
    axes[3].imshow(grid_image(cells, thumbs, rows, cols))
    axes[3].set_title(f"grid embedding ({rows}x{cols}, linear assignment)", fontsize=10)
    _off(axes[3])
    fig.tight_layout()
    return fig
