"""Adversarial figures: original / adversarial / x10 difference triplets, and transferability
between SqueezeNet and EfficientNet-Lite0 (attacks from ``jaxviz.adversarial``)."""
from __future__ import annotations

import numpy as np

from jaxviz.gallery import Context, figure

TRIPLET_IMAGES = ["chelsea", "coffee"]
TRIPLET_TARGETS = {"chelsea": "goldfish", "coffee": "tarantula"}
TRIPLET_ATTACKS = [("pgd-linf", False, {"eps": 2 / 255}), ("pgd-linf", True, {"eps": 2 / 255}),
                   ("seed", True, {})]
# Images both models classify confidently and alike (Egyptian cat / espresso, p >= 0.5): with
# ambiguous images (astronaut, rocket) random noise alone flips the other model's top-1.
TRANSFER_IMAGES = ["chelsea", "coffee"]
TRANSFER_CROPS = ("full", "center", "right")
TRANSFER_EPS = (2 / 255, 8 / 255)
TRANSFER_STEPS = 10


def _model(ctx: Context, name: str):
    """The bundled model, accelerated for this machine once (a front end's job)."""
    from jaxviz.accel import accelerate
    return accelerate(ctx.model(name))


def _title(labels, row: dict, method: str) -> str:
    goal = f"-> {labels[row['target']['index']][:18]}" if row["target"] else "untargeted"
    status = "fooled" if row["success"] else "NOT fooled"
    return (f"{method} {goal}\n{status} in {row['steps']} steps: "
            f"{labels[row['final']['index']][:20]} {row['final']['confidence']:.2f}\n"
            f"L2 {row['l2']:.2f}, Linf {row['linf_255']:.0f}/255")


@figure("adversarial_examples", "Adversarial examples: original, adversarial, x10 difference",
        "Untargeted and targeted PGD-Linf (eps = 2/255, random start, stop at success; Madry et al. "
        "2018) and the seed homework's normalised-gradient method (x <- x + eta g/||g||, g = grad of "
        "the target logit, until the prediction is the target; Szegedy et al. 2014) on SqueezeNet 1.1. "
        "Every adversarial image is on the 8-bit grid and its class, confidence and norms (pixel units "
        "of [0,1]) are re-predicted from that image. The difference is magnified 10x around grey.",
        order=50, images=TRIPLET_IMAGES, targets=TRIPLET_TARGETS,
        attacks=[f"{m}{' targeted' if t else ''} {kw}" for m, t, kw in TRIPLET_ATTACKS])
