"""``jaxviz saliency IMAGE... --method M``: attribution maps (gradients, input x gradient, guided
backprop, CAM family, occlusion), an image + overlay figure, the map or the signed attribution as
.npy, and deletion/insertion AUCs.

``--npy MAP.npy`` holds float32 (H, W) for one image, (N, H, W) for several, at the model's input
resolution: gradient methods give max over RGB of |gradient| (inputxgrad: of x * gradient;
guided/deconv: of the modified backward signal; integrated: of the attribution; smoothgrad: of the
mean noisy gradient), CAM methods the map upsampled (non-negative unless ``--no-relu``; at the
layer's own resolution (h, w) with ``--resize none``), occlusion the score drop per pixel averaged
over the windows that cover it. With ``--signed`` the pixel-attribution methods write instead the
SIGNED attribution in model-input space, NHWC: (H, W, 3) for one image, (N, H, W, 3) for several
(Captum's layout is (N, 3, H, W): transpose). Only the paths given by --out/--npy are written
(through a temporary file in the same folder, renamed when complete).

Peer conventions (defaults are the papers'; see ``jaxviz.saliency`` and ``jaxviz.cam``):
``--no-relu`` and ``--resize none`` give Captum's ``LayerGradCam`` defaults; ``--resize nearest``
with guided-gradcam gives Captum's ``GuidedGradCam``; ``--noise-std S --samples 5`` gives Captum's
``NoiseTunnel(Saliency(abs=False))`` mean gradient; ``--method inputxgrad`` its ``InputXGradient``.

The model is loaded once and accelerated once (``jaxviz.accel.accelerate``: the fast max-pool
backward and XLA-CPU's Eigen convolutions where they help); each method is one jitted call with the
model's compiler options. Noise for smoothgrad comes from one key per image (``--seed``), so an
image's map does not depend on the other images given.
"""
from __future__ import annotations

import argparse
import math
import os

from jaxviz.cli import command
from jaxviz.cli._common import add_images, add_model, add_output, load_inputs, load_model_arg, output_path

METHODS = ("vanilla", "inputxgrad", "smoothgrad", "integrated", "guided", "deconv", "cam", "gradcam",
           "gradcam++", "guided-gradcam", "occlusion")
LAYER_METHODS = ("gradcam", "gradcam++", "guided-gradcam")
CAM_METHODS = ("cam", "gradcam", "gradcam++", "guided-gradcam")
RELU_METHODS = ("cam", "gradcam", "gradcam++")
# methods with a signed (N, H, W, 3) attribution behind their map
SIGNED_METHODS = ("vanilla", "inputxgrad", "smoothgrad", "integrated", "guided", "deconv", "guided-gradcam")
RESIZES = {"bilinear": "bilinear", "nearest": "nearest", "none": None}


