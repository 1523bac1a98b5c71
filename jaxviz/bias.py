"""Texture-vs-shape bias with cue-conflict images (Geirhos et al., "ImageNet-trained CNNs are
biased towards texture; increasing shape bias improves accuracy and robustness", ICLR 2019).

A cue-conflict image has the *shape* of one image and the *texture* of another: Geirhos et al.
made theirs with iterative (Gatys) style transfer, content = an image of class A, style = a
texture image of class B. We do the same with our own Gatys style transfer on VGG19 (original
weights; ``jaxviz.style.style_transfer_batch``: every pair is an independent Adam run, all pairs
in one batched optimisation, started from the content image).

Conventions
-----------
- Sources are confidently classified images, each with a class *set* (``Source.classes``; the
  first entry is its class). Default sources are the sample photos and their crops/mirror images
  (``jaxviz.datasets.candidate_images``); a user folder has one sub-folder per class
  (``jaxviz.datasets.load_folder``); this module takes them as arrays. The rule
  (``select_sources``): an image is kept if EVERY classifier of the study gives it a top-1 in its
  class set with probability >= ``min_confidence`` (0.5), at the size the study runs at. A
  sample's class is the first classifier's top-1 (widened by ``class_set``); a folder image's
  class set is its folder's. Per class the
  ``per_class`` most confident images (by their lowest probability over the classifiers) are kept,
  and the ``max_classes`` most confident classes.
- Classes: Geirhos et al. map the 1000 ImageNet classes to 16 categories (``GEIRHOS_CATEGORIES``:
  the ImageNet indices of their ``human_categories.py``, ``<category>_indices``, in
  github.com/rgeirhos/texture-vs-shape, ``code/helper/``, and bethgelab/model-vs-human,
  ``modelvshuman/helper/``; e.g. cat = 281-286: tabby, tiger cat, Persian, Siamese, Egyptian cat,
  cougar, NOT lynx; keyboard = 508 computer keyboard, 878 typewriter keyboard). Most classes of our
  sources are not among them, so a decision counts for a cue when it is in that source's class
  set: a class of one of the 16 categories stands for its whole category (``class_set``), any
  other class for itself alone. A folder may name several classes joined by ``+``
  (``"tabby+Egyptian cat"``).
- Pairs: every ordered pair (A, B) of sources whose class sets do not intersect (``pairs``):
  content (shape) of A, style (texture) of B.
- Decisions, on the cue-conflict image classified at the size it was made (SqueezeNet and
  EfficientNet-Lite0 pool globally, so any size works): as Geirhos et al. turn the 1000-way
  output into a 16-way decision (mean probability over each category's classes, then argmax), the
  headline decision (``choice``) is the forced choice among the study's categories (the sources'
  class sets); the unrestricted ImageNet top-1 (``top1``) is recorded and counted too. A decision
  follows the ``shape`` if it is in A's set, the ``texture`` if in B's, else ``other`` (a choice
  of a third category). Shape bias = shape / (shape + texture) per model (``shape_bias``),
  recomputed from the saved per-image records.

Images are (N, H, W, 3) RGB in [0, 1]; each classifier preprocesses its own input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, TYPE_CHECKING

import numpy as np

from jaxviz.errors import JaxvizError

if TYPE_CHECKING:
    from jaxviz.interface import ModelLike

# Sample photos (scikit-image, scikit-learn) used as default sources; "cat" is chelsea again.
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "china", "flower")
# Geirhos et al.'s 16 categories as ImageNet indices (their human_categories.py, see the module
# docstring); the category of a decision is the mean probability over its classes.
GEIRHOS_CATEGORIES: dict[str, tuple[int, ...]] = {
    "airplane": (404,),
    "bear": (294, 295, 296, 297),
    "bicycle": (444, 671),
    "bird": (8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90, 91,
             92, 93, 94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139,
             140, 141, 142, 143, 144, 145),
    "boat": (472, 554, 625, 814, 914),
    "bottle": (440, 720, 737, 898, 899, 901, 907),
    "car": (436, 511, 817),
    "cat": (281, 282, 283, 284, 285, 286),  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar
    "chair": (423, 559, 765, 857),
    "clock": (409, 530, 892),
    "dog": (152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169,
            170, 171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187,
            188, 189, 190, 191, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 205, 206, 207,
            208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225,
            226, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 243, 244, 245,
            246, 247, 248, 249, 250, 252, 253, 254, 255, 256, 257, 259, 261, 262, 263, 265, 266, 267,
            268),
    "elephant": (385, 386),
    "keyboard": (508, 878),  # computer keyboard, typewriter keyboard
    "knife": (499,),
    "oven": (766,),
    "truck": (555, 569, 656, 675, 717, 734, 864, 867),
}
# Classes that count as one class: the 16 categories (lynx, 287, is in none: it stands alone).
CLASS_GROUPS: tuple[tuple[int, ...], ...] = tuple(GEIRHOS_CATEGORIES.values())
STYLE_NETWORK = "vgg19_caffe"
# Style transfer settings of the study (Adam from the content image, per-pair targets).
STYLE_DEFAULTS = dict(content_weight=1.0, style_weight=10.0, tv_weight=0.0, learning_rate=4.0)
# Geirhos et al. made their cue-conflict stimuli with Gatys's PytorchNeuralStyleTransfer at its
# defaults (rgeirhos/texture-vs-shape README, FAQ): VGG19 (Caffe weights), content relu4_2,
# styles relu1_1 ... relu5_1, L-BFGS from the content image. ``gatys_code_weights`` gives the
# loss weights of ours that equal that code's loss.
GATYS_CODE_LAYERS = dict(content_layer="relu4_2",
                         style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"))


@dataclass
class Source:
    """A source image: name, (H, W, 3) image in [0, 1], class set (first = its class) and each
    classifier's probability of its top-1 (a member of the class set)."""

    name: str
    image: np.ndarray
    classes: tuple[int, ...]
    confidence: dict = field(default_factory=dict)

    @property
    def label(self) -> int:
        return self.classes[0]


