"""A small, deterministic image set built from what ships offline, for the scan figures.

No large image dataset is available offline, so ``figure_dataset`` builds one from scikit-image's
sample photos and textures, scikit-learn's two sample photos (china, flower) and scikit-image's
LFW faces subset (200 faces, 25x25 grey), plus deterministic random crops, flips and scales of
them, written as PNG files. Any user folder works the same way in ``jaxviz scan``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from jaxviz.errors import JaxvizError

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


def figure_index(model, out: str | os.PathLike, *, layers: tuple[str, ...], count: int = 300,
                 topk: int = 9, input_size: int | None = None, batch: int = 32, progress: bool = False):
    """The figure dataset written to ``out/images/`` and scanned into the INDEX ``out`` with
    ``model`` (any ``jaxviz`` Model with named layers).

    Both steps are deterministic and reuse what is already there (a complete index is returned as
    is), so several figures can share one scan. Returns a ``jaxviz.scan.Index``.
    """
    from jaxviz.interface import as_model
    from jaxviz.scan import scan
    model = as_model(model)
    size = int(input_size) if input_size is not None else max(model.input_hw())
    out = Path(out)
    paths = figure_dataset(out / "images", count, size=size)
    # The files are already square at the size: "stretch" keeps them as they are.
    return scan(model, paths, out, layers=layers, topk=topk, batch=batch, input_size=input_size, fit="stretch",
                progress=progress)
