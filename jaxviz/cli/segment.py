"""``jaxviz segment IMAGE --model M --out OVERLAY.png [--mask MASK.png]``: saliency -> object mask.

The saliency map is computed at the model's input size (image stretched), resized to the image's
own resolution, and cut with GrabCut-style colour models + graph cut (``jaxviz.segment``,
Simonyan et al. 2014 §3.1). Writes exactly the overlay (``--out``) and, if given, the mask
(``--mask``, white = object), both at the image's original resolution.
"""
from __future__ import annotations

import argparse

from jaxviz.cli import command
from jaxviz.cli._common import add_model, add_options, load_model_arg, options_for, output_path
from jaxviz.errors import JaxvizError
from jaxviz.techniques import TECHNIQUES

METHODS = ("vanilla", "inputxgrad", "smoothgrad", "integrated", "guided", "gradcam")


def saliency_maps(method: str, model, x, target, *, seed: int = 0):
    """((N, H, W) maps, (N,) classes explained) of ``method`` (a saliency technique of the
    registry, in METHODS) at its defaults: one jitted call on an accelerated ``model``
    (``jaxviz.cli.attribution.compute_map``), which also predicts the class when ``target`` has none."""
    from jaxviz.cli.attribution import compute_map
    maps, _, index, _ = compute_map(method, model, x, target, seed=seed)
    return maps, index


@command("segment", "segment the object in an image from its saliency map (GMM colour models + graph cut)")
def segment(parser: argparse.ArgumentParser):
    parser.add_argument("image", metavar="IMAGE", help="image file or sample name (chelsea, coffee, ...)")
    add_model(parser)
    parser.add_argument("--method", default="vanilla", metavar="METHOD",
                        help=f"saliency method: {' | '.join(METHODS)} (default vanilla)")
    parser.add_argument("--target", default=None, help="class index or name (default: the predicted class)")
    parser.add_argument("--out", "-o", required=True, help="overlay PNG (object tinted, background dimmed)")
    parser.add_argument("--mask", default=None, help="also write the mask PNG (white = object)")
    add_options(parser, [TECHNIQUES["segment"]])

    def run(args: argparse.Namespace) -> int:
        if args.method not in METHODS:
            import difflib
            close = difflib.get_close_matches(args.method, METHODS, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise JaxvizError(f"unknown method {args.method!r}; use one of {', '.join(METHODS)}{hint}")
        options = options_for(args, TECHNIQUES["segment"])
        out = output_path(args.out, suffixes=(".png",))
        mask_path = output_path(args.mask, suffixes=(".png",))
        if mask_path is not None and mask_path.resolve() == out.resolve():
            raise JaxvizError("--mask and --out must be different files")
        if options["fg_fraction"] + options["bg_fraction"] >= 1:
            raise JaxvizError("--fg-fraction and --bg-fraction must be in (0, 1) with a sum below 1")

        import numpy as np

        from jaxviz.accel import accelerate
        from jaxviz.images import fit_image, load_image, save_image
        from jaxviz.render import resize_map
        from jaxviz.segment import mask_overlay, segment_from_saliency
        from jaxviz.targets import parse_target

        model = accelerate(load_model_arg(args.model))
        target = parse_target(args.target, model)
        if not target.is_class:
            raise JaxvizError("segment explains a class: give --target as a class index or name")
        image = load_image(args.image)
        # stretched, so that the map covers the whole image and resizes back onto it
        x = model.preprocess(fit_image(image, model.input_hw(), "stretch")[None])
        heat, index = saliency_maps(args.method, model, x, target, seed=options["seed"])
        heat, cls = np.asarray(heat)[0], int(np.asarray(index)[0])
        heat = resize_map(heat, image.shape[:2])
        mask = segment_from_saliency(image, heat, **options)
        save_image(mask_overlay(image, mask), out)
        if mask_path is not None:
            save_image(np.repeat(mask[..., None].astype(np.float32), 3, axis=-1), mask_path)
        name = f" ({model.labels[cls]})" if model.labels else ""
        print(f"{args.image}: {args.method} saliency for class {cls}{name}, "
              f"object = {100 * mask.mean():.1f}% of the image -> {out}"
              + (f", mask {mask_path}" if mask_path else ""))
        return 0
    return run
