"""``jaxviz scan DIR_OR_SAMPLES... --layers L... --out INDEX`` and ``jaxviz patches INDEX --layer L``."""
from __future__ import annotations

import argparse
from pathlib import Path

from jaxviz.cli import command
from jaxviz.cli._common import add_output, output_path
from jaxviz.errors import JaxvizError


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise JaxvizError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise JaxvizError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _index_out(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise JaxvizError(f"--out {out} exists and is not a folder")
    if not out.parent.is_dir():
        raise JaxvizError(f"output directory does not exist: {out.parent}")
    return out


@command("scan", "scan images for each channel's top-k activations and pooled features (writes an INDEX folder)")
def scan(parser: argparse.ArgumentParser):
    parser.add_argument("inputs", nargs="*", metavar="DIR_OR_IMAGE",
                        help="folders (recursive, any Pillow format), image files or sample names")
    parser.add_argument("--model", "-m", default=None,
                        help="model name (`jaxviz models`; default: first available of squeezenet1_1, efficientnet_lite0)")
    parser.add_argument("--layers", nargs="+", metavar="LAYER", help="layers to scan (names or aliases)")
    parser.add_argument("--topk", type=int, default=9, help="images kept per channel (default 9)")
    parser.add_argument("--out", "-o", required=True, help="INDEX folder to write (or resume)")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--fit", choices=["eval", "stretch", "crop"], default="eval",
                        help="eval (default): the model's standard evaluation transform (resize + centre crop); "
                             "stretch: resize straight to the input size; crop: as eval")
    parser.add_argument("--shard", default="0/1", help="scan only shard i of n (i/n) of the inputs, for multi-host scans")
    parser.add_argument("--merge", nargs="+", metavar="INDEX",
                        help="merge these shard indices into --out instead of scanning")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        out = _index_out(args.out)
        if args.merge:
            if args.inputs:
                raise JaxvizError("give either inputs to scan or --merge INDEX..., not both")
            from jaxviz.scan import merge_indices
            index = merge_indices(args.merge, out)
            print(f"merged {len(args.merge)} indices: {index.meta['count']} images -> {out}")
            return 0
        if not args.inputs:
            raise JaxvizError("give folders, image files or sample names to scan (or --merge INDEX...)")
        if not args.layers:
            raise JaxvizError("give the layers to scan with --layers")
        shard = _shard(args.shard)
        if args.topk < 1:
            raise JaxvizError(f"--topk must be at least 1, got {args.topk}")
        if args.batch < 1:
            raise JaxvizError(f"--batch must be at least 1, got {args.batch}")
        from jaxviz.accel import accelerate
        from jaxviz.scan import collect_sources, scan as run_scan
        from jaxviz.weights.store import default_model, load_model
        if args.size is not None and not 1 <= args.size <= 4096:
            raise JaxvizError(f"--size must be between 1 and 4096, got {args.size}")
        sources = collect_sources(args.inputs)
        model = accelerate(load_model(args.model or default_model()))
        for layer in args.layers:  # fail on a bad name before loading any image
            model.resolve_layer(layer)
        # The scan jits its step with model.compiler_options (set by accelerate).
        index = run_scan(model, sources, out, layers=args.layers, topk=args.topk, batch=args.batch,
                         input_size=args.size, fit=args.fit, shard=shard, progress=not args.no_progress)
        print(f"scanned {index.meta['count']} images with {model.name}, layers "
              f"{', '.join(index.meta['layers'])} -> {out}")
        return 0
    return run


@command("patches", "grid of the image patches that most activate chosen channels (from a scan INDEX)")
def patches(parser: argparse.ArgumentParser):
    parser.add_argument("index", metavar="INDEX", help="folder written by `jaxviz scan`")
    parser.add_argument("--layer", required=True, help="a scanned layer")
    parser.add_argument("--channels", type=int, nargs="+", required=True, help="channel numbers")
    parser.add_argument("--k", type=int, default=None, help="patches per channel (default: all in the index)")
    add_output(parser, required=True, help="output PNG")

    def run(args: argparse.Namespace) -> int:
        path = output_path(args.out)
        from jaxviz.accel import accelerate
        from jaxviz.images import save_image
        from jaxviz.patches import patch_grid
        from jaxviz.scan import read_index
        from jaxviz.weights.store import load_model
        if args.k is not None and args.k < 1:
            raise JaxvizError(f"--k must be at least 1, got {args.k}")
        index = read_index(args.index)
        model = accelerate(load_model(index.meta["model"]))
        save_image(patch_grid(model, index, args.layer, args.channels, k=args.k), path)
        print(f"wrote {path}")
        return 0
    return run
