"""``jaxviz classviz | neuron | invert | dream``: images optimised through the one engine.

Every command writes ``--out FILE.png``: the final image(s) at the model's input resolution (or
``--size``) in valid 8-bit range — with several targets/channels, the images side by side in one
PNG, in command-line order. ``--npy`` also writes FILE.npy beside it: the float RGB array
(N, H, W, 3) in [0, 1] before 8-bit rounding. Nothing else is written (each file through a
temporary name, renamed when complete). Progress bars on stderr. Models are loaded accelerated
for this machine (``jaxviz.accel.accelerate``, via ``load_model_arg``: same results, faster). The
options are the registry's (``jaxviz.techniques``: classviz, neuron, invert, dream), validated
there; a size at which the layer (or a DeepDream octave) is empty is refused with the smallest
size that works, and a size whose activations would not fit in memory before any work.
"""
from __future__ import annotations

import argparse

from jaxviz.cli import command
from jaxviz.cli._common import (add_fit, add_model, add_options, add_output, check_memory_for, given, load_inputs,
                                load_model_arg, options_for, output_path, write_npy)
from jaxviz.techniques import TECHNIQUES


def _common(parser: argparse.ArgumentParser, name: str) -> None:
    add_model(parser)
    add_options(parser, [TECHNIQUES[name]])
    add_output(parser, required=True, help="output PNG (8-bit, valid range)")
    parser.add_argument("--npy", action="store_true", help="also write the float RGB array beside --out (.npy)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _outputs(args, name: str) -> tuple:
    """(options, out, npy path): everything checked before a model is loaded."""
    options = options_for(args, TECHNIQUES[name])
    out = output_path(args.out, suffixes=(".png",))
    return options, out, out.with_suffix(".npy") if args.npy else None


def _write(model, x, out, npy) -> None:
    import numpy as np

    from jaxviz.classviz import to_rgb
    from jaxviz.images import save_image
    from jaxviz.render import grid
    rgb = to_rgb(model, x)
    if npy is not None:
        write_npy(npy, rgb.astype(np.float32))
    save_image(rgb[0] if len(rgb) == 1 else grid(rgb, columns=len(rgb), pad=2), out)
    print(f"wrote {out}" + (f" and {npy}" if npy is not None else ""))


def _progress(args, desc: str):
    from jaxviz.optimize import ProgressBar
    return () if args.quiet else (ProgressBar(desc),)


def _image(args, model, size):
    import jax.numpy as jnp
    return model.preprocess(jnp.asarray(load_inputs(model, [args.image], args.fit, size)))


def _class_name(model, c: int) -> str:
    return model.labels[c] if model.labels else str(c)


@command("classviz", "class visualisation: maximise a class score minus an L2 penalty, with jitter, "
                     "periodic blur and clipping (Simonyan et al. 2014; Yosinski et al. 2015)")
def classviz(parser: argparse.ArgumentParser):
    parser.add_argument("--target", "-t", nargs="+", required=True, metavar="CLASS",
                        help="class index or name (several: one image each, optimised together)")
    _common(parser, "classviz")
    parser.add_argument("--init", default=None, metavar="IMAGE", help="start from this image (file or sample name)")

    def run(args):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from jaxviz.errors import JaxvizError
        from jaxviz.labels import resolve_class
        options, out, npy = _outputs(args, "classviz")
        if args.init and options["jitter_px"] == 0 and given(args, "--seed"):  # (the registry's rules see one option)
            raise JaxvizError(f"--seed {options['seed']} does nothing with --init and --jitter 0: nothing is "
                              "random; leave --seed out")
        model = load_model_arg(args.model, classifier=True)
        classes = [resolve_class(t, model.num_classes, model.labels) for t in args.target]
        size = model.input_hw(options.pop("size"))
        check_memory_for(model, size, len(classes), "classviz")
        init = None
        if args.init:
            one = model.preprocess(jnp.asarray(load_inputs(model, [args.init], "eval", size)))
            init = jnp.repeat(one, len(classes), axis=0)
        seed = options.pop("seed")
        res = TECHNIQUES["classviz"].load()(model, None, classes, init=init, size=size, key=jax.random.key(seed),
                                            callbacks=_progress(args, "classviz"), **options)
        logits = np.asarray(jax.jit(model.apply)(model.params, res.images))  # checks on the host: no programs
        if not np.isfinite(logits).all():
            raise JaxvizError("the optimisation diverged (non-finite scores); lower --lr")
        for c, row in zip(classes, logits):
            top = int(np.argmax(row))
            print(f"class {c} {_class_name(model, c)}: score {float(row[c]):.2f}, "
                  f"top-1 {top} {_class_name(model, top)}")
        _write(model, res.images, out, npy)
    return run


@command("neuron", "neuron/channel visualisation: maximise a channel's mean activation (or one unit) "
                   "at a named layer (Fourier-space decorrelated parameterisation by default)")
def neuron(parser: argparse.ArgumentParser):
    _common(parser, "neuron")

    def run(args):
        import jax

        from jaxviz import objectives as obj
        options, out, npy = _outputs(args, "neuron")
        model = load_model_arg(args.model, classifier=False)
        layer = model.resolve_layer(options.pop("layer"))
        channels = options.pop("channels")
        unit = options.pop("unit")
        unit = tuple(unit) if unit else None
        check_memory_for(model, options["size"], len(channels), "neuron")
        res = TECHNIQUES["neuron"].load()(model, None, layer, channels, unit=unit,
                                          key=jax.random.key(options.pop("seed")),
                                          callbacks=_progress(args, "neuron"), **options)
        y, x = unit if unit else (None, None)
        final = obj.evaluate(obj.channel(model, model.params, layer, channels, y, x), res.images)
        where = f" unit ({y}, {x})" if unit else " mean"
        for c, value in zip(channels, final):
            print(f"{layer} channel {c}{where}: activation {float(value):.3f}")
        _write(model, res.images, out, npy)
    return run


@command("invert", "feature inversion: reconstruct an image from a layer's representation "
                   "(Mahendran & Vedaldi 2015, normalised feature loss + TV^beta)")
def invert_cmd(parser: argparse.ArgumentParser):
    parser.add_argument("image", metavar="IMAGE", help="image file or sample name")
    add_fit(parser, "eval (default): the model's evaluation transform; stretch: resize straight to the size; "
                    "crop: same as eval")
    _common(parser, "invert")

    def run(args):
        import jax
        options, out, npy = _outputs(args, "invert")
        model = load_model_arg(args.model, classifier=False)
        layer = model.resolve_layer(options.pop("layer"))
        size = model.input_hw(options.pop("size"))
        check_memory_for(model, size, 1, "invert")
        x0 = _image(args, model, size)
        res = TECHNIQUES["invert"].load()(model, None, x0, layer, key=jax.random.key(options.pop("seed")),
                                          callbacks=_progress(args, "invert"), **options)
        before, after = res.extras["feature_loss"]
        print(f"{layer}: normalised feature loss {float(before[0]):.4f} -> {float(after[0]):.4f}")
        _write(model, res.images, out, npy)
    return run


@command("dream", "DeepDream: amplify a layer's activations (maximise 1/2 sum f^2) with octaves, "
                  "jitter and normalised steps, from a real image")
def dream_cmd(parser: argparse.ArgumentParser):
    parser.add_argument("image", metavar="IMAGE", help="image file or sample name")
    add_fit(parser, "eval (default): the model's evaluation transform; stretch: resize straight to the size; "
                    "crop: same as eval")
    _common(parser, "dream")

    def run(args):
        import jax
        import numpy as np
        options, out, npy = _outputs(args, "dream")
        model = load_model_arg(args.model, classifier=False)
        layer = model.resolve_layer(options.pop("layer"))
        size = model.input_hw(options.pop("size"))
        check_memory_for(model, size, 1, "dream")
        x0 = _image(args, model, size)
        lo, hi = model.valid_range()
        lr = options.pop("lr")
        options["step"] = float(lr * np.mean(hi - lo)) if options.get("step") is None else options["step"]
        x = TECHNIQUES["dream"].load()(model, None, x0, layer, key=jax.random.key(options.pop("seed")),
                                       callbacks=_progress(args, "dream"), **options)
        _write(model, x, out, npy)
    return run
