"""Benchmark: time to build a cue-conflict set (jaxviz.bias) — every ordered pair of sources styled
in ONE batched Adam optimisation (``style_transfer_batch``) vs one ``style_transfer`` run per pair,
same settings; plus source selection and the classifiers' decisions.

The issue names scripts/bench_optimise.py; that script belongs to another part of issue 7 (SimBA),
so this part lives here.

Usage: .venv/bin/python scripts/bench_bias.py [--size 112] [--sources 4] [--steps 20] [--no-loop]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--sources", type=int, default=4, help="classes (sources) used: pairs = n (n - 1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--style-weight", type=float, default=None, help="style weight (default: the study's)")
    parser.add_argument("--texture-crop", type=float, default=1.0, help="central fraction of the texture source")
    parser.add_argument("--no-loop", action="store_true", help="skip the one-pair-at-a-time reference")
    parser.add_argument("--identity-steps", type=int, default=0,
                        help="also style every source with its own texture for this many steps and report "
                             "whether each model keeps its class (0: skip)")
    args = parser.parse_args()

    from jaxviz import bias
    from jaxviz.accel import accelerate
    from jaxviz.runtime import device_description, enable_compilation_cache
    from jaxviz.style import style_transfer, style_transfer_batch
    from jaxviz.weights.store import load_model
    enable_compilation_cache()

    classifiers = [accelerate(load_model(n)) for n in ("squeezenet1_1", "efficientnet_lite0")]
    vgg = accelerate(load_model(bias.STYLE_NETWORK))  # as the front ends run the study
    beta = bias.STYLE_DEFAULTS["style_weight"] if args.style_weight is None else args.style_weight
    print(f"device: {device_description()}; {args.size} px, {args.steps} Adam steps, study settings "
          f"{bias.STYLE_DEFAULTS}; style weight used {beta:g}, texture crop {args.texture_crop:g}")

    t = time.perf_counter()
    sources = bias.select_sources(classifiers, bias.candidate_images(args.size), max_classes=args.sources)
    select_s = time.perf_counter() - t
    index = bias.pairs(sources)
    contents = np.stack([sources[i].image for i in index[:, 0]])
    styles = np.stack([bias.texture_crop(sources[j].image, args.texture_crop) for j in index[:, 1]])
    n = len(index)
    print(f"sources: {', '.join(s.name for s in sources)} -> {n} pairs; selection (2 classifiers, "
          f"{len(bias.candidate_images(args.size))} candidates) {select_s:.1f} s")

    kw = dict(content_weight=bias.STYLE_DEFAULTS["content_weight"], style_weight=beta,
              tv_weight=bias.STYLE_DEFAULTS["tv_weight"], learning_rate=bias.STYLE_DEFAULTS["learning_rate"],
              steps=args.steps, optimizer="adam")
    t = time.perf_counter()
    batch = style_transfer_batch(vgg, vgg.params, contents, styles, **kw)
    batch_s = time.perf_counter() - t
    loop_s = loop_opt = loop_compile = None
    if not args.no_loop:
        t = time.perf_counter()
        results = [style_transfer(vgg, vgg.params, c, [s], **kw) for c, s in zip(contents, styles)]
        loop_s = time.perf_counter() - t
        loop_opt = sum(r.seconds for r in results)
        loop_compile = sum(r.compile_seconds for r in results)
        diff = np.abs(np.stack([r.image for r in results]) - batch.images).max()
    t = time.perf_counter()
    records = bias.decision_records(classifiers, batch.images, sources, index)
    decide_s = time.perf_counter() - t

    print(f"batched  ({n} pairs in one optimisation): {batch_s:7.1f} s wall "
          f"(loop {batch.seconds:.1f} s incl. first step {batch.compile_seconds:.1f} s)  {n / batch_s:.3f} pairs/s")
    if loop_s is not None:
        print(f"one at a time ({n} runs):                 {loop_s:7.1f} s wall "
              f"(loops {loop_opt:.1f} s incl. first steps {loop_compile:.1f} s)  {n / loop_s:.3f} pairs/s")
        print(f"batched / one-at-a-time throughput: {loop_s / batch_s:.2f}x; max |image difference| {diff:.2e}")
    print(f"decisions ({len(classifiers)} classifiers x {n} images): {decide_s:.1f} s")
    if args.identity_steps:
        own = np.stack([s.image for s in sources])
        images, secs = bias.cue_conflict_images(vgg, vgg.params, own, own, steps=args.identity_steps)
        print(f"identity (each source in its own texture, {args.identity_steps} steps, {secs:.1f} s): "
              f"mean |change| {np.abs(images - own).mean():.3f}")
        for m in classifiers:
            top = np.argmax(bias.predict(m, images), axis=1)
            kept = [int(t) in s.classes for t, s in zip(top, sources)]
            print(f"  {m.name:<20} keeps its class on {sum(kept)} of {len(kept)}: " + ", ".join(
                f"{s.name} -> {int(t)}{'' if k else ' (lost)'}" for s, t, k in zip(sources, top, kept)))
    for kind in ("choice", "top1"):
        for m, c in bias.shape_bias(records, kind).items():
            print(f"  {kind:<6} {m:<20} shape {c.shape} texture {c.texture} other {c.other}  bias "
                  f"{'n/a' if np.isnan(c.bias) else f'{c.bias:.2f}'}")


if __name__ == "__main__":
    main()
