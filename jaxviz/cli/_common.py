"""What the subcommands share: flags generated from the technique registry, inputs and outputs
checked before any work, atomic writes, and images processed in bounded chunks.

- ``add_options(parser, techniques)`` adds one flag per option of the given techniques (the union
  over a command's methods; the help says which methods use a flag and shows the defaults, read
  from the functions' signatures when the help is printed, so building the parser imports no
  JAX). Flags default to "not given" so that ``options_for(args, technique)`` knows what the user
  set: it refuses a flag the chosen method does not use, validates the values through the
  registry's ``Option``s (errors name the --flag) and fills in the technique's defaults.
- ``add_option(parser, option)``: a front-end option (``--batch``, a canvas size) validated by
  the same ``Option`` class: ``option_value(args, option)``.
- Writes go through ``jaxviz.io`` (temporary file in the target folder, renamed when complete;
  a read-only or full location is one error line); ``output_path`` checks the folder first.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.options import Option

# ------------------------------------------------------------------ generated options

def _dest(flag: str) -> str:
    name = flag.lstrip("-")
    name = name.removeprefix("no-")
    return name.replace("-", "_")


def _value_text(option: Option, value) -> str:
    if value is None:
        return option.none or "none"
    if isinstance(value, (list, tuple)):
        return " ".join(_value_text(option, v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _metavar(option: Option) -> str | tuple | None:
    if option.metavar:
        return tuple(option.metavar.split()) if isinstance(option.nargs, int) else option.metavar
    if option.choices:
        return "{" + ",".join(_value_text(option, c) for c in option.choices) + "}"
    return {int: "N", float: "X", "amount": "X"}.get(option.kind, "TEXT")


def add_options(parser: argparse.ArgumentParser, techniques: Sequence) -> dict:
    """Add the flags of ``techniques`` (registry entries of one command) to ``parser``.

    Returns (and records on the parsed arguments as ``_jaxviz_flags``) {flag: (dest, [technique
    names using it])}."""
    uses: dict[str, list] = {}
    for t in techniques:
        for o in t.cli_options():
            uses.setdefault(o.cli_flag, []).append((t, o))
    flags = {}
    for flag, pairs in uses.items():
        first = pairs[0][1]
        dest = _dest(flag)
        names = [t.name for t, _ in pairs]
        kwargs: dict = {"dest": dest, "default": None}
        if first.kind is bool:
            kwargs["action"] = "store_false" if flag.startswith("--no-") else "store_true"
        else:
            kwargs["metavar"] = _metavar(first)
            if first.nargs is not None:
                kwargs["nargs"] = first.nargs
                if first.nargs == "?":
                    kwargs["const"] = first.const
        if all(o.required for _, o in pairs) and len(pairs) == len(techniques):
            kwargs["required"] = True
        action = parser.add_argument(flag, help=_help_base(pairs, len({t.name for t in techniques})), **kwargs)
        action._jaxviz_uses = pairs  # the defaults are added when the help is printed
        flags[flag] = (dest, names)
    parser.set_defaults(_jaxviz_flags=flags)
    return flags


def _help_base(pairs, total: int) -> str:
    helps = list(dict.fromkeys(o.help for _, o in pairs if o.help))
    text = "; ".join(helps)
    if len(pairs) < total:
        text += f" [{', '.join(t.name for t, _ in pairs)}]"
    return text.replace("%", "%%")


def _default_text(pairs) -> str:
    """"(default X)" of a generated flag, or "(defaults a X, b Y)" when its methods differ."""
    option = pairs[0][1]
    if option.kind is bool or option.required:
        return ""
    try:
        defaults = {t.name: t.defaults().get(o.name) for t, o in pairs}
    except Exception:  # a technique module that does not import: the help still prints
        return ""
    if all(v is None and o.none is None for v, (_, o) in zip(defaults.values(), pairs)):
        return ""  # "not set": the help says what happens then
    texts = {name: ("not set" if v is None and o.none is None else _value_text(o, v))
             for (name, v), (_, o) in zip(defaults.items(), pairs)}
    if len(set(texts.values())) == 1:
        return f" (default {next(iter(texts.values()))})"
    # the methods without a value of their own are covered by the help text ("the method's")
    texts = {n: v for n, v in texts.items() if v != "not set"}
    return " (defaults " + ", ".join(f"{n} {v}" for n, v in texts.items()) + ")"


def fill_help(parser: argparse.ArgumentParser) -> None:
    """Put the defaults into the help of ``parser``'s generated flags (called before printing:
    reading the defaults imports the techniques' modules)."""
    generated = [a for a in parser._actions if hasattr(a, "_jaxviz_uses")]
    total = len({t.name for a in generated for t, _ in a._jaxviz_uses})
    for action in generated:
        action.help = _help_base(action._jaxviz_uses, total) + _default_text(action._jaxviz_uses).replace("%", "%%")


def options_for(args: argparse.Namespace, technique, context: dict | None = None) -> dict:
    """The keyword arguments of ``technique`` from the command line: the defaults, overridden by
    the flags the user gave (validated by the registry; errors name the --flag).

    Raises:
      JaxvizError: a flag that ``technique`` does not use, or a bad value.
    """
    flags = getattr(args, "_jaxviz_flags", {}) or {}
    by_flag = {o.cli_flag: o for o in technique.cli_options()}
    given = {}
    for flag, (dest, users) in flags.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if flag not in by_flag:  # (--seed too: a method without randomness would ignore it)
            where = "--method " if getattr(args, "method", None) is not None else ""
            raise JaxvizError(f"{flag} applies to {where}{', '.join(users)}, not {technique.name}")
        given[by_flag[flag].name] = value
    checked = technique.check(cli=True, context=context, **given)
    options = {**technique.defaults(), **checked}
    technique.check_unused(options, cli=True, given=given)  # a flag given that a default turns off
    return options