@dataclass
class BiasCount:
    """Decisions of one model over the cue-conflict images."""

    shape: int
    texture: int
    other: int

    @property
    def total(self) -> int:
        return self.shape + self.texture + self.other

    @property
    def bias(self) -> float:
        """shape / (shape + texture); NaN when no decision followed either cue."""
        cued = self.shape + self.texture
        return self.shape / cued if cued else math.nan

    @property
    def text(self) -> str:
        """The bias with two decimals, or "n/a" when no decision followed either cue."""
        return "n/a" if math.isnan(self.bias) else f"{self.bias:.2f}"

    def as_dict(self) -> dict:
        return {"shape": self.shape, "texture": self.texture, "other": self.other, "total": self.total,
                "shape_bias": None if math.isnan(self.bias) else self.bias}


@dataclass
class BiasStudy:
    """sources; pairs (P, 2) source indices (shape, texture); images (P, H, W, 3) cue-conflict
    images; records: one dict per image (``decision_records``); bias: model -> ``BiasCount`` of
    the forced choice among the study's categories; bias_top1: the same for the unrestricted
    top-1; seconds: time to build the cue-conflict images."""

    sources: list[Source]
    pairs: np.ndarray
    images: np.ndarray
    records: list[dict]
    bias: dict[str, BiasCount]
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    bias_top1: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Classes and sources

def class_set(label: int) -> tuple[int, ...]:
    """``label`` first, then the other members of its ``CLASS_GROUPS`` group (if any)."""
    for group in CLASS_GROUPS:
        if label in group:
            return (label,) + tuple(c for c in group if c != label)
    return (label,)


def category_name(classes: Sequence[int]) -> str | None:
    """The name of the Geirhos et al. category whose classes are ``classes`` (any order), else None."""
    for name, members in GEIRHOS_CATEGORIES.items():
        if set(members) == set(classes):
            return name
    return None


