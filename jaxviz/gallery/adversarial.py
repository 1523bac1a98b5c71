"""Adversarial figures on real photographs (the ImageNet sample; the built-in photos without it):
the FGSM triptych, accuracy against eps, original / adversarial / difference examples, fooling
images grown from noise, transfer between SqueezeNet and EfficientNet-Lite0, and white-box vs
transfer vs query-based attacks (attacks from ``jaxviz.adversarial`` and ``jaxviz.blackbox``).

Photographs are drawn spread over the sample's classes (``spread_classes``); where a figure needs
the true class and the folder has none (``--images`` or the built-in photos), the model's clean
prediction stands in for it. Images go through the models in chunks of ``CHUNK`` so that every
figure reuses the same compiled batch shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxviz.gallery import Context, figure, fmt_value
from jaxviz.gallery.bias import wilson

SQUEEZE, LITE = "squeezenet1_1", "efficientnet_lite0"
FONT = 9.5  # pt: titles stay >= 9 px on the page for PNGs up to ~1200 px wide
CHUNK = 16  # images per call of a model (fixed batch shapes: compiled once per run)


# ------------------------------------------------------------------ shared helpers

def spread_classes(n: int, offset: int = 0) -> list[int]:
    """``n`` class indices spread evenly over the classes the ImageNet sample holds (it lacks every
    class ``c % 10 == 9``), starting ``offset`` classes in."""
    have = [c for c in range(1000) if c % 10 != 9]
    step = max(1, len(have) // max(n, 1))
    return have[offset % step::step][:n]


@dataclass
class PhotoSet:
    images: np.ndarray   # (N, H, W, 3) in [0, 1], 8-bit values, the model's evaluation crop
    label: np.ndarray    # (N,) true class (a model's clean prediction where the folder has none)
    rows: list[dict]
    labelled: bool       # the labels are true classes


def load_photos(ctx: Context, classes: list[int], size) -> PhotoSet:
    """Photographs of ``classes`` (or the built-in ones) at ``size`` with the evaluation crop."""
    from jaxviz.images import load_images
    rows = ctx.photos_or_builtin(classes, count=len(classes))
    model = ctx.model(SQUEEZE if SQUEEZE in ctx.models else ctx.classifiers()[0])
    images = load_images([r["path"] for r in rows], size, "eval", model.eval_transform)
    images = np.round(images * 255.0).astype(np.float32) / np.float32(255.0)  # the 8-bit grid exactly
    labelled = all(r["class"] >= 0 for r in rows)
    label = np.array([r["class"] for r in rows], np.int32)
    return PhotoSet(images, label, rows, labelled)


def predict(model, images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """(N, classes) probabilities, ``chunk`` images per call (the last chunk padded)."""
    from jaxviz.adversarial import proba_fn
    run = proba_fn(model)
    return np.concatenate([np.asarray(run(c))[:k] for c, k in _chunks(images, chunk)])[:len(images)]


def _chunks(images: np.ndarray, chunk: int):
    """(padded chunk, number of real images in it) pairs."""
    for i in range(0, len(images), chunk):
        part = images[i:i + chunk]
        k = len(part)
        if k < chunk and len(images) > chunk:
            part = np.concatenate([part, np.repeat(part[-1:], chunk - k, axis=0)])
        yield part, k


def chunked(fn, images: np.ndarray, *per_image, chunk: int = CHUNK) -> np.ndarray:
    """``fn(images, *per_image)`` in chunks of ``chunk`` (last chunk padded), concatenated."""
    out = []
    for i in range(0, len(images), chunk):
        parts = [a[i:i + chunk] for a in (images, *per_image)]
        k = len(parts[0])
        if k < chunk and len(images) > chunk:
            parts = [np.concatenate([p, np.repeat(p[-1:], chunk - k, axis=0)]) for p in parts]
        out.append(np.asarray(fn(*parts))[:k])
    return np.concatenate(out)


def fgsm_direction(model, images: np.ndarray, label: np.ndarray) -> np.ndarray:
    """sign(grad_x CE(label)) per image (N, H, W, 3): FGSM's step direction (Goodfellow et al. 2015),
    the same for every eps."""
    from jaxviz.adversarial import gradient_sign
    params = model.prepare_params(model.params)
    return chunked(lambda x, y: gradient_sign(model, params, x, y), images, label)


def step_images(images: np.ndarray, direction: np.ndarray, eps: float) -> np.ndarray:
    """clip(x + eps * direction) on the 8-bit grid (exact for 8-bit x and eps = k/255 with a sign
    direction; rounded otherwise)."""
    return np.round(np.clip(images + eps * direction, 0.0, 1.0) * 255.0).astype(np.float32) / np.float32(255.0)


def sign_noise(shape, seed: int = 2) -> np.ndarray:
    """Random +-1 per pixel and channel: the baseline of the same L-inf size as an FGSM step."""
    return np.sign(np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _name(labels, index: int, n: int = 20) -> str:
    name = labels[int(index)].split(",")[0]
    return name if len(name) <= n else name[:n - 1] + "…"


def _off(ax):
    ax.set_xticks([]), ax.set_yticks([])


def _eps_text(eps: float) -> str:
    k = eps * 255
    return {0.25: "¼", 0.5: "½"}.get(round(k, 2), f"{k:g}")


def _annotate_points(ax, xs, ys, color, fmt="{:.0%}", below=False, where=None, skip=None):
    """Each value written at its marker, so zero values (and identical ones) stay visible.
    ``where``: "above", "below", "left", "right" or "belowright" of the marker (default from ``below``); ``skip(k)``:
    leave point k unlabelled."""
    where = where or ("below" if below else "above")
    offset, ha, va = {"above": ((0, 6), "center", "bottom"), "below": ((0, -6), "center", "top"),
                      "right": ((7, 0), "left", "center"), "left": ((-7, 0), "right", "center"),
                      "belowright": ((5, -5), "left", "top")}[where]
    for k, (x, y) in enumerate(zip(xs, ys)):
        if skip is not None and skip(k):
            continue
        ax.annotate(fmt.format(y), (x, y), textcoords="offset points", xytext=offset, ha=ha, va=va,
                    fontsize=FONT, color=color)


# ------------------------------------------------------------------ figures

TRIPTYCH_EPS = 2 / 255  # ~ Goodfellow et al.'s 0.007 (one 8-bit level after GoogLeNet's scaling)
TRIPTYCH_POOL = 48


@figure("adversarial_fgsm", "FGSM: image + eps * sign(gradient) = another class",
        "The fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, Fig. 1: panda + 0.007 x "
        "sign(grad) = gibbon): x' = x + eps sign(grad_x J(theta, x, y)), one gradient of the cross-entropy of "
        "the true class y, eps = 2/255 (about their 0.007) on SqueezeNet 1.1. Each row: the photograph, "
        "the sign of the gradient (shown as grey +- 1/2, with the class the network gives that pattern "
        "itself, as in the paper's middle panel) and the 8-bit adversarial image, each with the network's "
        "class and confidence. The rows are the photographs, among 48 spread over the sample's classes that "
        "the network classifies correctly with 40-95% confidence (the paper's panda: 57.7%), whose FGSM image "
        "is misclassified with the highest confidence; the note gives the success rate on all of them.",
        order=40, model=SQUEEZE, eps="2/255", pool=f"{TRIPTYCH_POOL} photos spread over the classes")
def adversarial_fgsm(ctx: Context):
    import matplotlib.pyplot as plt

    model = ctx.model(SQUEEZE if SQUEEZE in ctx.models else ctx.classifiers()[0])
    labels = model.labels
    photos = load_photos(ctx, spread_classes(8 if ctx.quick else TRIPTYCH_POOL, 3), model.input_hw())
    p0 = predict(model, photos.images)
    label = photos.label if photos.labelled else p0.argmax(-1).astype(np.int32)
    direction = fgsm_direction(model, photos.images, label)
    adv_images = step_images(photos.images, direction, TRIPTYCH_EPS)
    p1 = predict(model, adv_images)
    rows = np.arange(len(label))
    conf0, top1 = p0[rows, label], p1.argmax(-1)
    fooled = top1 != label
    eligible = (p0.argmax(-1) == label) & (conf0 >= 0.4) & (conf0 <= 0.95)
    if not eligible.any():
        eligible = p0.argmax(-1) == label
    score = np.where(eligible & fooled, p1.max(-1), -1.0)
    picks = [int(i) for i in np.argsort(-score)[:2] if score[i] >= 0] or [int(np.argmax(eligible))]
    sign_pictures = 0.5 + 0.5 * direction[picks]
    p_sign = predict(model, sign_pictures.astype(np.float32))

    n = len(picks)
    fig = plt.figure(figsize=(11, 3.55 * n + 0.2))
    grid = fig.add_gridspec(n, 5, width_ratios=[1, 0.22, 1, 0.22, 1], wspace=0.05)
    for r, i in enumerate(picks):
        panels = [(photos.images[i], f"x\n\"{_name(labels, label[i], 24)}\"\n{conf0[i]:.1%} confidence"),
                  (sign_pictures[r], (f"sign(∇x J(θ, x, y))\n\"{_name(labels, p_sign[r].argmax(), 24)}\"\n"
                                      f"{p_sign[r].max():.1%} confidence")),
                  (adv_images[i], (f"x + {TRIPTYCH_EPS * 255:g}/255 · sign(∇x J(θ, x, y))\n"
                                   f"\"{_name(labels, top1[i], 24)}\"\n{p1[i].max():.1%} confidence"))]
        for c, (picture, title) in zip((0, 2, 4), panels):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(np.clip(picture, 0, 1))
            ax.set_xlabel(title, fontsize=FONT + 1.5)
            _off(ax)
        for c, text in ((1, f"+ {TRIPTYCH_EPS * 255:g}/255 ×"), (3, "=")):
            ax = fig.add_subplot(grid[r, c])
            ax.axis("off")
            ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=16 if text == "=" else 12)
    ok = eligible
    ctx.note(model=model.name, eps="2/255",
             **{"photos (correct, 40-95% confident) fooled by FGSM at 2/255":
                f"{int((fooled & ok).sum())}/{int(ok.sum())}",
                "all correctly classified photos fooled": f"{int((fooled & (p0.argmax(-1) == label)).sum())}/"
                                                         f"{int((p0.argmax(-1) == label).sum())}",
                "shown": "; ".join(f"{_name(labels, label[i])} {conf0[i]:.3f} -> {_name(labels, top1[i])} "
                                   f"{p1[i].max():.3f}" for i in picks)})
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.16 / n, hspace=0.45)
    return fig


ACCURACY_EPS = (0.0, 0.25 / 255, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
ACCURACY_PHOTOS = 48
PGD_STEPS = 10


@figure("adversarial_accuracy", "Accuracy against eps: FGSM and PGD on the sample photographs",
        "Top-1 accuracy of SqueezeNet 1.1 on 48 ImageNet sample photographs (spread over the classes, true "
        "labels) as the L-inf budget eps grows: FGSM (one signed gradient step of eps; Goodfellow et al. "
        "2015), PGD (10 steps of eps/4 from a random start in the ball, stopped per image once misclassified; "
        "Madry et al. 2018) and, as the control, random +-eps sign noise of the same L-inf size (Szegedy et al. "
        "2014 and Goodfellow et al.: random directions barely matter, the gradient's direction does). The "
        "images are float (not rounded to 8 bits) so that eps below one grey level is meaningful. A PGD image "
        "misclassified at a smaller eps also counts at every larger eps (it lies inside the larger ball), so "
        "PGD is run at each eps on the images still classified correctly. Right: the photograph that held out "
        "to the largest eps and its PGD image at that eps, with the network's classes.",
        order=41, model=SQUEEZE, photos=f"{ACCURACY_PHOTOS} spread over the classes",
        eps=", ".join(_eps_text(e) for e in ACCURACY_EPS) + " (/255)", pgd=f"{PGD_STEPS} steps of eps/4, random start")
def adversarial_accuracy(ctx: Context):
    import matplotlib.pyplot as plt

    model = ctx.model(SQUEEZE if SQUEEZE in ctx.models else ctx.classifiers()[0])
    labels = model.labels
    photos = load_photos(ctx, spread_classes(8 if ctx.quick else ACCURACY_PHOTOS, 5), model.input_hw())
    images = photos.images
    p0 = predict(model, images)
    label = photos.label if photos.labelled else p0.argmax(-1).astype(np.int32)
    direction = fgsm_direction(model, images, label)
    noise = sign_noise(images.shape)
    eps_list = ACCURACY_EPS
    bar = ctx.progress(len(eps_list), "accuracy vs eps")
    acc = {"FGSM": [], "PGD": [], "random sign noise": []}
    robust = p0.argmax(-1) == label  # PGD: still correct under every eps tried so far
    first_fooled: dict = {}  # image -> (eps, its PGD image at the smallest eps that fooled it)
    for eps in eps_list:
        if eps == 0:
            for values in acc.values():
                values.append(float(robust.mean()))
            bar.update(1)
            continue
        acc["FGSM"].append(float((predict(model, np.clip(images + eps * direction, 0, 1)).argmax(-1) == label).mean()))
        acc["random sign noise"].append(float((predict(model, np.clip(images + eps * noise, 0, 1)).argmax(-1)
                                               == label).mean()))
        todo = np.flatnonzero(robust)
        if len(todo):
            res = chunked(lambda x, y, e=eps: _pgd(model, x, y, e, ctx.quick), images[todo], label[todo])
            still = predict(model, res).argmax(-1) == label[todo]
            robust[todo] = still
            first_fooled.update({int(i): (eps, x) for i, x, s in zip(todo, res, still) if not s})
        acc["PGD"].append(float(robust.mean()))
        bar.update(1)

    fig = plt.figure(figsize=(12, 4.6))
    grid = fig.add_gridspec(2, 3, width_ratios=[2.6, 1, 1], height_ratios=[1, 1])
    ax = fig.add_subplot(grid[:, 0])
    xs = np.arange(len(eps_list))
    styles = {"PGD": ("tab:red", "o", False), "FGSM": ("tab:blue", "s", False),
              "random sign noise": ("0.45", "^", False)}
    for name, (color, marker, below) in styles.items():
        ax.plot(xs, acc[name], marker=marker, color=color, label=name, lw=2, ms=7, clip_on=False)
        _annotate_points(ax, xs[1:], acc[name][1:], color, below=name == "PGD")
    ax.set_xticks(xs, [_eps_text(e) for e in eps_list], fontsize=FONT + 1)
    ax.set_xlabel("eps (L-inf, in grey levels of 255)", fontsize=FONT + 1)
    ax.set_ylabel("top-1 accuracy", fontsize=FONT + 1)
    ax.set_ylim(-0.08, 1.0)
    ax.tick_params(labelsize=FONT + 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT + 1, loc="upper right")
    ax.set_title(f"{model.name}, {len(images)} photographs (clean accuracy {acc['PGD'][0]:.0%})", fontsize=FONT + 2)
    if first_fooled:  # the photograph that held out longest, and its PGD image
        i = max(first_fooled, key=lambda j: (first_fooled[j][0], -j))
        eps_i, xadv = first_fooled[i]
        q = predict(model, np.stack([images[i], xadv]))
        for k, (picture, head) in enumerate([(images[i], "photograph"), (xadv, f"PGD, eps {_eps_text(eps_i)}/255")]):
            a = fig.add_subplot(grid[:, 1 + k])
            a.imshow(np.clip(picture, 0, 1))
            a.set_title(f"{head}\n{_name(labels, q[k].argmax())} {q[k].max():.2f}", fontsize=FONT + 1)
            _off(a)
    ctx.note(model=model.name, photos=len(images), **{
        f"accuracy {k}": ", ".join(f"{_eps_text(e)}: {v:.2f}" for e, v in zip(eps_list, vals))
        for k, vals in acc.items()})
    fig.tight_layout()
    return fig


def _pgd(model, images, label, eps, quick):
    import jax

    from jaxviz import adversarial as adv
    return adv.attack(model, None, images, method="pgd-linf", label=label, eps=eps, step=eps / 4,
                      steps=3 if quick else PGD_STEPS, key=jax.random.key(1), quantize=False).images


TRIPLET_CLASSES = [(388, "gibbon"), (817, "goldfish")]  # giant panda, sports car -> their targets
TRIPLET_ATTACKS = [("pgd-linf", False, {"eps": 2 / 255}), ("pgd-linf", True, {"eps": 2 / 255}),
                   ("seed", True, {})]


def _title(labels, row: dict, method: str) -> str:
    goal = f"-> {_name(labels, row['target']['index'], 14)}" if row["target"] else "untargeted"
    status = "fooled" if row["success"] else "NOT fooled"
    return (f"{method} {goal}: {status}\n{_name(labels, row['final']['index'], 16)} "
            f"{row['final']['confidence']:.2f} ({row['steps']} steps)\n"
            f"L2 {row['l2']:.2f}, Linf {row['linf_255']:.0f}/255")


@figure("adversarial_examples", "Adversarial examples: original, adversarial, x10 difference",
        "Szegedy et al. 2014 (Fig. 5: correctly classified image, x10 difference, adversarial image) on two "
        "sample photographs and SqueezeNet 1.1: untargeted and targeted PGD-Linf (eps = 2/255, random start, "
        "stop at success; Madry et al. 2018) and the seed homework's normalised-gradient method (x <- x + eta "
        "g/||g||, g = grad of the target logit, until the prediction is the target; a gradient stand-in for "
        "Szegedy et al.'s box-constrained L-BFGS). "
        "Every adversarial image is on the 8-bit grid and its class, confidence and norms (pixel units of "
        "[0, 1]) are re-predicted from that image. The difference is magnified 10x around grey.",
        order=42, photos="ImageNet sample: giant panda, sports car",
        targets={"giant panda": "gibbon", "sports car": "goldfish"},
        attacks=[f"{m}{' targeted' if t else ''}" + (f" ({fmt_value(kw)})" if kw else "")
                 for m, t, kw in TRIPLET_ATTACKS])
def adversarial_examples(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz import adversarial as adv
    from jaxviz.labels import resolve_class

    model = ctx.model(SQUEEZE if SQUEEZE in ctx.models else ctx.classifiers()[0])
    labels = model.labels
    photos = load_photos(ctx, [388, 817], model.input_hw())
    images = photos.images[:2]
    targets = np.array([resolve_class(t, model.num_classes, labels) for _, t in TRIPLET_CLASSES][:len(images)])
    rows = []
    for method, targeted, kw in TRIPLET_ATTACKS:
        result = adv.attack(model, None, images, method=method, target=targets if targeted else None,
                            key=jax.random.key(0), **kw)
        records = result.report.records(labels)
        for image, adversarial, record in zip(images, result.images, records):
            rows.append((method, image, adversarial, record))
        ctx.note(**{f"{method}{' targeted' if targeted else ''} success":
                    f"{result.report.success.sum()}/{len(images)}",
                    f"{method}{' targeted' if targeted else ''} L2 / Linf*255":
                    ", ".join(f"{r['l2']:.2f}/{r['linf_255']:.0f}" for r in records)})
    per_row = len(images)  # one row per attack, the images' triplets side by side
    n_rows = len(rows) // per_row
    fig, axes = plt.subplots(n_rows, 3 * per_row, figsize=(12, 3.0 * n_rows), squeeze=False)
    for k, (method, image, adversarial, record) in enumerate(rows):
        r, offset = divmod(k, per_row)
        original = record["original"]
        panels = [(image, f"original\n{_name(labels, original['index'], 18)} {original['confidence']:.2f}"),
                  (adversarial, _title(labels, record, method)),
                  (adv.difference_image(image, adversarial, 10.0), "difference x10")]
        for c, (picture, title) in enumerate(panels):
            ax = axes[r, 3 * offset + c]
            ax.imshow(np.clip(picture, 0, 1))
            ax.set_title(title, fontsize=FONT)
            _off(ax)
    ctx.note(model=model.name)
    fig.tight_layout(h_pad=0.6, w_pad=0.3)
    return fig


# Nguyen et al. 2015, Fig. 1 (directly encoded row): robin, cheetah, armadillo, lesser panda,
# centipede, peacock, jackfruit, bubble
FOOLING_CLASSES = [15, 293, 363, 387, 79, 84, 955, 971]
FOOLING_CONFIDENCE = 0.99
FOOLING_STEP = 2.0  # L2 length of one normalised step, [0, 1] pixel units (224 x 224 x 3 noise has L2 ~112)
FOOLING_STEPS = 150


@figure("fooling_images", "Fooling images grown from noise",
        "Nguyen, Yosinski & Clune 2015 (\"Deep neural networks are easily fooled\", Fig. 1 top row, the directly "
        "encoded images; their Sec. 3.4 does it by gradient ascent): starting from uniform random noise, the "
        "targeted normalised-gradient method (x <- x + eta g/||g||, g = grad of the target logit, eta = 2 in "
        "[0, 1] pixel units, clipped to [0, 1]) runs until SqueezeNet 1.1 gives the target class a "
        "probability >= 0.99, on the paper's eight classes. Top: the 8-bit images with SqueezeNet's class and "
        "probability (re-predicted) and the steps taken; they stay unrecognisable noise. Bottom: the change "
        "from the starting noise (x5 around grey), and what EfficientNet-Lite0 — not attacked — sees in the "
        "image: these 8 fooling images, made by gradient ascent, do not fool that other network.",
        order=43, model=SQUEEZE, classes="robin, cheetah, armadillo, lesser panda, centipede, peacock, jackfruit, bubble",
        confidence=FOOLING_CONFIDENCE, step=FOOLING_STEP, max_steps=FOOLING_STEPS, start="uniform noise in [0, 1]")
def fooling_images(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz import adversarial as adv

    model = ctx.model(SQUEEZE if SQUEEZE in ctx.models else ctx.classifiers()[0])
    labels = model.labels
    classes = np.array(FOOLING_CLASSES[:4] if ctx.quick else FOOLING_CLASSES, np.int32)
    h, w = model.input_hw()
    noise = np.random.default_rng(0).integers(0, 256, (len(classes), h, w, 3)).astype(np.float32) / np.float32(255.0)
    result = adv.fooling_images(model, None, noise, classes, confidence=FOOLING_CONFIDENCE, step=FOOLING_STEP,
                                steps=20 if ctx.quick else FOOLING_STEPS, key=jax.random.key(0))
    rep = result.report
    start = predict(model, noise)
    other = None
    others = [m for m in ctx.classifiers() if m != model.name]
    if others:
        other_model = ctx.model(others[0])
        other = predict(other_model, result.images)
    cols = 4
    n = len(classes)
    rows = 2 * ((n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    for k in range(n):
        block, c = divmod(k, cols)
        top, bottom = axes[2 * block, c], axes[2 * block + 1, c]
        top.imshow(result.images[k])
        top.set_title(f"{_name(labels, rep.final_class[k])}: {rep.final_confidence[k]:.3f}\n"
                      f"({'fooled' if rep.success[k] else 'NOT reached'} in {rep.steps[k]} steps)", fontsize=FONT + 1)
        bottom.imshow(adv.difference_image(noise[k], result.images[k], 5.0))
        below = "change x5"
        if other is not None:
            below += f"\n{other_model.name}: {_name(labels, other[k].argmax(), 16)} {other[k].max():.2f}"
        bottom.set_title(below, fontsize=FONT)
        _off(top), _off(bottom)
    for ax in axes.ravel()[2 * n:] if n % cols else []:
        ax.axis("off")
    ctx.note(model=model.name, **{
        "reached p >= 0.99": f"{int(rep.success.sum())}/{n}",
        "steps": ", ".join(str(int(s)) for s in rep.steps),
        "L2 of the change": ", ".join(f"{v:.1f}" for v in rep.l2),
        "starting noise classified as": ", ".join(f"{_name(labels, p.argmax())} {p.max():.2f}" for p in start[:4]) + " …",
        **({f"{other_model.name} p(target class)": ", ".join(f"{other[k, c]:.3f}" for k, c in enumerate(classes))}
           if other is not None else {})})
    # explicit spacing: tight_layout let the two-line titles run into the panel above
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.5 / fig.get_figheight(), bottom=0.01,
                        hspace=0.3, wspace=0.05)
    return fig


TRANSFER_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)  # 1/255 transfers nothing (measured)
TRANSFER_PHOTOS = 24  # (32 put the gallery over its 20 min budget)
TRANSFER_POOL = 56
TRANSFER_PGD_STEPS = 5


def both_correct(ctx: Context, models: dict, n: int, pool: int, offset: int) -> tuple[PhotoSet, dict]:
    """``n`` photographs (of ``pool`` spread over the classes) that every model classifies correctly
    (where the folder has no classes: on which the models agree); their probabilities per model."""
    first = next(iter(models.values()))
    photos = load_photos(ctx, spread_classes(pool, offset), first.input_hw())
    probs = {name: predict(m, photos.images) for name, m in models.items()}
    tops = [p.argmax(-1) for p in probs.values()]
    label = photos.label if photos.labelled else tops[0].astype(np.int32)
    keep = np.flatnonzero(np.all([t == label for t in tops], axis=0))[:n]
    photos = PhotoSet(photos.images[keep], label[keep], [photos.rows[i] for i in keep], photos.labelled)
    return photos, {name: p[keep] for name, p in probs.items()}


@figure("adversarial_transfer", "Transferability of adversarial examples: SqueezeNet <-> Lite0",
        "Adversarial images crafted white-box on one network and shown to the other (black-box transfer; "
        "Szegedy et al. 2014, Papernot et al. 2016, Kurakin et al. 2017). The photographs are those of the "
        "ImageNet sample (spread over the classes) that both networks classify correctly (100% accuracy at "
        "eps = 0, not plotted). Source attacks, untargeted on the true class: FGSM (one signed gradient "
        "step of eps) in both directions and, from SqueezeNet, PGD-Linf (5 steps of eps/2.5, random start, no "
        "early stop). Curves: the evaluating network's top-1 accuracy on the 8-bit images against eps, beside "
        "the source network's own (white-box) accuracy and the evaluating network's accuracy under random "
        "+-eps sign noise of the same L-inf size. Transfer starts where the transfer curve leaves the noise "
        "curve (shaded: from the smallest eps at which FGSM transfer is at least 10 points below the noise); "
        "a value is written where it differs from the curves beside it. (PGD from Lite0 is left out: its depthwise-convolution "
        "gradients are ~10x slower on this CPU.)",
        order=44, models=f"{SQUEEZE}, {LITE}", photos=f"{TRANSFER_PHOTOS} correct on both (of {TRANSFER_POOL})",
        eps=", ".join(f"{round(e * 255)}" for e in TRANSFER_EPS) + " (/255)",
        pgd=f"{TRANSFER_PGD_STEPS} steps of eps/2.5, random start, from {SQUEEZE}")
def adversarial_transfer(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz import adversarial as adv
    from jaxviz.errors import JaxvizError

    names = [n for n in (SQUEEZE, LITE) if n in ctx.classifiers()]
    if len(names) < 2:
        raise JaxvizError(f"the transfer figure needs two classifiers ({SQUEEZE}, {LITE})")
    models = {n: ctx.model(n) for n in names}
    eps_list = TRANSFER_EPS[1::2] if ctx.quick else TRANSFER_EPS
    photos, _ = both_correct(ctx, models, 4 if ctx.quick else TRANSFER_PHOTOS,
                             12 if ctx.quick else TRANSFER_POOL, 7)
    images, label = photos.images, photos.label
    if not len(images):
        raise JaxvizError("no photograph is classified correctly by both networks")
    noise = sign_noise(images.shape, seed=3)
    attacks = [(SQUEEZE, "FGSM"), (SQUEEZE, "PGD"), (LITE, "FGSM")]
    bar = ctx.progress(len(eps_list) * (len(attacks) + 2), "transfer")
    acc: dict = {}  # (source, attack, evaluated on) -> [accuracy per eps]

    def accuracy(model_name, batch):
        return float((predict(models[model_name], batch).argmax(-1) == label).mean())

    for evaluated in names:  # the control: random sign noise
        acc["noise", evaluated] = []
        for eps in eps_list:
            acc["noise", evaluated].append(accuracy(evaluated, step_images(images, noise, eps)))
            bar.update(1)
    for source, kind in attacks:
        other = next(n for n in names if n != source)
        direction = fgsm_direction(models[source], images, label) if kind == "FGSM" else None
        white, transfer = [], []
        for eps in eps_list:
            if kind == "FGSM":
                batch = step_images(images, direction, eps)
            else:
                batch = chunked(lambda x, y, m=models[source], e=eps: adv.attack(
                    m, None, x, method="pgd-linf", label=y, eps=e, step=e / 2.5,
                    steps=2 if ctx.quick else TRANSFER_PGD_STEPS, early_stop=False, key=_key(1)).images,
                    images, label)
            white.append(accuracy(source, batch))
            transfer.append(accuracy(other, batch))
            bar.update(1)
        acc[source, kind, source] = white
        acc[source, kind, other] = transfer

    fig = transfer_plot(acc, eps_list, names, len(images))
    ctx.note(photos=len(images), **{
        f"{k[0]} -> {k[2]} {k[1]}" if k[0] != "noise" else f"random noise on {k[1]}":
            ", ".join(f"{round(e * 255)}: {v:.2f}" for e, v in zip(eps_list, vals)) for k, vals in acc.items()},
        **{f"transfer starts ({s} {kind} -> {next(n for n in names if n != s)})":
           _start_text(_transfer_start(acc, (s, kind, next(n for n in names if n != s))), eps_list) for s, kind in attacks})
    return fig


def _transfer_start(acc: dict, key):
    """Index of the smallest eps where the transfer accuracy is >= 10 points below the noise's."""
    for k, (t, b) in enumerate(zip(acc[key], acc["noise", key[2]])):
        if b - t >= 0.1:
            return k
    return None


