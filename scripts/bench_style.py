"""Benchmark issue 6: Gatys style transfer vs ``pastiche`` (PyTorch, same VGG19) and fast-style fps.

Run with torch and pastiche (the benchmark environment) next to jaxviz's own packages (torch is
imported here only, lazily; both environments are Python 3.11):

    PYTHONPATH=/work/main:/work/main/.venv/lib/python3.11/site-packages \
        /work/benchenv/bin/python scripts/bench_style.py [--steps 100] [--size 256]

``--skip-pastiche`` runs jaxviz alone (``.venv/bin/python scripts/bench_style.py --skip-pastiche``).
The VGG19 is accelerated once here, as every front end does (``jaxviz.accel.accelerate``), and the
fast-style network gets the dense-convolution XLA options (``jaxviz.accel.xla``).

Prints:
  1. agreement of our ``vgg19_caffe`` features with pastiche's torch VGG19 on the same image:
     (a) pastiche's module loaded with OUR weights (port check: should be ~1e-6), and
     (b) pastiche's own loader on its shipped, 8-bit quantised file, the very file our port reads
     (so also ~1e-6: the port reproduces pastiche's dequantisation);
  2. Gatys at size×size, ``--steps`` L-BFGS steps, same layers (content relu4_2, style
     relu1_1 … relu5_1) and init (content): wall time of both, ratio = pastiche / jaxviz (≥ 1 means
     we are faster); ours with and without compilation;
  3. fast-style frames per second (default network: width 32, 5 residual blocks) at 256 and 512 px.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PASTICHE_NAMES = {f"relu{b}_{i}": f"block{b}_relu{i}" for b in range(1, 6) for i in range(1, 5)}


def _pastiche_vgg(state_dict=None):
    import torch
    from pastiche.pastiche import VGG19
    import pastiche
    path = Path(pastiche.__file__).parent / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    vgg = VGG19.from_quantized_bin(str(path))
    if state_dict is not None:  # our weights, torchvision names features.N -> pastiche blockB_convI
        convs = [n for n in VGG19.LAYER_NAMES if "conv" in n]
        idx = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("features.")})
        for name, i in zip(convs, idx):
            layer = getattr(vgg, name)
            layer.weight.data = torch.as_tensor(np.asarray(state_dict[f"features.{i}.weight"]))
            layer.bias.data = torch.as_tensor(np.asarray(state_dict[f"features.{i}.bias"]))
    vgg.set_device_strategy(["cpu"] * len(VGG19.LAYER_NAMES))
    return vgg.eval()


def feature_agreement(model) -> None:
    import torch

    from jaxviz.images import load_image
    from jaxviz.weights.porting import params_to_state_dict
    image = load_image("chelsea", 224, fit="stretch")
    x = model.preprocess(image[None])                               # BGR - mean, NHWC
    layers = (CONTENT_LAYER,) + STYLE_LAYERS
    ours = {a: np.asarray(v) for a, v in model.activations(model.params, x, layers).items()}
    xt = torch.as_tensor(np.asarray(x).transpose(0, 3, 1, 2).copy())
    state = params_to_state_dict(model.spec, model.params)
    for label, vgg in (("pastiche VGG19 module + our weights", _pastiche_vgg(state)),
                       ("pastiche VGG19 + its own loader of the same file", _pastiche_vgg())):
        with torch.no_grad():
            theirs = vgg(xt, [PASTICHE_NAMES[a] for a in layers])
        errs = []
        for a in layers:
            t = theirs[PASTICHE_NAMES[a]].numpy().transpose(0, 2, 3, 1)
            errs.append(np.abs(ours[a] - t).max() / np.abs(t).max())
            r = np.corrcoef(ours[a].ravel(), t.ravel())[0, 1]
        print(f"features, {label}: max relative error {max(errs):.2e} "
              f"(per layer {', '.join(f'{a} {e:.1e}' for a, e in zip(layers, errs))}); Pearson r at relu5_1 {r:.6f}")


def gatys_jaxviz(model, content, style, steps, optimizer="lbfgs"):
    from jaxviz.style import style_transfer
    t = time.perf_counter()
    r = style_transfer(model, model.params, content, [style], content_layer=CONTENT_LAYER,
                       style_layers=STYLE_LAYERS, steps=steps, optimizer=optimizer)
    total = time.perf_counter() - t
    return total, r


def gatys_pastiche(content_path, style_path, steps, size):
    import torch
    from pastiche.pastiche import PasticheArtist
    torch.set_num_threads(2)
    t = time.perf_counter()
    artist = PasticheArtist(str(content_path), [str(style_path)], device="cpu", size_pixels=size * size,
                            optimizer="lbfgs")
    setup = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        artist.draw()
    return time.perf_counter() - t + setup, setup, artist.loss


def fast_style_fps(sizes=(256, 512), repeats=5):
    import jax
    import jax.numpy as jnp

    from jaxviz import fast_style as fs
    from jaxviz.accel.xla import compiler_options
    options = compiler_options(dense_convolutions=True)
    config = fs.FastStyleConfig()
    state = fs.init_state(config, jax.random.key(0))
    net = config.network()
    out = {}
    for s in sizes:
        x = jnp.full((1, s, s, 3), 0.5)
        fs.stylize(net, state.params, x, compiler_options=options).block_until_ready()  # compile
        t = time.perf_counter()
        for _ in range(repeats):
            fs.stylize(net, state.params, x, compiler_options=options).block_until_ready()
        out[s] = repeats / (time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--skip-pastiche", action="store_true")
    parser.add_argument("--linesearch", action="store_true", help="also time lbfgs-linesearch (slow)")
    args = parser.parse_args()

    from jaxviz.accel import accelerate
    from jaxviz.images import load_image, save_image
    from jaxviz.runtime import device_description, enable_compilation_cache
    from jaxviz.weights.store import load_model
    enable_compilation_cache()
    print(f"device: {device_description()}")
    model = accelerate(load_model("vgg19_caffe"))
    if not args.skip_pastiche:
        feature_agreement(model)

    content = load_image("chelsea", args.size, fit="stretch")
    style = load_image("hubble_deep_field", args.size, fit="stretch")
    with tempfile.TemporaryDirectory() as tmp:
        cp, sp = Path(tmp) / "content.png", Path(tmp) / "style.png"
        save_image(content, cp)
        save_image(style, sp)
        content, style = load_image(cp), load_image(sp)  # both sides read the same 8-bit pixels
        # "lbfgs" is the same algorithm as pastiche's torch LBFGS(max_iter=1, lr=1): one loss
        # evaluation per step, no line search
        ours, r = gatys_jaxviz(model, content, style, args.steps)
        print(f"gatys jaxviz: {args.size}x{args.size}, {args.steps} L-BFGS steps: {ours:.1f} s total "
              f"({r.seconds:.1f} s loop incl. first-step compile {r.compile_seconds:.1f} s); "
              f"loss {r.losses[0]:.4g} -> {r.losses[-1]:.4g}")
        warm, r2 = gatys_jaxviz(model, content, style, args.steps)
        print(f"gatys jaxviz, second call (compiled step reused): {warm:.1f} s total")
        if args.linesearch:
            ls, r3 = gatys_jaxviz(model, content, style, args.steps, "lbfgs-linesearch")
            print(f"gatys jaxviz lbfgs-linesearch (zoom): {ls:.1f} s total; loss {r3.losses[0]:.4g} -> "
                  f"{r3.losses[-1]:.4g}")
        if not args.skip_pastiche:
            theirs, setup, loss = gatys_pastiche(cp, sp, args.steps, args.size)
            print(f"gatys pastiche: {theirs:.1f} s total (setup {setup:.1f} s), final loss {loss:.4g}")
            print(f"ratio pastiche / jaxviz wall time: {theirs / ours:.2f}x (>= 1 means jaxviz is faster); "
                  f"second call: {theirs / warm:.2f}x")
    fps = fast_style_fps()
    print("fast style (width 32, 5 res blocks) frames/s: " + ", ".join(f"{s}px {v:.2f}" for s, v in fps.items()))


if __name__ == "__main__":
    main()
