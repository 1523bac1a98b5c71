"""``jaxviz adversarial IMAGE...``: white-box adversarial examples (seed, FGSM, I-FGSM, PGD) and the
query-based black-box SimBA (``--method simba``: probabilities only, ``jaxviz.blackbox``).

Output files: with one image, ``--out ADV.png`` writes exactly ADV.png; with several images it
writes ADV_0.png, ADV_1.png, ... (the index is the image's position on the command line).
``--npy`` writes the float array next to each PNG (ADV.npy / ADV_0.npy, ...). Nothing else is
written. Success is reported from a re-prediction of the image read back from the saved PNG.
Models are loaded accelerated for this machine (``jaxviz.accel.accelerate`` via ``load_model_arg``:
the faster max-pool backward and XLA options; same results).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxviz.cli import command
from jaxviz.cli._common import add_images, add_model, add_output, load_inputs, load_model_arg, output_path

# Shown in --help without importing jax; the registry jaxviz.adversarial.METHODS validates.
_METHOD_NAMES = ("seed", "fgsm", "ifgsm", "pgd-linf", "pgd-l2")
_BLACK_BOX = ("simba",)  # jaxviz.blackbox: sees only the model's probabilities


def output_paths(out: Path | None, count: int, suffix: str = ".png") -> list[Path | None]:
    """ADV.png -> [ADV.png] for one image, [ADV_0.png, ADV_1.png, ...] for several."""
    if out is None:
        return [None] * count
    if count == 1:
        return [out.with_suffix(suffix)]
    return [out.with_name(f"{out.stem}_{i}{suffix}") for i in range(count)]


@command("adversarial", "craft adversarial images (seed normalised-gradient method, FGSM, I-FGSM, PGD; "
                        "black-box SimBA) and report success from a re-prediction of the saved 8-bit files")
def adversarial(parser: argparse.ArgumentParser):
    add_images(parser)
    add_model(parser)
    parser.add_argument("--target", default=None, metavar="CLASS",
                        help="target class (index or name) for a targeted attack; default: untargeted")
    parser.add_argument("--method", default="pgd-linf", metavar="METHOD",
                        help=" | ".join(_METHOD_NAMES + _BLACK_BOX) + " (default pgd-linf; simba: the "
                        "query-based black-box attack of Guo et al. 2019, probabilities only)")
    parser.add_argument("--eps", default=None, help="budget in [0,1] pixel units, e.g. 0.01 or 8/255 "
                        "(L-inf for fgsm/ifgsm/pgd-linf, L2 for pgd-l2, seed and simba; default per "
                        "method, none for simba)")
    parser.add_argument("--step", default=None, help="step size in pixel units (default per method; "
                        "simba: L2 length of one step, default 0.2)")
    parser.add_argument("--queries", type=int, default=None,
                        help="simba: query budget per image (default 5000; the initial prediction counts)")
    parser.add_argument("--basis", default=None, metavar="BASIS",
                        help="simba: search directions, dct (low frequencies first, default) | pixel")
    parser.add_argument("--steps", type=int, default=None, help="maximum number of steps")
    parser.add_argument("--confidence", type=float, default=None,
                        help="success also needs the winning class probability >= this (e.g. 0.99)")
    parser.add_argument("--no-early-stop", action="store_true",
                        help="run every step even after an image succeeds")
    parser.add_argument("--seed", type=int, default=0, help="random seed (random start)")
    parser.add_argument("--transfer", default=None, metavar="MODEL",
                        help="also evaluate the adversarial images on this model")
    add_output(parser, help="adversarial PNG at the model's input size (several images: OUT_0.png, OUT_1.png, ...)")
    parser.add_argument("--npy", action="store_true", help="also write the float array(s) beside --out (.npy)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one record per image")

    def run(args: argparse.Namespace) -> int:
        from jaxviz import adversarial as adv
        from jaxviz.errors import JaxvizError
        if args.method in _BLACK_BOX:
            return _run_simba(args)
        if args.queries is not None or args.basis is not None:
            raise JaxvizError("--queries and --basis apply to the black-box attack only (--method simba)")
        method = adv.get_method(args.method)  # the registry decides which methods exist
        out = output_path(args.out, suffixes=(".png",))  # PNG only: JPEG would undo the attack
        if args.npy and out is None:
            raise JaxvizError("--npy needs --out (the arrays are written beside the PNGs)")
        pngs = output_paths(out, len(args.images))
        npys = output_paths(out, len(args.images), ".npy") if args.npy else [None] * len(args.images)

        import jax
        import numpy as np

        from jaxviz.images import load_image
        from jaxviz.labels import resolve_class

        eps = adv.parse_amount(args.eps, "--eps") if args.eps is not None else None
        step = adv.parse_amount(args.step, "--step") if args.step is not None else None
        if eps is not None and method.norm == "linf" and eps > 1:
            raise JaxvizError(f"--eps {args.eps} is an L-inf radius in [0,1] pixel units: must be <= 1")
        if args.steps is not None and not 1 <= args.steps <= 100_000:
            raise JaxvizError(f"--steps must be between 1 and 100000, got {args.steps}")
        if args.confidence is not None and not 0 < args.confidence < 1:
            raise JaxvizError(f"--confidence must be in (0, 1), got {args.confidence}")
        model = load_model_arg(args.model)  # accelerated once
        target = resolve_class(args.target, model.num_classes, model.labels) if args.target is not None else None
        other = load_model_arg(args.transfer) if args.transfer else None
        images = load_inputs(model, args.images, args.fit)

        result = adv.attack(model, None, images, method=method.name, target=target, eps=eps, step=step,
                            steps=args.steps, confidence=args.confidence,
                            early_stop=False if args.no_early_stop else None,
                            key=jax.random.key(args.seed))
        if out is not None:
            _save(result.images, pngs, npys)
            # the claim is about the files: read them back and re-predict
            final = np.stack([load_image(p) for p in pngs])
        else:
            final = result.images
        report = adv.assess(adv.proba_fn(model), images, final, label=result.report.label,
                            target=result.report.target, confidence=args.confidence,
                            steps=result.report.steps, method=method.name, model=model.name,
                            eps=result.report.eps, norm=method.norm)
        transfer = (adv.transfer_report(final, images, other, confidence=args.confidence, source=report)
                    if other is not None else None)
        _print_report(args, model, report, transfer, pngs, npys, {"eps": report.eps, "norm": method.norm},
                      lambda row: f"in {row['steps']} steps")
        return 0
    return run


def _run_simba(args: argparse.Namespace) -> int:
    """``--method simba``: the model is used only through its probabilities (jaxviz.blackbox)."""
    from jaxviz import adversarial as adv
    from jaxviz.errors import JaxvizError
    out = output_path(args.out, suffixes=(".png",))
    if args.npy and out is None:
        raise JaxvizError("--npy needs --out (the arrays are written beside the PNGs)")
    for flag, given in (("--steps", args.steps is not None), ("--confidence", args.confidence is not None),
                        ("--no-early-stop", args.no_early_stop)):
        if given:
            hint = "; the budget is --queries" if flag == "--steps" else ""
            raise JaxvizError(f"{flag} does not apply to --method simba{hint}")
    queries = 5000 if args.queries is None else args.queries
    if not 2 <= queries <= 1_000_000:
        raise JaxvizError(f"--queries must be between 2 and 1000000 (the initial prediction is one), got {queries}")
    basis = args.basis or "dct"
    if basis not in ("dct", "pixel"):
        raise JaxvizError(f"unknown basis {basis!r} for --basis; use dct or pixel")
    step = adv.parse_amount(args.step, "--step") if args.step is not None else 0.2
    if step > 1:
        raise JaxvizError(f"--step {args.step} is the L2 length of one SimBA step in [0,1] pixel units: must be <= 1")
    max_l2 = adv.parse_amount(args.eps, "--eps") if args.eps is not None else None
    pngs = output_paths(out, len(args.images))
    npys = output_paths(out, len(args.images), ".npy") if args.npy else [None] * len(args.images)

    import jax
    import numpy as np

    from jaxviz.blackbox import simba
    from jaxviz.images import load_image
    from jaxviz.labels import resolve_class

    model = load_model_arg(args.model)  # accelerated once
    target = resolve_class(args.target, model.num_classes, model.labels) if args.target is not None else None
    other = load_model_arg(args.transfer) if args.transfer else None
    images = load_inputs(model, args.images, args.fit)
    predict = adv.proba_fn(model)
    result = simba(predict, images, target=target, basis=basis, eps=step, max_queries=queries,
                   max_l2=max_l2, key=jax.random.key(args.seed), model=model.name,
                   pad=True)  # our jitted model: a few batch shapes; the padding is no query
    report = result.report
    if out is not None:
        _save(result.images, pngs, npys)
        # the claim is about the files: read them back and re-predict (a check by us, not a query
        # of the attack: report.queries stays the attack's count)
        final = np.stack([load_image(p) for p in pngs])
        report = adv.assess(predict, images, final, label=report.label, target=report.target,
                            steps=report.steps, method=report.method, model=model.name, eps=max_l2,
                            norm="l2", queries=report.queries)
    transfer = adv.transfer_report(result.images, images, other, source=report) if other is not None else None
    _print_report(args, model, report, transfer, pngs, npys,
                  {"eps": max_l2, "norm": "l2", "step": step, "basis": basis, "max_queries": queries},
                  lambda row: f"in {row['queries']} queries")
    return 0


def _save(images, pngs, npys) -> None:
    """Write each image as PNG (8-bit) and, where asked, its float array as .npy."""
    import numpy as np

    from jaxviz.images import save_image
    for image, png, npy in zip(images, pngs, npys):
        save_image(image, png)
        if npy is not None:
            np.save(npy, image)


def _print_report(args, model, report, transfer, pngs, npys, extra: dict, effort) -> None:
    """One record per image (JSON with --json, else a line each), transfer results nested."""
    labels = model.labels
    rows = report.records(labels)
    for i, row in enumerate(rows):
        row = {"image": args.images[i], **row, **extra}
        if pngs[i] is not None:
            row["saved"] = str(pngs[i])
        if npys[i] is not None:
            row["npy"] = str(npys[i])
        if transfer is not None:
            t = transfer.records(labels)[i]
            row["transfer"] = {"model": t["model"], "success": t["success"],
                               "original": t["original"], "final": t["final"], "target": t["target"]}
        rows[i] = row
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        goal = f"-> {row['target']['label']}" if row["target"] else "(untargeted)"
        print(f"{row['image']}: {'success' if row['success'] else 'FAILED'} {row['method']} {goal} "
              f"{effort(row)}; {row['original']['label']} {row['original']['confidence']:.3f} "
              f"=> {row['final']['label']} {row['final']['confidence']:.3f}; "
              f"L2 {row['l2']:.3f}, Linf {row['linf_255']:.1f}/255"
              + (f"; saved {row['saved']}" if "saved" in row else ""))
        if "transfer" in row:
            t = row["transfer"]
            print(f"  transfer to {t['model']}: {'success' if t['success'] else 'no'}; "
                  f"{t['original']['label']} => {t['final']['label']} {t['final']['confidence']:.3f}")
