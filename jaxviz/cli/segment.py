"""``jaxviz segment IMAGE --model M --out OVERLAY.png [--mask MASK.png]``: saliency -> object mask.

The saliency map is computed at the model's input size (image stretched), resized to the image's
own resolution, and cut with GrabCut-style colour models + graph cut (``jaxviz.segment``,
Simonyan et al. 2014 §3.1). Writes exactly the overlay (``--out``) and, if given, the mask
(``--mask``, white = object), both at the image's original resolution.
"""
from __future__ import annotations

import argparse

from jaxviz.cli import command
from jaxviz.cli._common import add_model, load_model_arg, output_path

METHODS = ("vanilla", "inputxgrad", "smoothgrad", "integrated", "guided", "gradcam")


def saliency_maps(method: str, model, x, target, *, seed: int = 0):
    """(N, H, W) maps of ``method`` (a name in METHODS) from ``jaxviz.saliency`` / ``jaxviz.cam``,
    one jitted call on an accelerated ``model`` (``jaxviz.accel.accelerate``)."""
    import jax

    from jaxviz import saliency
    from jaxviz.accel import xla
    from jaxviz.cam import grad_cam

    fns = {
        "vanilla": lambda m, p, x, t, k: saliency.vanilla_saliency(m, p, x, t),
        "inputxgrad": lambda m, p, x, t, k: saliency.input_x_gradient_map(m, p, x, t),
        "smoothgrad": lambda m, p, x, t, k: saliency.smoothgrad(m, p, x, t, key=k),
        "integrated": lambda m, p, x, t, k: saliency.integrated_gradients(m, p, x, t),
        "guided": lambda m, p, x, t, k: saliency.guided_backprop(m, p, x, t),
        "gradcam": lambda m, p, x, t, k: grad_cam(m, p, x, t),
    }
    fn = xla.jit(fns[method], model.compiler_options, static_argnums=(0, 3))
    return fn(model, model.params, x, target, jax.random.key(seed))


@command("segment", "segment the object in an image from its saliency map (GMM colour models + graph cut)")
def segment(parser: argparse.ArgumentParser):
    parser.add_argument("image", metavar="IMAGE", help="image file or sample name (chelsea, coffee, ...)")
    add_model(parser)
    parser.add_argument("--method", default="vanilla", metavar="METHOD",
                        help=f"saliency method: {' | '.join(METHODS)} (default vanilla)")
    parser.add_argument("--target", default=None, help="class index or name (default: the predicted class)")
    parser.add_argument("--out", "-o", required=True, help="overlay PNG (object tinted, background dimmed)")
    parser.add_argument("--mask", default=None, help="also write the mask PNG (white = object)")
    parser.add_argument("--fg-fraction", type=float, default=0.05,
                        help="share of most salient pixels seeding the object (default 0.05)")
    parser.add_argument("--bg-fraction", type=float, default=0.3,
                        help="share of least salient pixels seeding the background (default 0.3)")
    parser.add_argument("--iterations", type=int, default=5, help="GMM refit + cut rounds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (SmoothGrad noise, GMM init)")

    def run(args: argparse.Namespace) -> int:
        from jaxviz.errors import JaxvizError
        if args.method not in METHODS:
            raise JaxvizError(f"unknown method {args.method!r}; use one of {', '.join(METHODS)}")
        out = output_path(args.out, suffixes=(".png",))
        mask_path = output_path(args.mask, suffixes=(".png",))
        if mask_path is not None and mask_path.resolve() == out.resolve():
            raise JaxvizError("--mask and --out must be different files")
        if not (0 < args.fg_fraction < 1 and 0 < args.bg_fraction < 1
                and args.fg_fraction + args.bg_fraction < 1):
            raise JaxvizError("--fg-fraction and --bg-fraction must be in (0, 1) with a sum below 1")
        if not 1 <= args.iterations <= 50:
            raise JaxvizError(f"--iterations must be between 1 and 50, got {args.iterations}")

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
        heat = np.asarray(saliency_maps(args.method, model, x, target, seed=args.seed))[0]
        heat = resize_map(heat, image.shape[:2])
        mask = segment_from_saliency(image, heat, fg_fraction=args.fg_fraction,
                                     bg_fraction=args.bg_fraction, iterations=args.iterations,
                                     seed=args.seed)
        save_image(mask_overlay(image, mask), out)
        if mask_path is not None:
            save_image(np.repeat(mask[..., None].astype(np.float32), 3, axis=-1), mask_path)
        cls = target.index if target.index is not None else int(np.argmax(model.apply(model.params, x)[0]))
        name = f" ({model.labels[cls]})" if model.labels else ""
        print(f"{args.image}: {args.method} saliency for class {cls}{name}, "
              f"object = {100 * mask.mean():.1f}% of the image -> {out}"
              + (f", mask {mask_path}" if mask_path else ""))
        return 0
    return run
