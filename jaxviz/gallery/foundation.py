"""Foundation figures: predictions of every available classifier on sample photographs, the layers
of every model (receptive field, output size), and Zeiler & Fergus's invariance curves."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

PREDICTION_CLASSES = [1, 155, 402, 621, 937, 436]  # goldfish, Shih-Tzu, acoustic guitar, lawn mower, broccoli, beach wagon
# Zeiler & Fergus Fig. 5's photos where the sample has them and SqueezeNet gets them right (Shih-Tzu,
# African grey, entertainment center; its lawn mower is taken for a harvester, p 0.09, and their
# African crocodile is not in it), and two round objects: a Granny Smith apple and a soccer ball
INVARIANCE_CLASSES = [948, 155, 87, 548, 805]
TEXT = 10  # pt


@figure("predictions", "Predictions on sample photographs",
        "Top-3 ImageNet classes of each available classifier on six sample photographs (evaluation transform: "
        "resize to 256, centre crop 224). The photo's true class is in the title; a tick marks it among "
        "the top 3.", order=0, photos="ImageNet sample: goldfish, Shih-Tzu, acoustic guitar, lawn mower, "
        "broccoli, beach wagon", topk=3)
def predictions(ctx: Context):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.accel import xla
    from jaxviz.classify import top_k
    from jaxviz.images import load_images

    names = ctx.classifiers()
    rows = ctx.photos_or_builtin(PREDICTION_CLASSES, count=3 if ctx.quick else len(PREDICTION_CLASSES))
    cols = len(rows)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.6 * cols, 3.35 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        model = ctx.model(name)
        labels = model.labels
        images = load_images([r["path"] for r in rows], model.input_size, transform=model.eval_transform)
        probs, idx = xla.jit(lambda p, x, model=model: top_k(model, p, x, 3), model.compiler_options)(
            model.params, model.preprocess(jnp.asarray(images)))
        probs, idx = np.asarray(probs), np.asarray(idx)
        hits = sum(int(r["class"] == int(i[0])) for r, i in zip(rows, idx))
        ctx.note(**{f"{name} top-1": ", ".join(f"{r['label']}: {labels[int(i[0])]} {float(p[0]):.2f}"
                                                 for r, p, i in zip(rows, probs, idx)),
                    f"{name} top-1 correct": f"{hits} of {cols}" if rows[0]["class"] >= 0 else "n/a"})
        for col, (image, p, i, r) in enumerate(zip(images, probs, idx, rows)):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_xticks([]), ax.set_yticks([])
            lines = [f"{'✓ ' if int(ii) == r['class'] else ''}{float(pp):.2f} {labels[int(ii)][:18]}"
                     for pp, ii in zip(p, i)]
            head = f"true: {r['label'][:20]}" if r["class"] >= 0 else r["label"]
            ax.set_title(head + "\n" + "\n".join(lines), fontsize=9.5, loc="left")
            if col == 0:
                ax.set_ylabel(name, fontsize=11)
    fig.tight_layout()
    return fig


def _short_layer_names(model) -> dict[str, str]:
    """layer -> its shortest alias (fire9, relu5_4, ...) or itself."""
    short = {}
    for alias, layer in (getattr(model, "aliases", None) or {}).items():
        if layer not in short or len(alias) < len(short[layer]):
            short[layer] = alias
    return short


@figure("model_summary", "Models and their layers",
        "For every named spatial layer of each available model at 224 px, computed from the architecture "
        "(kernel, stride, padding): the receptive field (bars, px: the input box one output unit sees) and the "
        "activation size (line, thousands of values per image, log scale). Layer names on the axis (aliases "
        "such as fire9 or relu5_4 where the model has them).", order=1)
def model_summary(ctx: Context):
    import matplotlib.pyplot as plt

    models = [ctx.model(n) for n in ctx.models]
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 3.6 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        fields, shapes = model.receptive_fields(), model.layer_shapes()
        spatial = [n for n in model.layer_names if len(shapes[n]) == 3 and fields and n in fields]
        short = _short_layer_names(model)
        pos = np.arange(len(spatial))
        ax.bar(pos, [fields[n].size for n in spatial], color="#4c72b0", alpha=0.8, label="receptive field (px)")
        ax.set_ylabel("receptive field (px)", fontsize=TEXT, color="#4c72b0")
        ax.set_xticks(pos)
        ax.set_xticklabels([short.get(n, n) for n in spatial], rotation=90, fontsize=9)
        ax.tick_params(axis="y", labelsize=9)
        ax.set_xlim(-0.6, len(spatial) - 0.4)
        twin = ax.twinx()
        twin.plot(pos, [np.prod(shapes[n]) / 1e3 for n in spatial], color="#dd8452", marker="o", ms=4,
                  label="activation size (k values)")
        twin.set_yscale("log")
        twin.set_ylabel("activation size\n(k values, log)", fontsize=TEXT, color="#dd8452")
        twin.tick_params(axis="y", labelsize=9)
        params = int(sum(np.prod(p.shape) for p in _leaves(model.params)))
        ax.set_title(f"{model.name}: {len(model.layer_names)} layers, {params / 1e6:.2f} M parameters",
                     fontsize=11)
        ax.grid(alpha=0.3, axis="y")
        ctx.note(**{f"{model.name} layers": len(model.layer_names), f"{model.name} parameters": params,
                    f"{model.name} largest receptive field": f"{max(fields[n].size for n in spatial)} px"})
    fig.tight_layout()
    return fig


def _leaves(tree):
    import jax
    return jax.tree_util.tree_leaves(tree)


def _transform(image: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """(H, W, 3) image -> the same size, shifted down by ``amount`` px / zoomed by ``amount`` about
    the centre / rotated by ``amount`` degrees; uncovered pixels get the image's mean colour."""
    from scipy.ndimage import affine_transform
    if (kind == "rotation" and amount % 360 == 0) or (kind == "scale" and amount == 1) or (
            kind == "translation" and amount == 0):
        return np.asarray(image, np.float32)  # exactly the photo (360 degrees: no interpolation seam)
    h, w = image.shape[:2]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    if kind == "translation":
        matrix, offset = np.eye(2), np.array([-amount, 0.0])
    elif kind == "scale":
        matrix = np.eye(2) / amount
        offset = centre - matrix @ centre
    else:
        t = np.deg2rad(amount)
        matrix = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        offset = centre - matrix @ centre
    mean = image.reshape(-1, 3).mean(0)
    return np.stack([affine_transform(image[..., c], matrix, offset, order=1, mode="constant", cval=float(mean[c]))
                     for c in range(3)], -1).astype(np.float32)