def _technique(method: str, *, layer=None, samples=25, noise=0.15, noise_std=None, steps=32, relu=True,
               resize="bilinear", weights=None):
    """(fn(model, params, x, target, index, key), signed): ``fn`` returns the signed (N, H, W, 3)
    attribution when ``signed``, else the (N, H, W) / (N, h, w) map."""
    from jaxviz import cam as camlib
    from jaxviz import saliency as sal

    if method == "vanilla":
        return (lambda m, p, x, t, i, k: sal.gradients(m, p, x, t, index=i)), True
    if method == "inputxgrad":
        return (lambda m, p, x, t, i, k: sal.input_x_gradient(m, p, x, t, index=i)), True
    if method == "smoothgrad":
        return (lambda m, p, x, t, i, k: sal.smoothgrad_gradients(
            m, p, x, t, key=k, samples=samples, noise=noise, noise_std=noise_std, index=i)), True
    if method == "integrated":
        return (lambda m, p, x, t, i, k: sal.integrated_gradients_attributions(
            m, p, x, t, steps=steps, index=i)), True
    if method == "guided":
        return (lambda m, p, x, t, i, k: sal.guided_gradients(m, p, x, t, index=i)), True
    if method == "deconv":
        return (lambda m, p, x, t, i, k: sal.deconvnet_gradients(m, p, x, t, index=i)), True
    if method == "guided-gradcam":
        return (lambda m, p, x, t, i, k: camlib.guided_grad_cam_attributions(
            m, p, x, t, layer=layer, index=i, resize=resize)), True
    if method == "cam":
        return (lambda m, p, x, t, i, k: camlib.cam(m, p, x, t, layer=layer, weights=weights, index=i,
                                                    relu=relu, resize=resize)), False
    if method in ("gradcam", "gradcam++"):
        fn = camlib.grad_cam if method == "gradcam" else camlib.grad_cam_plus_plus
        return (lambda m, p, x, t, i, k: fn(m, p, x, t, layer=layer, index=i, relu=relu, resize=resize)), False
    from jaxviz.errors import JaxvizError
    raise JaxvizError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def compute_map(method: str, model, x, target, *, layer: str | None = None, samples: int = 25,
                noise: float = 0.15, noise_std: float | None = None, steps: int = 32, window: int = 16,
                stride: int = 8, fill: str = "mean", seed: int = 0, index=None, relu: bool = True,
                resize: str | None = "bilinear", signed: bool = False):
    """``method``'s result for preprocessed ``x`` (N, H, W, 3) on an accelerated ``model``.

    Returns (map, attribution): the (N, H, W) map (CAM methods with ``resize=None``: (N, h, w))
    and, when ``signed``, the signed (N, H, W, 3) attribution (else None). ``index`` (N,)
    classes/channels or None.
    """
    import jax

    from jaxviz.accel import xla
    from jaxviz.errors import JaxvizError
    from jaxviz.saliency import saliency_map

    params = model.params
    if method == "occlusion":
        try:
            from jaxviz.occlusion import occlusion_map
        except ImportError:
            raise JaxvizError("method occlusion is not available (jaxviz.occlusion is missing)") from None
        maps = occlusion_map(model, params, x, target, window=window, stride=stride, fill=fill,
                             score=target.score if target.is_class else "logit", index=index,
                             incremental=True)  # exact, and 3-4x faster than the batched path
        return maps, None
    weights = None
    if method == "cam":
        from jaxviz.cam import cam_weights
        weights = cam_weights(model, params, layer)
    fn, attributes = _technique(method, layer=layer, samples=samples, noise=noise, noise_std=noise_std,
                                steps=steps, relu=relu, resize=resize, weights=weights)
    if attributes:
        def run(m, p, x, t, i, k):
            a = fn(m, p, x, t, i, k)
            return (saliency_map(a), a) if signed else (saliency_map(a), None)
    else:
        def run(m, p, x, t, i, k):
            return fn(m, p, x, t, i, k), None
    jitted = xla.jit(run, model.compiler_options, static_argnums=(0, 3))
    return jitted(model, params, x, target, index, jax.random.key(seed))


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


def _write(path, save) -> None:
    """``save(file)`` into a temporary file next to ``path``, then rename; nothing is left behind
    on failure (a read-only folder or a full disk is one error line)."""
    from jaxviz.errors import JaxvizError
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            save(f)
        os.replace(tmp, path)
    except OSError as e:
        raise JaxvizError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _finite(name: str, value: float | None, positive: bool = False) -> None:
    from jaxviz.errors import JaxvizError
    if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise JaxvizError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")


@command("saliency", "attribution maps: vanilla, inputxgrad, smoothgrad, integrated, guided, deconv, cam, "
                     "gradcam, gradcam++, guided-gradcam, occlusion")