def transfer_plot(acc: dict, eps_list, names, n_images: int):
    """The transfer figure from its accuracies: ``acc[(source, attack, evaluated on)]`` and
    ``acc[("noise", model)]``, one value per eps."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.0), sharey=True)
    xs = np.arange(len(eps_list))
    for ax, source in zip(axes, names):
        other = next(n for n in names if n != source)
        fgsm, pgd, noise = acc.get((source, "FGSM", other)), acc.get((source, "PGD", other)), acc[("noise", other)]
        # a value is written once: FGSM's where it differs from the noise's, PGD's where it differs from both
        skips = {"FGSM": lambda k: abs(fgsm[k] - noise[k]) < 0.05,
                 "PGD": lambda k: abs(pgd[k] - noise[k]) < 0.05 or (fgsm is not None and abs(pgd[k] - fgsm[k]) < 0.05)}
        lines = [((source, "FGSM", other), f"FGSM transfer -> {other}", "tab:blue", "s", "-", "left"),
                 ((source, "PGD", other), f"PGD transfer -> {other}", "tab:red", "o", "-", "right"),
                 (("noise", other), f"random sign noise on {other}", "0.4", "^", ":", "belowright"),
                 ((source, "FGSM", source), f"FGSM white-box on {source}", "tab:blue", "s", "--", None),
                 ((source, "PGD", source), f"PGD white-box on {source}", "tab:red", "o", "--", None)]
        for key, text, color, marker, style, where in lines:
            if key not in acc:
                continue
            ax.plot(xs, acc[key], linestyle=style, marker=marker, color=color, label=text, lw=2 if style != "--" else 1.2,
                    ms=7 if style != "--" else 5, alpha=1.0 if style != "--" else 0.6, clip_on=False)
            if where is not None:
                _annotate_points(ax, xs, acc[key], color, where=where, skip=skips.get(key[1]))
        first = _transfer_start(acc, (source, "FGSM", other)) if fgsm is not None else None
        if first is not None:
            ax.axvspan(first - 0.5, len(xs) - 0.4, color="tab:blue", alpha=0.08, lw=0)
            ax.text(first - 0.45, 1.08, f"FGSM transfer >= 10 points below noise from {round(eps_list[first] * 255)}/255",
                    fontsize=FONT, color="tab:blue", va="top")
        ax.set_xticks(xs, [f"{round(e * 255)}" for e in eps_list], fontsize=FONT + 1)
        ax.set_xlim(-0.4, len(xs) - 0.4)
        ax.set_xlabel("eps (L-inf, grey levels of 255)", fontsize=FONT + 1)
        ax.set_title(f"crafted on {source}, evaluated on {other}", fontsize=FONT + 2)
        ax.set_ylim(-0.1, 1.12)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=FONT + 1)
        ax.legend(fontsize=FONT, loc="lower left")
    axes[0].set_ylabel(f"top-1 accuracy ({n_images} photographs)", fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def _start_text(k, eps_list) -> str:
    return "not within the sweep" if k is None else f"{round(eps_list[k] * 255)}/255"


def _key(seed: int):
    import jax
    return jax.random.key(seed)


COMPARISON_PHOTOS = 24
COMPARISON_POOL = 40
COMPARISON_EPS = 4 / 255
COMPARISON_STEPS = 5
COMPARISON_QUERIES = 200
COMPARISON_EXAMPLES = 2


def _norms(report) -> str:
    """Median L2 and L-inf (in grey levels) of an attack's perturbations."""
    return f"L2 {np.median(report.l2):.2f}, L∞ {np.median(report.linf) * 255:.0f}/255"