TRANSFORMS = {"translation": (np.arange(-60, 61, 10), "vertical shift (px)"),
              "scale": (np.array([0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]), "scale (ratio)"),
              "rotation": (np.arange(0, 361, 30), "rotation (degrees)")}


@figure("invariance", "Invariance to translation, scale and rotation",
        "Zeiler & Fergus 2014, Fig. 5, on SqueezeNet 1.1: five sample photographs (three of their five classes "
        "that SqueezeNet gets right: Shih-Tzu, African grey, entertainment center; and two round objects, a "
        "Granny Smith apple and a soccer ball) are shifted vertically by up to 60 px, scaled about the centre "
        "by 0.6-1.8 and rotated in 30 degree steps (uncovered pixels: the photo's mean colour; top row: "
        "examples). Rows 2-3: the distance between the feature vectors of the transformed and the original "
        "photo, relative to the original's norm, at a low layer (relu1, the first convolution's 111 x 111 x 64 "
        "maps) and a high one (fire9, the last 512 maps before the classifier, averaged over positions, like "
        "Zeiler & Fergus's layer 7); row 4: the probability of the true class. As in their figure, small "
        "transformations change the first layer a lot and the top layer much less. The output is not "
        "invariant to any of the three: p(true class) sags towards the largest shifts (to 0.2-0.5 for three "
        "photos); under scaling the soccer ball collapses when shrunk (0.6-0.8x) and the African grey when "
        "enlarged past 1.5x; under rotation the entertainment center and the soccer ball collapse at most "
        "angles. Only the Granny Smith apple keeps a high probability throughout; the soccer ball, round as "
        "well, does not, so its class rests on more than the ball's outline (the notes give the mean of the "
        "lowest p per kind, each photo's lowest p over the rotations and the distances at the largest change "
        "of each kind: the largest shift, the largest scale ratio, 180 degrees).",
        order=40, section="inside", photos="ImageNet sample: Granny Smith, Shih-Tzu, African grey, "
        "entertainment center, soccer ball", layers="relu1 (features.1); fire9 (features.12), averaged")
