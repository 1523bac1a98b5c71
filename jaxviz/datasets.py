"""A small, deterministic image set built from what ships offline, for the scan figures.

No large image dataset is available offline, so ``figure_dataset`` builds one from scikit-image's
sample photos and textures, scikit-learn's two sample photos (china, flower) and scikit-image's
LFW faces subset (200 faces, 25x25 grey), plus deterministic random crops, flips and scales of
them, written as PNG files. Any user folder works the same way in ``jaxviz scan``.

Also the other image sets the techniques take as arrays, read here so that no technique opens a
file: the ImageNet sample photographs and the style paintings (``../shared``), the candidates of
the texture-vs-shape study (``candidate_images``, ``photo_candidates``, ``load_folder``) and the
content images of fast-style training (``load_content_folder``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence, TYPE_CHECKING

import numpy as np

from jaxviz.errors import JaxvizError

if TYPE_CHECKING:
    from jaxviz.interface import ModelLike
    from jaxviz.scan_index import Index

# scikit-image samples that ship with the package (no download), photos first.
SKIMAGE_SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "cat", "camera", "hubble_deep_field",
                   "immunohistochemistry", "coins", "moon", "page", "text", "retina",
                   "colorwheel", "brick", "grass", "gravel")
FACES = 40  # LFW faces used (each also flipped); the rest of the set are crops of the photos


def base_images() -> dict[str, Callable[[], np.ndarray]]:
    """name -> loader of a float RGB (H, W, 3) image in [0, 1], for every base image available."""
    from jaxviz.images import _to_float_rgb

    bases: dict[str, Callable[[], np.ndarray]] = {}

    def sk(name):
        def load():
            import skimage.data
            return _to_float_rgb(getattr(skimage.data, name)())
        return load

    for name in SKIMAGE_SAMPLES:
        bases[name] = sk(name)
    try:
        from sklearn.datasets import load_sample_images
        for i, fname in enumerate(("china", "flower")):
            bases[fname] = (lambda i=i: _to_float_rgb(load_sample_images().images[i]))
    except Exception:  # an sklearn without its sample images: use the rest
        pass
    return bases


def _faces() -> np.ndarray | None:
    try:
        import skimage.data
        return np.asarray(skimage.data.lfw_subset(), np.float32)  # (200, 25, 25) in [0, 1]
    except Exception:  # not shipped in this scikit-image build
        return None


def figure_dataset(root: str | os.PathLike, count: int = 300, *, size: int = 224, seed: int = 0) -> list[str]:
    """Write ``count`` deterministic images (PNG, ``size`` x ``size``) into ``root``; return paths.

    The set: every base image whole; then, alternating, ``FACES`` LFW faces and their mirror
    images, and random crops (10–100 % of the shorter side squared, aspect 3:4–4:3) of the base
    images in turn, half of them mirrored. Same arguments, same files; an existing complete set is reused, not rewritten.

    Raises:
      JaxvizError: count < 1, or ``root`` is not a writable folder.
    """
    from jaxviz.images import fit_image, save_image
    if count < 1:
        raise JaxvizError(f"count must be at least 1, got {count}")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxvizError(f"cannot create dataset folder {root}: {e}") from None
    manifest = root / "dataset.json"
    key = {"count": count, "size": size, "seed": seed, "version": 2}
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text())
            if saved.get("key") == key and all((root / p).is_file() for p in saved["files"]):
                return [str(root / p) for p in saved["files"]]
        except (ValueError, KeyError):
            pass
    rng = np.random.default_rng(seed)
    bases = base_images()
    names = list(bases)
    cache: dict[str, np.ndarray] = {}

    def base(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = bases[name]()
        return cache[name]

    items: list[tuple[str, np.ndarray]] = [(name, base(name)) for name in names]
    faces: list[tuple[str, np.ndarray]] = []
    lfw = _faces()
    if lfw is not None:
        for i in range(min(FACES, len(lfw))):
            face = np.repeat(lfw[i][..., None], 3, axis=-1)
            faces += [(f"face{i:03d}", face), (f"face{i:03d}_flip", face[:, ::-1])]
    i = 0
    while len(items) < count:
        if faces:  # faces and crops alternate, so a small set has both
            items.append(faces.pop(0))
            if len(items) == count:
                break
        name = names[i % len(names)]
        img = base(name)
        h, w = img.shape[:2]
        area = rng.uniform(0.1, 1.0) * min(h, w) ** 2
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[top:top + ch, left:left + cw]
        flip = bool(rng.integers(0, 2))
        items.append((f"{name}_crop{i:04d}{'_flip' if flip else ''}", crop[:, ::-1] if flip else crop))
        i += 1
    files = []
    for n, (name, img) in enumerate(items[:count]):
        fname = f"{n:04d}_{name}.png"
        save_image(fit_image(np.ascontiguousarray(img), size, "stretch"), root / fname)
        files.append(fname)
    manifest.write_text(json.dumps({"key": key, "files": files}))
    return [str(root / f) for f in files]


def figure_index(model: ModelLike, out: str | os.PathLike, *, layers: tuple[str, ...], count: int = 300,
                 topk: int = 9, input_size: int | None = None, batch: int = 32, progress: bool = False) -> Index:
    """The figure dataset written to ``out/images/`` and scanned into the INDEX ``out`` with
    ``model`` (any ``jaxviz`` Model with named layers).

    Both steps are deterministic and reuse what is already there (a complete index is returned as
    is), so several figures can share one scan. Returns a ``jaxviz.scan_index.Index``.
    """
    from jaxviz.interface import as_model
    from jaxviz.scan_index import scan
    model = as_model(model)
    size = int(input_size) if input_size is not None else max(model.input_hw())
    out = Path(out)
    paths = figure_dataset(out / "images", count, size=size)
    # The files are already square at the size: "stretch" keeps them as they are.
    return scan(model, paths, out, layers=layers, topk=topk, batch=batch, input_size=input_size, fit="stretch",
                progress=progress)


# ------------------------------------------------------------------ real photographs and paintings

STYLE_PAINTINGS = {  # short name -> file (in ../shared/styles, or the small copies shipped here)
    "starry_night": "starry_night.jpg", "the_scream": "the_scream.jpg", "shipwreck": "shipwreck.jpg",
    "woman_with_hat": "woman-with-hat-matisse.jpg",
}


def imagenet_sample_dir() -> Path | None:
    """``$JAXVIZ_SHARED/imagenet-sample`` (default ``../shared`` beside the checkout) when present."""
    from jaxviz.weights.sources import shared_dir
    folder = shared_dir() / "imagenet-sample"
    return folder if (folder / "labels.csv").is_file() else None


def imagenet_sample(folder: str | os.PathLike | None = None) -> list[dict]:
    """The ImageNet sample photographs: [{"path", "wnid", "class", "label"}] in class order.

    ``folder`` defaults to ``imagenet_sample_dir()``; it must hold ``labels.csv`` (file, wnid,
    class_index, label). Raises ``JaxvizError`` when it is missing or damaged.
    """
    import csv
    root = Path(folder) if folder is not None else imagenet_sample_dir()
    if root is None or not (root / "labels.csv").is_file():
        raise JaxvizError("the ImageNet sample (../shared/imagenet-sample with labels.csv) is not available here")
    rows = []
    try:
        with open(root / "labels.csv", newline="") as f:
            for row in csv.DictReader(f):
                rows.append({"path": str(root / row["file"]), "wnid": row["wnid"],
                             "class": int(row["class_index"]), "label": row["label"]})
    except (KeyError, ValueError, csv.Error) as e:
        raise JaxvizError(f"{root / 'labels.csv'} is damaged ({e.__class__.__name__}: {e})") from None
    return sorted(rows, key=lambda r: r["class"])


def photos_of(classes: Sequence[int], folder: str | os.PathLike | None = None) -> list[dict]:
    """The sample photographs of the given class indices (in that order; missing classes skipped)."""
    by_class = {r["class"]: r for r in imagenet_sample(folder)}
    return [by_class[c] for c in classes if c in by_class]


def image_folder(folder: str | os.PathLike) -> list[str]:
    """Image files in ``folder`` (recursively, sorted): a user's own pool for the dataset figures."""
    from jaxviz.scan_index import collect_sources
    return collect_sources([str(folder)])


