"""``jaxviz bias``: texture-vs-shape bias of classifiers on cue-conflict images (Geirhos et al.,
ICLR 2019) made with our Gatys style transfer (``jaxviz.bias``)."""
from __future__ import annotations

import argparse
import json

from jaxviz.cli import command
from jaxviz.cli._common import add_options, add_output, options_for, output_path, save_figure
from jaxviz.errors import JaxvizError
from jaxviz.techniques import TECHNIQUES


@command("bias", "texture-vs-shape bias: cue-conflict images (shape of A, texture of B) and each model's decisions")
def bias(parser: argparse.ArgumentParser):
    parser.add_argument("--model", "-m", action="append", default=None, metavar="MODEL",
                        help="classifier to test (repeat for several; default: every available classifier)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="folder with one sub-folder per class, named by ImageNet class name or index "
                             "(several joined by +); default: the sample photos and their crops")
    add_options(parser, [TECHNIQUES["bias"]])
    parser.add_argument("--json", action="store_true", help="print JSON: records (one per image) and bias per model")
    add_output(parser, required=True, help="output figure PNG: cue-conflict grid and shape-bias bars")

    def run(args: argparse.Namespace) -> int:
        options = options_for(args, TECHNIQUES["bias"])
        out = output_path(args.out, (".png",))
        size, min_confidence = options.pop("size"), options.pop("min_confidence")
        n_sources, per_class = options.pop("sources"), options.pop("per_class")

        from jaxviz import bias as study_lib
        from jaxviz.accel import accelerate
        from jaxviz.models.registry import MODELS
        from jaxviz.weights.store import available_models, load_model
        # The default list reads the registry's facts: no weights are loaded to find classifiers.
        names = list(dict.fromkeys(args.model or [])) or [
            n for n in available_models() if MODELS[n].num_classes]
        if not names:
            raise JaxvizError("no classifier weights available; see `jaxviz models`")
        classifiers = [accelerate(load_model(n)) for n in names]
        for m in classifiers:
            if not m.num_classes:
                raise JaxvizError(f"model {m.name} has no classifier; use a classification model here")
        from jaxviz import datasets
        candidates = (datasets.candidate_images(size) if args.images is None
                      else datasets.load_folder(args.images, size))
        sources = study_lib.select_sources(classifiers, candidates, min_confidence=min_confidence,
                                           per_class=per_class, max_classes=n_sources)
        classes = {s.classes for s in sources}
        if len(classes) < 2:
            where = args.images or "the sample photos"
            raise JaxvizError(f"only {len(classes)} class(es) of {where} are classified confidently "
                              f"(top-1 with p >= {min_confidence}) by {', '.join(names)} at {size} px; "
                              "need 2 (try another --size or a lower --min-confidence)")
        vgg = accelerate(load_model(study_lib.STYLE_NETWORK))
        from jaxviz.optimize import ProgressBar
        study = study_lib.bias_study(classifiers, vgg, sources, callbacks=(ProgressBar("cue-conflict"),),
                                     **options)

        import matplotlib
        matplotlib.use("Agg")

        from jaxviz.gallery.bias import study_figure
        # a temporary file in the target folder, renamed into place: never a half-written figure
        save_figure(study_figure(study), out)
        if args.json:
            print(json.dumps({"settings": study.settings, "sources": [
                {"name": s.name, "class": s.label, "classes": list(s.classes), "confidence": s.confidence}
                for s in study.sources], "records": study.records,
                "bias": {m: c.as_dict() for m, c in study.bias.items()},
                "bias_top1": {m: c.as_dict() for m, c in study.bias_top1.items()},
                "seconds": round(study.seconds, 2)}, indent=2))
            return 0
        print(f"{out}  {len(study.pairs)} cue-conflict images from {len(sources)} sources in {study.seconds:.1f} s")
        for m, c in study.bias.items():
            t = study.bias_top1[m]
            print(f"  {m:<20} shape bias {c.text} (shape {c.shape}, texture {c.texture}, other {c.other} of "
                  f"{c.total}); unrestricted top-1: {t.text} "
                  f"(shape {t.shape}, texture {t.texture}, other {t.other})")
        return 0
    return run
