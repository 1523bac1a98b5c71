#!/usr/bin/env python
"""Peak memory against the number of images, and embedding timings (not comparisons:
``scripts/bench.py`` times the scan against the forward pass, ``--only scan``).

    python scripts/bench_memory.py [--model squeezenet1_1] [--quick]
    python scripts/bench_memory.py --skip scan embedding --methods vanilla smoothgrad \
        --counts 8 32 128 320 --size 224 --batch 16

Prints
  1. per attribution method (``jaxviz saliency --method M``, run in-process by a fresh Python
     process per point, images streamed in ``--batch`` chunks, the map written with ``--npy``):
     peak resident memory (VmHWM) against the number of images, 8 -> 1000; past the chunk size
     it must stay flat (within 20% of the value at 2 chunks; the table says "flat" or "GROWS");
  2. peak resident memory of a scan of 64 vs 640 synthetic 112 px images (each in a fresh process):
     it should stay flat when the dataset grows 10x;
  3. kNN and t-SNE timings for 1k / 10k random points with ``jaxviz.embedding`` (when present).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


MEMORY_CHILD = """
import json, tracemalloc
from jaxviz.accel import accelerate
from jaxviz.scan_index import scan, collect_sources
from jaxviz.weights.store import load_model

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

model = accelerate(load_model({model!r}))
sources = collect_sources([{folder!r}])
samples = [rss_mb()]
tracemalloc.start()
scan(model, sources, {out!r}, layers={layers!r}, batch={batch}, input_size=112, fit="stretch",
     on_batch=lambda done: samples.append(rss_mb()))
_, traced_peak = tracemalloc.get_traced_memory()
print(json.dumps({{"images": len(sources), "rss_start_mb": samples[0], "peak_rss_mb": max(samples),
                  "traced_peak_mb": traced_peak / 2**20}}))
"""


def bench_memory(model_name: str, layers: list[str], counts=(64, 640), batch: int = 8) -> None:
    """Batch 8, so that even the small run has 8 steps: the allocator's first steps (XLA buffers,
    thread arenas) reach their plateau in both runs and only growth with the dataset shows."""
    from jaxviz.images import save_image
    print(f"## peak memory: {model_name}, 112 px, batch {batch}, each count in a fresh process")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(2)
        for count in counts:
            folder = Path(tmp) / f"d{count}"
            folder.mkdir()
            for i in range(count):
                save_image(rng.random((112, 112, 3)), folder / f"{i:04d}.png")
            code = MEMORY_CHILD.format(model=model_name, folder=str(folder), out=f"{tmp}/ix{count}", layers=layers,
                                       batch=batch)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if proc.returncode:
                print(proc.stderr[-2000:])
                return
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{r['images']:>5} images: peak RSS during the scan {r['peak_rss_mb']:7.1f} MB "
                  f"(before: {r['rss_start_mb']:.1f} MB); peak Python/numpy allocations "
                  f"(tracemalloc) {r['traced_peak_mb']:.1f} MB")
    if len(results) == 2:
        a, b = results
        print(f"10x the images -> peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.3f} "
              f"({b['peak_rss_mb'] - a['peak_rss_mb']:+.1f} MB), traced peak x{b['traced_peak_mb'] / a['traced_peak_mb']:.2f} "
              f"(the features of 576 more images are {576 * 512 * 4 / 2**20:.1f} MB, streamed to disk "
              f"and read back once at the end)")


METHOD_CHILD = """
import json, sys, time
from jaxviz.runtime import enable_compilation_cache

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

argv = json.loads(sys.argv[1])
enable_compilation_cache()
from jaxviz.cli import main
start, before = time.perf_counter(), status("VmRSS:")
code = main(argv)
print(json.dumps({{"code": code, "peak_rss_mb": status("VmHWM:"), "rss_before_mb": before,
                  "seconds": time.perf_counter() - start}}))
