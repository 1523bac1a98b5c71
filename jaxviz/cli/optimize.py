"""``jaxviz classviz | neuron | invert | dream``: images optimised through the one engine.

Every command writes ``--out FILE.png``: the final image(s) at the model's input resolution (or
``--size``) in valid 8-bit range — with several targets/channels, the images side by side in one
PNG, in command-line order. ``--npy`` also writes FILE.npy beside it: the float RGB array
(N, H, W, 3) in [0, 1] before 8-bit rounding. Nothing else is written. Progress bars on stderr.
Models are loaded accelerated for this machine (``jaxviz.accel.accelerate``, via
``load_model_arg``: same results, faster). A size at which the layer (or a DeepDream octave) is
empty is refused with the smallest size that works.
"""
from __future__ import annotations

import argparse
import math

from jaxviz.cli import command
from jaxviz.cli._common import add_model, add_output, output_path

MAX_SIZE = 2048  # px: a 2048 px VGG19 step already needs several GB
MAX_STEPS = 100_000


def _common(parser: argparse.ArgumentParser, steps: int, lr: float, lr_help: str) -> None:
    add_model(parser)
    parser.add_argument("--steps", type=int, default=steps, help=f"iterations (default {steps})")
    parser.add_argument("--lr", type=float, default=lr, help=f"{lr_help} (default {lr})")
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    add_output(parser, required=True, help="output PNG (8-bit, valid range)")
    parser.add_argument("--npy", action="store_true", help="also write the float RGB array beside --out (.npy)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _outputs(args):
    from jaxviz.errors import JaxvizError
    out = output_path(args.out, suffixes=(".png",))
    if args.size is not None and not 16 <= args.size <= MAX_SIZE:
        raise JaxvizError(f"--size must be between 16 and {MAX_SIZE}, got {args.size}")
    if not 1 <= args.steps <= MAX_STEPS:
        raise JaxvizError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise JaxvizError(f"--lr must be a positive finite number, got {args.lr}")
    for name in ("l2", "blur_sigma", "clip_fraction", "tv_weight", "beta", "octave_scale"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise JaxvizError(f"--{name.replace('_', '-')} must be finite, got {value}")
    return out


def _write(model, x, out, npy: bool) -> None:
    import numpy as np

    from jaxviz.classviz import to_rgb
    from jaxviz.images import save_image
    from jaxviz.render import grid
    rgb = to_rgb(model, x)
    save_image(rgb[0] if len(rgb) == 1 else grid(rgb, columns=len(rgb), pad=2), out)
    if npy:
        np.save(out.with_suffix(".npy"), rgb.astype(np.float32))
    print(f"wrote {out}" + (f" and {out.with_suffix('.npy')}" if npy else ""))


def _progress(args, desc: str):
    from jaxviz.optimize import ProgressBar
    return () if args.quiet else (ProgressBar(desc),)


def _load_model(args, classifier: bool):
    from jaxviz.cli._common import load_model_arg
    return load_model_arg(args.model, classifier=classifier)  # accelerated once (jaxviz.accel)


def _image(args, model, size):
    import jax.numpy as jnp

    from jaxviz.cli._common import load_inputs
    return model.preprocess(jnp.asarray(load_inputs(model, [args.image], args.fit, size)))


def _add_fit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fit", choices=["eval", "stretch", "crop"], default="eval",
                        help="eval (default): the model's evaluation transform; stretch: resize straight to the "
                             "size; crop: same as eval")


def _class_name(model, c: int) -> str:
    return model.labels[c] if model.labels else str(c)


@command("classviz", "class visualisation: maximise a class score minus an L2 penalty, with jitter, "
                     "periodic blur and clipping (Simonyan et al. 2014; Yosinski et al. 2015)")
def classviz(parser: argparse.ArgumentParser):
    parser.add_argument("--target", "-t", nargs="+", required=True, metavar="CLASS",
                        help="class index or name (several: one image each, optimised together)")
    _common(parser, 100, 25.0, "L2 length of each normalised gradient step, model-input units")
    parser.add_argument("--l2", type=float, default=1e-3, help="L2 penalty weight lambda (default 1e-3)")
    parser.add_argument("--blur-every", type=int, default=10, help="Gaussian blur every k steps (0: never)")
    parser.add_argument("--blur-sigma", type=float, default=0.5, help="blur sigma in pixels (default 0.5)")
    parser.add_argument("--jitter", type=int, default=16, help="random roll per step in pixels (default 16)")
    parser.add_argument("--clip-fraction", type=float, default=0.0,
                        help="zero this fraction of smallest-norm pixels at each blur (default 0)")
    parser.add_argument("--init", default=None, metavar="IMAGE", help="start from this image (file or sample name)")
    parser.add_argument("--score", choices=["logit", "prob", "logprob"], default="logit")

    def run(args):
        import jax
        import jax.numpy as jnp

        from jaxviz.classviz import class_visualization
        from jaxviz.errors import JaxvizError
        from jaxviz.labels import resolve_class
        out = _outputs(args)
        if args.l2 < 0 or args.blur_every < 0 or args.jitter < 0 or args.blur_sigma < 0:
            raise JaxvizError("--l2, --blur-every, --blur-sigma and --jitter must be >= 0")
        if not 0 <= args.clip_fraction < 1:
            raise JaxvizError("--clip-fraction must be in [0, 1)")
        model = _load_model(args, classifier=True)
        classes = [resolve_class(t, model.num_classes, model.labels) for t in args.target]
        size = model.input_hw(args.size)
        init = None
        if args.init:
            from jaxviz.cli._common import load_inputs
            one = model.preprocess(jnp.asarray(load_inputs(model, [args.init], "eval", size)))
            init = jnp.repeat(one, len(classes), axis=0)
        res = class_visualization(model, None, classes, init=init, size=size, steps=args.steps, lr=args.lr,
                                  l2=args.l2, blur_every=args.blur_every, blur_sigma=args.blur_sigma,
                                  jitter_px=args.jitter, clip_fraction=args.clip_fraction, score=args.score,
                                  key=jax.random.key(args.seed), callbacks=_progress(args, "classviz"))
        logits = jax.jit(model.apply)(model.params, res.images)
        if not bool(jnp.isfinite(logits).all()):
            raise JaxvizError("the optimisation diverged (non-finite scores); lower --lr")
        for c, row in zip(classes, logits):
            top = int(jnp.argmax(row))
            print(f"class {c} {_class_name(model, c)}: score {float(row[c]):.2f}, "
                  f"top-1 {top} {_class_name(model, top)}")
        _write(model, res.images, out, args.npy)
    return run


@command("neuron", "neuron/channel visualisation: maximise a channel's mean activation (or one unit) "
                   "at a named layer (Fourier-space decorrelated parameterisation by default)")
def neuron(parser: argparse.ArgumentParser):
    parser.add_argument("--layer", "-l", required=True, help="layer name or alias (`jaxviz layers MODEL`)")
    parser.add_argument("--channel", "-c", type=int, nargs="+", required=True, help="channel index(es)")
    parser.add_argument("--unit", type=int, nargs=2, default=None, metavar=("Y", "X"),
                        help="maximise the unit at (Y, X) instead of the channel mean")
    _common(parser, 128, 0.05, "Adam learning rate")
    parser.add_argument("--param", choices=["fourier", "pixels"], default="fourier",
                        help="image parameterisation (default fourier)")
    parser.add_argument("--jitter", type=int, default=8, help="random roll per step in pixels (default 8)")

    def run(args):
        import jax

        from jaxviz import objectives as obj
        from jaxviz.classviz import channel_visualization
        from jaxviz.errors import JaxvizError
        out = _outputs(args)
        if args.jitter < 0:
            raise JaxvizError("--jitter must be >= 0")
        model = _load_model(args, classifier=False)
        layer = model.resolve_layer(args.layer)
        unit = tuple(args.unit) if args.unit else None
        res = channel_visualization(model, None, layer, args.channel, size=args.size, steps=args.steps, lr=args.lr,
                                    parameterization=args.param, jitter_px=args.jitter, unit=unit,
                                    key=jax.random.key(args.seed), callbacks=_progress(args, "neuron"))
        y, x = unit if unit else (None, None)
        final = obj.evaluate(obj.channel(model, model.params, layer, args.channel, y, x), res.images)
        for c, value in zip(args.channel, final):
            print(f"{layer} channel {c}: activation {float(value):.3f}")
        _write(model, res.images, out, args.npy)
    return run


@command("invert", "feature inversion: reconstruct an image from a layer's representation "
                   "(Mahendran & Vedaldi 2015, normalised feature loss + TV^beta)")
def invert_cmd(parser: argparse.ArgumentParser):
    parser.add_argument("image", metavar="IMAGE", help="image file or sample name")
    _add_fit(parser)
    parser.add_argument("--layer", "-l", required=True, help="layer name or alias")
    _common(parser, 200, 0.05, "Adam learning rate (model-input units)")
    parser.add_argument("--tv-weight", type=float, default=1.0, help="lambda of the normalised TV^beta term")
    parser.add_argument("--beta", type=float, default=2.0, help="TV exponent beta (default 2)")
    parser.add_argument("--optimizer", choices=["adam", "lbfgs"], default="adam")

    def run(args):
        import jax

        from jaxviz.errors import JaxvizError
        from jaxviz.inversion import invert
        out = _outputs(args)
        if args.tv_weight < 0 or args.beta <= 0:
            raise JaxvizError("--tv-weight must be >= 0 and --beta > 0")
        model = _load_model(args, classifier=False)
        layer = model.resolve_layer(args.layer)
        x0 = _image(args, model, model.input_hw(args.size))
        res = invert(model, None, x0, layer, steps=args.steps, lr=args.lr, tv_weight=args.tv_weight,
                     beta=args.beta, optimizer=args.optimizer, key=jax.random.key(args.seed),
                     callbacks=_progress(args, "invert"))
        before, after = res.extras["feature_loss"]
        print(f"{layer}: normalised feature loss {float(before[0]):.4f} -> {float(after[0]):.4f}")
        _write(model, res.images, out, args.npy)
    return run


@command("dream", "DeepDream: amplify a layer's activations (maximise 1/2 sum f^2) with octaves, "
                  "jitter and normalised steps, from a real image")
def dream_cmd(parser: argparse.ArgumentParser):
    parser.add_argument("image", metavar="IMAGE", help="image file or sample name")
    _add_fit(parser)
    parser.add_argument("--layer", "-l", required=True, help="layer name or alias")
    _common(parser, 10, 1.5 / 255, "step size as a fraction of the valid range (g / mean|g| steps)")
    parser.add_argument("--octaves", type=int, default=4, help="number of scales (default 4)")
    parser.add_argument("--octave-scale", type=float, default=1.4, help="ratio between scales (default 1.4)")
    parser.add_argument("--jitter", type=int, default=32, help="random roll per step in pixels (default 32)")

    def run(args):
        import jax
        import numpy as np

        from jaxviz.dream import deepdream
        from jaxviz.errors import JaxvizError
        out = _outputs(args)
        if not (args.octaves >= 1 and args.octave_scale >= 1 and args.jitter >= 0):  # NaN fails too
            raise JaxvizError("--octaves must be >= 1, --octave-scale a finite number >= 1 and --jitter >= 0")
        model = _load_model(args, classifier=False)
        layer = model.resolve_layer(args.layer)
        x0 = _image(args, model, model.input_hw(args.size))
        lo, hi = model.valid_range()
        x = deepdream(model, None, x0, layer, octaves=args.octaves, octave_scale=args.octave_scale,
                      steps=args.steps, step=float(args.lr * np.mean(hi - lo)), jitter_px=args.jitter,
                      key=jax.random.key(args.seed), callbacks=_progress(args, "dream"))
        _write(model, x, out, args.npy)
    return run
