"""``jaxviz scan DIR_OR_SAMPLES... --layers L... --out INDEX`` and ``jaxviz patches INDEX --layer L``."""
from __future__ import annotations

import argparse
from pathlib import Path

from jaxviz.cli import command
from jaxviz.cli._common import add_fit, add_options, add_output, options_for, output_path
from jaxviz.errors import JaxvizError
from jaxviz.techniques import TECHNIQUES


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise JaxvizError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise JaxvizError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _index_out(path: str) -> Path:
    from jaxviz.io import check_output_dir
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise JaxvizError(f"--out {out} exists and is not a folder")
    check_output_dir(out if out.is_dir() else out.parent)
    return out


@command("scan", "scan images for each channel's top-k activations and pooled features (writes an INDEX folder)")
def scan(parser: argparse.ArgumentParser):
    parser.add_argument("inputs", nargs="*", metavar="DIR_OR_IMAGE",
                        help="folders (recursive, any Pillow format), image files or sample names")
    parser.add_argument("--model", "-m", default=None,
                        help="model name (`jaxviz models`; default: first available of squeezenet1_1, efficientnet_lite0)")
    add_options(parser, [TECHNIQUES["scan"]])
    parser.add_argument("--out", "-o", required=True, help="INDEX folder to write (or resume)")
    add_fit(parser, "eval (default): the model's standard evaluation transform (resize + centre crop); "
                    "stretch: resize straight to the input size; crop: as eval")
    parser.add_argument("--shard", default="0/1", help="scan only shard i of n (i/n) of the inputs, for multi-host scans")
    parser.add_argument("--merge", nargs="+", metavar="INDEX",
                        help="merge these shard indices into --out instead of scanning")
    parser.add_argument("--wait", action="store_true",
                        help="if another scan is writing --out, wait for it instead of refusing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        out = _index_out(args.out)
        if args.merge:
            if args.inputs:
                raise JaxvizError("give either inputs to scan or --merge INDEX..., not both")
            from jaxviz.scan_index import merge_indices
            index = merge_indices(args.merge, out, wait=args.wait)
            print(f"merged {len(args.merge)} indices: {index.meta['count']} images -> {out}")
            return 0
        if not args.inputs:
            raise JaxvizError("give folders, image files or sample names to scan (or --merge INDEX...)")
        options = options_for(args, TECHNIQUES["scan"])
        if not options["layers"]:
            raise JaxvizError("give the layers to scan with --layers")
        shard = _shard(args.shard)
        from jaxviz.accel import accelerate
        from jaxviz.scan_index import collect_sources, scan as run_scan
        from jaxviz.weights.store import default_model, load_model
        sources = collect_sources(args.inputs)
        model = accelerate(load_model(args.model or default_model()))
        for layer in options["layers"]:  # fail on a bad name before loading any image
            model.resolve_layer(layer)
        # The scan jits its step with model.compiler_options (set by accelerate).
        index = run_scan(model, sources, out, fit=args.fit, shard=shard, progress=not args.no_progress,
                         wait=args.wait, **options)
        count = index.meta["count"]
        print(f"scanned {count} image{'' if count == 1 else 's'} with {model.name}, layers "
              f"{', '.join(index.meta['layers'])} -> {out}")
        return 0
    return run


@command("patches", "grid of the image patches that most activate chosen channels (from a scan INDEX)")
def patches(parser: argparse.ArgumentParser):
    parser.add_argument("index", metavar="INDEX", help="folder written by `jaxviz scan`")
    add_options(parser, [TECHNIQUES["patches"]])
    add_output(parser, required=True, help="output PNG")

    def run(args: argparse.Namespace) -> int:
        from jaxviz.accel import accelerate
        from jaxviz.images import save_image
        from jaxviz.scan_index import index_images, read_index
        from jaxviz.weights.store import load_model
        path = output_path(args.out)
        index = read_index(args.index)
        # --k up to what the index holds per channel (as neighbors' --k up to its images)
        options = options_for(args, TECHNIQUES["patches"], context={"topk": int(index.meta["topk"])})
        model = accelerate(load_model(index.meta["model"]))
        grid = TECHNIQUES["patches"].load()(model, index, options["layer"], options["channels"],
                                            images=index_images(index, model), k=options["k"])
        save_image(grid, path)
        print(f"wrote {path}")
        return 0
    return run
