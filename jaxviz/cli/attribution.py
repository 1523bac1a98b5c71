"""``jaxviz saliency IMAGE... --method M``: attribution maps (gradients, input x gradient, guided
backprop, CAM family, occlusion), an image + overlay figure, the map or the signed attribution as
.npy, and deletion/insertion AUCs.

The methods and their options come from the technique registry (``jaxviz.techniques``, command
"saliency"): ``--method`` looks the technique up and calls ``technique.load()(model, params, x,
target, **options)``; the flags are generated from the registry's options and validated there.

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

Memory: images are loaded and explained ``--batch`` at a time (default 16; smoothgrad's and IG's
copies count: ``--batch`` images x copies per network call stay about ``--batch``), with a progress
bar; ``--npy`` is streamed to its file chunk by chunk, so memory does not grow with the number of
images (only the figure, ``--out``, keeps every image). The model is loaded once and accelerated
once (``jaxviz.accel.accelerate``); each method is one jitted call per chunk shape with the model's
compiler options, which also gives each image's predicted class (XLA shares the forward pass;
occlusion predicts in a call of its own). Noise for smoothgrad comes from one key per image
(``--seed``), so an image's map does not depend on the other images given or on the chunking.
"""
from __future__ import annotations

import argparse

from jaxviz.cli import command
from jaxviz.cli._common import (
    add_batch,
    add_images,
    add_model,
    add_options,
    add_output,
    check_memory_for,
    chunks,
    given,
    load_inputs,
    load_model_arg,
    option_value,
    options_for,
    output_path,
)
from jaxviz.errors import JaxvizError
from jaxviz.techniques import BATCH, get, techniques

TECHNIQUES = techniques("saliency")
METHODS = tuple(t.name for t in TECHNIQUES)
SIGNED_METHODS = tuple(t.name for t in TECHNIQUES if t.output == "attribution")
LAYER_METHODS = tuple(t.name for t in TECHNIQUES if "layer" in t.needs and any(o.name == "layer" and o.cli
                                                                               for o in t.options))
RELU_METHODS = tuple(t.name for t in TECHNIQUES if any(o.name == "relu" for o in t.options))


