"""Loading images (files or named samples) as float RGB arrays in [0, 1], NHWC, and writing them.

Any Pillow-readable file works: grey, palette, RGBA (composited on white), 16-bit (scaled, not
clipped); EXIF orientation on request (``exif=True``). Images of another shape are fitted with
the model's standard evaluation transform (``EvalTransform``: torchvision's Resize(256) +
CenterCrop(224) for torchvision models, equal to torchvision's own pipeline on the ImageNet
sample), or stretched. Model-specific normalisation lives with the model
(``ModelSpec.preprocessing``); this module only decodes, fits to size and encodes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxviz.errors import JaxvizError
from jaxviz.interface.preprocessing import TORCHVISION_EVAL, EvalTransform

# Refuse images above this many pixels (a decompression bomb, or a mistake): 10k x 10k.
MAX_PIXELS = 100_000_000
Fit = Literal["eval", "stretch", "crop"]
FITS = ("eval", "stretch", "crop")


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data  # imported lazily: only the samples need scikit-image
        return getattr(skimage.data, name)()
    return load


# Named sample images shipped with scikit-image (no download): usable wherever a path is.
SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    name: _skimage(name) for name in
    ["chelsea", "coffee", "astronaut", "rocket", "cat", "camera", "brick", "gravel", "grass",
     "hubble_deep_field", "text", "moon", "page", "horse", "coins", "immunohistochemistry"]
}
SAMPLES["ihc"] = SAMPLES["immunohistochemistry"]


def _to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8/uint16/float array, grey or RGB(A) -> float32 (H, W, 3) in [0, 1]."""
    if not pixels.dtype.isnative:  # e.g. a big-endian TIFF's I;16B ('>u2' is not np.uint16 here)
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    if pixels.dtype == np.uint8:
        x = pixels.astype(np.float32) / 255.0
    elif pixels.dtype in (np.uint16, np.int32, np.int16):
        # 16-bit PNG/TIFF/PGM: Pillow gives mode I;16 / I; scale by the 16-bit range, never clip to 8.
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise JaxvizError(f"integer pixel values {pixels.min()}..{pixels.max()} are outside 16 bits "
                              "(0..65535); save the image with 8 or 16 bits per channel")
        x = pixels.astype(np.float32) / 65535.0
    elif pixels.dtype == bool:
        x = pixels.astype(np.float32)
    else:
        x = pixels.astype(np.float32)
        if x.max(initial=0) > 1.0:
            x = x / 255.0
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[-1] == 4:  # composite on white, as a viewer shows a transparent image
        rgb, alpha = x[..., :3], x[..., 3:]
        x = rgb * alpha + (1.0 - alpha)
    elif x.shape[-1] == 2:  # grey + alpha
        g, alpha = x[..., :1], x[..., 1:]
        x = np.repeat(g * alpha + (1.0 - alpha), 3, axis=-1)
    return np.clip(x, 0.0, 1.0)


def _read_file(path: Path, exif: bool = False, keep_rgb8: bool = False) -> np.ndarray | Image.Image:
    """Decode a file to its pixels; with ``keep_rgb8`` an 8-bit RGB image stays a Pillow image,
    which the resize takes as it is (an array round trip was an eighth of a photograph's load)."""
    if not path.exists():
        raise JaxvizError(f"no such image file: {path}")
    if path.is_dir():
        raise JaxvizError(f"expected an image file, got a directory: {path}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise JaxvizError(f"image too large: {path} is {img.width}x{img.height} "
                                  f"(limit {MAX_PIXELS // 1_000_000} megapixels)")
            if exif:
                img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA")
            elif img.mode == "CMYK" or img.mode == "YCbCr" or img.mode == "LAB":
                img = img.convert("RGB")
            elif img.mode == "1":
                img = img.convert("L")
            if keep_rgb8 and img.mode == "RGB" and img.width and img.height:
                img.load()
                return img
            pixels = np.asarray(img)
    except JaxvizError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise JaxvizError(f"cannot read image {path}: {e.__class__.__name__}: {e}") from None
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise JaxvizError(f"cannot read image {path}: unsupported layout {pixels.shape}")
    return pixels


