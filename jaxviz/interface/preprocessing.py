"""What a model expects as input: channel order, pixel range, mean and standard deviation.

Techniques work on *model-input* arrays ``x = preprocess(images01)``; attacks and image
optimisation need the box of valid pixels in that space (``valid_range``), and figures need the
way back (``invert``).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclass(frozen=True)
class Preprocessing:
    """x_model = (x[..., order] * scale - mean) / std for RGB images x in [0, 1], NHWC."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0
    bgr: bool = False

    # Eager on concrete arrays, one operation after another, on purpose (not one jitted program,
    # which would save four small compiles): fused, XLA rounds the last bit differently, and the
    # gallery's unit-step L-BFGS Gram texture at relu1_1, which amplifies rounding, ended as noise.
    # Inside a caller's jit it is fused like any other code.
    def __call__(self, images: Array) -> Array:
        """(N, H, W, 3) RGB in [0, 1] -> model input."""
        x = images[..., ::-1] if self.bgr else images
        return (x * self.scale - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)

    def invert(self, x: Array) -> Array:
        """Exact inverse: model input -> RGB in [0, 1] (not clipped)."""
        x = (x * jnp.asarray(self.std, x.dtype) + jnp.asarray(self.mean, x.dtype)) / self.scale
        return x[..., ::-1] if self.bgr else x

    def valid_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each (3,) float32 in model channel order: the preprocessing of [0, 1]."""
        # numpy, the same float32 operations as __call__ (no program compiled for two pixels)
        ends = np.stack([np.zeros(3, np.float32), np.ones(3, np.float32)])
        x = ends[:, ::-1] if self.bgr else ends
        lo, hi = (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.minimum(lo, hi), np.maximum(lo, hi)

    def describe(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        rng = "0-255" if self.scale == 255 else "[0,1]" if self.scale == 1 else f"[0,{self.scale:g}]"
        return f"{order} {rng}, mean {self.mean}, std {self.std}"


IDENTITY = Preprocessing()  # RGB in [0, 1], as is
TORCHVISION = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CAFFE = Preprocessing(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True)
LITE = Preprocessing(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=255.0)


@dataclass(frozen=True)
class EvalTransform:
    """A model's standard evaluation transform: how a photograph of any shape becomes its input.

    - ``"resize_crop"`` (torchvision's ``Resize(resize)`` + ``CenterCrop(crop)``): the shorter side
      is resized to ``resize`` (the longer to ``int(resize * long / short)``), antialiased
      ``interpolation`` on the 8-bit image (Pillow, as torchvision does for PIL images), then the
      centre ``crop`` is cut with offsets ``int(round((H - crop) / 2))``.
    - ``"padded_crop"`` (the TensorFlow EfficientNet reference): a centre crop of
      ``crop / (crop + padding) * min(H, W)`` pixels (offsets ``(H - s + 1) // 2``), resized to
      ``crop`` with non-antialiased ``interpolation`` (``tf.image.resize``'s kernel).

    ``for_size(s)`` keeps the ratio for another input size (``resize = round(s * resize / crop)``).
    """

    kind: str = "resize_crop"
    crop: int = 224
    resize: int = 256
    interpolation: str = "bilinear"
    padding: int = 32

    def for_size(self, size: int) -> "EvalTransform":
        if size == self.crop:
            return self
        return EvalTransform(self.kind, int(size), int(round(size * self.resize / self.crop)),
                             self.interpolation, self.padding)

    def describe(self) -> str:
        if self.kind == "resize_crop":
            return f"resize shorter side to {self.resize} ({self.interpolation}, antialiased), centre crop {self.crop}"
        return (f"centre crop {self.crop}/({self.crop}+{self.padding}) of the shorter side, "
                f"resize to {self.crop} ({self.interpolation})")


TORCHVISION_EVAL = EvalTransform("resize_crop", 224, 256, "bilinear")
LITE_EVAL = EvalTransform("padded_crop", 224, interpolation="bicubic", padding=32)
