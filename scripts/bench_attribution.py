"""Benchmark jaxviz attribution against the PyTorch peers on the same SqueezeNet 1.1 weights.

- vanilla saliency, batch 32: jaxviz ``vanilla_saliency`` vs Captum ``Saliency(abs=True)``
  (map = max over RGB of |gradient| for both);
- Grad-CAM, batch 32, layer ``features.12``: jaxviz ``grad_cam`` vs pytorch-grad-cam ``GradCAM``.

Prints images/s, the ratio jaxviz / peer (measured in this one run) and the agreement of the maps
(mean Pearson r over images). Also reports jaxviz's saliency with XLA's max-pool backward, to show
what the ``custom_vjp`` max-pool (``jaxviz.nonlinearities``) buys on this machine. At the end it
runs ``scripts/bench_occlusion.py``'s ``main()`` if that script exists.

Run with the benchmark environment (torch, captum and grad-cam are NOT jaxviz dependencies):

    PYTHONPATH=/work/main /work/benchenv/bin/python scripts/bench_attribution.py
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SAMPLES = ["chelsea", "coffee", "astronaut", "rocket", "cat"]


def _batch(model, n: int) -> np.ndarray:
    """n sample photos (cycled, with flips and shifts so no two are identical), in [0, 1]."""
    from jaxviz.images import load_images
    base = load_images(SAMPLES, model.spec.input_size)
    out = []
    for i in range(n):
        img = base[i % len(base)]
        if (i // len(base)) % 2:
            img = img[:, ::-1]
        out.append(np.roll(img, 4 * (i // (2 * len(base))), axis=1))
    return np.stack(out).astype(np.float32)


def _time(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs after one warm-up (compile) run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of Pearson r between flattened maps."""
    rs = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    return float(np.mean(rs))


def torch_squeezenet(model):
    import torch
    import torchvision

    from jaxviz.weights.porting import params_to_state_dict
    net = torchvision.models.squeezenet1_1()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params_to_state_dict(model.spec, model.params).items()}
    net.load_state_dict(state)
    return net.eval()


def main(batch: int = 32, repeats: int = 3, occlusion: bool = True) -> dict:
    import torch
    torch.set_num_threads(2)
    from captum.attr import Saliency
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from jaxviz import cam as camlib
    from jaxviz import saliency as sal
    from jaxviz.nonlinearities import fast_pool_model
    from jaxviz.runtime import device_description
    from jaxviz.weights.store import load_model

    model = load_model("squeezenet1_1")
    images = _batch(model, batch)
    x = model.preprocess(jnp.asarray(images))
    index = jnp.argmax(model.apply(model.params, x), axis=-1).astype(jnp.int32)
    fast = fast_pool_model(model)
    net = torch_squeezenet(model)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    idx_list = [int(i) for i in np.asarray(index)]
    with torch.no_grad():
        logits_t = net(xt).numpy()
    forward_diff = float(np.abs(logits_t - np.asarray(model.apply(model.params, x))).max())
    print(f"device: {device_description()}; torch threads {torch.get_num_threads()}; batch {batch}")
    print(f"same weights: max |logit_jax - logit_torch| = {forward_diff:.2e}")
    results = {}

    # --- vanilla saliency
    sal_fast = jax.jit(lambda p, x, i: sal.vanilla_saliency(fast.apply, p, x, index=i))
    sal_xla = jax.jit(lambda p, x, i: sal.vanilla_saliency(model.apply, p, x, index=i))
    t_fast = _time(lambda: sal_fast(model.params, x, index).block_until_ready(), repeats)
    t_xla = _time(lambda: sal_xla(model.params, x, index).block_until_ready(), repeats)
    captum = Saliency(net)
    target_t = torch.tensor(idx_list)

    def run_captum():
        return captum.attribute(xt.clone().requires_grad_(True), target=target_t, abs=True)
    t_captum = _time(run_captum, repeats)
    ours = np.asarray(sal_fast(model.params, x, index))
    theirs = run_captum().detach().numpy().max(axis=1)
    r = _pearson(ours, theirs)
    results["saliency"] = dict(jaxviz=batch / t_fast, jaxviz_xla_pool=batch / t_xla, captum=batch / t_captum,
                               ratio=t_captum / t_fast, pearson=r)
    print(f"vanilla saliency  jaxviz {batch / t_fast:6.1f} img/s (XLA max-pool backward: {batch / t_xla:6.1f})"
          f" | Captum Saliency {batch / t_captum:6.1f} img/s | ratio {t_captum / t_fast:.2f}x | Pearson r {r:.4f}")

    # --- Grad-CAM at features.12
    gc = jax.jit(lambda p, x, i: camlib.grad_cam(fast.apply, p, x, layer="features.12", index=i))
    t_gc = _time(lambda: gc(model.params, x, index).block_until_ready(), repeats)
    cam_t = GradCAM(model=net, target_layers=[net.features[12]])
    targets = [ClassifierOutputTarget(i) for i in idx_list]

    def run_gradcam():
        return cam_t(input_tensor=xt, targets=targets)
    t_pgc = _time(run_gradcam, repeats)
    ours = np.asarray(gc(model.params, x, index))
    theirs = np.asarray(run_gradcam())
    r = _pearson(ours, theirs)
    results["gradcam"] = dict(jaxviz=batch / t_gc, pytorch_grad_cam=batch / t_pgc, ratio=t_pgc / t_gc, pearson=r)
    print(f"Grad-CAM features.12  jaxviz {batch / t_gc:6.1f} img/s | pytorch-grad-cam {batch / t_pgc:6.1f} img/s"
          f" | ratio {t_pgc / t_gc:.2f}x | Pearson r {r:.4f}")

    script = Path(__file__).with_name("bench_occlusion.py")
    if occlusion and script.exists():
        print("--- scripts/bench_occlusion.py")
        spec = importlib.util.spec_from_file_location("bench_occlusion", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        results["occlusion"] = module.main([])
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-occlusion", action="store_true", help="do not run bench_occlusion.py")
    args = parser.parse_args()
    main(args.batch, args.repeats, not args.skip_occlusion)
