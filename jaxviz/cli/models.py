"""``jaxviz models``, ``jaxviz layers MODEL`` and ``jaxviz predict IMAGE...``."""
from __future__ import annotations

import argparse
import json

from jaxviz.cli import command
from jaxviz.cli._common import (
    add_batch,
    add_images,
    add_model,
    add_option,
    add_options,
    chunks,
    load_inputs,
    load_model_arg,
    option_value,
    options_for,
)
from jaxviz.options import Option
from jaxviz.techniques import BATCH, TECHNIQUES

LAYERS_SIZE = Option("size", int, "input size (default: the model's)", lo=32, hi=4096)


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
        rows.append(_fast_style_row())
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            size = f"{r['input_size']}px" if r["input_size"] else "any  "
            print(f"{r['name']:<20} {r['status']:<11} {size}  {r['preprocessing']}")
            print(f"{'':<20} {r['description']}; weights: {r['weights']}")
            if r["status"] == "not ported":
                print(f"{'':<20} to port: {r['how_to_get']}")
        return 0
    return run


def _fast_style_row() -> dict:
    """The pretrained fast style-transfer network: not a registry model (no classes, no layers to
    explain), listed so that every network jaxviz ships shows its status in one place."""
    from jaxviz import fast_style_pretrained as fsp
    path = fsp.weights_path()
    ported = path.is_file() or path.with_suffix(".npz").is_file()
    return {"name": fsp.NAME, "status": "available" if ported else "not ported", "input_size": None,
            "classes": None, "preprocessing": "RGB [0,1]", "weights": f"{fsp.SOURCE} ({fsp.LICENCE})",
            "how_to_get": fsp.REPAIR.replace("re-port", "port"),
            "description": f"fast style transfer, {fsp.NUM_STYLES} styles (not a classifier: "
                           "`jaxviz fast-style apply --model multistyle26`)"}


@command("layers", "list a model's named layers with output shape, parameters, stride and receptive field")
def layers(parser: argparse.ArgumentParser):
    parser.add_argument("model", help="model name")
    add_option(parser, LAYERS_SIZE)

    def run(args: argparse.Namespace) -> int:
        import math

        import jax

        from jaxviz.models import bundled_model
        from jaxviz.models.registry import get_spec, init_params
        size = option_value(args, LAYERS_SIZE)
        spec = get_spec(args.model)
        # the model with abstract parameters: shapes only, no weights needed
        model = bundled_model(spec, jax.eval_shape(lambda: init_params(spec)))
        size = model.input_hw()[0] if size is None else size
        shapes, fields = model.layer_shapes(size), model.receptive_fields(size) or {}
        aliases = {}
        for alias, name in model.aliases.items():
            aliases.setdefault(name, []).append(alias)
        print(f"{'layer':<14} {'alias':<12} {'output (HWC)':<16} {'params':>9} {'stride':>6} {'RF':>5}")
        for name in model.layer_names:
            owned = model.layer_params(model.params, name)
            # trainable parameters, as torch counts them: BatchNorm's running statistics left out
            count = sum(math.prod(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(owned)[0]
                        if getattr(path[-1], "key", None) not in ("mean", "var")) if owned else 0
            rf = fields.get(name)
            print(f"{name:<14} {','.join(aliases.get(name, [])):<12} {'x'.join(map(str, shapes[name])):<16} "
                  f"{count:>9} {rf.stride if rf else '-':>6} {rf.size if rf else '-':>5}")
        return 0
    return run


@command("predict", "print the top-k ImageNet classes of images")
def predict(parser: argparse.ArgumentParser):
    add_images(parser)
    add_model(parser)
    add_options(parser, [TECHNIQUES["predict"]])
    add_batch(parser)
    parser.add_argument("--json", action="store_true", help="print JSON: [{image, topk: [{index, label, prob}]}]")

    def run(args: argparse.Namespace) -> int:
        import numpy as np

        from jaxviz.accel import xla
        options_for(args, TECHNIQUES["predict"])  # the static bounds, before loading anything
        option_value(args, BATCH)
        model = load_model_arg(args.model)  # accelerated once
        k = options_for(args, TECHNIQUES["predict"], context={"num_classes": model.num_classes})["k"]
        fn = xla.jit(lambda p, x: TECHNIQUES["predict"].load()(model, p, x, k), model.compiler_options)
        labels = model.labels or tuple(str(i) for i in range(model.num_classes))

        def predict(start: int, stop: int):
            probs, indices = fn(model.params, model.preprocess(load_inputs(model, args.images[start:stop], args.fit)))
            return np.asarray(probs), np.asarray(indices)

        parts = chunks(args, len(args.images), predict, "predict")
        probs, indices = np.concatenate([p for p, _ in parts]), np.concatenate([i for _, i in parts])
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