def given(args: argparse.Namespace, flag: str) -> bool:
    """Whether the user gave generated ``flag``."""
    dest = (getattr(args, "_jaxviz_flags", {}) or {}).get(flag, (_dest(flag),))[0]
    return getattr(args, dest, None) is not None


def add_option(parser: argparse.ArgumentParser, option: Option, *flags: str, **kwargs) -> None:
    """A front-end option validated by ``option`` (``option_value``); its default is shown."""
    default = None if option.default is _missing() else option.default
    help = option.help + ("" if default is None or option.kind is bool else f" (default {_value_text(option, default)})")
    if option.kind is bool:
        parser.add_argument(option.cli_flag, *flags, dest=option.name, action="store_true", help=help, **kwargs)
        return
    parser.add_argument(option.cli_flag, *flags, dest=option.name, default=None, metavar=_metavar(option),
                        help=help.replace("%", "%%"), **({"nargs": option.nargs} if option.nargs else {}), **kwargs)


def _missing():
    from jaxviz.options import MISSING
    return MISSING


def option_value(args: argparse.Namespace, option: Option, context: dict | None = None):
    """The checked value of front-end ``option`` (its default when not given)."""
    value = getattr(args, option.name, None)
    if value is None:
        return None if option.default is _missing() else option.default
    return option.check(value, cli=True, context=context)


# ------------------------------------------------------------------ models and images

def add_model(parser: argparse.ArgumentParser, classifier: bool = True) -> None:
    what = "first available of squeezenet1_1, efficientnet_lite0" if classifier else "required"
    parser.add_argument("--model", "-m", default=None, help=f"model name (`jaxviz models`; default: {what})")


FIT_HELP = ("eval (default): the model's standard evaluation transform (torchvision models: resize the shorter "
            "side to 256, centre crop 224); stretch: resize straight to the input size; crop: same as eval")


def add_fit(parser: argparse.ArgumentParser, help: str = FIT_HELP) -> None:
    parser.add_argument("--fit", choices=["eval", "stretch", "crop"], default="eval", help=help)


def add_images(parser: argparse.ArgumentParser, nargs: str = "+") -> None:
    parser.add_argument("images", nargs=nargs, metavar="IMAGE",
                        help="image files or sample names (chelsea, coffee, astronaut, rocket, brick, ...)")
    add_fit(parser)


def add_batch(parser: argparse.ArgumentParser) -> None:
    from jaxviz.techniques import BATCH
    add_option(parser, BATCH)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_output(parser: argparse.ArgumentParser, required: bool = False, help: str = "output PNG") -> None:
    parser.add_argument("--out", "-o", required=required, default=None, help=help)


def output_path(path: str | os.PathLike | None, suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> Path | None:
    """Check an output path before any work: its folder exists and is writable, the path is not a
    folder and the suffix is one we write."""
    if path is None:
        return None
    from jaxviz.io import check_output_dir
    path = Path(path)
    if path.is_dir():
        raise JaxvizError(f"output path is a directory: {path}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise JaxvizError(f"output {path} must end in {' or '.join(suffixes)}")
    check_output_dir(path.parent)
    return path


def distinct(*paths: Path | None) -> None:
    """Refuse two outputs that are the same file."""
    seen = {}
    for p in paths:
        if p is None:
            continue
        key = p.resolve()
        if key in seen:
            raise JaxvizError(f"two outputs are the same file: {p}")
        seen[key] = p


def load_model_arg(name: str | None, classifier: bool = True):
    """The model named on the command line (or the default), accelerated for this machine
    (``jaxviz.accel.accelerate``: same results, faster), with a clear error if unusable."""
    from jaxviz.accel import accelerate
    from jaxviz.weights.store import default_model, load_model
    model = accelerate(load_model(name or default_model()))
    if classifier and model.num_classes is None:
        raise JaxvizError(f"model {model.name} has no classifier; use a classification model here")
    return model


def load_inputs(model, sources: list[str], fit: str = "eval", size=None, exif: bool = False) -> np.ndarray:
    """(N, H, W, 3) images in [0, 1] at ``size`` (default: the model's input size), fitted with the
    model's evaluation transform (or stretched)."""
    from jaxviz.images import load_images
    return load_images(sources, size or model.input_hw(), fit, model.eval_transform, exif)


def check_memory_for(model, size, images: int, what: str, *, backward: bool = True, copies: int = 1) -> None:
    """Refuse, before any work, a run whose activations would not fit in memory."""
    from jaxviz.techniques import check_model_memory
    check_model_memory(model, size, images, what, backward=backward, copies=copies)


# ------------------------------------------------------------------ writing

def write_npy(path: Path, array) -> None:
    from jaxviz.io import atomic_write
    array = np.asarray(array)
    atomic_write(path, lambda f: np.save(f, array))


def write_json(path: Path, obj) -> None:
    import json

    from jaxviz.io import write_text
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    from jaxviz.io import save_figure as save
    save(fig, path, dpi=dpi)


def chunks(args: argparse.Namespace, count: int, fn: Callable[[int, int], object], desc: str) -> list:
    """``fn(start, stop)`` over ``count`` images in chunks of ``--batch`` with a progress bar
    (``--quiet``: none)."""
    from jaxviz.techniques import BATCH, in_batches
    batch = option_value(args, BATCH)
    return in_batches(fn, count, batch, progress=False if getattr(args, "quiet", False) else desc)