"""


def bench_methods(model_name: str, methods, counts, size: int = 224, batch: int = 16,
                  extra: dict | None = None, tolerance: float = 0.2) -> list[dict]:
    """Peak RSS of ``jaxviz saliency`` per method and number of images, each point in a fresh
    process. The images are 16 distinct random 256 px PNGs repeated (loading and fitting run per
    image as for any file). Returns the rows printed."""
    from jaxviz.images import save_image
    if size != 224:  # checked before any work
        raise SystemExit("bench_memory.py: the saliency command runs at the model's input size (224 px here)")
    extra = extra or {}
    rows = []
    print(f"## peak memory of `jaxviz saliency`: {model_name}, {size} px, --batch {batch}, each point in a "
          f"fresh process (VmHWM; flat = within {tolerance:.0%} of the value at the first count >= {2 * batch} images)")
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(4)
        files = []
        for i in range(16):
            path = Path(tmp) / f"img{i:02d}.png"
            save_image(rng.random((256, 256, 3)), path)
            files.append(str(path))
        for method in methods:
            reference = None
            for count in counts:
                images = [files[i % len(files)] for i in range(count)]
                argv = ["saliency", *images, "--model", model_name, "--method", method, "--batch", str(batch),
                        "--quiet", "--fit", "stretch", "--npy", f"{tmp}/map.npy", *extra.get(method, [])]
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                proc = subprocess.run([sys.executable, "-c", METHOD_CHILD.format(), json.dumps(argv)],
                                      capture_output=True, text=True, env=env)
                last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
                try:
                    r = json.loads(last)
                except ValueError:
                    r = {}
                if proc.returncode or r.get("code") != 0:
                    print(f"{method} {count}: failed: {proc.stderr[-1500:]}")
                    break
                if count >= 2 * batch and reference is None:  # the first point past two chunks
                    reference, reference_count = r["peak_rss_mb"], count
                ratio = r["peak_rss_mb"] / reference if reference else None
                verdict = "" if ratio is None else ("flat" if ratio <= 1 + tolerance else "GROWS")
                row = {"method": method, "images": count, **r, "ratio": ratio, "verdict": verdict}
                rows.append(row)
                print(f"{method:<12} {count:>5} images: peak RSS {r['peak_rss_mb']:7.0f} MB "
                      f"(before the run {r['rss_before_mb']:.0f} MB), {r['seconds']:6.1f} s"
                      + (f"; x{ratio:.3f} of {reference_count} images: {verdict}" if ratio else ""), flush=True)
    return rows


def bench_embedding(sizes=(1000, 10000)) -> None:
    try:
        import jaxviz.embedding as emb
    except ImportError:
        print("## embedding: jaxviz.embedding not present; skipped")
        return
    knn = next((getattr(emb, n) for n in ("nearest_neighbors", "nearest_neighbours", "knn", "neighbors",
                                          "neighbours") if hasattr(emb, n)), None)
    tsne = next((getattr(emb, n) for n in ("tsne", "embed_tsne", "t_sne") if hasattr(emb, n)), None)
    print(f"## embedding ({emb.__name__}: knn={getattr(knn, '__name__', None)}, tsne={getattr(tsne, '__name__', None)})")
    rng = np.random.default_rng(3)
    for n in sizes:
        x = rng.standard_normal((n, 512)).astype(np.float32)
        if knn is not None:
            try:
                start = time.perf_counter()
                knn(x[:100], x, k=8)
                print(f"kNN  100 queries x {n:>6} points (D=512, k=8): {time.perf_counter() - start:7.2f} s")
                start = time.perf_counter()
                knn(x, x, k=8)
                print(f"kNN  all {n:>6} x {n:>6} points:               {time.perf_counter() - start:7.2f} s")
            except TypeError as e:
                print(f"kNN: could not call {knn.__name__}: {e}")
        if tsne is not None:
            try:
                start = time.perf_counter()
                tsne(x)
                print(f"t-SNE {n:>6} points (D=512):                    {time.perf_counter() - start:7.2f} s")
            except TypeError as e:
                print(f"t-SNE: could not call {tsne.__name__}: {e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--layers", nargs="+", default=["fire3", "fire6", "fire9"])
    parser.add_argument("--quick", action="store_true", help="skip the 10k-point embedding timings")
    parser.add_argument("--points", type=int, nargs="+", default=[1000, 10000], help="embedding sizes")
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "scan", "methods", "embedding"])
    parser.add_argument("--methods", nargs="+", default=["vanilla", "smoothgrad", "integrated", "occlusion"],
                        help="saliency methods whose memory is measured against the number of images")
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 32, 128, 512, 1000],
                        help="numbers of images (8 -> 1000)")
    parser.add_argument("--batch", type=int, default=16, help="--batch of the saliency command")
    parser.add_argument("--size", type=int, default=224, help="input size (the model's: 224)")
    parser.add_argument("--samples", type=int, default=None,
                        help="smoothgrad --samples / integrated --steps (default: the command's; fewer "
                             "samples take less time, the chunking and so the memory pattern are the same)")
    parser.add_argument("--occlusion-window", type=int, default=None,
                        help="occlusion --window and --stride (default: the command's 16/8; 56 makes 1000 "
                             "images take minutes instead of half an hour, with the same chunking over images)")
    args = parser.parse_args(argv)
    from jaxviz.runtime import enable_compilation_cache
    enable_compilation_cache()
    if "methods" not in args.skip:
        extra = {}
        if args.samples:
            extra = {"smoothgrad": ["--samples", str(args.samples)], "integrated": ["--steps", str(args.samples)]}
        if args.occlusion_window:
            extra["occlusion"] = ["--window", str(args.occlusion_window), "--stride", str(args.occlusion_window)]
        bench_methods(args.model, args.methods, args.counts, args.size, args.batch, extra)
    if "memory" not in args.skip and "scan" not in args.skip:
        bench_memory(args.model, args.layers)
    if "embedding" not in args.skip:
        bench_embedding((1000,) if args.quick else tuple(args.points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