def load_image(source: str | os.PathLike, size: int | tuple[int, int] | None = None,
               fit: Fit = "eval", transform: EvalTransform | None = None, exif: bool = False) -> np.ndarray:
    """An image file or sample name as float32 RGB (H, W, 3) in [0, 1].

    Args:
      source: a path, or a sample name from ``SAMPLES`` (a file of that name wins).
      size: output size (square int or (height, width)); None keeps the original size.
      fit: how an image of another shape is fitted (``fit_image``): "eval" (default) the model's
        standard evaluation ``transform`` (torchvision's Resize(256) + CenterCrop(224) when none
        is given), "stretch" straight to ``size``, "crop" an alias of "eval".
      transform: the model's ``EvalTransform`` (``model.eval_transform``).
      exif: apply the EXIF orientation (as a photo viewer shows the image). Off by default, as in
        torchvision's and timm's loaders, so that inputs equal the reference frameworks'.
    Raises:
      JaxvizError: missing, unreadable, empty or too large image; unknown sample name.
    """
    path = Path(source)
    if path.exists() or str(source) not in SAMPLES:
        if not path.exists() and os.sep not in str(source) and not path.suffix:
            import difflib  # a mistyped sample name ("chelsae"): suggest the close ones
            close = difflib.get_close_matches(str(source), list(SAMPLES), n=3, cutoff=0.6)
            if close:
                raise JaxvizError(f"no such image file or sample: {source}; did you mean {' or '.join(close)}?")
        pixels = _read_file(path, exif, keep_rgb8=size is not None)
        if isinstance(pixels, Image.Image):
            return fit_image(pixels, size, fit, transform)
    else:
        pixels = SAMPLES[str(source)]()
    if size is not None and pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[-1] == 3:
        # 8-bit RGB (most photographs): fitted as 8 bits, converted to float after the resize.
        # The same values as through the float image (Pillow resizes 8 bits either way) at a
        # third of the cost: the full-size float conversions were half of a photograph's decode.
        return fit_image(pixels, size, fit, transform)
    image = _to_float_rgb(pixels)
    return image if size is None else fit_image(image, size, fit, transform)


def fit_image(image: np.ndarray | Image.Image, size: int | tuple[int, int], fit: Fit = "eval",
              transform: EvalTransform | None = None) -> np.ndarray:
    """(H, W, 3) float [0, 1] (or uint8 0-255, or an 8-bit RGB Pillow image) -> float32 ``size``
    in [0, 1].

    "eval"/"crop": the evaluation transform (``EvalTransform``, scaled to a square ``size``; a
    non-square ``size`` resizes to cover it and centre-crops); "stretch": Pillow bicubic straight
    to ``size`` (aspect ratio not kept).
    """
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if fit not in FITS:
        raise JaxvizError(f"unknown fit {fit!r}; use one of {', '.join(FITS)}")
    if fit == "stretch":
        return _resize(image, (height, width), Image.BICUBIC)
    transform = transform or TORCHVISION_EVAL
    h, w = _height_width(image)
    if height != width:  # cover the box, then centre-crop it, with the transform's interpolation
        scale = max(height / h, width / w) * transform.resize / transform.crop
        resized = (max(height, round(h * scale)), max(width, round(w * scale)))
        _check_resized((h, w), resized, (height, width))
        return _resize(image, resized, _PIL[transform.interpolation], crop=(height, width))
    t = transform.for_size(int(height))
    if t.kind == "resize_crop":
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(t.resize * long / short)  # torchvision's rounding
        new_h, new_w = (new_long, t.resize) if w <= h else (t.resize, new_long)
        _check_resized((h, w), (new_h, new_w), (t.crop, t.crop))
        return _resize(image, (new_h, new_w), _PIL[t.interpolation], crop=(t.crop, t.crop))
    if t.kind == "padded_crop":
        image = np.asarray(image)  # a Pillow image too: the crop is cut from the array
        side = int(t.crop / (t.crop + t.padding) * min(h, w))
        top, left = (h - side + 1) // 2, (w - side + 1) // 2
        crop = image[top:top + side, left:left + side]
        # tf.image.resize: half-pixel centres, Keys cubic, no antialiasing
        method = "cubic" if t.interpolation == "bicubic" else "linear"
        out = jax.image.resize(jnp.asarray(_as_uint8(crop), jnp.float32), (t.crop, t.crop, 3), method,
                               antialias=False)
        return np.clip(np.asarray(out) / 255.0, 0.0, 1.0).astype(np.float32)
    raise JaxvizError(f"unknown evaluation transform {t.kind!r}")