def compute_map(method: str, model, x, target, *, index=None, seed: int = 0, signed: bool = False,
                batch: int | None = None, **options):
    """``method``'s result for preprocessed ``x`` (N, H, W, 3) on an accelerated ``model``.

    ``options``: the technique's keyword arguments (registry names; defaults filled in here).
    ``batch``: images x copies per network call (sets smoothgrad's / IG's ``chunk``).
    ``index`` (N,) classes/channels, or None: the target's own, else each image's predicted class.
    Returns (map, attribution, index, predicted): the (N, H, W) map (CAM methods with
    ``resize=None``: (N, h, w)); when ``signed``, the signed (N, H, W, 3) attribution (else None);
    the (N,) int32 classes/channels explained; and for a classifier each image's (N,) int32
    predicted class (else None); negative classes (counted from the end) come back as
    0..classes-1. The prediction is part of the map's compiled program, whose forward pass XLA
    shares with the technique's (occlusion: a prediction program of its own).
    ``target``: a ``Target``, a class index or None (the predicted class).
    """
    import jax

    from jaxviz.targets import as_target
    target = as_target(target)

    technique = get(method, "saliency")
    kwargs = {**technique.defaults(), **technique.check(**options)}
    kwargs.pop("seed", None)
    n = x.shape[0]
    if batch is not None and "chunk" in kwargs and method != "occlusion":
        kwargs["chunk"] = max(1, batch // max(n, 1))
    fn = technique.load()
    params = model.params
    if method == "occlusion":
        predicted = _predict(model)(params, x) if model.num_classes is not None else None
        if index is None and target.is_class and target.index is None:
            index = predicted
        # exact, and 3-4x faster than the batched path
        result = fn(model, params, x, target, index=index, incremental=True,
                    score=target.score if target.is_class else "logit", **kwargs)
        if index is None:  # a neuron or the target's own class (checked by the occlusion above)
            from jaxviz.saliency import resolve_index
            index = resolve_index(model, params, x, target)
        return result, None, _from_start(index, target, model.num_classes), predicted
    if method == "cam" and kwargs.get("weights") is None:
        from jaxviz.cam import cam_weights
        kwargs["weights"] = cam_weights(model, params, kwargs.get("layer"))
    weights = kwargs.pop("weights", None)
    run = _runner(technique, tuple(sorted(kwargs.items())), signed, model.compiler_options)
    return run(model, params, x, target, index, jax.random.key(seed), weights)


_RUNNERS: dict = {}


def _runner(technique, settings: tuple, signed: bool, compiler_options):
    """One jitted function per (method, settings): chunks of the same shape reuse its compilation."""
    cache_key = (technique.name, settings, signed, compiler_options)
    if cache_key not in _RUNNERS:
        import jax
        import jax.numpy as jnp

        from jaxviz.accel import xla
        from jaxviz.saliency import resolve_index, saliency_map
        fn, kwargs = technique.load(), dict(settings)
        attribution = technique.output == "attribution"

        def run(m, p, x, t, i, k, weights):
            # the predicted class in the same program: XLA merges its forward pass with the
            # technique's (a separate prediction program cost one more forward pass per chunk)
            predicted = None
            if m.num_classes is not None:
                logits = jax.lax.stop_gradient(m.apply(p, x))
                predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            if i is None:
                i = predicted if t.is_class and t.index is None else resolve_index(m, p, x, t)
            extra = {"key": k} if "key" in technique.needs else {}
            if weights is not None:
                extra["weights"] = weights
            a = fn(m, p, x, t, index=i, **extra, **kwargs)
            i = _from_start(i, t, m.num_classes)
            if not attribution:
                return a, None, i, predicted
            return saliency_map(a), (a if signed else None), i, predicted
        _RUNNERS[cache_key] = xla.jit(run, compiler_options, static_argnums=(0, 3))
    return _RUNNERS[cache_key]


def _from_start(index, target, num_classes):
    """(N,) classes counted from 0 (a negative class counts from the end, as explained); channels
    as they are."""
    if target.is_class and num_classes:
        from jaxviz.interface.model import class_index
        return class_index(index, index.shape[0], num_classes=num_classes, positive=True)
    return index


def _predict(model):
    """Jitted (params, x) -> (N,) int32 predicted classes (one program; eagerly the accelerated
    forward would compile many small ones)."""
    key = ("predict", model)
    if key not in _RUNNERS:
        import jax.numpy as jnp

        from jaxviz.accel import xla
        _RUNNERS[key] = xla.jit(lambda p, x: jnp.argmax(model.apply(p, x), axis=-1).astype(jnp.int32),
                                model.compiler_options)
    return _RUNNERS[key]


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


class _NpyStream:
    """An .npy file written chunk by chunk: the header (the whole array's shape) before the first
    chunk, then each chunk's C-order bytes (``numpy.lib.format``: the same bytes as ``np.save``)."""

    def __init__(self, f, count: int):
        self.f, self.count, self.started = f, count, False

    def write(self, array) -> None:
        import numpy as np
        array = np.ascontiguousarray(array, np.float32)
        if not self.started:
            shape = array.shape[1:] if self.count == 1 else (self.count,) + array.shape[1:]
            np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                          "fortran_order": False, "shape": shape})
            self.started = True
        self.f.write(array.tobytes())


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
    add_options(parser, TECHNIQUES)
    add_batch(parser)
    add_output(parser, help="figure PNG: image, map and overlay per image")
    parser.add_argument("--npy", default=None, metavar="MAP.npy",
                        help="write the map as float32 (H, W), or (N, H, W) for several images")
    parser.add_argument("--signed", action="store_true",
                        help="--npy holds the signed attribution (H, W, 3) / (N, H, W, 3) in model-input "
                             f"space instead of the map ({', '.join(SIGNED_METHODS)})")
    parser.add_argument("--metrics", action="store_true",
                        help="print deletion/insertion AUC of the map (class targets)")

    def run(args: argparse.Namespace) -> int:
        technique = get(args.method, "saliency")
        method = technique.name
        if method == "guided-gradcam" and args.resize == "none":
            raise JaxvizError("guided-gradcam needs a full-resolution Grad-CAM: --resize bilinear or nearest")
        options = options_for(args, technique)
        out = output_path(args.out, suffixes=(".png",))
        npy = output_path(args.npy, suffixes=(".npy",))
        if out is not None and npy is not None and out.resolve() == npy.resolve():
            raise JaxvizError("--out and --npy must be different files")
        if given(args, "--noise") and given(args, "--noise-std"):
            raise JaxvizError("give --noise (relative) or --noise-std (absolute), not both")
        if method == "occlusion" and isinstance(options["stride"], int) and isinstance(options["window"], int) \
                and options["stride"] > options["window"]:
            raise JaxvizError(f"--stride must be between 1 and --window ({options['window']}), got {options['stride']}")
        if options.get("resize", "bilinear") is None and args.metrics:
            raise JaxvizError("--metrics needs maps at the input resolution; drop --resize none")
        if args.signed and method not in SIGNED_METHODS:
            hint = "; for a signed CAM use --no-relu" if method in RELU_METHODS else ""
            raise JaxvizError(f"--signed applies to {', '.join(SIGNED_METHODS)}, not {method}{hint}")
        if args.signed and npy is None:
            raise JaxvizError("--signed describes what --npy holds: give --npy")
        batch = option_value(args, BATCH)

        # a feature network (vgg19_caffe) explains neuron targets (LAYER:CHANNEL); parse_target
        # refuses a class target for it
        model = load_model_arg(args.model, classifier=False)  # accelerated once (jaxviz.accel)
        classifier = model.num_classes is not None
        if method == "occlusion":
            size = min(model.input_hw())
            windows = options["window"] if isinstance(options["window"], tuple) else (options["window"],)
            if not all(1 <= w <= size for w in windows):
                raise JaxvizError(f"--window must be between 1 and the input size {size}, got {options['window']}")
        if args.metrics:
            try:
                from jaxviz.metrics import deletion_insertion
            except ImportError:
                raise JaxvizError("--metrics is not available (jaxviz.metrics is missing)") from None

        from jaxviz.targets import parse_target
        target = parse_target(args.target, model, score=args.score)
        if target.is_class and not classifier:
            raise JaxvizError(f"model {model.name} has no classifier: give a --target as LAYER:CHANNEL")
        layer = None
        if method == "cam":
            if model.cam_layer is None:
                raise JaxvizError(f"model {model.name} has no CAM layer; use gradcam")
            if not target.is_class:
                raise JaxvizError("cam explains a class; give a class --target (or use gradcam)")
            layer = model.cam_layer
        elif "layer" in technique.needs:
            layer = model.resolve_layer(options.get("layer") or model.feature_layer)
            shape = model.layer_shapes()[layer]
            if len(shape) != 3:
                raise JaxvizError(f"layer {layer} has no spatial map (shape {shape}); pick a conv layer")
            if not target.is_class:
                order = model.layer_names
                if target.layer in order and layer in order and order.index(target.layer) <= order.index(layer):
                    raise JaxvizError(f"neuron target {target.layer} must come after --layer {layer}")
        if layer is not None:
            options["layer"] = layer
        if args.metrics and not target.is_class:
            raise JaxvizError("--metrics needs a class target (AUCs use the class probability)")
        seed = options.pop("seed", 0)
        check_memory_for(model, None, min(batch, len(args.images)), f"saliency --method {method}")

        import jax.numpy as jnp
        import numpy as np

        n = len(args.images)
        step = min(batch, n)
        labels = model.labels
        keep = out is not None  # the figure needs every image and map
        kept_images, kept_maps, titles = [], [], []

        def explain(start: int, stop: int, sink=None):
            sources = args.images[start:stop]
            images = load_inputs(model, sources, args.fit)
            m = len(images)
            if m < step:  # pad the last chunk: one compiled shape
                images = np.concatenate([images, np.repeat(images[-1:], step - m, axis=0)])
            x = model.preprocess(jnp.asarray(images))
            index = None
            if target.is_class and target.index is not None:
                index = jnp.full((step,), target.index, jnp.int32)
            maps, signed, index, predicted = compute_map(method, model, x, target, index=index, seed=seed,
                                                         signed=args.signed, batch=batch, **options)
            index = np.asarray(index)
            predicted = None if predicted is None else np.asarray(predicted)
            maps = np.asarray(maps, dtype=np.float32)[:m]
            for i, src in enumerate(sources):
                what = (f"class {int(index[i])} {labels[int(index[i])] if labels else ''}".strip()
                        if target.is_class else target.describe())
                where = f" at {layer}" if layer else ""
                titles.append(f"{src}: {method}{where}\n{what}")
                said = "" if predicted is None else (
                    f"; predicted {predicted[i]}{' ' + labels[predicted[i]] if labels else ''}")
                print(f"{src}: {method}{where}, {what}{said}; map range "
                      f"[{maps[i].min():.4g}, {maps[i].max():.4g}]")
            if args.metrics:
                result = deletion_insertion(model, model.params, x[:m], jnp.asarray(maps), jnp.asarray(index[:m]))
                for i, src in enumerate(sources):
                    print(f"{src}: deletion AUC {float(result['deletion_auc'][i]):.4f}  "
                          f"insertion AUC {float(result['insertion_auc'][i]):.4f}")
            if sink is not None:
                sink.write(np.asarray(signed, np.float32)[:m] if args.signed else maps)
            if keep:
                kept_images.append(images[:m])
                kept_maps.append(maps)

        if npy is not None:
            from jaxviz.io import atomic_write

            def stream(f):
                sink = _NpyStream(f, n)
                chunks(args, n, lambda s, e: explain(s, e, sink), f"saliency {method}")
            atomic_write(npy, stream)
        else:
            chunks(args, n, explain, f"saliency {method}")
        if out is not None:
            from jaxviz.cli._common import save_figure
            save_figure(_figure(np.concatenate(kept_images), np.concatenate(kept_maps), titles), out)
        # said once every file is written: a failed figure removes the .npy again (jaxviz.io.outputs)
        if npy is not None:
            print(f"wrote {npy}" + (" (signed attribution, NHWC)" if args.signed else ""))
        if out is not None:
            print(f"wrote {out}")
        return 0
    return run
