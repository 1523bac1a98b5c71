"""``jaxviz saliency IMAGE... --method M``: attribution maps (gradients, guided backprop, CAM family,
occlusion), an image + overlay figure, the raw map as .npy, and deletion/insertion AUCs.

``--npy MAP.npy`` holds float32 (H, W) for one image, (N, H, W) for several, at the model's input
resolution: gradient methods give max over RGB of |gradient| (guided/deconv: of the modified
backward signal; integrated: of the attribution), CAM methods the non-negative map bilinearly
upsampled, occlusion the score drop per pixel averaged over the windows that cover it.
Only the paths given by --out/--npy are written.
"""
from __future__ import annotations

import argparse

from jaxviz.cli import command
from jaxviz.cli._common import add_images, add_model, add_output, load_inputs, load_model_arg, output_path

METHODS = ("vanilla", "smoothgrad", "integrated", "guided", "deconv", "cam", "gradcam", "gradcam++",
           "guided-gradcam", "occlusion")
LAYER_METHODS = ("gradcam", "gradcam++", "guided-gradcam")


def compute_map(method: str, model, x, target, *, layer: str | None = None, samples: int = 25,
                noise: float = 0.15, steps: int = 32, window: int = 16, stride: int = 8, fill: str = "mean",
                seed: int = 0, index=None):
    """(N, H, W) map of ``method`` for preprocessed ``x``; ``index`` (N,) classes/channels or None."""
    import jax

    from jaxviz import cam as camlib
    from jaxviz import saliency as sal
    from jaxviz.errors import JaxvizError
    from jaxviz.nonlinearities import fast_pool_model

    apply_fn, params = fast_pool_model(model).apply, model.params
    if method == "vanilla":
        return jax.jit(sal.vanilla_saliency, static_argnums=(0, 3))(apply_fn, params, x, target, index=index)
    if method == "smoothgrad":
        fn = jax.jit(sal.smoothgrad, static_argnums=(0, 3), static_argnames=("samples",))
        return fn(apply_fn, params, x, target, key=jax.random.key(seed), samples=samples, noise=noise, index=index)
    if method == "integrated":
        fn = jax.jit(sal.integrated_gradients, static_argnums=(0, 3), static_argnames=("steps",))
        return fn(apply_fn, params, x, target, steps=steps, index=index)
    if method == "guided":
        return jax.jit(sal.guided_backprop, static_argnums=(0, 3))(model, params, x, target, index=index)
    if method == "deconv":
        return jax.jit(sal.deconvnet, static_argnums=(0, 3))(model, params, x, target, index=index)
    if method == "cam":
        weights = camlib.cam_weights(model)
        return jax.jit(camlib.cam, static_argnums=(0,), static_argnames=("layer",))(
            apply_fn, params, x, layer=layer, weights=weights, index=index)
    if method in ("gradcam", "gradcam++"):
        fn = camlib.grad_cam if method == "gradcam" else camlib.grad_cam_plus_plus
        return jax.jit(fn, static_argnums=(0, 3), static_argnames=("layer",))(
            apply_fn, params, x, target, layer=layer, index=index)
    if method == "guided-gradcam":
        return jax.jit(camlib.guided_grad_cam, static_argnums=(0, 3), static_argnames=("layer",))(
            model, params, x, target, layer=layer, index=index)
    if method == "occlusion":
        try:
            from jaxviz.occlusion import occlusion_map
        except ImportError:
            raise JaxvizError("method occlusion is not available (jaxviz.occlusion is missing)") from None
        return occlusion_map(model.apply, params, x, target, window=window, stride=stride, fill=fill,
                             score=target.score if target.is_class else "logit", index=index,
                             incremental=True)  # exact, and 3-4x faster than the batched path
    raise JaxvizError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def _figure(images, maps, titles):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxviz.render import normalize, overlay

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3.1 * n), squeeze=False)
    for row, (image, heat, title) in enumerate(zip(images, maps, titles)):
        panels = [(image, "image"), (normalize(heat), "map"), (overlay(image, heat), "overlay")]
        for ax, (panel, name) in zip(axes[row], panels):
            ax.imshow(panel, cmap="jet" if panel.ndim == 2 else None)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(title if name == "image" else name, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


@command("saliency", "attribution maps: vanilla, smoothgrad, integrated, guided, deconv, cam, gradcam, "
                     "gradcam++, guided-gradcam, occlusion")
def saliency(parser: argparse.ArgumentParser):
    add_images(parser)
    add_model(parser)
    parser.add_argument("--method", default="vanilla", metavar="METHOD", help=" | ".join(METHODS) + " (default vanilla)")
    parser.add_argument("--target", default=None, metavar="CLASS|LAYER:CHANNEL[:Y:X]",
                        help="class index or name, or a neuron (default: the predicted class)")
    parser.add_argument("--score", default="logit", metavar="KIND", help="class score: logit | prob | logprob")
    parser.add_argument("--layer", default=None, help="layer for gradcam/gradcam++/guided-gradcam "
                        "(default: the model's last feature map); cam always uses the model's CAM layer")
    parser.add_argument("--window", type=int, default=16, help="occlusion window in pixels (default 16)")
    parser.add_argument("--stride", type=int, default=8, help="occlusion stride in pixels (default 8)")
    parser.add_argument("--fill", default="mean", help="occlusion fill: mean | grey | zeros | blur (default mean)")
    parser.add_argument("--samples", type=int, default=25, help="smoothgrad samples (default 25)")
    parser.add_argument("--noise", type=float, default=0.15, help="smoothgrad noise, fraction of the value range")
    parser.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (smoothgrad noise)")
    add_output(parser, help="figure PNG: image, map and overlay per image")
    parser.add_argument("--npy", default=None, metavar="MAP.npy",
                        help="write the map as float32 (H, W), or (N, H, W) for several images")
    parser.add_argument("--metrics", action="store_true",
                        help="print deletion/insertion AUC of the map (class targets)")

    def run(args: argparse.Namespace) -> int:
        from jaxviz.errors import JaxvizError
        if args.method not in METHODS:
            import difflib
            close = difflib.get_close_matches(args.method, METHODS, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise JaxvizError(f"unknown method {args.method!r}; use one of {', '.join(METHODS)}{hint}")
        out = output_path(args.out, suffixes=(".png",))
        npy = output_path(args.npy, suffixes=(".npy",))
        if args.fill not in ("mean", "grey", "zeros", "blur"):
            raise JaxvizError(f"unknown --fill {args.fill!r}; use mean, grey, zeros or blur")
        if args.method == "occlusion" and not (1 <= args.stride <= args.window):
            raise JaxvizError(f"--stride must be between 1 and --window ({args.window}), got {args.stride}")
        if not 1 <= args.samples <= 1000:
            raise JaxvizError(f"--samples must be between 1 and 1000, got {args.samples}")
        if not 1 <= args.steps <= 1000:
            raise JaxvizError(f"--steps must be between 1 and 1000, got {args.steps}")
        if args.noise < 0:
            raise JaxvizError(f"--noise must be >= 0, got {args.noise}")
        if args.layer is not None and args.method not in LAYER_METHODS:
            raise JaxvizError(f"--layer applies to {', '.join(LAYER_METHODS)}, not {args.method}")

        model = load_model_arg(args.model)
        spec = model.spec
        if args.method == "occlusion":
            size = spec.input_size
            if not 1 <= args.window <= size:
                raise JaxvizError(f"--window must be between 1 and the input size {size}, got {args.window}")
        if args.metrics:
            try:
                from jaxviz.metrics import deletion_insertion
            except ImportError:
                raise JaxvizError("--metrics is not available (jaxviz.metrics is missing)") from None

        from jaxviz.targets import parse_target
        target = parse_target(args.target, spec, score=args.score)
        layer = None
        if args.method == "cam":
            if spec.cam_layer is None:
                raise JaxvizError(f"model {spec.name} has no CAM layer; use gradcam")
            if not target.is_class:
                raise JaxvizError("cam explains a class; give a class --target (or use gradcam)")
            layer = spec.cam_layer
        elif args.method in LAYER_METHODS:
            layer = spec.resolve_layer(args.layer or spec.feature_layer)
            shape = model.layer_shapes()[layer]
            if len(shape) != 3:
                raise JaxvizError(f"layer {layer} has no spatial map (shape {shape}); pick a conv layer")
            if not target.is_class:
                order = spec.layer_names
                if order.index(target.layer) <= order.index(layer):
                    raise JaxvizError(f"neuron target {target.layer} must come after --layer {layer}")
        if args.metrics and not target.is_class:
            raise JaxvizError("--metrics needs a class target (AUCs use the class probability)")

        import jax.numpy as jnp
        import numpy as np

        from jaxviz.labels import imagenet_labels

        images = load_inputs(model, args.images, args.fit)
        x = model.preprocess(jnp.asarray(images))
        logits = model.apply(model.params, x)
        predicted = np.asarray(jnp.argmax(logits, axis=-1))
        index = None
        if target.is_class:
            index = jnp.asarray(predicted if target.index is None else np.full(len(images), target.index), jnp.int32)
        maps = np.asarray(compute_map(args.method, model, x, target, layer=layer, samples=args.samples,
                                      noise=args.noise, steps=args.steps, window=args.window, stride=args.stride,
                                      fill=args.fill, seed=args.seed, index=index), dtype=np.float32)
        labels = imagenet_labels() if spec.num_classes == 1000 else None
        titles = []
        for i, src in enumerate(args.images):
            what = (f"class {int(index[i])} {labels[int(index[i])] if labels else ''}".strip()
                    if target.is_class else target.describe())
            where = f" at {layer}" if layer else ""
            titles.append(f"{src}: {args.method}{where}\n{what}")
            print(f"{src}: {args.method}{where}, {what}; predicted {predicted[i]}"
                  f"{' ' + labels[predicted[i]] if labels else ''}; map range "
                  f"[{maps[i].min():.4g}, {maps[i].max():.4g}]")
        if args.metrics:
            result = deletion_insertion(model.apply, model.params, x, jnp.asarray(maps), index)
            for i, src in enumerate(args.images):
                print(f"{src}: deletion AUC {float(result['deletion_auc'][i]):.4f}  "
                      f"insertion AUC {float(result['insertion_auc'][i]):.4f}")
        if npy is not None:
            np.save(npy, maps[0] if len(args.images) == 1 else maps)
            print(f"wrote {npy}")
        if out is not None:
            fig = _figure(images, maps, titles)
            fig.savefig(out, dpi=100, bbox_inches="tight")
            print(f"wrote {out}")
        return 0
    return run
