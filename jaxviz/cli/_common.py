"""Arguments and input checks shared by the subcommands (validated once, here at the boundary)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from jaxviz.errors import JaxvizError


def add_model(parser: argparse.ArgumentParser, classifier: bool = True) -> None:
    what = "first available of squeezenet1_1, efficientnet_lite0" if classifier else "required"
    parser.add_argument("--model", "-m", default=None, help=f"model name (`jaxviz models`; default: {what})")


def add_images(parser: argparse.ArgumentParser, nargs: str = "+") -> None:
    parser.add_argument("images", nargs=nargs, metavar="IMAGE",
                        help="image files or sample names (chelsea, coffee, astronaut, rocket, brick, ...)")
    parser.add_argument("--fit", choices=["eval", "stretch", "crop"], default="eval",
                        help="eval (default): the model's standard evaluation transform (torchvision models: "
                             "resize the shorter side to 256, centre crop 224); stretch: resize straight to the "
                             "input size; crop: same as eval")


def add_output(parser: argparse.ArgumentParser, required: bool = False, help: str = "output PNG") -> None:
    parser.add_argument("--out", "-o", required=required, default=None, help=help)


def output_path(path: str | os.PathLike | None, suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> Path | None:
    """Check an output path before any work: its folder exists and the suffix is one we write."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise JaxvizError(f"output path is a directory: {path}")
    if not path.parent.is_dir():
        raise JaxvizError(f"output directory does not exist: {path.parent}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise JaxvizError(f"output {path} must end in {' or '.join(suffixes)}")
    return path


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