def saliency(parser: argparse.ArgumentParser):
    add_images(parser)
    add_model(parser)
    parser.add_argument("--method", default="vanilla", metavar="METHOD",
                        help=" | ".join(METHODS) + " (default vanilla)")
    parser.add_argument("--target", default=None, metavar="CLASS|LAYER:CHANNEL[:Y:X]",
                        help="class index or name, or a neuron (default: the predicted class)")
    parser.add_argument("--score", default="logit", metavar="KIND", help="class score: logit | prob | logprob")
    parser.add_argument("--layer", default=None, help="layer for gradcam/gradcam++/guided-gradcam "
                        "(default: the model's last feature map); cam always uses the model's CAM layer")
    parser.add_argument("--no-relu", dest="relu", action="store_false",
                        help="cam/gradcam/gradcam++: keep the signed map (Captum's LayerGradCam default; "
                             "default: ReLU, as the papers and pytorch-grad-cam)")
    parser.add_argument("--resize", default=None, choices=tuple(RESIZES), metavar="MODE",
                        help="CAM methods: upsample the map bilinear (default; pytorch-grad-cam), nearest "
                             "(Captum's interpolate/GuidedGradCam) or none (the layer's own resolution, "
                             "Captum's LayerGradCam; not for guided-gradcam)")
    parser.add_argument("--window", type=int, default=16, help="occlusion window in pixels (default 16)")
    parser.add_argument("--stride", type=int, default=8, help="occlusion stride in pixels (default 8)")
    parser.add_argument("--fill", default="mean", help="occlusion fill: mean | grey | zeros | blur (default mean)")
    parser.add_argument("--samples", type=int, default=25, help="smoothgrad samples (default 25)")
    parser.add_argument("--noise", type=float, default=None,
                        help="smoothgrad noise std as a fraction of each image's value range (default 0.15, "
                             "Smilkov et al.)")
    parser.add_argument("--noise-std", type=float, default=None,
                        help="smoothgrad noise std in model-input units instead (Captum's stdevs)")
    parser.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (smoothgrad noise)")
    add_output(parser, help="figure PNG: image, map and overlay per image")
    parser.add_argument("--npy", default=None, metavar="MAP.npy",
                        help="write the map as float32 (H, W), or (N, H, W) for several images")
    parser.add_argument("--signed", action="store_true",
                        help="--npy holds the signed attribution (H, W, 3) / (N, H, W, 3) in model-input "
                             f"space instead of the map ({', '.join(SIGNED_METHODS)})")
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
        if out is not None and npy is not None and out.resolve() == npy.resolve():
            raise JaxvizError("--out and --npy must be different files")
        if args.fill not in ("mean", "grey", "zeros", "blur"):
            raise JaxvizError(f"unknown --fill {args.fill!r}; use mean, grey, zeros or blur")
        if args.method == "occlusion" and not (1 <= args.stride <= args.window):
            raise JaxvizError(f"--stride must be between 1 and --window ({args.window}), got {args.stride}")
        if not 1 <= args.samples <= 1000:
            raise JaxvizError(f"--samples must be between 1 and 1000, got {args.samples}")
        if not 1 <= args.steps <= 1000:
            raise JaxvizError(f"--steps must be between 1 and 1000, got {args.steps}")
        _finite("--noise", args.noise)
        _finite("--noise-std", args.noise_std)
        if args.noise is not None and args.noise_std is not None:
            raise JaxvizError("give --noise (relative) or --noise-std (absolute), not both")
        if args.noise_std is not None and args.method != "smoothgrad":
            raise JaxvizError(f"--noise-std applies to smoothgrad, not {args.method}")
        if args.layer is not None and args.method not in LAYER_METHODS:
            raise JaxvizError(f"--layer applies to {', '.join(LAYER_METHODS)}, not {args.method}")
        if not args.relu and args.method not in RELU_METHODS:
            raise JaxvizError(f"--no-relu applies to {', '.join(RELU_METHODS)}, not {args.method}")
        if args.resize is not None and args.method not in CAM_METHODS:
            raise JaxvizError(f"--resize applies to {', '.join(CAM_METHODS)}, not {args.method}")
        if args.resize == "none" and args.method == "guided-gradcam":
            raise JaxvizError("guided-gradcam needs a full-resolution Grad-CAM: --resize bilinear or nearest")
        if args.resize == "none" and args.metrics:
            raise JaxvizError("--metrics needs maps at the input resolution; drop --resize none")
        if args.signed and args.method not in SIGNED_METHODS:
            hint = "; for a signed CAM use --no-relu" if args.method in RELU_METHODS else ""
            raise JaxvizError(f"--signed applies to {', '.join(SIGNED_METHODS)}, not {args.method}{hint}")
        if args.signed and npy is None:
            raise JaxvizError("--signed describes what --npy holds: give --npy")
        noise = 0.15 if args.noise is None else args.noise
        resize = RESIZES[args.resize or "bilinear"]

        from jaxviz.accel import accelerate
        model = accelerate(load_model_arg(args.model))
        if args.method == "occlusion":
            size = min(model.input_hw())
            if not 1 <= args.window <= size:
                raise JaxvizError(f"--window must be between 1 and the input size {size}, got {args.window}")
        if args.metrics:
            try:
                from jaxviz.metrics import deletion_insertion
            except ImportError:
                raise JaxvizError("--metrics is not available (jaxviz.metrics is missing)") from None

        from jaxviz.targets import parse_target
        target = parse_target(args.target, model, score=args.score)
        layer = None
        if args.method == "cam":
            if model.cam_layer is None:
                raise JaxvizError(f"model {model.name} has no CAM layer; use gradcam")
            if not target.is_class:
                raise JaxvizError("cam explains a class; give a class --target (or use gradcam)")
            layer = model.cam_layer
        elif args.method in LAYER_METHODS:
            layer = model.resolve_layer(args.layer or model.feature_layer)
            shape = model.layer_shapes()[layer]
            if len(shape) != 3:
                raise JaxvizError(f"layer {layer} has no spatial map (shape {shape}); pick a conv layer")
            if not target.is_class:
                order = model.layer_names
                if target.layer in order and layer in order and order.index(target.layer) <= order.index(layer):
                    raise JaxvizError(f"neuron target {target.layer} must come after --layer {layer}")
        if args.metrics and not target.is_class:
            raise JaxvizError("--metrics needs a class target (AUCs use the class probability)")

        import jax.numpy as jnp
        import numpy as np

        from jaxviz.accel import xla

        images = load_inputs(model, args.images, args.fit)
        x = model.preprocess(jnp.asarray(images))
        logits = xla.jit(lambda p, x: model.apply(p, x), model.compiler_options)(model.params, x)
        predicted = np.asarray(jnp.argmax(logits, axis=-1))
        index = None
        if target.is_class:
            index = jnp.asarray(predicted if target.index is None else np.full(len(images), target.index), jnp.int32)
        maps, signed = compute_map(args.method, model, x, target, layer=layer, samples=args.samples, noise=noise,
                                   noise_std=args.noise_std, steps=args.steps, window=args.window,
                                   stride=args.stride, fill=args.fill, seed=args.seed, index=index,
                                   relu=args.relu, resize=resize, signed=args.signed)
        maps = np.asarray(maps, dtype=np.float32)
        labels = model.labels
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
            result = deletion_insertion(model, model.params, x, jnp.asarray(maps), index)
            for i, src in enumerate(args.images):
                print(f"{src}: deletion AUC {float(result['deletion_auc'][i]):.4f}  "
                      f"insertion AUC {float(result['insertion_auc'][i]):.4f}")
        if npy is not None:
            array = np.asarray(signed, dtype=np.float32) if args.signed else maps
            _write(npy, lambda f: np.save(f, array[0] if len(args.images) == 1 else array))
            print(f"wrote {npy}" + (" (signed attribution, NHWC)" if args.signed else ""))
        if out is not None:
            fig = _figure(images, maps, titles)
            _write(out, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
            print(f"wrote {out}")
        return 0
    return run