def invariance(ctx: Context):
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from jaxviz.accel import xla
    from jaxviz.gallery.attribution import classifier, sample_photos

    model = classifier(ctx)
    low = model.resolve_layer("relu1" if "relu1" in model.aliases else model.layer_names[1])
    high = model.feature_layer
    ph = sample_photos(ctx, model, INVARIANCE_CLASSES, count=2 if ctx.quick else None)
    transforms = {k: (v[::3] if ctx.quick else v, label) for k, (v, label) in TRANSFORMS.items()}

    def measure(p, x, ref, index):
        """Relative feature distances to ``ref`` (1, ...) and p(index) for a batch of transformed copies."""
        logits, acts = model.run(p, jnp.concatenate([ref, x]), capture=(low, high))
        f_low, f_high = acts[low], acts[high].mean(axis=(1, 2))

        def rel(f):
            f = f.reshape(f.shape[0], -1)
            return jnp.linalg.norm(f[1:] - f[:1], axis=-1) / jnp.linalg.norm(f[0])
        return rel(f_low), rel(f_high), jax.nn.softmax(logits[1:], axis=-1)[:, index]
    measure = xla.jit(measure, model.compiler_options)
    results = {}  # kind -> (N, 3, steps)
    for kind, (amounts, _) in transforms.items():
        rows = []
        for k, image in enumerate(ph.images):
            batch = np.stack([_transform(image, kind, float(a)) for a in amounts])
            out = measure(model.params, model.preprocess(jnp.asarray(batch)), ph.x[k:k + 1], int(ph.index[k]))
            rows.append(np.stack([np.asarray(o) for o in out]))
        results[kind] = np.stack(rows)
    fig = plt.figure(figsize=(13.5, 11.6))
    grid = fig.add_gridspec(4, 3, height_ratios=[0.4, 1, 1, 1], hspace=0.36, wspace=0.26)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ylabels = [f"relative distance,\n{low} ({_alias(model, low)})",
               f"relative distance,\n{high} ({_alias(model, high)}), averaged", "p(true class)"]
    for col, (kind, (amounts, xlabel)) in enumerate(transforms.items()):
        ax = fig.add_subplot(grid[0, col])
        examples = [amounts[0], amounts[len(amounts) // 3], amounts[2 * len(amounts) // 3], amounts[-1]]
        strip = np.concatenate([_transform(ph.images[1 % len(ph.images)], kind, float(a))[::2, ::2]
                                for a in examples], axis=1)
        ax.imshow(strip)
        ax.set_xticks([56 + 112 * i for i in range(len(examples))])
        ax.set_xticklabels([f"{a:g}" for a in examples], fontsize=9)
        ax.set_yticks([])
        ax.set_title(kind, fontsize=12)
        for row in range(3):
            ax = fig.add_subplot(grid[row + 1, col])
            for k in range(len(ph.images)):
                ax.plot(amounts, results[kind][k, row], marker="o", ms=3, color=colours[k % len(colours)],
                        label=ph.names[k])
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=9)
            if row == 2:
                ax.set_ylim(-0.02, 1.02)
                ax.set_xlabel(xlabel, fontsize=TEXT)
            if col == 0:
                ax.set_ylabel(ylabels[row], fontsize=TEXT)
            if row == 0 and col == 2:
                ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    units = {"translation": " px", "scale": "x", "rotation": " degrees"}
    for kind, (amounts, _) in transforms.items():
        r = results[kind]
        i = largest_change(kind, amounts)
        ctx.note(**{f"{kind}: mean relative distance low / high layer at the largest change":
                    f"{r[:, 0, i].mean():.2f} / {r[:, 1, i].mean():.2f} (at {float(amounts[i]):g}{units[kind]})",
                    f"{kind}: mean p(true class), min over the range": f"{r[:, 2].min(axis=1).mean():.2f}"})
    ctx.note(**{"rotation: lowest p(true class) per photo": ", ".join(
        f"{n} {v:.2f}" for n, v in zip(ph.names, results["rotation"][:, 2].min(axis=1)))})
    ctx.note(model=model.name, photos_predicted_correctly=f"{int((ph.predicted == ph.index).sum())} of "
             f"{len(ph.images)}")
    return fig


def largest_change(kind: str, amounts) -> int:
    """Index of the amount farthest from the identity: the largest |shift|, the largest |log scale|, the
    rotation closest to 180 degrees (360 is the identity again); the first such amount on ties."""
    a = np.asarray(amounts, np.float64)
    if kind == "scale":
        change = np.abs(np.log(a))
    elif kind == "rotation":
        turn = np.mod(a, 360.0)
        change = np.minimum(turn, 360.0 - turn)
    else:
        change = np.abs(a)
    return int(np.argmax(change))


def _alias(model, layer: str) -> str:
    return _short_layer_names(model).get(layer, layer)