def gatys_code_weights(model: ModelLike, size: int | tuple[int, int],
                       content_layer: str = GATYS_CODE_LAYERS["content_layer"],
                       style_layers: Sequence[str] = GATYS_CODE_LAYERS["style_layers"]) -> dict:
    """Loss weights of ``jaxviz.style``'s Gatys loss that make it equal to the loss of Gatys's
    PytorchNeuralStyleTransfer at its defaults (the code Geirhos et al. made their stimuli with).

    That code minimises ``MSE(F, P)`` (mean over the C·H·W elements of the content layer) plus
    ``Σ_l 1e3/C_l² · MSE(G_l/M_l, Ĝ_l/M_l)`` (mean over the C_l² Gram entries). Ours is
    ``α ½ Σ (F − P)² + β Σ_l w_l Σ (G_l/M_l − Ĝ_l/M_l)² / (4 C_l²)``, so ``α = 2 / (C H W)``,
    ``β = 1`` and ``w_l = 4e3 / C_l²`` (C_l channels, H W positions at image size ``size``).
    Both sides are per-position means, so the balance does not depend on the image size.

    Returns:
      ``{"content_weight", "style_weight", "layer_weights", "content_layer", "style_layers"}``
      for ``style_transfer`` / ``cue_conflict_images``.
    Raises:
      JaxvizError: an unknown layer, or one without a spatial (h, w, C) output at ``size``.
    """
    from jaxviz.interface import as_model
    model = as_model(model)
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    shapes = model.layer_shapes(hw)
    names = [model.resolve_layer(n) for n in (content_layer, *style_layers)]
    for given, name in zip((content_layer, *style_layers), names):
        if len(shapes[name]) != 3 or math.prod(shapes[name]) == 0:
            raise JaxvizError(f"layer {given} of {model.name} has output shape {shapes[name]} at {hw[0]}x{hw[1]} "
                              "px; the Gatys loss needs a non-empty spatial (h, w, C) layer")
    h, w, c = shapes[names[0]]
    return {"content_weight": 2.0 / (h * w * c), "style_weight": 1.0,
            "layer_weights": tuple(4e3 / shapes[n][-1] ** 2 for n in names[1:]),
            "content_layer": content_layer, "style_layers": tuple(style_layers)}


def parse_class_folder(name: str) -> tuple[int, ...]:
    """Class set of a folder name: an ImageNet class name or index, or several joined by ``+``.

    Raises:
      JaxvizError: an unknown class (close names suggested).
    """
    from jaxviz.labels import resolve_class
    classes: list[int] = []
    for part in name.split("+"):
        try:
            c = resolve_class(part.strip())
        except JaxvizError as e:
            raise JaxvizError(f"class folder {name!r}: {e}") from None
        if c not in classes:
            classes.append(c)
    return tuple(classes)


