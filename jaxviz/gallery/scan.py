"""Dataset figures: one scan of the photographs, shared; maximally activating patches (Zeiler &
Fergus 2014, fig. 2) with their deconvnet reconstructions.

``sample_scan(ctx)`` scans the pool of photographs once per gallery run (the ImageNet sample: 900
photographs, one per class; ``--images DIR``; or, without real input, the built-in figure set) with
the figure model and caches it in a temporary folder keyed by model, layers, size and image list:
every dataset figure (patches, reconstructions, nearest neighbours, embeddings) reuses it.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxviz.gallery import Context, figure

# SqueezeNet 1.1's fire modules: every depth a figure may want, scanned in one pass (the top-k
# bookkeeping is small next to the network).
SQUEEZENET_LAYERS = ("fire2", "fire3", "fire4", "fire5", "fire6", "fire7", "fire8", "fire9")
SIZE = 224  # the network's own input size: patches at the scale it was trained on
QUICK_COUNT = 60

# Coarse groups of ImageNet classes (index ranges in the standard class order, which follows the
# WordNet ids, so related classes are neighbours): the "same class" of a one-photo-per-class sample.
# Dogs, cats, fish, birds, insects and primates as Engstrom et al.'s RestrictedImageNet
# (robustness library), widened where the WordNet order continues the group.
GROUPS = {
    "dogs": [(151, 268)],
    "cats (domestic and wild)": [(281, 293)],
    "birds": [(7, 24), (80, 100), (127, 146)],
    "reptiles, amphibians": [(25, 68)],
    "fish": [(0, 6), (389, 397)],
    "insects, spiders": [(70, 79), (300, 326)],
    "primates": [(365, 382)],
    "road vehicles": [(407, 407), (436, 436), (468, 468), (511, 511), (555, 555), (569, 569), (609, 609),
                      (627, 627), (654, 654), (656, 656), (661, 661), (675, 675), (717, 717), (734, 734),
                      (751, 751), (757, 757), (779, 779), (817, 817), (864, 864), (867, 867), (874, 874)],
    "food, fruit": [(924, 969)],
}


def group_of(cls: int) -> str:
    """The coarse group of an ImageNet class index ("" when none; -1: unknown class)."""
    for name, ranges in GROUPS.items():
        if any(lo <= cls <= hi for lo, hi in ranges):
            return name
    return ""


@dataclass
class Sample:
    """One scan of the figure pool: the index, the photographs' classes and labels, thumbnails."""

    model: object
    index: object  # jaxviz.scan_index.Index
    rows: list  # [{"path", "class", "label"}] aligned with the index rows
    real: bool
    source: str  # what the pool is, for the notes
    seconds: float  # the scan's wall time (0 when a folder already held it)
    _thumbs: dict = field(default_factory=dict)
    _used: int = 0

    @property
    def labels(self) -> list[str]:
        return [r["label"] for r in self.rows]

    @property
    def classes(self) -> np.ndarray:
        return np.asarray([r["class"] for r in self.rows])

    @property
    def groups(self) -> np.ndarray:
        return np.asarray([group_of(int(c)) if c >= 0 else "" for c in self.classes])

    def thumbnails(self, size: int) -> np.ndarray:
        """(N, size, size, 3) in [0, 1]: each photograph as the network saw it (same fit)."""
        if size not in self._thumbs:
            from concurrent.futures import ThreadPoolExecutor

            from jaxviz.images import load_image
            fit, transform = self.index.meta["fit"], getattr(self.model, "eval_transform", None)
            with ThreadPoolExecutor(4) as pool:
                thumbs = list(pool.map(lambda r: load_image(r["path"], size, fit, transform), self.rows))
            self._thumbs[size] = np.stack(thumbs).astype(np.float32)
        return self._thumbs[size]

    def note(self, ctx: Context) -> None:
        """Record where the pool came from and what the scan cost (once: later figures reuse it)."""
        meta = self.index.meta
        first = self._used == 0
        self._used += 1
        ctx.note(model=self.model.name, images=f"{meta['count']} ({self.source})",
                 scan=(f"{self.seconds:.1f} s for {meta['count']} images at {meta['input_size']} px "
                       f"({meta['count'] / max(self.seconds, 1e-9):.0f} images/s), layers {', '.join(meta['layers'])}"
                       if first else "reused (scanned once per gallery run by an earlier figure)"))
        if not self.real:
            ctx.note(input="no ../shared/imagenet-sample here: the built-in figure set (scikit-image/"
                           "scikit-learn sample photos, LFW faces and crops/flips of them) stands in")


