"""``jaxviz texture``, ``jaxviz style`` and ``jaxviz fast-style train|apply`` (issue 6).

The options are the technique registry's (``jaxviz.techniques``: gram, efros-leung, style,
fast-style-train, fast-style-apply), generated as flags and validated there. Every file is written
through a temporary name in its folder and renamed when complete.
"""
from __future__ import annotations

import argparse

from jaxviz.cli import command
from jaxviz.cli._common import (add_option, add_options, add_output, given, load_model_arg, option_value, options_for,
                                output_path)
from jaxviz.errors import JaxvizError
from jaxviz.options import Option
from jaxviz.techniques import TECHNIQUES, get, techniques

LOSS_MODEL = "vgg19_caffe"
SAMPLE_SIZE = Option("sample_size", int, "resize the sample to this (default: --size)", lo=8, hi=2048)


@command("texture", "synthesise a texture from a sample: Efros-Leung (non-parametric) or Gram matrices (Gatys 2015)")
def texture(parser: argparse.ArgumentParser):
    parser.add_argument("sample", metavar="SAMPLE", help="texture image file or sample name (brick, gravel, grass, ...)")
    parser.add_argument("--method", default="gram", metavar="{efros,gram}", help="efros (Efros-Leung) or gram "
                        "(default gram)")
    add_options(parser, techniques("texture"))
    add_option(parser, SAMPLE_SIZE)
    add_output(parser, required=True)

    def run(args: argparse.Namespace) -> int:
        technique = get(args.method, "texture")
        options = options_for(args, technique)
        out = output_path(args.out)
        size = options.pop("size")
        sample_size = option_value(args, SAMPLE_SIZE) or size
        import jax

        from jaxviz.images import load_image, save_image
        sample = load_image(args.sample, sample_size, fit="stretch")
        key = jax.random.key(options.pop("seed"))
        if technique.name == "efros-leung":
            image = technique.load()(sample, size, key=key, **options)
        else:
            from jaxviz.cli._common import check_memory_for
            from jaxviz.optimize import ProgressBar
            from jaxviz.texture import GRAM_LAYER_SETS
            model = load_model_arg(LOSS_MODEL, classifier=False)
            check_memory_for(model, max(size, sample_size), 1, "texture")
            options["layers"] = tuple(options["layers"] or GRAM_LAYER_SETS[-1])
            image, _ = technique.load()(model, model.params, sample, size, key=key,
                                        callbacks=(ProgressBar("texture"),), **options)
        save_image(jax.device_get(image), out)
        print(out)
        return 0
    return run


@command("style", "Gatys neural style transfer (VGG19, L-BFGS or Adam)")
def style(parser: argparse.ArgumentParser):
    parser.add_argument("content", metavar="CONTENT", help="content image file or sample name")
    parser.add_argument("--style", nargs="+", required=True, metavar="STYLE", help="style image(s)")
    add_options(parser, [TECHNIQUES["style"]])
    add_output(parser, required=True)

    def run(args: argparse.Namespace) -> int:
        options = options_for(args, TECHNIQUES["style"])
        out = output_path(args.out)
        blend = options["style_blend"]
        if blend is not None and len(blend) != len(args.style):
            raise JaxvizError(f"--style-weights needs {len(args.style)} numbers (one per style), got {len(blend)}")
        size = options.pop("size")
        import jax

        from jaxviz.cli._common import check_memory_for
        from jaxviz.images import load_image, save_image
        from jaxviz.optimize import ProgressBar
        content = load_image(args.content)
        h, w = content.shape[:2]
        scale = size / max(h, w)
        hw = (max(16, round(h * scale)), max(16, round(w * scale)))
        content = load_image(args.content, hw, fit="stretch")
        styles = [load_image(s) for s in args.style]
        model = load_model_arg(LOSS_MODEL, classifier=False)
        check_memory_for(model, hw, 1 + len(styles), "style")
        key = jax.random.key(options.pop("seed"))
        options["style_layers"] = tuple(options["style_layers"])
        result = TECHNIQUES["style"].load()(model, model.params, content, styles, key=key,
                                            callbacks=(ProgressBar("style"),), **options)
        save_image(result.image, out)
        losses = result.losses
        first = f"{losses[0]:.4g} -> " if len(losses) else ""
        print(f"{out}  loss {first}{sum(result.parts.values()):.4g} "
              f"(content {result.parts['content']:.3g}, style {result.parts['style']:.3g}, tv {result.parts['tv']:.3g})")
        return 0
    return run