def adversarial_examples(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz import adversarial as adv
    from jaxviz.images import load_images
    from jaxviz.labels import resolve_class

    model = _model(ctx, ctx.classifiers()[0])
    labels = model.labels
    images = load_images(TRIPLET_IMAGES, model.input_hw(), "eval", model.eval_transform)
    targets = np.array([resolve_class(TRIPLET_TARGETS[s], model.num_classes, labels) for s in TRIPLET_IMAGES])
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
    fig, axes = plt.subplots(len(rows) // per_row, 3 * per_row, figsize=(3 * 3.1 * per_row, 3.7 * len(rows) // per_row),
                             squeeze=False)
    for k, (method, image, adversarial, record) in enumerate(rows):
        r, offset = divmod(k, per_row)
        original = record["original"]
        panels = [(image, f"original\n{labels[original['index']][:22]} {original['confidence']:.2f}"),
                  (adversarial, _title(labels, record, method)),
                  (adv.difference_image(image, adversarial, 10.0), "difference x10")]
        for c, (picture, title) in enumerate(panels):
            ax = axes[r, 3 * offset + c]
            ax.imshow(np.clip(picture, 0, 1))
            ax.set_title(title, fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    ctx.note(model=model.name)
    fig.tight_layout()
    return fig


def _transfer_images(size: int | tuple[int, int]) -> np.ndarray:
    """(12, size, size, 3): full / centre / right crops of the photos, and their mirror images."""
    from jaxviz.images import fit_image, load_image
    out = []
    for name in TRANSFER_IMAGES:
        full = load_image(name)
        h, w = full.shape[:2]
        crops = {"full": full, "center": full[h // 8:h - h // 8, w // 8:w - w // 8], "right": full[:, w // 4:]}
        for c in TRANSFER_CROPS:
            # stretched: the crops are the figure's choice, not to be centre-cropped again
            out += [fit_image(crops[c], size, "stretch"), fit_image(crops[c][:, ::-1], size, "stretch")]
    return np.stack(out)


@figure("adversarial_transfer", "Transferability of adversarial examples: SqueezeNet <-> Lite0",
        "Untargeted PGD-Linf (random start, fixed steps, no early stop) crafted white-box on one model "
        "and evaluated on the other (black-box transfer). Success = the evaluating model's prediction on "
        "the 8-bit adversarial image differs from its prediction on the original; the baseline is random "
        "+-eps sign noise of the same L-inf size on the evaluating model. The grey text gives the evaluating "
        "model's mean probability of the original class before -> after (transfer, and noise).",
        order=51, images=[f"{s} {c} crop (+ flip)" for s in TRANSFER_IMAGES for c in TRANSFER_CROPS],
        eps=[f"{round(e * 255)}/255" for e in TRANSFER_EPS], steps=TRANSFER_STEPS)
def adversarial_transfer(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz import adversarial as adv
    from jaxviz.errors import JaxvizError

    names = ctx.classifiers()[:2]
    if len(names) < 2:
        raise JaxvizError("the transfer figure needs two classifiers (squeezenet1_1, efficientnet_lite0)")
    models = {n: _model(ctx, n) for n in names}
    rows = []  # (source, evaluated on, eps, success rate)
    drops = {}  # mean p(original class) on the evaluating model: before -> after
    for source in names:
        model = models[source]
        images = _transfer_images(model.input_hw())
        for eps in TRANSFER_EPS:
            result = adv.attack(model, None, images, method="pgd-linf", eps=eps, steps=TRANSFER_STEPS,
                                step=eps / 4, early_stop=False, key=jax.random.key(1))
            rows.append((source, source, eps, result.report.success_rate))
            for other in names:
                if other != source:
                    t = adv.transfer_report(result.images, images, models[other], source=result.report)
                    rows.append((source, other, eps, t.success_rate))
                    drops[source, other, eps] = (float(t.label_confidence.mean()), float(t.target_confidence.mean()))
                    # baseline: random +-eps sign noise of the same L-inf size, 8-bit, on the other model
                    noise = np.sign(np.random.default_rng(2).standard_normal(images.shape)).astype(np.float32)
                    noisy = adv.quantize_8bit(np.clip(images + eps * noise, 0, 1), images, norm="linf", eps=eps)
                    base = adv.transfer_report(np.asarray(noisy), images, models[other])
                    rows.append((source, "noise", eps, base.success_rate))
                    drops[source, "noise", eps] = (float(base.label_confidence.mean()),
                                                   float(base.target_confidence.mean()))
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = [(s, e) for s in names for e in TRANSFER_EPS]
    width = 0.27
    kinds = [("white-box (same model)", lambda s, o: s == o),
             ("transfer (other model)", lambda s, o: s != o and o != "noise"),
             ("random +-eps noise (other model)", lambda s, o: o == "noise")]
    for k, (label, pick) in enumerate(kinds):
        values = [next(v for s, o, e, v in rows if s == gs and e == ge and pick(s, o)) for gs, ge in groups]
        bars = ax.bar(np.arange(len(groups)) + (k - 1) * width, values, width, label=label)
        ax.bar_label(bars, [f"{v:.0%}" for v in values], fontsize=8)
    ax.set_xticks(np.arange(len(groups)),
                  [f"crafted on {s}\neps {round(e * 255)}/255" for s, e in groups], fontsize=8)
    ax.set(ylabel="success rate", ylim=(0, 1.12), title="Untargeted PGD-Linf: white-box vs transfer")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    ax.grid(axis="y", alpha=0.3)
    ctx.note(**{f"{s} -> {o if o != 'noise' else 'other model, random noise'}, eps {round(e * 255)}/255":
                f"{v:.0%}" + (f"; mean p(original class) {drops[s, o, e][0]:.2f} -> {drops[s, o, e][1]:.2f}"
                              if (s, o, e) in drops else "") for s, o, e, v in rows})
    for g, (gs, ge) in enumerate(groups):  # how far transfer moved the other model, vs noise
        t = next(d for (s, o, e), d in drops.items() if s == gs and e == ge and o != "noise")
        b = drops[gs, "noise", ge]
        ax.text(g + 0.14, 0.7, f"p(orig) on other:\n{t[0]:.2f} -> {t[1]:.2f}\nnoise: -> {b[1]:.2f}",
                ha="center", fontsize=7, color="0.25")
    fig.tight_layout()
    return fig


COMPARISON_CROPS = ("full", "center", "right")  # of TRANSFER_IMAGES, unflipped: 6 images
COMPARISON_EPS = 4 / 255
COMPARISON_STEPS = 10
COMPARISON_QUERIES = 1000


@figure("attack_comparison", "White-box, transfer and query-based black-box attacks on the same images",
        "Untargeted attacks on six photos. White-box: PGD-Linf (eps 4/255, 10 steps, random start, no early "
        "stop; Madry et al. 2018) with the gradients of model A = EfficientNet-Lite0. Transfer: the same 8-bit "
        "images shown to model B = SqueezeNet 1.1 (Papernot et al. 2016). Query-based: SimBA-DCT (Guo et al. "
        "2019; eps 0.2, low frequencies first, ratio 1/8) on model B through its probabilities only, with a "
        "budget of 1000 queries per image (the initial prediction counts) and, for a like-for-like "
        "comparison, an L2 budget equal to the mean L2 of the PGD images (the PGD images' own size, "
        "not their L-inf box). Success on each model = its "
        "prediction on the 8-bit image differs from its prediction on the original. Differences x20 "
        "around grey. Norms in [0, 1] pixel units; Linf also in grey levels.",
        order=52, model_a="efficientnet_lite0", model_b="squeezenet1_1",
        images=[f"{s} {c} crop" for s in TRANSFER_IMAGES for c in COMPARISON_CROPS],
        pgd=f"pgd-linf eps {round(COMPARISON_EPS * 255)}/255, {COMPARISON_STEPS} steps",
        simba=f"dct, eps 0.2, {COMPARISON_QUERIES} queries, max_l2 = mean L2 of the PGD images")
def attack_comparison(ctx: Context):
    import jax
    import matplotlib.pyplot as plt

    from jaxviz import adversarial as adv
    from jaxviz.blackbox import simba
    from jaxviz.errors import JaxvizError

    names = ctx.classifiers()
    if not {"squeezenet1_1", "efficientnet_lite0"} <= set(names):
        raise JaxvizError("the attack comparison needs squeezenet1_1 and efficientnet_lite0")
    # A = Lite0 only takes the few PGD gradients; B = SqueezeNet answers the ~thousands of
    # SimBA queries (Lite0's depthwise convolutions are ~10x slower on CPU).
    model_a, model_b = _model(ctx, "efficientnet_lite0"), _model(ctx, "squeezenet1_1")
    if model_a.input_hw() != model_b.input_hw():
        raise JaxvizError("models A and B must share an input size for the same-image comparison")
    labels = model_b.labels
    images = _transfer_images(model_a.input_hw())[::2]  # unflipped crops
    white = adv.attack(model_a, None, images, method="pgd-linf", eps=COMPARISON_EPS, steps=COMPARISON_STEPS,
                       step=COMPARISON_EPS / 4, early_stop=False, key=jax.random.key(1))
    transfer = adv.transfer_report(white.images, images, model_b, source=white.report)
    # SimBA gets the L2 the PGD images actually spent, so neither attack is given a larger budget
    budget = float(white.report.l2.mean())
    black = simba(adv.proba_fn(model_b), images, basis="dct", eps=0.2, max_queries=COMPARISON_QUERIES,
                  max_l2=budget, key=jax.random.key(2), model=model_b.name,
                  pad=True)  # our jitted model: a few batch shapes; the padding is no query
    # the claim is re-predicted here too, from the returned 8-bit images
    check = adv.assess(adv.proba_fn(model_b), images, black.images, label=black.report.label)
    if not np.array_equal(check.success, black.report.success):
        raise JaxvizError("SimBA's report disagrees with a re-prediction of its images")

    n = len(images)
    fig = plt.figure(figsize=(13, 2.55 * n + 2.6))
    grid = fig.add_gridspec(n + 1, 5, height_ratios=[1] * n + [1.25])
    short = lambda i: labels[int(i)].split(",")[0][:16]
    w, t, b = white.report, transfer, black.report
    for r in range(n):
        cells = [(images[r], f"original\nA: {short(w.label[r])} {w.label_confidence[r]:.2f}\n"
                             f"B: {short(t.label[r])} {t.label_confidence[r]:.2f}"),
                 (white.images[r], f"PGD on A: {'fooled' if w.success[r] else 'NOT fooled'} "
                                   f"({short(w.final_class[r])})\ntransfer to B: "
                                   f"{'fooled' if t.success[r] else 'not fooled'} ({short(t.final_class[r])})\n"
                                   f"L2 {w.l2[r]:.2f}, Linf {w.linf[r] * 255:.0f}/255"),
                 (adv.difference_image(images[r], white.images[r], 20.0), "PGD difference x20"),
                 (black.images[r], f"SimBA on B: {'fooled' if b.success[r] else 'NOT fooled'} "
                                   f"({short(b.final_class[r])})\n{b.queries[r]} queries\n"
                                   f"L2 {b.l2[r]:.2f}, Linf {b.linf[r] * 255:.0f}/255"),
                 (adv.difference_image(images[r], black.images[r], 20.0), "SimBA difference x20")]
        for c, (picture, title) in enumerate(cells):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(np.clip(picture, 0, 1))
            ax.set_title(title, fontsize=7.5)
            ax.set_xticks([]), ax.set_yticks([])
    kinds = [("white-box PGD\n(A, gradients)", w), ("transfer A -> B\n(no queries)", t),
             ("SimBA-DCT on B\n(probabilities only)", b)]
    ax = fig.add_subplot(grid[n, 1:4])
    rates = [k.success_rate for _, k in kinds]
    bars = ax.bar(range(3), rates, color=["tab:blue", "tab:orange", "tab:green"])
    facts = [f"mean L2 {k.l2.mean():.2f}, Linf {k.linf.mean() * 255:.0f}/255" for _, k in kinds]
    facts[0] += f"\n{COMPARISON_STEPS} gradient steps"
    facts[1] += "\n0 queries to B"
    ok = b.queries[b.success]
    facts[2] += (f"\nqueries: median {int(np.median(ok))} of the fooled" if len(ok) else "\nno success") + \
        f", mean {b.queries.mean():.0f} of all"
    ax.bar_label(bars, [f"{v:.0%}\n{f}" for v, f in zip(rates, facts)], fontsize=7.5)
    ax.set_xticks(range(3), [k for k, _ in kinds], fontsize=8)
    ax.set(ylabel="success rate", ylim=(0, 1.6), yticks=[0, 0.5, 1])
    ax.grid(axis="y", alpha=0.3)
    ctx.note(**{"model A (white-box)": model_a.name, "model B (transfer, SimBA)": model_b.name,
                "success white-box / transfer / SimBA": " / ".join(f"{int(k.success.sum())}/{n}" for _, k in kinds),
                "mean L2 white-box / transfer / SimBA": " / ".join(f"{k.l2.mean():.2f}" for _, k in kinds),
                "mean Linf*255 white-box / SimBA": f"{w.linf.mean() * 255:.1f} / {b.linf.mean() * 255:.1f}",
                "SimBA L2 budget (mean PGD L2)": f"{budget:.3f}",
                "SimBA queries per image": ", ".join(str(int(q)) for q in b.queries),
                "SimBA predict_proba calls": b.extra["calls"],
                "SimBA seconds": f"{b.extra['seconds']:.1f}"})
    fig.tight_layout()
    return fig
