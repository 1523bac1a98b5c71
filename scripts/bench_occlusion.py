#!/usr/bin/env python
"""Occlusion 16/8 on SqueezeNet 1.1 at 224 px: jaxviz (batched and incremental) vs Captum ``Occlusion``.

Part 1: the same weights (torchvision squeezenet1_1 with our ported parameters converted back by
``params_to_state_dict``), the same images, the same fill (each image's mean colour in model-input
space), the predicted class, logit drop. Captum: ``sliding_window_shapes=(3, 16, 16)``,
``strides=(3, 8, 8)``, ``perturbations_per_eval=32``. Prints warm wall times, speed ratios and the
Pearson r between the per-pixel maps. Also times the two chunk drivers: a Python loop over a
jitted chunk (the default) vs one jitted ``lax.map``.

Part 2: incremental vs batched occlusion per model (time ratio) against the theoretical FLOP
saving (``flop_saving``); squeezenet1_0 and VGG16 use random parameters (no weights here), VGG16
its convolutional part with a small global-average-pooled head and a smaller input.

    PYTHONPATH=. /work/benchenv/bin/python scripts/bench_occlusion.py [--images 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

SOURCES = ["chelsea", "coffee", "astronaut", "rocket"]


def _best(fn, repeats: int) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        out = np.asarray(out) if not hasattr(out, "detach") else out.detach().numpy()
        best = min(best, time.perf_counter() - t)
    return best, out


def _torch_squeezenet(model):
    import torch
    import torchvision

    from jaxviz.weights.porting import params_to_state_dict
    net = torchvision.models.squeezenet1_1()
    state = {k: torch.from_numpy(np.array(v)) for k, v in params_to_state_dict(model.spec, model.params).items()}
    net.load_state_dict(state)
    return net.eval()


def part1(args) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    from captum.attr import Occlusion

    from jaxviz.images import load_images
    from jaxviz.occlusion import fill_images, flop_saving, incremental_occlusion, occlusion, windows_to_pixels
    from jaxviz.weights.store import load_model

    torch.set_num_threads(2)
    model = load_model("squeezenet1_1")
    images = load_images(SOURCES[:args.images], 224)
    x = model.preprocess(jnp.asarray(images))
    w, s, chunk = 16, 8, 32
    index = jnp.argmax(model.apply(model.params, x), axis=-1)

    def batched():
        return windows_to_pixels(occlusion(model.apply, model.params, x, window=w, stride=s, chunk=chunk),
                                 x.shape[1:3], w, s)

    def incremental():
        return windows_to_pixels(incremental_occlusion(model, model.params, x, window=w, stride=s, chunk=chunk),
                                 x.shape[1:3], w, s)

    base = fill_images(x, "mean")

    def mapped():
        return windows_to_pixels(occlusion(model.apply, model.params, x, window=w, stride=s, chunk=chunk, loop="map"),
                                 x.shape[1:3], w, s)
    t0 = time.perf_counter()
    batched()
    compile_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    incremental()
    compile_i = time.perf_counter() - t0
    mapped()
    t_b, m_b = _best(batched, args.repeats)
    t_i, m_i = _best(incremental, args.repeats)
    t_l, m_l = _best(mapped, args.repeats)

    net = _torch_squeezenet(model)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    baseline = torch.from_numpy(np.asarray(base).transpose(0, 3, 1, 2).copy())
    target = [int(i) for i in np.asarray(index)]
    occ = Occlusion(net)

    def captum():
        with torch.no_grad():
            return occ.attribute(xt, sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=baseline,
                                 target=target, perturbations_per_eval=32)
    captum()
    t_c, m_c = _best(captum, args.repeats)
    m_c = m_c[:, 0]
    r = lambda a, b: float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])
    n = x.shape[0]
    saving = flop_saving(model.spec, input_size=224, window=w, stride=s)
    res = {
        "images": n, "captum_s": t_c, "batched_s": t_b, "incremental_s": t_i, "lax_map_s": t_l,
        "compile_batched_s": compile_b, "compile_incremental_s": compile_i,
        "speed_batched_vs_captum": t_c / t_b, "speed_incremental_vs_captum": t_c / t_i,
        "r_batched_captum": r(m_b, m_c), "r_incremental_captum": r(m_i, m_c),
        "max_diff_incremental_batched": float(np.abs(m_i - m_b).max()),
        "python_loop_vs_lax_map": t_l / t_b, "flop_saving": saving,
    }
    print(f"[occlusion 16/8, SqueezeNet 1.1, 224 px, {n} images, 729 windows each, chunk 32]")
    print(f"  Captum Occlusion (ppe 32)  {t_c:7.2f} s")
    print(f"  jaxviz batched (py loop)   {t_b:7.2f} s   speed x{t_c / t_b:.2f} vs Captum   r = {res['r_batched_captum']:.5f}"
          f"   (first call {compile_b:.1f} s)")
    print(f"  jaxviz batched (lax.map)   {t_l:7.2f} s   the Python-loop driver is x{t_l / t_b:.2f} its speed")
    print(f"  jaxviz incremental         {t_i:7.2f} s   speed x{t_c / t_i:.2f} vs Captum   r = {res['r_incremental_captum']:.5f}"
          f"   (first call {compile_i:.1f} s)")
    print(f"  incremental vs batched     x{t_b / t_i:.2f} (theoretical FLOP saving x{saving:.2f}, "
          f"{100 * (t_b / t_i) / saving:.0f} %)   max |diff| = {res['max_diff_incremental_batched']:.2e}")
    return res


def part2(args, squeeze11: dict | None) -> list[dict]:
    import dataclasses

    import jax.numpy as jnp

    from jaxviz.images import load_images
    from jaxviz.models import vgg
    from jaxviz.models.network import Stage
    from jaxviz.models.registry import Model, get_spec, init_params
    from jaxviz.occlusion import flop_saving, incremental_occlusion, occlusion
    from jaxviz.weights.store import load_model

    def small_vgg16():
        spec = get_spec("vgg16")
        stages = vgg.vgg(16, include_classifier=False) + (Stage("pool", "global_avgpool"),
                                                           Stage("fc", "dense", (100,)))
        spec = dataclasses.replace(spec, name="vgg16 conv + GAP head", stages=stages, num_classes=100)
        return Model(spec, init_params(spec, 0, 64), spec.module())

    def random(name):
        spec = get_spec(name)
        return Model(spec, init_params(spec, 0, 112), spec.module())

    configs = [("efficientnet_lite0", lambda: load_model("efficientnet_lite0"), args.lite_size, 16, 8, 1),
               ("squeezenet1_0 (random)", lambda: random("squeezenet1_0"), 112, 16, 8, 1),
               ("vgg16 (random, GAP head)", small_vgg16, 64, 16, 8, 1)]
    rows = []
    if squeeze11:
        rows.append({"model": "squeezenet1_1", "size": 224, "ratio": squeeze11["batched_s"] / squeeze11["incremental_s"],
                     "saving": squeeze11["flop_saving"]})
    print("[incremental vs batched occlusion, window 16 stride 8, chunk 32, warm]")
    for label, make, size, w, s, n in configs:
        model = make()
        x = model.preprocess(jnp.asarray(load_images(SOURCES[:n], size)))
        b = lambda: occlusion(model.apply, model.params, x, window=w, stride=s, chunk=32)
        i = lambda: incremental_occlusion(model, model.params, x, window=w, stride=s, chunk=32)
        b(), i()
        t_b, d_b = _best(b, args.repeats)
        t_i, d_i = _best(i, args.repeats)
        saving = flop_saving(model.spec, input_size=size, window=w, stride=s)
        span = float(d_b.max() - d_b.min())
        rows.append({"model": label, "size": size, "ratio": t_b / t_i, "saving": saving,
                     "rel_diff": float(np.abs(d_i - d_b).max()) / max(span, 1e-12)})
        print(f"  {label:26s} {size:3d} px  batched {t_b:6.2f} s  incremental {t_i:6.2f} s"
              f"  speed-up x{t_b / t_i:.2f}  FLOP saving x{saving:.2f}  ({100 * t_b / t_i / saving:.0f} %)"
              f"  max|diff|/range {rows[-1]['rel_diff']:.1e}")
    return rows


def part3(args) -> None:
    """Approximate mode: error vs exact on real SqueezeNet 1.1 (|delta| threshold, box cap tau)."""
    import jax.numpy as jnp

    from jaxviz.images import load_images
    from jaxviz.occlusion import incremental_occlusion
    from jaxviz.weights.store import load_model
    model = load_model("squeezenet1_1")
    x = model.preprocess(jnp.asarray(load_images(SOURCES[:1], 224)))
    exact = np.asarray(incremental_occlusion(model, model.params, x, window=16, stride=16))
    print("[approximate incremental occlusion, SqueezeNet 1.1, 224 px, 16/16]")
    from jaxviz.occlusion import flop_saving
    for thr, tau in ((0.1, None), (None, 0.5), (0.1, 0.25)):
        approx = np.asarray(incremental_occlusion(model, model.params, x, window=16, stride=16, threshold=thr,
                                                  max_box=tau))
        err = np.abs(approx - exact).max() / (exact.max() - exact.min())
        r = np.corrcoef(approx.ravel(), exact.ravel())[0, 1]
        saving = flop_saving(model.spec, input_size=224, window=16, stride=16, max_box=tau)
        print(f"  threshold {thr!s:5s} max_box {tau!s:5s}: max |error| / range = {err:.3f}, r = {r:.4f},"
              f" FLOP saving x{saving:.2f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="warm runs to time (best of)")
    parser.add_argument("--skip-peers", action="store_true", help="skip part 1 (no torch)")
    parser.add_argument("--skip-models", action="store_true", help="skip part 2 (per-model ratios)")
    parser.add_argument("--lite-size", type=int, default=224, help="EfficientNet-Lite0 input size in part 2")
    args = parser.parse_args(argv)
    res = {} if args.skip_peers else part1(args)
    if not args.skip_models:
        res["incremental"] = part2(args, res if res else None)
    part3(args)
    return res


if __name__ == "__main__":
    main()