@figure("attack_comparison", "White-box, transfer and query-based black-box attacks on the same images",
        "With the same L2 budget, gradients fool SqueezeNet on nearly every photograph, SimBA (probabilities "
        f"only, ≤ {COMPARISON_QUERIES} queries) on fewer, and PGD images made on EfficientNet-Lite0 rarely transfer. The "
        "photographs are ImageNet-sample images both networks classify correctly. PGD-L∞ (4/255, 5 steps) "
        "on Lite0; its images shown to SqueezeNet (transfer); PGD-L2 (5 steps) and SimBA-DCT (Guo et al. "
        "2019) on SqueezeNet with the L2 budget set to the mean L2 of the PGD-L∞ images: L2 is matched, L∞ "
        "is not (norms beside the bars). Success = the 8-bit image's prediction changed. Bars: 95% "
        "Wilson intervals; examples: differences ×20 around grey.",
        order=45, model_a=LITE, model_b=SQUEEZE,
        photos=f"{COMPARISON_PHOTOS} classified correctly by both (of {COMPARISON_POOL})",
        pgd_linf=f"eps {round(COMPARISON_EPS * 255)}/255, {COMPARISON_STEPS} steps of eps/2.5, on {LITE}",
        pgd_l2=f"eps = the L2 budget, {COMPARISON_STEPS} steps, on {SQUEEZE}",
        simba=f"DCT, eps 0.2, {COMPARISON_QUERIES} queries, L2 ≤ the budget, on {SQUEEZE}")