_PIL = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
MAX_RESIZED_PIXELS = 25_000_000  # the evaluation transform's intermediate image: 300 MB as float32
MAX_RESIZED_RATIO = 16  # ... or, for large outputs, this many times the output's pixels


def _check_resized(shape: tuple[int, int], resized: tuple[int, int], out: tuple[int, int]) -> None:
    """Refuse an aspect ratio whose resize-then-crop intermediate would not fit in memory (an
    8000x1 strip resized to a short side of 256 is 2,048,000 x 256 pixels). The bound grows with
    the output size: a 3:2 photograph fitted to 4096 px has a 33 MP intermediate."""
    limit = max(MAX_RESIZED_PIXELS, MAX_RESIZED_RATIO * out[0] * out[1])
    if resized[0] * resized[1] > limit:
        raise JaxvizError(f"image aspect ratio too extreme: {shape[1]}x{shape[0]} would be resized to "
                          f"{resized[1]}x{resized[0]} before the centre crop (limit {limit / 1e6:g} "
                          "megapixels); crop it first or fit it by stretching (fit='stretch', --fit stretch)")


def _center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's CenterCrop offsets: int(round((H - crop) / 2))."""
    top = int(round((image.shape[0] - height) / 2.0))
    left = int(round((image.shape[1] - width) / 2.0))
    return image[top:top + height, left:left + width]


def _as_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else to_uint8(image)


def _height_width(image: np.ndarray | Image.Image) -> tuple[int, int]:
    return (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]


def _resize(image: np.ndarray | Image.Image, size: tuple[int, int], resample=Image.BICUBIC,
            crop: tuple[int, int] | None = None) -> np.ndarray:
    """float [0, 1] or uint8 (H, W, 3) array or 8-bit RGB Pillow image -> float32 ``size`` in
    [0, 1], then its centre ``crop`` (height, width) if given (cut before the float conversion)."""
    if _height_width(image) == tuple(size):
        pixels = np.asarray(image)
    else:
        # Resize 8-bit (exact for 8-bit sources) so results match torchvision's PIL pipeline bit for bit.
        img = image if isinstance(image, Image.Image) else Image.fromarray(_as_uint8(image))
        pixels = np.asarray(img.resize((size[1], size[0]), resample))
    if crop is not None:
        pixels = _center_crop(pixels, *crop)
    return pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float32)


def load_images(sources: Sequence[str | os.PathLike], size: int | tuple[int, int],
                fit: Fit = "eval", transform: EvalTransform | None = None, exif: bool = False) -> np.ndarray:
    """Several images as one (N, H, W, 3) float32 batch in [0, 1] (see ``load_image``)."""
    return np.stack([load_image(s, size, fit, transform, exif) for s in sources])


def load_thumbnails(sources: Sequence[str], size: int | tuple[int, int], *, fit: Fit = "stretch",
                    transform: EvalTransform | None = None, progress: bool = False) -> np.ndarray:
    """(N, size, size, 3) float32 images in [0, 1] from paths or sample names, with an optional
    progress bar (thumbnails for the embedding maps and neighbour strips); ``fit``/``transform``
    as ``load_image``."""
    it = sources
    if progress:
        from tqdm import tqdm
        it = tqdm(sources, desc="images", unit="img")
    return np.stack([load_image(s, size, fit, transform) for s in it]).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 with rounding (clipped)."""
    return np.clip(np.round(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def save_image(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a float [0, 1] (H, W, 3) or (H, W) image as 8-bit PNG/JPEG (by extension), atomically
    (``jaxviz.io.atomic_write``: a temporary file in the same folder, renamed when complete).

    Raises:
      JaxvizError: the folder does not exist, the suffix is not an image format, or the file
        cannot be written (``jaxviz.io.WriteError``: read-only location, full disk).
    """
    from jaxviz.io import atomic_write
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise JaxvizError(f"output directory does not exist: {path.parent}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise JaxvizError(f"cannot write image {path}: unknown image suffix {path.suffix!r}")
    pixels = Image.fromarray(to_uint8(image))
    try:
        atomic_write(path, lambda f: pixels.save(f, format=fmt))
    except ValueError as e:
        raise JaxvizError(f"cannot write image {path}: {e}") from None


def source_name(source: str | os.PathLike) -> str:
    """A short display name: the sample name or the file name."""
    return Path(source).name
