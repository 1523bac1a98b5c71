"""``jaxviz texture``, ``jaxviz style`` and ``jaxviz fast-style train|apply`` (issue 6)."""
from __future__ import annotations

import argparse
import math

from jaxviz.cli import command
from jaxviz.cli._common import add_output, output_path
from jaxviz.errors import JaxvizError

LOSS_MODEL = "vgg19_caffe"


def _size(value: int, lo: int = 16, hi: int = 2048, name: str = "--size") -> int:
    if not lo <= value <= hi:
        raise JaxvizError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _steps(value: int) -> int:
    if not 0 <= value <= 100_000:
        raise JaxvizError(f"--steps must be between 0 and 100000, got {value}")
    return value


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise JaxvizError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise JaxvizError(f"{name} must be finite numbers, got {text!r}")
    return values


def _finite(value: float, name: str, lo: float = 0.0, open_lo: bool = False) -> float:
    """A finite option value >= lo (> lo with ``open_lo``), else one clear error."""
    if not math.isfinite(value) or value < lo or (open_lo and value == lo):
        raise JaxvizError(f"{name} must be a finite number {'>' if open_lo else '>='} {lo:g}, got {value}")
    return value


@command("texture", "synthesise a texture from a sample: Efros-Leung (non-parametric) or Gram matrices (Gatys 2015)")
def texture(parser: argparse.ArgumentParser):
    parser.add_argument("sample", metavar="SAMPLE", help="texture image file or sample name (brick, gravel, grass, ...)")
    parser.add_argument("--method", choices=["efros", "gram"], default="gram")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="gram: VGG19 layers to match (default conv1_1 conv2_1 conv3_1 conv4_1 conv5_1)")
    parser.add_argument("--steps", type=int, default=100, help="gram: optimisation steps (default 100)")
    parser.add_argument("--optimizer", choices=["lbfgs", "lbfgs-linesearch", "adam"], default="lbfgs",
                        help="lbfgs: unit step, one evaluation per step (fast); lbfgs-linesearch: "
                        "zoom line search (guaranteed descent, slower); adam")
    parser.add_argument("--size", type=int, default=128, help="output size in pixels (default 128)")
    parser.add_argument("--sample-size", type=int, default=None, help="resize the sample to this (default: --size)")
    parser.add_argument("--radius", type=int, default=5, help="efros: neighbourhood radius (window 2r+1, default 5)")
    parser.add_argument("--seed", type=int, default=0)
    add_output(parser, required=True)

    def run(args: argparse.Namespace) -> int:
        out = output_path(args.out)
        size = _size(args.size, 8 if args.method == "efros" else 16)
        sample_size = _size(size if args.sample_size is None else args.sample_size, 8, name="--sample-size")
        _steps(args.steps)
        if args.radius < 1 or args.radius > 64:
            raise JaxvizError(f"--radius must be between 1 and 64, got {args.radius}")
        import jax

        from jaxviz.images import load_image, save_image
        sample = load_image(args.sample, sample_size, fit="stretch")
        key = jax.random.key(args.seed)
        if args.method == "efros":
            from jaxviz.texture import efros_leung
            image = efros_leung(sample, size, key=key, radius=args.radius)
        else:
            from jaxviz.cli._common import load_model_arg
            from jaxviz.optimize import ProgressBar
            from jaxviz.texture import GRAM_LAYER_SETS, gram_texture
            model = load_model_arg(LOSS_MODEL, classifier=False)
            layers = tuple(args.layers or GRAM_LAYER_SETS[-1])
            image, _ = gram_texture(model, model.params, sample, size, layers=layers, key=key, steps=args.steps,
                                    optimizer=args.optimizer, callbacks=(ProgressBar("texture"),))
        save_image(jax.device_get(image), out)
        print(out)
        return 0
    return run