def attack_comparison(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz import adversarial as adv
    from jaxviz.blackbox import simba
    from jaxviz.errors import JaxvizError

    names = ctx.classifiers()
    if not {SQUEEZE, LITE} <= set(names):
        raise JaxvizError(f"the attack comparison needs {SQUEEZE} and {LITE}")
    # A = Lite0 only takes the few PGD gradients; B = SqueezeNet answers the ~thousands of
    # SimBA queries (Lite0's depthwise convolutions are ~10x slower on CPU).
    model_a, model_b = ctx.model(LITE), ctx.model(SQUEEZE)
    if model_a.input_hw() != model_b.input_hw():
        raise JaxvizError("models A and B must share an input size for the same-image comparison")
    labels = model_b.labels
    photos, _ = both_correct(ctx, {LITE: model_a, SQUEEZE: model_b}, 4 if ctx.quick else COMPARISON_PHOTOS,
                             8 if ctx.quick else COMPARISON_POOL, 11)
    images = photos.images
    if ctx.real_input and photos.labelled:
        ctx.declare_input(f"real photographs ({len(images)} that both networks classify correctly, of "
                          f"{8 if ctx.quick else COMPARISON_POOL} drawn from the ImageNet sample)", real=True)
    steps = 3 if ctx.quick else COMPARISON_STEPS
    import time
    clock = time.perf_counter()
    white = adv.attack(model_a, None, images, method="pgd-linf", eps=COMPARISON_EPS, steps=steps,
                       step=COMPARISON_EPS / 2.5, early_stop=False, key=jax.random.key(1))
    transfer = adv.transfer_report(white.images, images, model_b, source=white.report)
    seconds = {"PGD-L∞ on A": time.perf_counter() - clock}
    clock = time.perf_counter()
    budget = float(white.report.l2.mean())  # the L2 both attacks on B may spend
    white_b = adv.attack(model_b, None, images, method="pgd-l2", eps=budget, steps=steps, step=budget / 2.5,
                         key=jax.random.key(3))
    seconds["PGD-L2 on B"] = time.perf_counter() - clock
    black = simba(adv.proba_fn(model_b), images, basis="dct", eps=0.2,
                  max_queries=100 if ctx.quick else COMPARISON_QUERIES,
                  max_l2=budget, key=jax.random.key(2), model=model_b.name,
                  pad=True)  # our jitted model: a few batch shapes; the padding is no query
    # the claim is re-predicted here too, from the returned 8-bit images
    check = adv.assess(adv.proba_fn(model_b), images, black.images, label=black.report.label)
    if not np.array_equal(check.success, black.report.success):
        raise JaxvizError("SimBA's report disagrees with a re-prediction of its images")

    n = len(images)
    w, t, g, b = white.report, transfer, white_b.report, black.report
    kinds = [("PGD-L∞ on A\n(white-box)", w, "tab:blue"), ("transfer A → B\n(no queries)", t, "tab:orange"),
             ("PGD-L2 on B\n(white-box)", g, "tab:purple"), ("SimBA on B\n(probabilities)", b, "tab:green")]
    fig = plt.figure(figsize=(12.5, 4.8))
    outer = fig.add_gridspec(1, 2, width_ratios=[1.45, 1], wspace=0.3)
    examples = outer[0].subgridspec(COMPARISON_EXAMPLES, 4, wspace=0.15, hspace=0.45)
    short = lambda i: _name(labels, i, 11)
    # examples: the photographs SimBA fools first (else the first ones), so its change is visible
    order = [int(i) for i in np.argsort(np.where(b.success, b.queries, 10 ** 6), kind="stable")]
    for r, i in enumerate(order[:COMPARISON_EXAMPLES]):
        cells = [(images[i], f"{short(t.label[i])}\nB: p {t.label_confidence[i]:.2f}"),
                 (adv.difference_image(images[i], white.images[i], 20.0),
                  f"PGD-L∞: A {'fooled' if w.success[i] else 'not fooled'}\nB {'fooled' if t.success[i] else 'not fooled'}"),
                 (adv.difference_image(images[i], white_b.images[i], 20.0),
                  f"PGD-L2: {'fooled' if g.success[i] else 'not fooled'}\nL2 {g.l2[i]:.1f}, L∞ {g.linf[i] * 255:.0f}/255"),
                 (adv.difference_image(images[i], black.images[i], 20.0),
                  f"SimBA: {'fooled' if b.success[i] else 'not fooled'}\nL2 {b.l2[i]:.1f}, L∞ {b.linf[i] * 255:.0f}/255")]
        for c, (picture, title) in enumerate(cells):
            ax = fig.add_subplot(examples[r, c])
            ax.imshow(np.clip(picture, 0, 1))
            ax.set_title(title, fontsize=FONT)
            _off(ax)
    ax = fig.add_subplot(outer[1])
    rates = [k.success_rate for _, k, _ in kinds]
    counts = [int(k.success.sum()) for _, k, _ in kinds]
    ci = [wilson(c, n) for c in counts]
    err = np.array([[r - lo for r, (lo, _) in zip(rates, ci)], [hi - r for r, (_, hi) in zip(rates, ci)]])
    ax.barh(range(4)[::-1], rates, xerr=err, capsize=3, color=[c for _, _, c in kinds], height=0.6)
    for y, (_, k, _), c in zip(range(4)[::-1], kinds, counts):
        extra = ""
        if k.queries is not None:
            ok = k.queries[k.success]
            extra = f", median {int(np.median(ok))} queries" if len(ok) else ""
        ax.text(1.03, y, f"{c}/{n}{extra}\n{_norms(k)}", va="center", fontsize=FONT,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(range(4)[::-1], [k for k, _, _ in kinds], fontsize=FONT)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"success rate on {n} photographs (norms: medians)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.text(0.01, 0.99, f"A = EfficientNet-Lite0, B = SqueezeNet 1.1; L2 budget {budget:.2f} (pixel units in [0, 1])",
             fontsize=FONT + 0.5, va="top")
    ctx.note(**{"model A (white-box PGD-L∞)": model_a.name, "model B (transfer, PGD-L2, SimBA)": model_b.name,
                "photographs": f"{n} classified correctly by both (of {COMPARISON_POOL})",
                "L2 budget on B (mean L2 of the PGD-L∞ images)": f"{budget:.2f}",
                **{f"{k.splitlines()[0]}: fooled": f"{c}/{n} ({r:.0%}, 95% CI {lo:.0%}–{hi:.0%})"
                   for (k, _, _), c, r, (lo, hi) in zip(kinds, counts, rates, ci)},
                **{f"{k.splitlines()[0]}: L2 median (max)": f"{np.median(v.l2):.2f} ({v.l2.max():.2f})"
                   for k, v, _ in kinds},
                **{f"{k.splitlines()[0]}: L∞ median (max)":
                   f"{np.median(v.linf) * 255:.1f}/255 ({v.linf.max() * 255:.0f}/255)" for k, v, _ in kinds},
                "SimBA queries, median over fooled photographs":
                    (int(np.median(b.queries[b.success])) if b.success.any() else "none fooled"),
                "SimBA model calls": b.extra["calls"],
                "seconds (PGD-L∞ on A, PGD-L2 on B, SimBA)":
                    f"{seconds['PGD-L∞ on A']:.0f}, {seconds['PGD-L2 on B']:.0f}, {b.extra['seconds']:.0f}"})
    fig.subplots_adjust(left=0.01, right=0.84, top=0.84, bottom=0.12)
    return fig