_SAMPLES: dict[tuple, Sample] = {}
_TMP: list = []  # keeps the scan folder alive for the whole gallery run (removed at exit)


def figure_model(ctx: Context) -> str:
    return "squeezenet1_1" if "squeezenet1_1" in ctx.models else (ctx.classifiers() or ctx.models)[0]


def scan_layers(model) -> tuple[str, ...]:
    """The layers scanned: SqueezeNet's fire modules, else four spatial depths of the model."""
    if model.name.startswith("squeezenet"):
        return tuple(model.resolve_layer(n) for n in SQUEEZENET_LAYERS)
    shapes = model.layer_shapes()
    names = [n for n in model.layer_names if len(shapes.get(n, ())) == 3]
    distinct = [n for i, n in enumerate(names) if i == 0 or shapes[n] != shapes[names[i - 1]]] or names
    picks = [distinct[round(f * (len(distinct) - 1))] for f in (0.25, 0.5, 0.75, 1.0)]
    return tuple(dict.fromkeys(picks))


def _pool(ctx: Context) -> tuple[list[dict], bool, str, str]:
    """(rows, real, description, fit) of the photographs to scan."""
    rows = ctx.photos()
    if rows:
        if ctx.quick:
            rows = rows[::max(1, len(rows) // QUICK_COUNT)][:QUICK_COUNT]
        what = "the ImageNet sample, one photograph per class" if ctx.images is None else f"folder {ctx.images}"
        return rows, True, what, "eval"
    from jaxviz.datasets import figure_dataset
    tmp = tempfile.TemporaryDirectory(prefix="jaxviz-figure-set-")
    _TMP.append(tmp)
    paths = figure_dataset(tmp.name, count=QUICK_COUNT if ctx.quick else 300, size=SIZE)
    rows = [{"path": p, "class": -1, "label": source_label(p)} for p in paths]
    return rows, False, "built-in figure set", "stretch"  # already square at the size


def source_label(path: str) -> str:
    """The source photo of a built-in figure-set file: '0123_chelsea_crop0042_flip.png' -> 'chelsea'."""
    import re
    stem = re.sub(r"^\d+_", "", Path(path).stem)
    stem = re.sub(r"(_crop\d+)?(_flip)?$", "", stem)
    return "face" if stem.startswith("face") else stem


def sample_scan(ctx: Context, model_name: str | None = None) -> Sample:
    """The scan of the figure pool with ``model_name`` (default: the figure model), run once per
    gallery run and cached (a temporary folder keyed by model, layers, size and image list)."""
    from jaxviz.scan_index import scan
    name = model_name or figure_model(ctx)
    model = ctx.model(name)
    rows, real, what, fit = _pool(ctx)
    layers = scan_layers(model)
    digest = hashlib.sha256("\n".join(r["path"] for r in rows).encode()).hexdigest()[:16]
    key = (name, layers, SIZE, fit, digest)
    if key not in _SAMPLES:
        if not _TMP or not any(t.name.endswith("-scans") for t in _TMP):
            _TMP.append(tempfile.TemporaryDirectory(suffix="-scans", prefix="jaxviz-gallery-"))
        root = next(t.name for t in _TMP if t.name.endswith("-scans"))
        out = Path(root) / f"{name}-{SIZE}-{fit}-{hashlib.sha256(repr(key).encode()).hexdigest()[:12]}"
        bar = ctx.progress(len(rows), f"scan {len(rows)} images")
        done = [0]

        def advance(n):
            bar.update(n - done[0])
            done[0] = n

        start = time.perf_counter()
        try:
            index = scan(model, [r["path"] for r in rows], out, layers=layers, topk=9, batch=32, input_size=SIZE,
                         fit=fit, on_batch=advance)
        except BaseException:  # our own folder: the next figure starts afresh, not from a broken one
            import shutil
            shutil.rmtree(out, ignore_errors=True)
            raise
        _SAMPLES[key] = Sample(model, index, rows, real, what, time.perf_counter() - start)
    return _SAMPLES[key]


# ------------------------------------------------------------------------------ channels

def strongest_channels(topk, count: int, skip=()) -> list[int]:
    """Channels with the strongest top-k mean whose best images differ (a varied selection)."""
    order = np.argsort(-topk.values.mean(axis=1), kind="stable")
    chosen, seen = [], set()
    for c in order:
        best = int(topk.image[c, 0])
        if int(c) in skip or best in seen or not (np.all(np.isfinite(topk.values[c])) and topk.values[c, -1] > 0):
            continue
        chosen.append(int(c))
        seen.add(best)
        if len(chosen) == count:
            break
    return chosen


def random_channels(topk, count: int, seed: int = 0) -> list[int]:
    """A random subset (seeded) of the channels whose top-k activations are all positive, as Z&F
    show 'the top 9 activations in a random subset of feature maps'."""
    alive = np.flatnonzero(np.all(np.isfinite(topk.values), axis=1) & (topk.values[:, -1] > 0))
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(alive, size=min(count, len(alive)), replace=False))


def _short(label: str, n: int = 17) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


def _off(ax) -> None:
    ax.set_xticks([]), ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _layer_label(model, layer: str) -> str:
    alias = {v: k for k, v in model.aliases.items()}.get(layer)
    return f"{alias} ({layer})" if alias else layer


# ------------------------------------------------------------------------------ figures

PATCH_LAYERS = ("fire3", "fire6", "fire9")


@figure("scan_patches", "Top-9 patches per channel at three depths, from different photographs",
        "For three channels of each of three depths of SqueezeNet 1.1 (fire3, fire6, fire9), the nine "
        "photographs of the pool that excite the channel most (each photograph counted once per channel, "
        "at its strongest position, as in Zeiler & Fergus 2014, fig. 2), each cropped to the unit's exact "
        "receptive field (grey where the field hangs over the image edge or the channel does not see), "
        "labelled with the photograph's ImageNet class. Found by one streaming top-k scan of the pool "
        "(jaxviz.scan). Channels: the strongest ones whose best photographs differ. Shallow channels "
        "respond to colours and textures across unrelated classes; deeper ones to shapes and parts (fire6: "
        "round shapes, colour patterns across classes; fire9: faces of dog breeds, shared by related classes).", order=46, topk=9,
        channels_per_layer=3)
def scan_patches(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.patches import layer_field, top_patches
    from jaxviz.scan_index import index_images

    sample = sample_scan(ctx)
    model, index = sample.model, sample.index
    images = index_images(index, model)
    layers = [model.resolve_layer(n) for n in PATCH_LAYERS] if model.name.startswith("squeezenet") \
        else list(scan_layers(model))[::2][:3] or list(scan_layers(model))
    per_layer = 2 if ctx.quick else 3
    strips = [(layer, c) for layer in layers for c in strongest_channels(index.topk[layer], per_layer)]
    fig, axes = plt.subplots(len(strips), 9, figsize=(11, 1.78 * len(strips)), squeeze=False,
                             gridspec_kw={"hspace": 0.5, "wspace": 0.06})
    picked: dict = {}
    tiles = {}
    for layer in layers:  # one call per layer: images loaded and channel fields measured once
        channels = [c for lay, c in strips if lay == layer]
        t, _ = top_patches(model, index, layer, channels, images=images, k=9)
        tiles.update({(layer, c): t[i] for i, c in enumerate(channels)})
    for row, (layer, channel) in enumerate(strips):
        ids = index.topk[layer].image[channel, :9]
        field = layer_field(model, layer, index.meta["input_size"])
        picked.setdefault(_layer_label(model, layer), []).append(channel)
        for j in range(9):
            ax = axes[row, j]
            ax.imshow(tiles[layer, channel][j], interpolation="nearest" if field.size < 64 else "antialiased")
            _off(ax)
            r = int(np.searchsorted(index.indices, ids[j]))
            ax.set_xlabel(_short(sample.labels[r], 14), fontsize=9, labelpad=2)
        axes[row, 0].set_title(f"{_layer_label(model, layer)}, channel {channel}  (receptive field {field.size} px)",
                               fontsize=10, loc="left", x=0.0, ha="left")
    sample.note(ctx)
    ctx.note(channels=picked)
    return fig


ZF_LAYERS = ("fire3", "fire5", "fire7", "fire9")
SIGNAL_MASS = 0.95  # the deep layers' patches: the central square holding this share of the signal
DEEP_FIELD = 100  # px: layers with a larger nominal field are 'deep' here


@figure("zf_deconvnet", "Top-9 patches and their deconvnet reconstructions (Zeiler & Fergus fig. 2)",
        "As Zeiler & Fergus 2014, fig. 2, for SqueezeNet 1.1 over the photograph pool: for two channels at "
        "each of four depths (fire3, fire5, fire7, fire9; the strongest channels with different best "
        "photographs, other than those of the top-9 patches figure), left: each of the channel's nine "
        "strongest activations projected alone back to pixel space by the deconvnet (all other "
        "activations of the layer set to zero; ReLUs applied to the backward signal; max-pools unpooled "
        "through their switches: model.with_backward('deconv')), shown on grey (0 = grey, each tile "
        "scaled on its own); right: the image patches under the same units. Both are cut to the unit's "
        "receptive field; for the deep layers (fire7, fire9), whose reconstructions fill only the centre of their "
        "nominal field (the effective receptive field is smaller, Luo et al. 2016), to the central "
        "square holding 95% of the reconstructions' summed |signal| (sizes on the left). The reconstructions "
        "show what in each patch drives the unit: oriented edges and colour blobs at fire3, textures "
        "and arcs at fire5, object parts (eyes, noses, wheels) at fire7 and fire9. SqueezeNet's 3x3 "
        "stride-2 first convolution leaves a fine checkerboard in every reconstruction.",
        order=47, topk=9, rule="deconv")
def zf_deconvnet(ctx: Context):
    import matplotlib.pyplot as plt

    from jaxviz.patches import (
        layer_field,
        signal_image,
        top_patches,
        top_reconstructions,
    )
    from jaxviz.render import grid
    from jaxviz.scan_index import index_images

    sample = sample_scan(ctx)
    model, index = sample.model, sample.index
    images = index_images(index, model)
    layers = [model.resolve_layer(n) for n in ZF_LAYERS] if model.name.startswith("squeezenet") \
        else list(scan_layers(model))
    per_layer = 1 if ctx.quick else 2
    fig, axes = plt.subplots(len(layers), 2 * per_layer, figsize=(11, 3.0 * len(layers)), squeeze=False,
                             gridspec_kw={"wspace": 0.05, "hspace": 0.14})
    bar = ctx.progress(len(layers), "deconvnet reconstructions")
    start, picked, crops = time.perf_counter(), {}, {}
    for row, layer in enumerate(layers):
        # not the channels scan_patches shows: more of the network
        channels = strongest_channels(index.topk[layer], per_layer, skip=_patch_channels(model, index, layer, ctx))
        label = _layer_label(model, layer)
        picked[label] = channels
        tiles, _ = top_patches(model, index, layer, channels, images=images, k=9)
        recon, _ = top_reconstructions(model, index, layer, channels, images=images, k=9, rule="deconv",
                                       batch=9 * per_layer)
        field = layer_field(model, layer, index.meta["input_size"])
        lo, hi = signal_box(recon, SIGNAL_MASS) if field.size > DEEP_FIELD else (0, field.size)
        tiles, recon = tiles[:, :, lo:hi, lo:hi], recon[:, :, lo:hi, lo:hi]
        crops[label] = f"{hi - lo} of {field.size} px"
        pad = max(1, (hi - lo) // 24)
        for col, c in enumerate(channels):
            shown = np.stack([signal_image(r, percentile=99.0) for r in recon[col]])
            for j, (img, what) in enumerate(((shown, "deconvnet"), (tiles[col], "patches"))):
                ax = axes[row, 2 * col + j]
                ax.imshow(grid(img, columns=3, pad=pad, fill=1.0),
                          interpolation="nearest" if hi - lo < 64 else "antialiased")
                _off(ax)
                ax.set_title(f"{label.split(' ')[0]} ch {c}: {what}", fontsize=9, pad=3)
        shown_part = f",\ncentral {hi - lo} px shown" if hi - lo < field.size else ""
        axes[row, 0].set_ylabel(f"{label}\nfield {field.size} px{shown_part}", fontsize=9)
        bar.update(1)
    sample.note(ctx)
    ctx.note(channels=picked, shown_part_of_the_receptive_field=crops,
             reconstruction_seconds=round(time.perf_counter() - start, 1))
    return fig


def signal_box(signals: np.ndarray, mass: float = 0.99) -> tuple[int, int]:
    """[lo, hi): the smallest centred square of the (..., S, S, 3) tiles (all cut at their unit's
    receptive field, so aligned on the unit) that holds ``mass`` of the summed |signal|."""
    energy = np.abs(np.asarray(signals, np.float64)).reshape((-1,) + signals.shape[-3:]).sum(axis=(0, 3))
    size = energy.shape[0]
    total = energy.sum()
    if total <= 0:
        return 0, size
    for half in range(1, size // 2 + 1):
        lo, hi = size // 2 - half, size // 2 + half + size % 2
        if energy[max(lo, 0):hi, max(lo, 0):hi].sum() >= mass * total:
            return max(lo, 0), min(hi, size)
    return 0, size


def _patch_channels(model, index, layer: str, ctx: Context) -> list[int]:
    """The channels scan_patches shows for ``layer`` (same rule), so that this figure shows others."""
    if layer not in [model.resolve_layer(n) for n in PATCH_LAYERS if n in model.aliases or n in model.layer_names]:
        return []
    return strongest_channels(index.topk[layer], 2 if ctx.quick else 3)
