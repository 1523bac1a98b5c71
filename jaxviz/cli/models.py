"""``jaxviz models``, ``jaxviz layers MODEL`` and ``jaxviz predict IMAGE...``."""
from __future__ import annotations

import argparse
import json

from jaxviz.cli import command
from jaxviz.cli._common import add_images, add_model, load_inputs, load_model_arg


@command("models", "list models: weight source, status, input size and preprocessing")
def models(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true", help="print JSON")

    def run(args: argparse.Namespace) -> int:
        from jaxviz.models.registry import MODELS
        from jaxviz.weights.sources import SOURCES
        from jaxviz.weights.store import status
        rows = [{"name": name, "status": status(name), "input_size": spec.input_size,
                 "classes": spec.num_classes, "preprocessing": spec.preprocessing.describe(),
                 "weights": SOURCES[name].description, "how_to_get": SOURCES[name].howto,
                 "description": spec.description} for name, spec in MODELS.items()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            print(f"{r['name']:<20} {r['status']:<11} {r['input_size']}px  {r['preprocessing']}")
            print(f"{'':<20} {r['description']}; weights: {r['weights']}")
            if r["status"] == "not ported":
                print(f"{'':<20} to port: {r['how_to_get']}")
        return 0
    return run


@command("layers", "list a model's named layers with output shape, stride and receptive field")
def layers(parser: argparse.ArgumentParser):
    parser.add_argument("model", help="model name")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the model's)")

    def run(args: argparse.Namespace) -> int:
        from jaxviz.errors import JaxvizError
        from jaxviz.models.registry import get_spec, layer_shapes
        spec = get_spec(args.model)
        size = args.size or spec.input_size
        if size < 32 or size > 4096:
            raise JaxvizError(f"--size must be between 32 and 4096, got {size}")
        shapes, fields = layer_shapes(spec, size), spec.receptive_fields(size)
        aliases = {}
        for alias, name in spec.aliases.items():
            aliases.setdefault(name, []).append(alias)
        print(f"{'layer':<14} {'alias':<12} {'kind':<16} {'output (HWC)':<16} {'stride':>6} {'RF':>5}")
        for stage in spec.stages:
            rf = fields[stage.name]
            print(f"{stage.name:<14} {','.join(aliases.get(stage.name, [])):<12} {stage.kind:<16} "
                  f"{'x'.join(map(str, shapes[stage.name])):<16} {rf.stride:>6} {rf.size:>5}")
        return 0
    return run


@command("predict", "print the top-k ImageNet classes of images")
def predict(parser: argparse.ArgumentParser):
    add_images(parser)
    add_model(parser)
    parser.add_argument("--topk", type=int, default=5, help="how many classes (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON: [{image, topk: [{index, label, prob}]}]")

    def run(args: argparse.Namespace) -> int:
        from jaxviz.classify import top_k
        from jaxviz.errors import JaxvizError
        from jaxviz.labels import imagenet_labels
        model = load_model_arg(args.model)
        if not 1 <= args.topk <= model.spec.num_classes:
            raise JaxvizError(f"--topk must be between 1 and {model.spec.num_classes}")
        images = load_inputs(model, args.images, args.fit)
        probs, indices = top_k(model.apply, model.params, model.preprocess(images), args.topk)
        labels = imagenet_labels()
        results = [{"image": src, "topk": [{"index": int(i), "label": labels[int(i)], "prob": float(p)}
                                           for p, i in zip(ps, ids)]}
                   for src, ps, ids in zip(args.images, probs, indices)]
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for r in results:
                print(f"{r['image']}  ({model.name})")
                for t in r["topk"]:
                    print(f"  {t['prob']:.3f}  {t['index']:>4}  {t['label']}")
        return 0
    return run
