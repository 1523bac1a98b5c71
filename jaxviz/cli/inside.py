"""``jaxviz filters``, ``jaxviz activations``, ``jaxviz neighbors INDEX IMAGE...``, ``jaxviz embed INDEX``."""
from __future__ import annotations

import argparse
import json

from jaxviz.cli import command
from jaxviz.cli._common import (
    add_images,
    add_model,
    add_option,
    add_options,
    add_output,
    option_value,
    options_for,
    output_path,
    save_figure,
)
from jaxviz.errors import JaxvizError
from jaxviz.options import Option
from jaxviz.techniques import TECHNIQUES, get, techniques

# Rendering settings of `jaxviz embed` (front-end options, validated by the same Option class).
THUMB = Option("thumb", int, "thumbnail size in pixels", lo=8, hi=256, default=48)
CANVAS = Option("size", int, "canvas size of the thumbnail map", lo=64, hi=16384, default=1600)
MAX_IMAGES = Option("max_images", int, "refuse larger indices for --grid (the assignment is cubic)", lo=1,
                    hi=100_000, default=2500)


def _load_model(name: str | None):
    """A bundled model by name (default: the first available), accelerated once for this run."""
    from jaxviz.accel import accelerate
    from jaxviz.weights.store import default_model, load_model
    return accelerate(load_model(name or default_model()))


def _read_index(path: str):
    """A complete, undamaged scan index (``read_index`` checks every file) with images in it."""
    from jaxviz.scan_index import read_index
    index = read_index(path)
    if len(index.paths) == 0:
        raise JaxvizError(f"index {path} holds no images")
    return index


def _index_size(index) -> int | tuple[int, int]:
    size = index.meta["input_size"]
    return tuple(size) if isinstance(size, list) else int(size)


@command("filters", "first-layer filters as RGB tiles, or a deeper layer's filters as grey groups")
def filters(parser: argparse.ArgumentParser):
    add_model(parser, classifier=False)
    parser.add_argument("--layer", default=None,
                        help="a deeper layer (name, alias or kernel path such as features.3/expand1x1); "
                             "default: the first convolution, in colour")
    add_options(parser, [TECHNIQUES["filters"]])
    add_output(parser, required=True)

    def run(args: argparse.Namespace) -> int:
        from jaxviz import filters as F
        from jaxviz.images import save_image
        options = options_for(args, TECHNIQUES["filters"])
        out = output_path(args.out)
        model = _load_model(args.model)
        first, first_kernel = F.first_conv(model)
        path, kernel = F.get_kernel(model, args.layer) if args.layer else (first, first_kernel)
        groups, per_group = options["groups"], options["per_group"]
        if path == first and groups is None and per_group is None:
            tiles = F.first_layer_filters(model, shared_scale=options["shared_scale"])
            image = F.filter_grid_image(tiles)
            what = f"{len(tiles)} RGB filters {tiles.shape[1]}x{tiles.shape[2]}"
        else:
            tiles = F.grey_filters(kernel, groups=groups, per_group=per_group,
                                   scale="shared" if options["shared_scale"] else "group")
            image = F.group_grid_image(tiles)
            what = f"{tiles.shape[0]} groups of {tiles.shape[1]} {tiles.shape[2]}x{tiles.shape[3]} maps"
        save_image(image, out)
        print(f"{model.name} {path}: {what} -> {out}")
        return 0
    return run


@command("activations", "all channels of a layer for one image, each normalised; the strongest is framed")
def activations(parser: argparse.ArgumentParser):
    add_images(parser, nargs=1)
    add_model(parser, classifier=False)
    add_options(parser, [TECHNIQUES["activations"]])
    add_output(parser, required=True)

    def run(args: argparse.Namespace) -> int:
        import jax.numpy as jnp

        from jaxviz import activations as A
        from jaxviz.accel import xla
        from jaxviz.images import load_images, save_image
        options = options_for(args, TECHNIQUES["activations"])
        out = output_path(args.out)
        model = _load_model(args.model)
        size = model.input_hw()
        layer = A.check_spatial(model, options["layer"], size)
        images = load_images(args.images, size, args.fit, model.eval_transform)
        maps = xla.jit(A.feature_maps, model.compiler_options, static_argnums=(0, 3))
        acts = maps(model, model.params, model.preprocess(jnp.asarray(images)), layer)
        panel, best = A.activation_panel(images[0], acts[0], columns=options["columns"])
        save_image(panel, out)
        peak = float(jnp.max(acts[0, ..., best]))
        print(f"{model.name} {layer}: {acts.shape[-1]} channels {acts.shape[1]}x{acts.shape[2]}; "
              f"strongest channel {best} (max {peak:.3g}) -> {out}")
        return 0
    return run


