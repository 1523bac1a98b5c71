"""``jaxviz bias``: texture-vs-shape bias of classifiers on cue-conflict images (Geirhos et al.,
ICLR 2019) made with our Gatys style transfer (``jaxviz.bias``)."""
from __future__ import annotations

import argparse
import json
import math

from jaxviz.cli import command
from jaxviz.cli._common import add_output, output_path
from jaxviz.errors import JaxvizError


@command("bias", "texture-vs-shape bias: cue-conflict images (shape of A, texture of B) and each model's decisions")
def bias(parser: argparse.ArgumentParser):
    parser.add_argument("--model", "-m", action="append", default=None, metavar="MODEL",
                        help="classifier to test (repeat for several; default: every available classifier)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="folder with one sub-folder per class, named by ImageNet class name or index "
                             "(several joined by +); default: the sample photos and their crops")
    parser.add_argument("--steps", type=int, default=60, help="Adam steps of the style transfer (default 60)")
    parser.add_argument("--size", type=int, default=112, help="image size in pixels (default 112)")
    parser.add_argument("--sources", type=int, default=4, help="most confident classes used (default 4)")
    parser.add_argument("--per-class", type=int, default=1, help="images per class (default 1)")
    parser.add_argument("--min-confidence", type=float, default=0.5,
                        help="every model's top-1 must be the source's class with this probability (default 0.5)")
    parser.add_argument("--style-weight", type=float, default=10.0,
                        help="style weight β, content weight 1 (default 10)")
    parser.add_argument("--lr", type=float, default=4.0, help="Adam step in VGG input units (default 4)")
    parser.add_argument("--texture-crop", type=float, default=1.0,
                        help="style image = this central fraction of the texture source (close-up; default 1 = whole)")
    parser.add_argument("--batch", type=int, default=None, help="pairs per batched optimisation (default all)")
    parser.add_argument("--json", action="store_true", help="print JSON: records (one per image) and bias per model")
    add_output(parser, required=True, help="output figure PNG: cue-conflict grid and shape-bias bars")

    def run(args: argparse.Namespace) -> int:
        out = output_path(args.out, (".png",))
        if args.steps <= 0 or args.steps > 100_000:
            raise JaxvizError(f"--steps must be between 1 and 100000, got {args.steps}")
        if not 32 <= args.size <= 1024:
            raise JaxvizError(f"--size must be between 32 and 1024, got {args.size}")
        if args.sources < 2:
            raise JaxvizError(f"--sources must be at least 2 (pairs need two classes), got {args.sources}")
        if args.per_class < 1:
            raise JaxvizError(f"--per-class must be at least 1, got {args.per_class}")
        if not 0.0 <= args.min_confidence <= 1.0:
            raise JaxvizError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
        if not (math.isfinite(args.style_weight) and args.style_weight >= 0):
            raise JaxvizError(f"--style-weight must be a finite number >= 0, got {args.style_weight}")
        if not (math.isfinite(args.lr) and args.lr > 0):
            raise JaxvizError(f"--lr must be a finite number > 0, got {args.lr}")
        if not 0.1 <= args.texture_crop <= 1.0:
            raise JaxvizError(f"--texture-crop must be in [0.1, 1], got {args.texture_crop}")
        if args.batch is not None and args.batch < 1:
            raise JaxvizError(f"--batch must be at least 1, got {args.batch}")

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
        candidates = (study_lib.candidate_images(args.size) if args.images is None
                      else study_lib.load_folder(args.images, args.size))
        sources = study_lib.select_sources(classifiers, candidates, min_confidence=args.min_confidence,
                                           per_class=args.per_class, max_classes=args.sources)
        classes = {s.classes for s in sources}
        if len(classes) < 2:
            where = args.images or "the sample photos"
            raise JaxvizError(f"only {len(classes)} class(es) of {where} are classified confidently "
                              f"(top-1 with p >= {args.min_confidence}) by {', '.join(names)} at {args.size} px; "
                              "need 2 (try another --size or a lower --min-confidence)")
        vgg = accelerate(load_model(study_lib.STYLE_NETWORK))
        from jaxviz.optimize import ProgressBar
        study = study_lib.bias_study(classifiers, vgg, sources, steps=args.steps, batch=args.batch,
                                     style_weight=args.style_weight, learning_rate=args.lr,
                                     texture_fraction=args.texture_crop,
                                     callbacks=(ProgressBar("cue-conflict"),))

        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from jaxviz.gallery.bias import study_figure
        from jaxviz.weights.tensorfile import atomic_write
        fig = study_figure(study)
        try:  # a temporary file in the target folder, renamed into place: never a half-written figure
            atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
        except OSError as e:
            raise JaxvizError(f"cannot write {out}: {e.strerror or e}") from None
        finally:
            plt.close(fig)
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
