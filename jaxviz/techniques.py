"""The technique registry: every public technique once, with its options, what it needs and the
command that exposes it. The command line and the gallery's parameter records are generated
from it, and option values are validated here, once, for both the CLI and the public functions.

    from jaxviz.techniques import TECHNIQUES, check, techniques
    TECHNIQUES["smoothgrad"].load()       # jaxviz.saliency.smoothgrad_gradients (imported lazily)
    TECHNIQUES["smoothgrad"].defaults()   # {"samples": 25, "noise": 0.15, ...}: the signature's
    check("smoothgrad", samples=0)        # JaxvizError: samples= must be >= 1 and <= 1000, got 0
    techniques("saliency")                # the methods of `jaxviz saliency`, in --help order
    TECHNIQUES["gradcam"].record(layer="fire9")   # a figure's parameter table

- ``Technique.function`` is ``"module:attr"``; ``fixed`` are keyword arguments the entry pins
  (``attack(method="fgsm")``). Defaults come from the function's signature (the single source of
  defaults), overridden by ``Option.default`` only where the command line deliberately differs
  (or the option is not a keyword of the function, e.g. ``seed`` for a ``key``).
- ``needs``: "layer" (a named spatial layer), "classifier" (class outputs), "relu" (ReLUs whose
  backward rule is replaced), "pixel_range" (a declared valid pixel box), "key" (randomness).
- ``output``: "attribution" (signed (N, H, W, 3)), "map" ((N, H, W), CAM without resize (N, h, w))
  or "" for everything else.
- ``unused``: ``Unused`` rules, an option that another option's value turns off (classviz's
  ``clip_fraction`` without blurs, a learning rate beside a line search): setting it is refused,
  not silently ignored.
- Bounds are real: absurd values are refused before any work, and sizes also by a memory
  estimate (``check_model_memory``) from the model's layer shapes at that size x images in flight.

Importing this module imports no JAX: ``jaxviz --help`` stays fast.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from jaxviz.errors import JaxvizError
from jaxviz.options import MISSING, Option, check_memory

if TYPE_CHECKING:
    from jaxviz.interface import ModelLike

NEEDS = frozenset({"layer", "classifier", "relu", "pixel_range", "key"})
OUTPUTS = ("attribution", "map", "")


@dataclass(frozen=True)
class Unused:
    """``option`` does nothing while ``other`` is one of ``values`` (``why``): setting it then (not
    None or 0) is an error, not a silently ignored value. ``given_only``: an option whose default
    is not "off" (a blur sigma, a seed), judged on the command line only, where what the user
    gave is known."""

    option: str
    other: str
    values: tuple
    why: str
    given_only: bool = False


@dataclass(frozen=True)
class Technique:
    """One technique: its function, options, needs and the CLI subcommand that exposes it."""

    name: str
    function: str  # "package.module:attr"
    summary: str
    paper: str = ""
    options: tuple[Option, ...] = ()
    needs: frozenset = frozenset()
    command: str = ""  # "" : library only
    fixed: tuple[tuple[str, Any], ...] = ()  # keyword arguments pinned by this entry
    output: str = ""
    unused: tuple[Unused, ...] = ()  # options that another option's value turns off
    aliases: tuple[str, ...] = ()  # other names the command line accepts (--method efros)

    def __post_init__(self) -> None:
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"technique {self.name}: unknown needs {sorted(unknown)}")
        names = [o.name for o in self.options]
        if len(names) != len(set(names)):
            raise ValueError(f"technique {self.name}: duplicate option names")
        if self.output not in OUTPUTS:
            raise ValueError(f"technique {self.name}: output must be one of {OUTPUTS}")

    # ------------------------------------------------------------------ the function
    def load(self) -> Callable:
        """The function (imported on first use), with ``fixed`` arguments applied."""
        fn = _load(self.function)
        return functools.partial(fn, **dict(self.fixed)) if self.fixed else fn

    def signature_defaults(self) -> dict:
        """{keyword: default} of the function's signature (keywords without a default left out)."""
        return dict(_signature_defaults(self.function))

    def defaults(self) -> dict:
        """{option: default}: the signature's, or ``Option.default`` where one is given."""
        sig = self.signature_defaults()
        out = {}
        for o in self.options:
            if o.default is not MISSING:
                out[o.name] = o.default
            elif o.name in sig:
                out[o.name] = sig[o.name]
            elif o.required:
                out[o.name] = None
            else:
                raise JaxvizError(f"technique {self.name}: option {o.name} has no default "
                                  f"(not a keyword of {self.function} and no Option.default)")
        return out

    # ------------------------------------------------------------------ options
    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise JaxvizError(f"{self.name} has no option {name!r}; its options: "
                          f"{', '.join(o.name for o in self.options) or 'none'}")

    def check(self, *, cli: bool = False, context: dict | None = None, **values) -> dict:
        """``values`` checked against this technique's options (the checked values returned).

        Args:
          cli: name options by their --flag in errors (the command line) instead of ``name=``.
          context: run-time facts for named bounds, e.g. ``{"images": 12, "num_classes": 1000}``.
        Raises:
          JaxvizError: one line naming the option, the bound and the value; an unknown option.
        """
        by_name = {o.name: o for o in self.options}
        out = {}
        for name, value in values.items():
            if name not in by_name:
                self.option(name)  # raises with the list of options
            out[name] = by_name[name].check(value, cli, context)
        self.check_unused(out, cli)
        return out

    def check_unused(self, values: dict, cli: bool = False, given: Iterable[str] | None = None) -> None:
        """Refuse an option set where another of ``values`` turns it off (``Unused``); a rule whose
        two options are not both in ``values`` is not judged, nor a ``given_only`` rule whose
        option is not among ``given`` (the options the user gave; None: unknown).

        Raises:
          JaxvizError: one line naming both options, their values and why.
        """
        given = None if given is None else set(given)
        for rule in self.unused:
            if rule.option not in values or rule.other not in values:
                continue
            if rule.given_only and (given is None or rule.option not in given):
                continue
            value, other = values[rule.option], values[rule.other]
            if value is not None and value != 0 and other in rule.values:
                a, b, eq = self.option(rule.option), self.option(rule.other), " " if cli else "="
                raise JaxvizError(f"{a.label(cli)}{eq}{value!s} does nothing with {b.label(cli)}{eq}{other!s}: "
                                  f"{rule.why}; leave {a.label(cli)} out")

    def record(self, **used) -> dict:
        """{option: value} of a run with ``used`` overrides (checked) over the defaults: what a
        figure shows as its parameter table."""
        values = {**self.defaults(), **self.check(**used)}
        return {k: _plain(v) for k, v in values.items()}

    def cli_options(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.cli)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) + self.aliases


