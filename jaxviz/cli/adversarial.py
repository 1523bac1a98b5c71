"""``jaxviz adversarial IMAGE...``: white-box adversarial examples (seed, FGSM, I-FGSM, PGD) and the
query-based black-box SimBA (``--method simba``: probabilities only, ``jaxviz.blackbox``).

The methods and their flags come from the technique registry (``jaxviz.techniques``, command
"adversarial"): ``--eps``/``--step`` are the attack's budget and step (for SimBA: its optional L2
budget and its step length), validated there (finite; L-inf amounts in (0, 1]).

Output files: with one image, ``--out ADV.png`` writes exactly ADV.png; with several images it
writes ADV_0.png, ADV_1.png, ... (the index is the image's position on the command line).
``--npy`` writes the float array next to each PNG (ADV.npy / ADV_0.npy, ...). Nothing else is
written (each file through a temporary name, renamed when complete). Success is reported from a
re-prediction of the image read back from the saved PNG. Images are attacked ``--batch`` at a
time (images are independent; the random start of image i depends on its own key only), with a
progress bar. Models are loaded accelerated for this machine (``jaxviz.accel.accelerate`` via
``load_model_arg``: the faster max-pool backward and XLA options; same results).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxviz.cli import command
from jaxviz.cli._common import (add_batch, add_images, add_model, add_options, add_output, check_memory_for, chunks,
                                load_inputs, load_model_arg, options_for, output_path, write_npy)
from jaxviz.errors import JaxvizError
from jaxviz.techniques import get, techniques

TECHNIQUES = techniques("adversarial")
_METHOD_NAMES = tuple(t.name for t in TECHNIQUES if t.name != "simba")
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
    add_options(parser, TECHNIQUES)
    add_batch(parser)
    parser.add_argument("--transfer", default=None, metavar="MODEL",
                        help="also evaluate the adversarial images on this model")
    add_output(parser, help="adversarial PNG at the model's input size (several images: OUT_0.png, OUT_1.png, ...)")
    parser.add_argument("--npy", action="store_true", help="also write the float array(s) beside --out (.npy)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one record per image")

    def run(args: argparse.Namespace) -> int:
        from jaxviz.cli._common import option_value
        from jaxviz.techniques import BATCH
        technique = get(args.method, "adversarial", "attack method")
        if technique.name in _BLACK_BOX and args.steps is not None:
            raise JaxvizError("--steps does not apply to --method simba; the budget is --queries")
        options = options_for(args, technique)
        out = output_path(args.out, suffixes=(".png",))  # PNG only: JPEG would undo the attack
        if args.npy and out is None:
            raise JaxvizError("--npy needs --out (the arrays are written beside the PNGs)")
        batch = option_value(args, BATCH)
        pngs = output_paths(out, len(args.images))
        npys = output_paths(out, len(args.images), ".npy") if args.npy else [None] * len(args.images)

        import jax
        import numpy as np

        from jaxviz import adversarial as adv
        from jaxviz.images import load_image
        from jaxviz.labels import resolve_class

        model = load_model_arg(args.model)  # accelerated once
        target = resolve_class(args.target, model.num_classes, model.labels) if args.target is not None else None
        other = load_model_arg(args.transfer) if args.transfer else None
        check_memory_for(model, None, min(batch, len(args.images)), f"adversarial --method {technique.name}")
        key = jax.random.key(options.pop("seed", 0))  # 0: no random start uses it
        simba = technique.name in _BLACK_BOX
        if simba:
            predict = adv.proba_fn(model)
            extra = {"eps": options["max_l2"], "norm": "l2", "step": options["eps"], "basis": options["basis"],
                     "max_queries": options["max_queries"]}
        else:
            norm = adv.get_method(technique.name).norm

        def attack(start: int, stop: int) -> list[dict]:
            images = load_inputs(model, args.images[start:stop], args.fit)
            if simba:
                result = technique.load()(predict, images, target=target, key=key, model=model.name,
                                          pad=True, **options)  # a jitted model: padding is no query
                report = result.report
            else:
                result = technique.load()(model, None, images, target=target, key=key, **options)
                report = result.report
            if out is not None:
                _save(result.images, pngs[start:stop], npys[start:stop])
                # the claim is about the files: read them back and re-predict (for SimBA a check by
                # us, not a query of the attack: report.queries stays the attack's count)
                final = np.stack([load_image(p) for p in pngs[start:stop]])
                if simba:
                    report = adv.assess(predict, images, final, label=report.label, target=report.target,
                                        steps=report.steps, method=report.method, model=model.name,
                                        eps=options["max_l2"], norm="l2", queries=report.queries)
            else:
                final = result.images
            if not simba:
                # the attack's own parameters (prepare_params keeps its last result): the attack's
                # compiled prediction is reused, not traced and compiled again for bare params
                checker = adv.proba_fn(model, model.prepare_params(model.params))
                report = adv.assess(checker, images, final, label=report.label,
                                    target=report.target, confidence=options["confidence"],
                                    steps=report.steps, method=technique.name, model=model.name,
                                    eps=report.eps, norm=norm)
            transfer = None
            if other is not None:
                transfer = adv.transfer_report(final if not simba else result.images, images, other,
                                               source=report,
                                               **({} if simba else {"confidence": options["confidence"]}))
            return _rows(args, model, report, transfer, start, pngs, npys,
                         extra if simba else {"eps": report.eps, "norm": norm})

        rows = [row for part in chunks(args, len(args.images), attack, f"adversarial {technique.name}") for row in part]
        _print_rows(args, rows, (lambda row: f"in {row['queries']} queries") if simba
                    else (lambda row: f"in {row['steps']} step{'' if row['steps'] == 1 else 's'}"))
        return 0
    return run


def _save(images, pngs, npys) -> None:
    """Write each image as PNG (8-bit) and, where asked, its float array as .npy."""
    from jaxviz.images import save_image
    for image, png, npy in zip(images, pngs, npys):
        save_image(image, png)
        if npy is not None:
            write_npy(npy, image)


def _rows(args, model, report, transfer, start: int, pngs, npys, extra: dict) -> list[dict]:
    """One record per image of a chunk (images start..), transfer results nested."""
    labels = model.labels
    rows = report.records(labels)
    for j, row in enumerate(rows):
        i = start + j
        row = {"image": args.images[i], **row, **extra}
        if pngs[i] is not None:
            row["saved"] = str(pngs[i])
        if npys[i] is not None:
            row["npy"] = str(npys[i])
        if transfer is not None:
            t = transfer.records(labels)[j]
            row["transfer"] = {"model": t["model"], "success": t["success"],
                               "original": t["original"], "final": t["final"], "target": t["target"]}
        rows[j] = row
    return rows


def _print_rows(args, rows: list[dict], effort) -> None:
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