@command("style", "Gatys neural style transfer (VGG19, L-BFGS or Adam)")
def style(parser: argparse.ArgumentParser):
    parser.add_argument("content", metavar="CONTENT", help="content image file or sample name")
    parser.add_argument("--style", nargs="+", required=True, metavar="STYLE", help="style image(s)")
    parser.add_argument("--style-weights", default=None, help="blend weights of the styles, e.g. 0.7,0.3")
    parser.add_argument("--content-layer", default="conv4_2")
    parser.add_argument("--style-layers", nargs="+", default=None, help="default conv1_1 ... conv5_1")
    parser.add_argument("--layer-weights", default=None, help="per style-layer weights (default equal)")
    parser.add_argument("--content-weight", type=float, default=1.0)
    parser.add_argument("--style-weight", type=float, default=1e3)
    parser.add_argument("--tv-weight", type=float, default=0.0)
    parser.add_argument("--style-scale", type=float, default=1.0, help="resize the style image(s) by this")
    parser.add_argument("--preserve-color", nargs="?", const="luminance", default=None,
                        choices=["luminance", "histogram"], help="keep the content's colours (default: luminance)")
    parser.add_argument("--init", choices=["content", "style", "noise"], default="content")
    parser.add_argument("--optimizer", choices=["lbfgs", "lbfgs-linesearch", "adam"], default="lbfgs",
                        help="lbfgs: unit step, one evaluation per step (fast); lbfgs-linesearch: "
                        "zoom line search (guaranteed descent, slower); adam")
    parser.add_argument("--lr", type=float, default=None, help="adam step in model units (default 10)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="content size: longer side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    add_output(parser, required=True)

    def run(args: argparse.Namespace) -> int:
        out = output_path(args.out)
        size = _size(args.size)
        _steps(args.steps)
        blend = _floats(args.style_weights, "--style-weights")
        if blend is not None and len(blend) != len(args.style):
            raise JaxvizError(f"--style-weights needs {len(args.style)} numbers (one per style), got {len(blend)}")
        layer_weights = _floats(args.layer_weights, "--layer-weights")
        from jaxviz.style import check_options
        check_options(style_scale=args.style_scale, preserve_color=args.preserve_color, init=args.init,
                      weights=(args.content_weight, args.style_weight, args.tv_weight), steps=args.steps,
                      optimizer=args.optimizer, learning_rate=args.lr)
        import jax

        from jaxviz.cli._common import load_model_arg
        from jaxviz.images import load_image, save_image
        from jaxviz.optimize import ProgressBar
        from jaxviz.style import STYLE_LAYERS, style_transfer
        content = load_image(args.content)
        h, w = content.shape[:2]
        scale = size / max(h, w)
        content = load_image(args.content, (max(16, round(h * scale)), max(16, round(w * scale))), fit="stretch")
        styles = [load_image(s) for s in args.style]
        model = load_model_arg(LOSS_MODEL, classifier=False)
        result = style_transfer(
            model, model.params, content, styles, style_blend=blend, content_layer=args.content_layer,
            style_layers=tuple(args.style_layers or STYLE_LAYERS), layer_weights=layer_weights,
            content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
            style_scale=args.style_scale, preserve_color=args.preserve_color, init=args.init,
            optimizer=args.optimizer, steps=args.steps, learning_rate=args.lr, key=jax.random.key(args.seed),
            callbacks=(ProgressBar("style"),))
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
    train.add_argument("--steps", type=int, default=200, help="training steps to run (default 200)")
    train.add_argument("--size", type=int, default=128, help="training crop size (default 128)")
    train.add_argument("--batch", type=int, default=4)
    train.add_argument("--width", type=int, default=32, help="channels of the first conv (default 32)")
    train.add_argument("--res-blocks", type=int, default=5)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--style-weight", type=float, default=1e-6)
    train.add_argument("--content-weight", type=float, default=1.0)
    train.add_argument("--tv-weight", type=float, default=1e-5)
    train.add_argument("--save-every", type=int, default=100)
    train.add_argument("--seed", type=int, default=0)
    apply = sub.add_parser("apply", help="stylise an image with a trained network or the pretrained multistyle26")
    apply.add_argument("image", metavar="IMAGE")
    apply.add_argument("--model", required=True,
                       help="checkpoint from `fast-style train`, or multistyle26 (pretrained, 26 styles)")
    apply.add_argument("--style", default=None,
                       help="multistyle26: one style, style_0 ... style_25 or its index (default style_0)")
    apply.add_argument("--style-mix", default=None,
                       help="weights per style, e.g. 0.3,0.7 (default: style 1); multistyle26 also 3:0.5,12:0.5")
    apply.add_argument("--size", type=int, default=None,
                       help="longer side in pixels (default: the image's own size; any size works)")
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
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise JaxvizError(f"--out must be a file in an existing folder: {out}")
    _size(args.size, 16, 1024)
    _steps(args.steps)
    if not Path(args.content_dir).is_dir():
        raise JaxvizError(f"content folder not found: {args.content_dir}")
    if args.batch < 1 or args.width < 1 or args.res_blocks < 0 or args.save_every < 1:
        raise JaxvizError("--batch, --width and --save-every must be >= 1, --res-blocks >= 0")
    if args.batch > 256 or args.width > 512 or args.res_blocks > 64:
        raise JaxvizError("--batch must be <= 256, --width <= 512 and --res-blocks <= 64")
    _finite(args.lr, "--lr", open_lo=True)
    for name in ("style_weight", "content_weight", "tv_weight"):
        _finite(getattr(args, name), "--" + name.replace("_", "-"))
    import jax
    from tqdm.auto import tqdm

    from jaxviz import fast_style as fs
    from jaxviz.cli._common import load_model_arg
    from jaxviz.images import load_image, source_name
    if out.exists():
        config, state = fs.load_checkpoint(out)
        if config.num_styles != len(args.styles):
            raise JaxvizError(f"checkpoint {out} has {config.num_styles} styles, {len(args.styles)} given")
    else:
        config = fs.FastStyleConfig(
            num_styles=len(args.styles), width=args.width, res_blocks=args.res_blocks, size=args.size,
            batch=args.batch, learning_rate=args.lr, content_weight=args.content_weight,
            style_weight=args.style_weight, tv_weight=args.tv_weight,
            style_names=tuple(source_name(s) for s in args.styles))
        state = fs.init_state(config, jax.random.key(args.seed))
    content = fs.load_content_folder(args.content_dir, config.size)
    styles = [load_image(s, config.size, fit="stretch") for s in args.styles]
    model = load_model_arg(config.loss_model, classifier=False)
    step = fs.make_train_step(config, model, model.params, styles)
    bar = tqdm(total=args.steps, desc="fast-style", unit="step", leave=False)
    remaining = args.steps
    while remaining > 0:
        chunk = min(remaining, args.save_every)
        state = fs.train(config, state, step, content, chunk,
                         callback=lambda i, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4g}")))
        fs.save_checkpoint(out, config, state)
        remaining -= chunk
    bar.close()
    if args.steps == 0:
        fs.save_checkpoint(out, config, state)
    last = f", last loss {state.losses[-1]:.4g}" if state.losses else ""
    print(f"{out}  step {state.step}{last}")
    return 0


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
    out = output_path(args.out)
    from pathlib import Path

    import numpy as np

    from jaxviz import fast_style as fs
    from jaxviz import fast_style_pretrained as fsp
    from jaxviz.accel.xla import compiler_options
    from jaxviz.images import load_image, save_image
    if args.style is not None and args.style_mix is not None:
        raise JaxvizError("give --style or --style-mix, not both")
    if args.size is not None:
        _size(args.size, 4, 4096)
    if args.model == fsp.NAME and not Path(args.model).exists():  # the built-in pretrained network
        net, params, _ = fsp.load_multistyle()
        weights, stylize, minimum = fsp.style_vector(args.style_mix or args.style or 0), fsp.stylize, 8
    else:
        if not Path(args.model).is_file():
            import difflib
            hint = f"; did you mean {fsp.NAME}?" if difflib.get_close_matches(args.model, [fsp.NAME], cutoff=0.6) \
                else f"; give a checkpoint from `jaxviz fast-style train` or {fsp.NAME}"
            raise JaxvizError(f"no such fast-style model: {args.model}{hint}")
        if args.style is not None:
            raise JaxvizError(f"--style names a style of --model {fsp.NAME}; "
                              "mix a checkpoint's styles with --style-mix")
        config, state = fs.load_checkpoint(args.model)
        net, params, stylize, minimum = config.network(), state.params, fs.stylize, 4
        weights = fs.style_weights(config.num_styles, _floats(args.style_mix, "--style-mix"))
    image = load_image(args.image)
    if args.size is not None:  # the longer side becomes --size exactly, the aspect ratio kept
        h, w = image.shape[:2]
        scale = args.size / max(h, w)
        image = load_image(args.image, (max(1, round(h * scale)), max(1, round(w * scale))), fit="stretch")
    # the network needs sides that are multiples of 4: stylise a reflect-padded copy, crop it back
    h, w = image.shape[:2]
    padded, (top, left) = _pad_to(image, 4, minimum)
    result = stylize(net, params, padded[None], weights, compiler_options=compiler_options(dense_convolutions=True))
    save_image(np.asarray(result[0])[top:top + h, left:left + w], out)
    print(out)
    return 0