@command("neighbors", "nearest images of a scan INDEX to query images, in feature or pixel space")
def neighbors(parser: argparse.ArgumentParser):
    parser.add_argument("index", metavar="INDEX", help="folder written by `jaxviz scan`")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="query image files or sample names")
    add_options(parser, [TECHNIQUES["neighbors"]])
    parser.add_argument("--json", action="store_true",
                        help="print JSON: [{query, neighbors: [{rank, index, path, distance}]}]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output(parser, help="also write a PNG: each query, then its neighbours")

    def run(args: argparse.Namespace) -> int:
        import jax.numpy as jnp
        import numpy as np

        from jaxviz import embedding as E
        from jaxviz.images import load_images, save_image
        technique = TECHNIQUES["neighbors"]
        options_for(args, technique)  # static bounds first
        out = output_path(args.out)
        index = _read_index(args.index)
        n = len(index.paths)
        options = options_for(args, technique, context={"images": n})
        k, space, metric, pixel_size = options["k"], options["space"], options["metric"], options["pixel_size"]
        size, fit = _index_size(index), index.meta["fit"]
        model = _load_model(index.meta["model"]) if space == "feature" else None
        # Queries fitted as the scan fitted the index's images (the model's evaluation transform).
        queries = load_images(args.images, size, fit, model.eval_transform if model else None)
        if space == "feature":
            layer = index.meta["feature_layer"]
            q = E.model_features(model, queries, layer=layer)
            database = index.features
            if q.shape[1] != database.shape[1]:
                raise JaxvizError(f"index features have {database.shape[1]} dimensions but {model.name} "
                                  f"{layer} gives {q.shape[1]}")
        else:
            q = np.asarray(E.pixel_features(jnp.asarray(queries), pixel_size))
            database = _pixel_database(index.paths, size, fit, pixel_size, not args.no_progress)
        dist, idx = technique.load()(q, database, k, metric=metric)
        results = [{"query": src, "space": space, "metric": metric,
                    "neighbors": [{"rank": r + 1, "index": int(index.indices[i]), "path": index.paths[i],
                                   "distance": float(d)} for r, (d, i) in enumerate(zip(ds, ids))]}
                   for src, ds, ids in zip(args.images, dist, idx)]
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for r in results:
                print(f"{r['query']}  ({space} space, {metric})")
                for nb in r["neighbors"]:
                    print(f"  {nb['rank']:>3}  {nb['distance']:.4f}  {nb['path']}")
        if out is not None:
            save_image(_neighbour_rows(queries, idx, index.paths, size, fit), out)
        return 0
    return run


def _pixel_database(paths, size: int, fit: str, pixel_size: int, progress: bool):
    import jax.numpy as jnp
    import numpy as np

    from jaxviz.embedding import pixel_features
    from jaxviz.images import load_thumbnails
    # Load at the model's input size (as the scan did), then the same antialiased resize as queries.
    starts = range(0, len(paths), 64)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="pixels", unit="batch")
    feats = []
    for s in starts:
        images = load_thumbnails(paths[s:s + 64], size, fit=fit)
        feats.append(np.asarray(pixel_features(jnp.asarray(images), pixel_size)))
    return np.concatenate(feats)


def _neighbour_rows(queries, idx, paths, size: int, fit: str, thumb: int = 96):
    import numpy as np

    from jaxviz.images import load_thumbnails
    from jaxviz.images import fit_image
    from jaxviz.render import grid
    rows = []
    for query, ids in zip(queries, idx):
        q = fit_image(query, thumb)
        nbs = load_thumbnails([paths[i] for i in ids], thumb, fit=fit)
        gap = np.ones((thumb, 12, 3), np.float32)
        rows.append(np.concatenate([q, gap, grid(nbs, columns=len(nbs), pad=2)], axis=1))
    return grid(np.stack(rows), columns=1, pad=6)