@command("fast-style", "fast feed-forward style transfer (Johnson 2016) with conditional instance norm: train | apply")
def fast_style(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    train = sub.add_parser("train", help="train a (multi-style) transformation network")
    train.add_argument("--styles", nargs="+", required=True, help="style images (one CIN style each)")
    train.add_argument("--content-dir", required=True, help="folder of content images (.png/.jpg)")
    train.add_argument("--out", "-o", required=True, help="checkpoint file (.msgpack); resumed if it exists")
    add_options(train, [TECHNIQUES["fast-style-train"]])
    apply = sub.add_parser("apply", help="stylise an image with a trained network or the pretrained multistyle26")
    apply.add_argument("image", metavar="IMAGE", help="image file or sample name (chelsea, coffee, ...)")
    apply.add_argument("--model", required=True,
                       help="checkpoint from `fast-style train`, or multistyle26 (pretrained, 26 styles)")
    add_options(apply, [TECHNIQUES["fast-style-apply"]])
    apply.add_argument("--style-mix", default=None,
                       help="weights >= 0, one per style of a checkpoint, e.g. 0.3,0.7 for two styles (default: "
                            "the first style); multistyle26: 3:0.5,12:0.5 or 26 numbers")
    apply.add_argument("--out", "-o", required=True)

    def run(args: argparse.Namespace) -> int:
        if args.action == "train":
            return run_train(args)
        if args.action == "apply":
            return run_apply(args)
        raise JaxvizError("choose an action: train or apply")
    return run


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jaxviz.io import check_output_dir, keep
    options = options_for(args, TECHNIQUES["fast-style-train"])
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise JaxvizError(f"--out must be a file in an existing folder: {out}")
    if out.suffix.lower() != ".msgpack":  # e.g. a .png meant for `fast-style apply`
        raise JaxvizError(f"--out is the training checkpoint: name it *.msgpack, got {out.name}")
    check_output_dir(out.parent)
    if not Path(args.content_dir).is_dir():
        raise JaxvizError(f"content folder not found: {args.content_dir}")
    steps, save_every, seed = options.pop("steps"), options.pop("save_every"), options.pop("seed")
    import jax
    from tqdm.auto import tqdm

    from jaxviz import fast_style as fs
    from jaxviz.checkpoints import load_checkpoint, save_checkpoint
    from jaxviz.datasets import load_content_folder
    from jaxviz.images import load_image, source_name
    if out.exists():
        config, state = load_checkpoint(out)
        if config.num_styles != len(args.styles):
            raise JaxvizError(f"checkpoint {out} has {config.num_styles} styles, {len(args.styles)} given")
        _check_resume(args, out, config, options)
    else:
        config = fs.FastStyleConfig(num_styles=len(args.styles), style_names=tuple(source_name(s) for s in args.styles),
                                    **options)
        state = fs.init_state(config, jax.random.key(seed))
    content = load_content_folder(args.content_dir, config.size)
    styles = [load_image(s, config.size, fit="stretch") for s in args.styles]
    model = load_model_arg(config.loss_model, classifier=False)
    step = fs.make_train_step(config, model, model.params, styles)
    bar = tqdm(total=steps, desc="fast-style", unit="step", leave=False)
    remaining = steps
    while remaining > 0:
        chunk = min(remaining, save_every)
        state = fs.train(config, state, step, content, chunk,
                         callback=lambda i, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4g}")))
        save_checkpoint(out, config, state)
        keep(out)  # a complete checkpoint to resume from, even if a later step fails
        remaining -= chunk
    bar.close()
    if steps == 0:
        save_checkpoint(out, config, state)
    last = f", last loss {state.losses[-1]:.4g}" if state.losses else ""
    print(f"{out}  step {state.step}{last}")
    return 0


def _check_resume(args: argparse.Namespace, out, config, options: dict) -> None:
    """A resumed training keeps its checkpoint's settings and styles: a flag given with another
    value, or other style images, would silently train on with the old ones."""
    from jaxviz.images import source_name
    if given(args, "--seed"):
        raise JaxvizError(f"--seed does nothing when resuming {out}: the checkpoint keeps its random state; "
                          "leave --seed out, or choose another --out")
    changed = [f"{o.cli_flag} {getattr(config, o.name)}" for o in TECHNIQUES["fast-style-train"].cli_options()
               if hasattr(config, o.name) and given(args, o.cli_flag) and options[o.name] != getattr(config, o.name)]
    if changed:
        raise JaxvizError(f"checkpoint {out} was trained with {', '.join(changed)}; resume with its settings "
                          "(or leave those flags out), or choose another --out")
    names = tuple(source_name(s) for s in args.styles)
    if config.style_names and names != tuple(config.style_names):
        raise JaxvizError(f"checkpoint {out} was trained on the styles {', '.join(config.style_names)}, "
                          f"not {', '.join(names)}; resume with the same --styles in the same order")


def _pad_to(image, multiple: int, minimum: int):
    """(H, W, 3) reflect-padded (edge-padded where too small to reflect) to multiples of
    ``multiple`` of at least ``minimum``, and the (top, left) offset of the original."""
    import numpy as np
    h, w = image.shape[:2]
    th, tw = (max(minimum, -(-n // multiple) * multiple) for n in (h, w))
    top, left = (th - h) // 2, (tw - w) // 2
    pads = ((top, th - h - top), (left, tw - w - left), (0, 0))
    mode = "reflect" if th - h < h and tw - w < w else "edge"
    return np.pad(image, pads, mode=mode), (top, left)


def run_apply(args: argparse.Namespace) -> int:
    options = options_for(args, TECHNIQUES["fast-style-apply"])
    out = output_path(args.out)
    from pathlib import Path

    import numpy as np

    from jaxviz import fast_style as fs
    from jaxviz import fast_style_pretrained as fsp
    from jaxviz.checkpoints import load_checkpoint
    from jaxviz.accel.xla import compiler_options
    from jaxviz.images import load_image, save_image
    style, size = options["style"], options["size"]
    if style is not None and args.style_mix is not None:
        raise JaxvizError("give --style or --style-mix, not both")
    if args.model == fsp.NAME and not Path(args.model).exists():  # the built-in pretrained network
        net, params, _ = fsp.load_multistyle()
        weights, stylize, minimum = fsp.style_vector(args.style_mix or style or 0), fsp.stylize, 8
    else:
        if not Path(args.model).is_file():
            import difflib
            hint = f"; did you mean {fsp.NAME}?" if difflib.get_close_matches(args.model, [fsp.NAME], cutoff=0.6) \
                else f"; give a checkpoint from `jaxviz fast-style train` or {fsp.NAME}"
            raise JaxvizError(f"no such fast-style model: {args.model}{hint}")
        if style is not None:
            raise JaxvizError(f"--style names a style of --model {fsp.NAME}; "
                              "mix a checkpoint's styles with --style-mix")
        config, state = load_checkpoint(args.model)
        net, params, stylize, minimum = config.network(), state.params, fs.stylize, 4
        mix = None if args.style_mix is None else Option("style_mix", float, lo=0, hi=1e12, nargs="+",
                                                         flag="--style-mix").check(args.style_mix, cli=True)
        weights = fs.style_weights(config.num_styles, mix)
    image = load_image(args.image)
    if size is not None:  # the longer side becomes --size exactly, the aspect ratio kept
        h, w = image.shape[:2]
        scale = size / max(h, w)
        image = load_image(args.image, (max(1, round(h * scale)), max(1, round(w * scale))), fit="stretch")
    # the network needs sides that are multiples of 4: stylise a reflect-padded copy, crop it back
    h, w = image.shape[:2]
    padded, (top, left) = _pad_to(image, 4, minimum)
    result = stylize(net, params, padded[None], weights, compiler_options=compiler_options(dense_convolutions=True))
    save_image(np.asarray(result[0])[top:top + h, left:left + w], out)
    print(out)
    return 0