def predict(model: ModelLike, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """(N, classes) softmax probabilities of (N, H, W, 3) images in [0, 1] (chunks of ``batch``;
    ``jaxviz.adversarial.proba_fn``: the model's declared preprocessing, jitted once per model
    with its ``compiler_options``).

    Raises:
      JaxvizError: a model that is not a classifier.
    """
    from jaxviz.adversarial import proba_fn
    from jaxviz.interface import as_model
    model = as_model(model)
    if not model.num_classes:
        raise JaxvizError(f"model {model.name} has no classifier output; the bias study needs classifiers")
    fn = proba_fn(model)
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        # Every chunk padded to ``batch`` images: one compiled program per model and image size
        # for the candidates and the stimuli alike (a second program costs more than the padding).
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        out.append(np.asarray(fn(padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


def select_sources(classifiers: Sequence, candidates: Sequence[tuple], *, min_confidence: float = 0.5,
                   per_class: int = 1, max_classes: int | None = None) -> list[Source]:
    """Confidently classified sources (the rule is in the module docstring).

    Args:
      classifiers: classification models; every one must agree.
      candidates: ``(name, image)`` (class = the classifiers' agreed top-1) or ``(name, image,
        classes)`` (class set given, e.g. by ``load_folder``); images (H, W, 3) in [0, 1], one size.
      min_confidence: the lowest probability of the class any classifier may give.
      per_class: most confident images kept per class; max_classes: most confident classes kept.
    Returns:
      Sources, most confident class first (within a class, most confident image first).
    """
    if not classifiers:
        raise JaxvizError("at least one classifier is needed")
    if not 0.0 <= min_confidence <= 1.0:
        raise JaxvizError(f"min_confidence must be in [0, 1], got {min_confidence}")
    if per_class < 1 or (max_classes is not None and max_classes < 1):
        raise JaxvizError("per_class and max_classes must be >= 1")
    if not candidates:
        return []
    images = np.stack([c[1] for c in candidates])
    probs = {m.name: predict(m, images) for m in classifiers}
    kept: dict[frozenset, list[Source]] = {}
    for i, cand in enumerate(candidates):
        first = probs[classifiers[0].name][i]
        classes = tuple(cand[2]) if len(cand) > 2 else class_set(int(np.argmax(first)))
        conf = {}
        for m in classifiers:
            p = probs[m.name][i]
            top = int(np.argmax(p))
            if top not in classes:
                break
            conf[m.name] = float(p[top])
        else:
            if min(conf.values()) >= min_confidence:
                source = Source(cand[0], np.asarray(cand[1], np.float32), classes, conf)
                kept.setdefault(frozenset(classes), []).append(source)
    groups = [sorted(v, key=lambda s: -min(s.confidence.values()))[:per_class] for v in kept.values()]
    groups.sort(key=lambda g: -min(g[0].confidence.values()))
    return [s for g in groups[:max_classes] for s in g]


def pairs(sources: Sequence[Source], textures_per_shape: int | None = None) -> np.ndarray:
    """(P, 2) ordered pairs (shape source i, texture source j) whose class sets do not intersect.

    ``textures_per_shape=k``: each shape source i takes only the k texture sources that follow it
    cyclically (i + 1, i + 2, ... wrapping around, skipping its own class), a fixed design in which
    every source is also a texture about k times; None: every pair.
    """
    n = len(sources)
    if textures_per_shape is not None and int(textures_per_shape) < 1:
        raise JaxvizError(f"textures per shape must be >= 1, got {textures_per_shape}")
    out = []
    for i, a in enumerate(sources):
        partners = [(i + d) % n for d in range(1, n)]
        partners = [j for j in partners if not set(a.classes) & set(sources[j].classes)]
        if textures_per_shape is None:
            partners = sorted(partners)
        else:
            partners = partners[:int(textures_per_shape)]
        out += [(i, j) for j in partners]
    return np.asarray(out, np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------------
# Cue-conflict images

def cue_conflict_images(style_model: ModelLike, params: dict, contents: np.ndarray, styles: np.ndarray, *, steps: int = 60,
                        content_weight: float = STYLE_DEFAULTS["content_weight"],
                        style_weight: float = STYLE_DEFAULTS["style_weight"],
                        tv_weight: float = STYLE_DEFAULTS["tv_weight"],
                        learning_rate: float | None = None,
                        content_layer: str | None = None, style_layers: Sequence[str] | None = None,
                        layer_weights: Sequence[float] | None = None, optimizer: str = "adam",
                        batch: int | None = None, batched: bool = True, callbacks: Sequence = ()
                        ) -> tuple[np.ndarray, float]:
    """Content (shape) of ``contents[i]`` in the style (texture) of ``styles[i]``, every i.

    Args:
      style_model, params: the style network: ``vgg19_caffe`` (the study's), or any
        ``jaxviz.interface.Model`` with named layers (then name ``content_layer`` and
        ``style_layers``; the defaults are VGG19's, ``jaxviz.style``).
      contents, styles: (P, H, W, 3) and (P, h, w, 3) images in [0, 1].
      steps, content_weight, style_weight, tv_weight, learning_rate: Gatys settings (finite;
        weights >= 0, learning rate > 0; None: Adam's ``STYLE_DEFAULTS`` step, L-BFGS's unit step).
      layer_weights: w_l of the style layers (default equal; ``gatys_code_weights``).
      optimizer: ``"adam"`` (default) or ``"lbfgs"`` (unit step, one memory per image:
        ``jaxviz.style.per_image``); either way every pair is its own optimisation.
      batch: pairs per batched optimisation (default all P at once).
      batched: False runs ``style_transfer`` once per pair (the slow reference path).
    Returns:
      ((P, H, W, 3) images in [0, 1], wall seconds including compilation).
    Raises:
      JaxvizError: bad shapes, options or layers.
    """
    import time

    from jaxviz import style as gatys
    contents, styles = np.asarray(contents, np.float32), np.asarray(styles, np.float32)
    if contents.ndim != 4 or contents.shape[0] != styles.shape[0]:
        raise JaxvizError(f"contents and styles must be (P, H, W, 3) of equal P, got {contents.shape}, {styles.shape}")
    from jaxviz.techniques import check
    check("bias", steps=steps, batch=batch)  # the registry's bounds (one place, shared with the CLI)
    if optimizer not in ("adam", "lbfgs"):
        raise JaxvizError(f"optimizer must be 'adam' or 'lbfgs' (per-pair runs), got {optimizer!r}")
    if learning_rate is None and optimizer == "adam":
        learning_rate = STYLE_DEFAULTS["learning_rate"]
    gatys.check_options(weights=(content_weight, style_weight, tv_weight), steps=steps, optimizer=optimizer,
                        learning_rate=learning_rate)
    kw = dict(content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
              content_layer=gatys.CONTENT_LAYER if content_layer is None else content_layer,
              style_layers=gatys.STYLE_LAYERS if style_layers is None else tuple(style_layers),
              layer_weights=None if layer_weights is None else tuple(layer_weights),
              steps=int(steps), optimizer=optimizer, learning_rate=learning_rate, callbacks=callbacks)
    start = time.perf_counter()
    if batched:
        n = len(contents)
        b = n if batch is None else int(batch)
        parts = [gatys.style_transfer_batch(style_model, params, contents[i:i + b], styles[i:i + b],
                                            final_parts=False, **kw).images for i in range(0, n, b)]
        images = np.concatenate(parts) if parts else np.zeros_like(contents)
    else:
        images = np.stack([gatys.style_transfer(style_model, params, c, [s], **kw).image
                           for c, s in zip(contents, styles)])
    return images, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Decisions and the shape bias

def categories(sources: Sequence[Source]) -> list[tuple[int, ...]]:
    """The study's categories: the distinct class sets of the sources, in order of appearance."""
    out: list[tuple[int, ...]] = []
    for s in sources:
        if not any(set(s.classes) == set(c) for c in out):
            out.append(tuple(s.classes))
    return out


def category_scores(probs: np.ndarray, cats: Sequence[Sequence[int]]) -> np.ndarray:
    """(N, K) mean probability over each category's classes (Geirhos et al.'s 16-class mapping)."""
    return np.stack([probs[:, list(c)].mean(axis=1) for c in cats], axis=1)


def decision_records(classifiers: Sequence, images: np.ndarray, sources: Sequence[Source],
                     pair_index: np.ndarray) -> list[dict]:
    """One JSON-ready record per cue-conflict image with each classifier's decisions.

    Record: ``content``/``style`` (source names), ``shape_class``/``texture_class`` (class
    indices), ``shape_classes``/``texture_classes`` (class sets), ``shape_label``/``texture_label``,
    ``categories`` (the study's class sets) and ``decisions[model] = {"choice": ..., "top1": ...}``,
    each ``{class, label, prob, cue}`` with cue ``"shape"``, ``"texture"`` or ``"other"``:
    ``choice`` is the forced choice among the study's categories (highest mean probability over a
    category's classes; ``class`` is the category's first class, ``prob`` its mean probability),
    ``top1`` the unrestricted ImageNet top-1.
    """
    from jaxviz.labels import imagenet_labels
    labels = imagenet_labels()
    cats = categories(sources)
    probs = {m.name: predict(m, images) for m in classifiers}
    records = []
    for k, (i, j) in enumerate(np.asarray(pair_index)):
        a, b = sources[int(i)], sources[int(j)]
        rec = {"content": a.name, "style": b.name, "shape_class": a.label, "texture_class": b.label,
               "shape_label": labels[a.label], "texture_label": labels[b.label],
               "shape_classes": list(a.classes), "texture_classes": list(b.classes),
               "categories": [list(c) for c in cats], "decisions": {}}
        for name, p in probs.items():
            top = int(np.argmax(p[k]))
            scores = category_scores(p[k:k + 1], cats)[0]
            c = int(np.argmax(scores))
            choice = cats[c][0]
            rec["decisions"][name] = {
                "choice": {"class": choice, "label": labels[choice], "prob": float(scores[c]),
                           "cue": cue(choice, a.classes, b.classes)},
                "top1": {"class": top, "label": labels[top], "prob": float(p[k, top]),
                         "cue": cue(top, a.classes, b.classes)}}
        records.append(rec)
    return records


def cue(decision: int, shape_classes: Sequence[int], texture_classes: Sequence[int]) -> str:
    """Which cue a decided class follows: ``"shape"``, ``"texture"`` or ``"other"``."""
    if decision in shape_classes:
        return "shape"
    if decision in texture_classes:
        return "texture"
    return "other"


def shape_bias(records: Sequence[dict], decision: str = "choice") -> dict[str, BiasCount]:
    """Shape/texture/other counts per model, recounted from the records' decided classes (the
    stored ``cue`` fields are not trusted); ``decision``: ``"choice"`` (forced choice among the
    study's categories, the headline number) or ``"top1"`` (unrestricted ImageNet top-1)."""
    if decision not in ("choice", "top1"):
        raise JaxvizError(f"decision must be 'choice' or 'top1', got {decision!r}")
    counts: dict[str, list[int]] = {}
    for rec in records:
        shape = rec.get("shape_classes", [rec["shape_class"]])
        texture = rec.get("texture_classes", [rec["texture_class"]])
        for name, d in rec["decisions"].items():
            c = counts.setdefault(name, [0, 0, 0])
            c[("shape", "texture", "other").index(cue(int(d[decision]["class"]), shape, texture))] += 1
    return {name: BiasCount(*c) for name, c in counts.items()}


def texture_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of each side of an (H, W, 3) image, resized back to (H, W): a
    close-up of the texture source (Geirhos et al. took textures from close-up texture images)."""
    from jaxviz.images import fit_image
    from jaxviz.techniques import check
    check("bias", texture_fraction=fraction)
    if fraction == 1.0:
        return np.asarray(image, np.float32)
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return fit_image(np.ascontiguousarray(image[top:top + ch, left:left + cw]), (h, w), "stretch")


def bias_study(classifiers: Sequence[ModelLike], style_model: ModelLike, sources: Sequence[Source], *, steps: int = 60,
               batch: int | None = None, callbacks: Sequence = (), texture_fraction: float = 1.0,
               textures_per_shape: int | None = None, **style) -> BiasStudy:
    """Cue-conflict images for every ordered pair of ``sources`` and each classifier's decisions.

    Args:
      classifiers: classification models (any ``jaxviz.interface.Model`` with ImageNet outputs);
        style_model: the style network (``vgg19_caffe``, or a model with named layers given
        ``content_layer`` / ``style_layers`` in ``**style``).
      sources: from ``select_sources`` (all of one size).
      steps, batch, callbacks, **style: ``cue_conflict_images`` settings.
      texture_fraction: the style image is the central fraction of the texture source
        (``texture_crop``; 1 = the whole image).
      textures_per_shape: texture sources per shape source (``pairs``; default every pair).
    Raises:
      JaxvizError: fewer than two classes among the sources.
    """
    index = pairs(sources, textures_per_shape)
    if len(index) == 0:
        raise JaxvizError(f"need sources of at least 2 different classes for cue-conflict pairs, got "
                          f"{len(sources)} source(s) of {len({s.classes for s in sources})} class(es)")
    contents = np.stack([sources[i].image for i in index[:, 0]])
    crops = [texture_crop(s.image, texture_fraction) for s in sources]
    styles = np.stack([crops[j] for j in index[:, 1]])
    from jaxviz.interface import as_model
    style_model = as_model(style_model)
    settings = {**STYLE_DEFAULTS, "optimizer": "adam", **style, "steps": int(steps), "init": "content",
                "style_network": style_model.name, "size": list(contents.shape[1:3]),
                "texture_fraction": texture_fraction, "textures_per_shape": textures_per_shape}
    if settings["optimizer"] == "lbfgs" and style.get("learning_rate") is None:
        settings["learning_rate"] = 1.0  # L-BFGS's unit step
    images, seconds = cue_conflict_images(style_model, style_model.params, contents, styles, steps=steps,
                                          batch=batch, callbacks=callbacks, **style)
    records = decision_records(classifiers, images, sources, index)
    return BiasStudy(list(sources), index, images, records, shape_bias(records), seconds, settings,
                     shape_bias(records, "top1"))


def cue_probabilities(classifiers: Sequence, study: BiasStudy) -> dict[str, dict[str, float]]:
    """How strongly the cue-conflict images carry each cue, per classifier: the mean probability
    mass (sum over a category's classes) of the shape source's category and of the texture
    source's category, on the content images, the style images (texture crops) and the
    cue-conflict images. A strong stylisation moves mass from the shape category towards the
    texture category; Geirhos et al.'s stimuli keep the shape recognisable to people while the
    surface is the texture's.

    Returns:
      ``{model: {"shape_on_content", "texture_on_style", "shape_on_conflict",
      "texture_on_conflict"}}`` (means over the study's pairs).
    """
    index = np.asarray(study.pairs)
    fraction = float(study.settings.get("texture_fraction", 1.0))
    contents = np.stack([study.sources[i].image for i in index[:, 0]])
    crops = [texture_crop(s.image, fraction) for s in study.sources]
    styles = np.stack([crops[j] for j in index[:, 1]])
    shape_sets = [list(study.sources[i].classes) for i in index[:, 0]]
    texture_sets = [list(study.sources[j].classes) for j in index[:, 1]]

    def mass(p, sets):
        return float(np.mean([p[k, c].sum() for k, c in enumerate(sets)]))
    out = {}
    for m in classifiers:
        pc, ps, pi = predict(m, contents), predict(m, styles), predict(m, np.asarray(study.images))
        out[m.name] = {"shape_on_content": mass(pc, shape_sets), "texture_on_style": mass(ps, texture_sets),
                       "shape_on_conflict": mass(pi, shape_sets), "texture_on_conflict": mass(pi, texture_sets)}
    return out