@command("embed", "2-D map (PCA or t-SNE) of a scan INDEX's pooled features: thumbnails or a dense grid")
def embed(parser: argparse.ArgumentParser):
    parser.add_argument("index", metavar="INDEX", help="folder written by `jaxviz scan`")
    parser.add_argument("--method", default="tsne", metavar="{pca,tsne}", help="reduction (default tsne)")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--grid", action="store_true", help="snap the points to a dense grid (linear assignment)")
    view.add_argument("--scatter", action="store_true",
                      help="a scatter plot coloured by the predicted class (runs the index's classifier on the images)")
    add_options(parser, techniques("embed"))
    add_option(parser, THUMB)
    add_option(parser, CANVAS)
    add_option(parser, MAX_IMAGES)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output(parser, required=True)

    def run(args: argparse.Namespace) -> int:
        from jaxviz import embedding as E
        from jaxviz.images import load_thumbnails, save_image
        technique = get(args.method, "embed")
        options_for(args, technique)  # static bounds first
        thumb, canvas, max_images = (option_value(args, o) for o in (THUMB, CANVAS, MAX_IMAGES))
        out = output_path(args.out)
        if canvas <= thumb:
            raise JaxvizError(f"--size must exceed --thumb ({thumb}), got {canvas}")
        index = _read_index(args.index)
        n = len(index.paths)
        minimum = 4 if technique.name == "tsne" else 3
        if n < minimum:
            raise JaxvizError(f"{technique.name} needs at least {minimum} images; index has {n}")
        if args.grid and n > max_images:
            raise JaxvizError(f"--grid with {n} images exceeds --max-images {max_images}")
        options = options_for(args, technique, context={"images": n})
        points = technique.load()(index.features, **options)
        if args.scatter:
            model = _load_model(index.meta["model"])
            if model.num_classes is None:
                raise JaxvizError(f"--scatter colours by predicted class, but {model.name} has no classifier")
            _scatter(points, _predict(model, index, not args.no_progress), out,
                     f"{technique.name} of {n} images, {model.name} {index.meta['feature_layer']}", model.labels)
            print(f"{technique.name} of {n} images as a scatter by predicted class -> {out}")
            return 0
        thumbs = load_thumbnails(index.paths, thumb, fit=index.meta["fit"], progress=not args.no_progress)
        if args.grid:
            rows, cols = E.grid_shape(n)
            image = E.grid_image(E.grid_assignment(points, rows, cols), thumbs, rows, cols)
            what = f"{rows}x{cols} grid"
        else:
            image = E.thumbnail_map(points, thumbs, size=canvas)
            what = f"{canvas}px thumbnail map"
        save_image(image, out)
        print(f"{technique.name} of {n} images ({index.features.shape[1]}-d features) as a {what} -> {out}")
        return 0
    return run


def _predict(model, index, progress: bool):
    """Top-1 class of every index image (loaded as the scan did), in batches."""
    import numpy as np

    from jaxviz.accel import xla
    from jaxviz.images import load_thumbnails
    apply = xla.jit(model.apply, model.compiler_options)
    size, fit = _index_size(index), index.meta["fit"]
    starts = range(0, len(index.paths), 32)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="classify", unit="batch")
    preds = []
    for s in starts:
        images = load_thumbnails(index.paths[s:s + 32], size, fit=fit, transform=model.eval_transform)
        preds.append(np.asarray(apply(model.params, model.preprocess(images)).argmax(-1)))
    return np.concatenate(preds)


def _scatter(points, pred, out, title: str, labels=None, top: int = 10) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = labels or [f"class {i}" for i in range(int(np.max(pred)) + 1)]
    classes, counts = np.unique(pred, return_counts=True)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(points[:, 0], points[:, 1], s=10, c="lightgrey", label="other classes")
    for j, c in enumerate(classes[np.argsort(-counts)][:top]):
        sel = pred == c
        ax.scatter(points[sel, 0], points[sel, 1], s=14, color=plt.cm.tab10(j % 10),
                   label=f"{labels[int(c)][:24]} ({int(sel.sum())})")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out)