def style_painting(name: str) -> tuple[np.ndarray, str]:
    """(RGB float [0, 1] image, where it came from) of a style painting: the shared original when
    ``../shared/styles`` is present, else the small copy shipped in ``jaxviz/data/styles``."""
    from importlib import resources

    from jaxviz.images import load_image
    from jaxviz.weights.sources import shared_dir
    if name not in STYLE_PAINTINGS:
        import difflib
        close = difflib.get_close_matches(name, list(STYLE_PAINTINGS), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(STYLE_PAINTINGS)}"
        raise JaxvizError(f"unknown style painting {name!r}{hint}")
    file = STYLE_PAINTINGS[name]
    shared = shared_dir() / "styles" / file
    if shared.is_file():
        return load_image(shared), str(shared)
    packaged = resources.files("jaxviz.data").joinpath("styles", file)
    with resources.as_file(packaged) as path:
        return load_image(path), f"jaxviz/data/styles/{file} (512 px copy)"


# ------------------------------------------------- candidates of the texture-vs-shape study (jaxviz.bias)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def photo_candidates(rows: Sequence[dict], size: int | tuple[int, int]
                     ) -> list[tuple[str, np.ndarray, tuple[int, ...]]]:
    """Photographs of Geirhos et al.'s 16 categories as ``jaxviz.bias.select_sources`` candidates.

    Args:
      rows: ``[{"path", "class", "label"}]`` (e.g. ``jaxviz.datasets.imagenet_sample()``); rows
        whose class is in none of the 16 categories are skipped.
      size: the study's image size (photos are stretched to it).
    Returns:
      ``(name, (H, W, 3) image in [0, 1], class set)``, the class set being the whole category
      (``jaxviz.bias.class_set``), so a sibling class counts as the category.
    """
    from jaxviz.bias import CLASS_GROUPS, class_set
    from jaxviz.images import load_image
    members = {c for group in CLASS_GROUPS for c in group}
    return [(str(r.get("label") or Path(r["path"]).stem), load_image(r["path"], size, fit="stretch"),
             class_set(int(r["class"]))) for r in rows if int(r["class"]) in members]