@functools.cache
def _load(function: str) -> Callable:
    module, _, attr = function.partition(":")
    return getattr(importlib.import_module(module), attr)


@functools.cache
def _signature_defaults(function: str) -> tuple:
    fn = _load(function)
    params = inspect.signature(fn).parameters.values()
    return tuple((p.name, p.default) for p in params if p.default is not inspect.Parameter.empty)


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of an option value (tuples as lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- options
# Shared option definitions (one place for each bound; techniques reuse them).

MAX_SIZE = 4096


def _seed(help: str = "random seed") -> Option:
    return Option("seed", int, help, lo=0, hi=2**32 - 1, default=0)


def _steps(default=MISSING, lo: int = 1, hi: int = 100_000, help: str = "iterations") -> Option:
    return Option("steps", int, help, lo=lo, hi=hi, default=default)


def _lr(help: str, hi: float = 1e6, **kw) -> Option:
    return Option("lr", float, help, lo=0, lo_open=True, hi=hi, **kw)


def _size(lo: int, hi: int = 2048, help: str = "image size in pixels (default: the model's)", **kw) -> Option:
    return Option("size", int, help, lo=lo, hi=hi, pair=True, **kw)  # an int or (height, width)


def _weight(name: str, help: str, **kw) -> Option:
    return Option(name, float, help, lo=0, hi=1e12, **kw)


LAYER = Option("layer", str, "layer name or alias (`jaxviz layers MODEL`)", metavar="LAYER")
REQUIRED_LAYER = Option("layer", str, "layer name or alias (`jaxviz layers MODEL`)", metavar="LAYER",
                        required=True, optional=False, flag="--layer")
JITTER = Option("jitter_px", int, "random roll per step in pixels", lo=0, hi=1024, flag="--jitter")
OPTIMIZERS = ("lbfgs", "lbfgs-linesearch", "adam")
_LINE_SEARCH_STEPS = Unused("learning_rate", "optimizer", ("lbfgs-linesearch",), "its line search sets the steps")
OPTIMIZER = Option("optimizer", str, "lbfgs: unit step, one evaluation per step (fast); lbfgs-linesearch: "
                   "zoom line search (guaranteed descent, slower); adam", choices=OPTIMIZERS)
CHUNK = Option("chunk", int, "at most this many copies evaluated at once (memory)", lo=1, hi=100_000, cli=False)

# Front-end options (not keywords of a technique): images per step, a --seed for a key.
BATCH = Option("batch", int, "images per step: bounds memory", lo=1, hi=4096, default=16)
SEED = _seed()

_RESIZE = Option("resize", str, "CAM methods: upsample the map bilinear (pytorch-grad-cam), nearest (Captum's "
                 "interpolate/GuidedGradCam) or none (the layer's own resolution, Captum's LayerGradCam)",
                 choices=("bilinear", "nearest", None), none="none", metavar="MODE")
_RELU = Option("relu", bool, "keep the signed map (Captum's LayerGradCam default; default: ReLU, as the "
               "papers and pytorch-grad-cam)", flag="--no-relu")
_CAM_LAYER = Option("layer", str, "layer (default: the model's last feature map; cam always uses the "
                    "model's CAM layer)", metavar="LAYER")

_ATTACK_BASE = (
    Option("steps", int, "maximum number of steps", lo=1, hi=100_000),
    Option("confidence", float, "success also needs the winning class probability >= this (e.g. 0.99)",
           lo=0, hi=1, lo_open=True, hi_open=True),
    Option("early_stop", bool, "run every step even after an image succeeds", flag="--no-early-stop"),
    _seed(help="random seed (random start)"),
)


def _eps(hi: float) -> Option:
    # one text for every gradient attack, so that the command's help says it once
    return Option("eps", "amount", "budget in [0,1] pixel units, e.g. 0.01 or 8/255: the L-inf radius (fgsm, "
                  "ifgsm, pgd-linf) or L2 budget (seed, pgd-l2); default: the method's",
                  lo=0, lo_open=True, hi=hi, metavar="EPS")


def _step(hi: float) -> Option:
    return Option("step", "amount", "step size in pixel units (default: the method's)", lo=0, lo_open=True,
                  hi=hi, metavar="STEP")


def _attack(name: str, summary: str, paper: str, norm: str, *, has_steps: bool = True,
            random_start: bool = False) -> Technique:
    # --seed only where the method starts at a random point (adversarial.METHODS' random_start):
    # elsewhere it would be accepted and change nothing
    def keep(o: Option) -> bool:
        return random_start if o.name == "seed" else has_steps or o.name == "confidence"
    hi = 1.0 if norm == "linf" else 1000.0
    options = (_eps(hi),) + ((_step(hi),) if has_steps else ()) + tuple(filter(keep, _ATTACK_BASE))
    return Technique(name, "jaxviz.adversarial:attack", summary, paper, options, frozenset({"classifier", "pixel_range"}),
                     "adversarial", fixed=(("method", name),))


_GRAM_LAYERS = Option("layers", str, "VGG19 layers to match (default conv1_1 conv2_1 conv3_1 conv4_1 conv5_1)",
                      nargs="+", default=None, metavar="LAYER")

_ALL: list[Technique] = [
    # ---------------------------------------------------------------- saliency
    Technique("vanilla", "jaxviz.saliency:gradients", "gradient of the score w.r.t. the input",
              "Simonyan, Vedaldi & Zisserman 2014", command="saliency", output="attribution"),
    Technique("inputxgrad", "jaxviz.saliency:input_x_gradient", "input x gradient (Captum's InputXGradient)",
              "Shrikumar et al. 2016", command="saliency", output="attribution"),
    Technique("smoothgrad", "jaxviz.saliency:smoothgrad_gradients", "gradient averaged over noisy copies",
              "Smilkov et al. 2017", (
                  Option("samples", int, "noisy copies per image", lo=1, hi=1000),
                  Option("noise", float, "noise std as a fraction of each image's value range (Smilkov et al.)",
                         lo=0, hi=10),
                  Option("noise_std", float, "noise std in model-input units instead (Captum's stdevs)",
                         lo=0, hi=1000),
                  CHUNK, _seed(help="random seed (smoothgrad noise)")),
              frozenset({"key"}), "saliency", output="attribution"),
    Technique("integrated", "jaxviz.saliency:integrated_gradients_attributions",
              "Integrated Gradients (midpoint rule from a zero baseline)", "Sundararajan et al. 2017",
              (Option("steps", int, "integrated-gradients steps", lo=1, hi=1000), CHUNK),
              command="saliency", output="attribution"),
    Technique("guided", "jaxviz.saliency:guided_gradients", "guided backpropagation",
              "Springenberg et al. 2015", needs=frozenset({"relu"}), command="saliency", output="attribution"),
    Technique("deconv", "jaxviz.saliency:deconvnet_gradients", "deconvnet backward pass", "Zeiler & Fergus 2014",
              needs=frozenset({"relu"}), command="saliency", output="attribution"),
    Technique("cam", "jaxviz.cam:cam", "class activation map of a GAP + linear head", "Zhou et al. 2016",
              (Option("layer", str, "CAM layer (the model's)", cli=False), _RELU, _RESIZE),
              frozenset({"layer", "classifier"}), "saliency", output="map"),
    Technique("gradcam", "jaxviz.cam:grad_cam", "Grad-CAM", "Selvaraju et al. 2017",
              (_CAM_LAYER, _RELU, _RESIZE), frozenset({"layer"}), "saliency", output="map"),
    Technique("gradcam++", "jaxviz.cam:grad_cam_plus_plus", "Grad-CAM++", "Chattopadhyay et al. 2018",
              (_CAM_LAYER, _RELU, _RESIZE), frozenset({"layer"}), "saliency", output="map"),
    Technique("guided-gradcam", "jaxviz.cam:guided_grad_cam_attributions", "guided backprop x Grad-CAM",
              "Selvaraju et al. 2017",
              (_CAM_LAYER, Option("resize", str, _RESIZE.help, choices=("bilinear", "nearest"), none="none",
                                  optional=False, metavar="MODE")),
              frozenset({"layer", "relu"}), "saliency", output="attribution"),
    Technique("occlusion", "jaxviz.occlusion:occlusion_map", "score drop under a sliding occluder",
              "Zeiler & Fergus 2014", (
                  Option("window", int, "occlusion window in pixels", lo=1, hi=MAX_SIZE, pair=True),
                  Option("stride", int, "occlusion stride in pixels", lo=1, hi=MAX_SIZE, pair=True),
                  Option("fill", str, "occlusion fill", choices=("mean", "grey", "zeros", "blur")),
                  Option("chunk", int, "occluded copies per evaluation (memory)", lo=1, hi=100_000, cli=False)),
              command="saliency", output="map"),
    Technique("deletion-insertion", "jaxviz.metrics:deletion_insertion", "deletion / insertion AUCs of a map",
              "Petsiuk et al. 2018 (RISE)", (
                  Option("steps", int, "fractions of the curve", lo=1, hi=10_000),
                  Option("baseline", str, "what removed pixels become", choices=("blur", "mean", "zero")),
                  Option("chunk", int, "perturbed images per call (memory)", lo=1, hi=100_000),
                  Option("blur_sigma", float, "blur baseline sigma in pixels", lo=0, lo_open=True, hi=1000),
                  Option("patch", int, "cell size of the ranking", lo=1, hi=MAX_SIZE)),
              frozenset({"classifier"}),
              unused=(Unused("blur_sigma", "baseline", ("mean", "zero"), "only the blur baseline is blurred"),)),
    Technique("segment", "jaxviz.segment:segment_from_saliency", "object mask from a saliency map (GMM + graph cut)",
              "Simonyan et al. 2014 §3.1", (
                  Option("fg_fraction", float, "share of most salient pixels seeding the object",
                         lo=0, hi=1, lo_open=True, hi_open=True),
                  Option("bg_fraction", float, "share of least salient pixels seeding the background",
                         lo=0, hi=1, lo_open=True, hi_open=True),
                  Option("iterations", int, "GMM refit + cut rounds", lo=1, hi=50),
                  Option("neighbours", int, "grid connectivity", lo=4, hi=8, choices=(4, 8), cli=False),
                  Option("components", int, "Gaussians per colour model", lo=1, hi=50, cli=False),
                  Option("gamma", float, "weight of the smoothness term", lo=0, hi=1e6, cli=False),
                  Option("max_side", int, "side of the grid the cut runs on (px)", lo=8, hi=MAX_SIZE, cli=False),
                  Option("smooth", float, "Gaussian sigma of the saliency before seeding (grid px)", lo=0,
                         hi=1000, cli=False),
                  _seed(help="random seed (SmoothGrad noise, GMM init)")),
              command="segment"),
    # ---------------------------------------------------------------- inside the network
    Technique("predict", "jaxviz.classify:top_k", "top-k classes", "", (
        Option("k", int, "how many classes", lo=1, hi="num_classes", flag="--topk", metavar="K"),),
        frozenset({"classifier"}), "predict"),
    Technique("filters", "jaxviz.filters:first_layer_filters", "first-layer filters (RGB) or a deeper layer's (grey)",
              "Krizhevsky et al. 2012; Zeiler & Fergus 2014", (
                  Option("shared_scale", bool, "one display scale for the whole layer (default: each filter its own)"),
                  Option("groups", int, "deeper layer: show the first N output filters", lo=1, hi=100_000,
                         default=None),
                  Option("per_group", int, "deeper layer: show the first N input channels of each filter",
                         lo=1, hi=100_000, default=None)),
              command="filters"),
    Technique("activations", "jaxviz.activations:activation_panel", "all channels of a layer for one image",
              "Yosinski et al. 2015", (
                  REQUIRED_LAYER, Option("columns", int, "tiles per row (default: square)", lo=1, hi=4096)),
              frozenset({"layer"}), "activations"),
    Technique("scan", "jaxviz.scan_index:scan", "top-k activating images per channel, pooled features",
              "Zeiler & Fergus 2014", (
                  Option("layers", str, "layers to scan (names or aliases)", nargs="+", metavar="LAYER",
                         default=None),
                  # no upper bound: both are capped at the number of images (memory bounded by it)
                  Option("topk", int, "images kept per channel (at most the number of images)", lo=1),
                  Option("batch", int, "images per step (at most the number of images)", lo=1),
                  Option("input_size", int, "input size (default: the model's)", lo=1, hi=MAX_SIZE, flag="--size")),
              frozenset({"layer"}), "scan"),
    Technique("patches", "jaxviz.patches:patch_grid", "image patches that most activate chosen channels",
              "Zeiler & Fergus 2014", (
                  REQUIRED_LAYER,
                  Option("channels", int, "channel numbers", lo=0, hi=1_000_000, nargs="+", required=True,
                         optional=False),
                  Option("k", int, "patches per channel, up to the index's scan --topk (default: all in the index)", lo=1,
                         hi="topk")),
              frozenset({"layer"}), "patches"),
    Technique("neighbors", "jaxviz.embedding:nearest_neighbors", "nearest images in feature or pixel space",
              "Krizhevsky et al. 2012", (
                  Option("k", int, "neighbours per query", lo=1, hi="images", default=8),
                  Option("metric", str, "distance", choices=("cosine", "l2")),
                  Option("space", str, "pooled features of the index's model, or raw pixels",
                         choices=("feature", "pixel"), default="feature"),
                  Option("pixel_size", int, "pixel space: resize to N x N", lo=4, hi=256, default=32)),
              command="neighbors"),
    Technique("tsne", "jaxviz.embedding:tsne", "t-SNE map of pooled features", "van der Maaten & Hinton 2008", (
        Option("perplexity", float, "t-SNE perplexity (capped at (N - 1) / 3)", lo=0, lo_open=True, hi=1e6),
        _seed()), command="embed"),
    Technique("pca", "jaxviz.embedding:pca", "PCA map of pooled features", "", (_seed(),), command="embed"),
    # ---------------------------------------------------------------- optimising the input
    Technique("classviz", "jaxviz.classviz:class_visualization", "class visualisation by gradient ascent",
              "Simonyan et al. 2014; Yosinski et al. 2015", (
                  _steps(), _lr("L2 length of each normalised gradient step, model-input units"),
                  Option("l2", float, "L2 penalty weight lambda", lo=0, hi=1e6),
                  Option("blur_every", int, "Gaussian blur every k steps (0: never)", lo=0, hi=100_000),
                  Option("blur_sigma", float, "blur sigma in pixels", lo=0, hi=100),
                  Option("jitter_px", int, JITTER.help, lo=0, hi=1024, flag="--jitter"),
                  Option("clip_fraction", float, "zero this fraction of smallest-norm pixels at each blur",
                         lo=0, hi=1, hi_open=True),
                  Option("score", str, "class score", choices=("logit", "prob", "logprob")),
                  _size(8), SEED),
              frozenset({"classifier", "pixel_range"}), "classviz",
              unused=(Unused("clip_fraction", "blur_every", (0,), "the clipping acts at each blur"),
                      Unused("blur_sigma", "blur_every", (0,), "it never blurs", given_only=True))),
    Technique("neuron", "jaxviz.classviz:channel_visualization", "channel / unit visualisation",
              "Olah et al. 2017 (Lucid)", (
                  REQUIRED_LAYER,
                  Option("channels", int, "channel index(es)", lo=0, hi=1_000_000, nargs="+", required=True,
                         optional=False, flag="--channel"),
                  Option("unit", int, "maximise the unit at (Y, X) instead of the channel mean", lo=0,
                         hi=100_000, nargs=2, metavar="Y X"),
                  _steps(), _lr("Adam learning rate"),
                  Option("parameterization", str, "image parameterisation", choices=("fourier", "pixels"),
                         flag="--param"),
                  JITTER, _size(8), SEED),
              frozenset({"layer", "pixel_range"}), "neuron"),
    Technique("invert", "jaxviz.inversion:invert", "feature inversion (normalised loss + TV^beta)",
              "Mahendran & Vedaldi 2015", (
                  REQUIRED_LAYER, _steps(), _lr("Adam learning rate (model-input units)"),
                  Option("tv_weight", float, "lambda of the normalised TV^beta term", lo=0, hi=1e6),
                  Option("beta", float, "TV exponent beta", lo=0, lo_open=True, hi=10),
                  Option("optimizer", str, "optimiser", choices=("adam", "lbfgs")),
                  _size(8, default=None), SEED),
              frozenset({"layer", "pixel_range"}), "invert",
              unused=(Unused("lr", "optimizer", ("lbfgs",), "L-BFGS's line search sets its own steps"),
                      Unused("beta", "tv_weight", (0, 0.0), "there is no TV term", given_only=True))),
    Technique("dream", "jaxviz.dream:deepdream", "DeepDream with octaves", "Mordvintsev et al. 2015", (
        REQUIRED_LAYER,
        Option("octaves", int, "number of scales", lo=1, hi=20),
        Option("octave_scale", float, "ratio between scales", lo=1, lo_open=True, hi=10),
        _steps(help="steps per octave"),
        Option("step", float, "step size in model-input units", lo=0, lo_open=True, hi=1e6, cli=False),
        _lr("step size as a fraction of the valid range (g / mean|g| steps)", hi=1.0, default=1.5 / 255),
        Option("jitter_px", int, JITTER.help, lo=0, hi=1024, flag="--jitter"),
        _size(8, default=None), SEED),
        frozenset({"layer", "pixel_range"}), "dream",
        unused=(Unused("octave_scale", "octaves", (1,), "one octave has no scales", given_only=True),
                Unused("seed", "jitter_px", (0,), "the jitter is all that is random", given_only=True))),
    # ---------------------------------------------------------------- adversarial examples
    _attack("seed", "x <- x + eta*g/||g||_2 on the target logit until the prediction is the target "
            "(CS231n fooling images); --eps is an optional L2 budget", "Szegedy et al. 2014", "l2"),
    _attack("fgsm", "fast gradient sign method, one step of eps", "Goodfellow et al. 2015", "linf",
            has_steps=False),
    _attack("ifgsm", "iterative FGSM / BIM, clipped to the eps-ball", "Kurakin et al. 2017", "linf"),
    _attack("pgd-linf", "PGD in the L-inf ball with random start", "Madry et al. 2018", "linf", random_start=True),
    _attack("pgd-l2", "PGD in the L2 ball with random start", "Madry et al. 2018", "l2", random_start=True),
    Technique("simba", "jaxviz.blackbox:simba", "query-based black-box attack (probabilities only)",
              "Guo et al. 2019", (
                  Option("eps", "amount", "simba: L2 length of one step in pixel units", lo=0, lo_open=True,
                         hi=1.0, flag="--step", metavar="STEP"),
                  Option("max_l2", "amount", "simba: optional L2 budget in pixel units", lo=0, lo_open=True,
                         hi=1000.0, flag="--eps", metavar="EPS"),
                  Option("max_queries", int, "query budget per image (the initial prediction counts)", lo=2,
                         hi=1_000_000, flag="--queries"),
                  Option("basis", str, "search directions: dct (low frequencies first) or pixel",
                         choices=("dct", "pixel"), flag="--basis"),
                  Option("freq_ratio", float, "DCT low-frequency block", lo=0, lo_open=True, hi=1, cli=False),
                  Option("chunk", int, "images per call", lo=1, hi=100_000, cli=False),
                  _seed(help="random seed (direction order)")),
              frozenset({"classifier", "pixel_range", "key"}), "adversarial",
              unused=(Unused("freq_ratio", "basis", ("pixel",), "the pixel basis has no frequency order"),)),
    # ---------------------------------------------------------------- texture and style
    Technique("gram", "jaxviz.texture:gram_texture", "Gram-matrix texture synthesis", "Gatys et al. 2015", (
        _GRAM_LAYERS, _steps(lo=0, help="optimisation steps"), OPTIMIZER,
        Option("learning_rate", float, "Adam step / L-BFGS step length (not with lbfgs-linesearch)", lo=0,
               lo_open=True, hi=1e6, cli=False),
        _size(16, help="output size in pixels", default=128), SEED),
        frozenset({"layer"}), "texture", unused=(_LINE_SEARCH_STEPS,)),
    Technique("efros-leung", "jaxviz.texture:efros_leung", "non-parametric texture synthesis",
              "Efros & Leung 1999", (
                  Option("radius", int, "neighbourhood radius (window 2r+1)", lo=1, hi=64),
                  Option("tolerance", float, "copy a match within (1 + tolerance) of the best", lo=0, hi=10,
                         cli=False),
                  _size(8, help="output size in pixels", default=128), SEED),
              command="texture", aliases=("efros",)),
    Technique("style", "jaxviz.style:style_transfer", "neural style transfer", "Gatys et al. 2016", (
        Option("content_layer", str, "content layer"),
        Option("style_layers", str, "style layers", nargs="+", metavar="LAYER"),
        Option("layer_weights", float, "per style-layer weights, e.g. 1 1 1 1 1 or 1,1,1,1,1 (default equal)", lo=0, hi=1e12,
               nargs="+", metavar="W"),
        Option("style_blend", float, "blend weights of the styles, e.g. 0.7 0.3 or 0.7,0.3", lo=0, hi=1e12, nargs="+",
               flag="--style-weights", metavar="W"),
        _weight("content_weight", "content weight alpha"), _weight("style_weight", "style weight beta"),
        _weight("tv_weight", "total-variation weight gamma"),
        Option("style_scale", float, "resize the style image(s) by this", lo=0.05, hi=8),
        Option("preserve_color", str, "keep the content's colours", choices=("luminance", "histogram"),
               nargs="?", const="luminance"),
        Option("init", str, "start image", choices=("content", "style", "noise")),
        OPTIMIZER, _steps(lo=0),
        Option("learning_rate", float, "lbfgs: step length (default 1); adam: step in model units (default "
               "10); not with lbfgs-linesearch (its line search sets the steps)", lo=0, lo_open=True, hi=1e6,
               flag="--lr"),
        _size(16, help="content size: longer side in pixels", default=256), SEED),
        frozenset({"layer"}), "style",
        unused=(_LINE_SEARCH_STEPS,
                Unused("seed", "init", ("content", "style"), "only a noise start is random", given_only=True))),
    Technique("fast-style-train", "jaxviz.fast_style:FastStyleConfig",
              "train a (multi-style) transformation network with conditional instance norm",
              "Johnson et al. 2016; Dumoulin et al. 2017", (
                  _steps(default=200, lo=0, help="training steps to run"),
                  _size(16, 1024, help="training crop size"),
                  Option("batch", int, "images per step", lo=1, hi=256),
                  Option("width", int, "channels of the first conv", lo=1, hi=512),
                  Option("res_blocks", int, "residual blocks", lo=0, hi=64),
                  Option("learning_rate", float, "Adam learning rate", lo=0, lo_open=True, hi=1, flag="--lr"),
                  _weight("style_weight", "style weight"), _weight("content_weight", "content weight"),
                  _weight("tv_weight", "total-variation weight"),
                  Option("save_every", int, "checkpoint every N steps", lo=1, hi=100_000, default=100),
                  SEED),
              command="fast-style"),
    Technique("fast-style-apply", "jaxviz.fast_style:stylize", "stylise an image with a trained network",
              "Johnson et al. 2016", (
                  Option("style", str, "multistyle26: one style, style_0 ... style_25 or its index (default style_0)",
                         default=None),
                  _size(4, MAX_SIZE, help="longer side in pixels (default: the image's own size)", default=None)),
              command="fast-style"),
    # ---------------------------------------------------------------- studies
    Technique("bias", "jaxviz.bias:bias_study", "texture-vs-shape bias on cue-conflict images",
              "Geirhos et al. 2019", (
                  _steps(help="Adam steps of the style transfer"),
                  _size(32, 1024, help="image size in pixels", default=112),
                  Option("sources", int, "most confident classes used", lo=2, hi=1000, default=4),
                  Option("per_class", int, "images per class", lo=1, hi=1000, default=1),
                  Option("min_confidence", float, "every model's top-1 must be the source's class with this "
                         "probability", lo=0, hi=1, default=0.5),
                  _weight("style_weight", "style weight beta, content weight 1", default=10.0),
                  Option("learning_rate", float, "Adam step in VGG input units", lo=0, lo_open=True, hi=1e6,
                         default=4.0, flag="--lr"),
                  Option("texture_fraction", float, "style image = this central fraction of the texture source "
                         "(close-up; 1 = whole)", lo=0.1, hi=1, flag="--texture-crop"),
                  Option("batch", int, "pairs per batched optimisation (default all)", lo=1, hi=4096)),
              frozenset({"classifier"}), "bias"),
]

TECHNIQUES: dict[str, Technique] = {t.name: t for t in _ALL}
_BY_ALIAS: dict[str, Technique] = {a: t for t in _ALL for a in t.aliases}


def get(name: str, command: str | None = None, what: str = "method") -> Technique:
    """The technique called ``name`` (or an alias), optionally one of ``command``'s; a clear
    error with close names otherwise (``what`` names the kind: "method", "attack method")."""
    pool = techniques(command) if command else list(TECHNIQUES.values())
    for t in pool:
        if name in t.names:
            return t
    names = [n for t in pool for n in t.names]
    close = difflib.get_close_matches(str(name), names, n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    where = what if command else "technique"
    raise JaxvizError(f"unknown {where} {name!r}; use one of {', '.join(t.name for t in pool)}{hint}")


def techniques(command: str) -> list[Technique]:
    """The techniques exposed by CLI subcommand ``command``, in registry (= --help) order."""
    return [t for t in _ALL if t.command == command]


def check(name: str, *, cli: bool = False, context: dict | None = None, **values) -> dict:
    """``TECHNIQUES[name].check(**values)``: the one-line validation public functions call at entry."""
    return TECHNIQUES[name].check(cli=cli, context=context, **values)


def record(names: str | Sequence[str], **used) -> dict:
    """A figure's parameter record from the technique(s) it runs and the values it uses.

    One technique: ``{"technique": name, option: value, ...}``. Several: ``{"techniques": "a, b",
    "a.option": value, ...}`` with each override going to every technique that has the option.
    Keys that are no technique's option are kept as they are (the figure's own settings).
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    chosen = [get(n) for n in names]
    known = {o.name for t in chosen for o in t.options}
    own = {k: v for k, v in used.items() if k not in known}
    if len(chosen) == 1:
        t = chosen[0]
        return {"technique": t.name, **t.record(**{k: v for k, v in used.items() if k in known}), **own}
    out: dict = {"techniques": ", ".join(t.name for t in chosen)}
    for t in chosen:
        mine = {o.name for o in t.options}
        for k, v in t.record(**{k: v for k, v in used.items() if k in mine}).items():
            out[f"{t.name}.{k}"] = v
    return {**out, **own}


# ---------------------------------------------------------------------------------- memory

def estimate_memory(model: ModelLike, size: int | tuple[int, int] | None, images: int, *, backward: bool = True, copies: int = 1) -> int:
    """Bytes one step needs: the float32 activations of every layer at ``size`` for ``images`` x
    ``copies`` inputs in flight (x3 with a backward pass: activations, gradients, temporaries),
    plus the inputs. An estimate from ``model.layer_shapes(size)`` (abstract evaluation: no FLOPs)."""
    h, w = model.input_hw(size)
    try:
        shapes = model.layer_shapes((h, w))
    except Exception:  # a model without layer facts: count the input only
        shapes = {}
    per_image = sum(math.prod(int(d) for d in s) for s in shapes.values()) + 3 * h * w
    return int(per_image * 4 * (3 if backward else 1.5) * max(1, images) * max(1, copies))


def check_model_memory(model: ModelLike, size: int | tuple[int, int] | None, images: int, what: str, *, backward: bool = True,
                       copies: int = 1) -> None:
    """Refuse a run whose ``estimate_memory`` exceeds 60% of this machine's memory (one line)."""
    check_memory(estimate_memory(model, size, images, backward=backward, copies=copies), what)


# ---------------------------------------------------------------------------------- batches

def batches(count: int, batch: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] chunks of ``batch`` items covering ``range(count)``."""
    batch = max(1, int(batch))
    return [(s, min(s + batch, count)) for s in range(0, count, batch)]


def in_batches(fn: Callable, count: int, batch: int = 16, *, progress: bool | str = False,
               unit: str = "img") -> list:
    """``[fn(start, stop) for each chunk]``: run a per-image technique over many images in chunks,
    so that memory is bounded by ``batch`` images, with an optional tqdm progress bar (``progress``
    a description string or True). The caller concatenates (images are independent: chunking does
    not change any image's result; stochastic techniques take per-image keys, ``keys[start:stop]``)."""
    chunks: Iterable = batches(count, batch)
    bar = None
    if progress and count > batch:
        from tqdm.auto import tqdm
        bar = tqdm(total=count, desc=progress if isinstance(progress, str) else None, unit=unit, leave=False)
    out = []
    try:
        for start, stop in chunks:
            out.append(fn(start, stop))
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    return out