def candidate_images(size: int | tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """The sample photos (``jaxviz.bias.SAMPLE_PHOTOS``) and crops of them: (name, (H, W, 3) image
    in [0, 1]) at ``size``: the default candidates of the texture-vs-shape study.

    Per photo: whole, centre crop (middle 3/4 of each side), and the mirror image of both.
    """
    from jaxviz.bias import SAMPLE_PHOTOS
    from jaxviz.images import fit_image
    bases = base_images()
    out = []
    for name in SAMPLE_PHOTOS:
        if name not in bases:
            continue
        full = bases[name]()
        h, w = full.shape[:2]
        centre = full[h // 8:h - h // 8, w // 8:w - w // 8]
        for crop, img in (("", full), (" centre", centre)):
            out.append((name + crop, fit_image(img, size, "stretch")))
            out.append((name + crop + " mirror", fit_image(np.ascontiguousarray(img[:, ::-1]), size, "stretch")))
    return out


def load_folder(root: str | os.PathLike, size: int | tuple[int, int]
                ) -> list[tuple[str, np.ndarray, tuple[int, ...]]]:
    """Images of a folder with one sub-folder per class: (name, image (H, W, 3), class set), the
    candidates of a texture-vs-shape study (``jaxviz.bias.select_sources``) on the user's images.

    A sub-folder is named by an ImageNet class name or index (``"Egyptian cat"``, ``"285"``), or
    several joined by ``+``. Image files are read from each sub-folder (not recursively).

    Raises:
      JaxvizError: missing folder, no class sub-folders, an unknown class name, two folders of
        the same class, a class folder without images, fewer than two classes, unreadable image.
    """
    from jaxviz.bias import parse_class_folder
    from jaxviz.images import load_image
    root = Path(root)
    if not root.exists():
        raise JaxvizError(f"image folder does not exist: {root}")
    if not root.is_dir():
        raise JaxvizError(f"--images must be a folder with one sub-folder per class, got a file: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise JaxvizError(f"no class sub-folders in {root}: put the images in one sub-folder per ImageNet "
                          "class, named by class name or index")
    out, seen = [], {}
    for folder in folders:
        classes = parse_class_folder(folder.name)
        for c in classes:
            if c in seen:
                raise JaxvizError(f"class folders {seen[c]!r} and {folder.name!r} both contain class {c}")
            seen[c] = folder.name
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise JaxvizError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        out += [(f"{folder.name}/{p.name}", load_image(p, size, fit="stretch"), classes) for p in files]
    if len(folders) < 2:
        raise JaxvizError(f"need at least 2 class sub-folders in {root} for cue-conflict pairs, got {len(folders)}")
    return out


# ---------------------------------------------------------- content images of fast-style training

def load_content_folder(folder: str | os.PathLike, size: int, limit: int = 256) -> np.ndarray:
    """(K, S', S', 3) content images from a folder (sample names also allowed), S' = ceil(1.25 size),
    for ``jaxviz.fast_style`` training (``train``'s ``content_images``).

    Each image is resized so random ``size`` crops cover most of it.
    """
    from jaxviz.images import load_image
    folder = Path(folder)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        if not files:
            raise JaxvizError(f"no .png/.jpg images in {folder}")
    else:
        raise JaxvizError(f"content folder not found: {folder}")
    big = int(np.ceil(1.25 * size))
    return np.stack([load_image(f, big, fit="stretch") for f in files[:limit]])
