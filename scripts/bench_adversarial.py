#!/usr/bin/env python
"""PGD-Linf on SqueezeNet 1.1 (224 px, batch 16, 20 steps): jaxviz vs torchattacks ``PGD``.

Both run the same attack on the same weights (the torch model is torchvision's squeezenet1_1 with
our ported parameters converted back by ``params_to_state_dict``, wrapped with the normalisation
so torchattacks works on [0, 1] images): untargeted, eps 4/255, step 1/255, random start, no
early stop. The jaxviz model is ``jaxviz.accel.accelerate(load_model(...))``, as the CLI uses it.
Prints warm wall times, the speed ratio (jaxviz images/s / torchattacks images/s), the agreement
of the two models' logits (Pearson r) and both success rates (re-predicted).

    PYTHONPATH=.:.venv/lib/python3.11/site-packages /work/benchenv/bin/python scripts/bench_adversarial.py [--batch 16] [--steps 20]

Called by scripts/bench_optimise.py (``main(argv)``); torch is imported here only.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

SOURCES = ["chelsea", "coffee", "astronaut", "rocket", "cat", "horse", "camera", "coins"]


def _images(n: int, size) -> np.ndarray:
    from jaxviz.images import load_images
    base = load_images(SOURCES, size)
    pool = np.concatenate([base, base[:, :, ::-1], base[:, ::-1]])  # + flips
    return pool[np.arange(n) % len(pool)]


def _torch_model(model):
    import torch
    import torchvision

    from jaxviz.weights.porting import params_to_state_dict
    net = torchvision.models.squeezenet1_1()
    state = {k: torch.from_numpy(np.array(v)) for k, v in params_to_state_dict(model.spec, model.params).items()}
    net.load_state_dict(state)
    pre = model.preprocessing

    class Normalized(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1))
            self.net = net

        def forward(self, x):
            return self.net((x - self.mean) / self.std)
    return Normalized().eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--repeats", type=int, default=2, help="warm runs to time (best of)")
    args = parser.parse_args(argv)

    import jax
    import torch
    import torchattacks

    from jaxviz import adversarial as adv
    from jaxviz.accel import accelerate
    from jaxviz.runtime import device_description
    from jaxviz.weights.store import load_model

    torch.set_num_threads(2)
    model = accelerate(load_model("squeezenet1_1"))  # what the CLI attacks
    images = _images(args.batch, model.input_hw())
    step = args.eps / 4
    kw = dict(method="pgd-linf", eps=args.eps, step=step, steps=args.steps, early_stop=False,
              quantize=False, key=jax.random.key(0))

    # --- jaxviz: first call compiles; then best of warm runs
    start = time.perf_counter()
    result = adv.attack(model, None, images, **kw)
    first = time.perf_counter() - start
    jax_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = adv.attack(model, None, images, **kw)
        jax_times.append(time.perf_counter() - start)
    jax_time = min(jax_times)
    engine = result.report.extra.get("engine", {})
    # steady state: the engine's loop time after its first (compiling) step, per step
    steady = (engine["seconds"] - engine["compile_seconds"]) / max(engine["updates"] - 1, 1) if engine else float("nan")
    quantized = adv.attack(model, None, images, **{**kw, "quantize": True})

    # --- torchattacks PGD on the same weights
    net = _torch_model(model)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        torch_logits = net(x)
    labels = torch_logits.argmax(1)
    attack = torchattacks.PGD(net, eps=args.eps, alpha=step, steps=args.steps, random_start=True)
    attack(x[:2], labels[:2])  # warm-up
    torch_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            labels = net(x).argmax(1)  # the same reference-label pass jaxviz does
        torch_adv = attack(x, labels)
        torch_times.append(time.perf_counter() - start)
    torch_time = min(torch_times)
    with torch.no_grad():
        torch_success = float((net(torch_adv).argmax(1) != labels).float().mean())

    jax_logits = np.asarray(jax.jit(model.apply)(model.params, model.preprocess(images)))
    r = float(np.corrcoef(jax_logits.ravel(), torch_logits.numpy().ravel())[0, 1])
    same_labels = float((jax_logits.argmax(1) == labels.numpy()).mean())
    torch_adv_np = torch_adv.numpy().transpose(0, 2, 3, 1)
    # cross-check: torchattacks' images judged by the jaxviz model (same weights)
    torch_on_jax = adv.assess(adv.proba_fn(model), images, torch_adv_np, label=jax_logits.argmax(1))
    linf_t = float(np.abs(torch_adv_np - images).max())

    out = {
        "device": device_description(), "batch": args.batch, "steps": args.steps,
        "eps": args.eps, "step": step,
        "jaxviz_s": jax_time, "jaxviz_first_call_s": first, "torchattacks_s": torch_time,
        "jaxviz_images_per_s": args.batch / jax_time, "torchattacks_images_per_s": args.batch / torch_time,
        "ratio": torch_time / jax_time, "logits_pearson_r": r, "same_top1": same_labels,
        "jaxviz_success": result.report.success_rate,
        "jaxviz_success_8bit": quantized.report.success_rate,
        "torchattacks_success": torch_success, "torchattacks_success_on_jaxviz_model": torch_on_jax.success_rate,
        "jaxviz_engine_compile_s": engine.get("compile_seconds"), "jaxviz_steady_step_s": steady,
        "torchattacks_step_s": torch_time / args.steps, "steady_ratio": (torch_time / args.steps) / steady,
        "jaxviz_max_linf_255": float(result.report.linf.max() * 255), "torchattacks_max_linf_255": linf_t * 255,
    }
    print(f"PGD-Linf, SqueezeNet 1.1, 224 px, batch {args.batch}, {args.steps} steps, eps {args.eps * 255:.1f}/255, "
          f"step {step * 255:.2f}/255, random start, no early stop; {out['device']}")
    print(f"  jaxviz       {jax_time:7.2f} s  ({out['jaxviz_images_per_s']:.2f} images/s; first call "
          f"incl. compile {first:.2f} s)  success {out['jaxviz_success']:.0%} "
          f"(8-bit, re-checked: {out['jaxviz_success_8bit']:.0%})")
    print(f"  torchattacks {torch_time:7.2f} s  ({out['torchattacks_images_per_s']:.2f} images/s)  success "
          f"{torch_success:.0%} (re-predicted by jaxviz: {out['torchattacks_success_on_jaxviz_model']:.0%})")
    print(f"  speed ratio jaxviz / torchattacks: {out['ratio']:.2f}x (goal >= 1.0x), whole warm call")
    print(f"  per step: jaxviz {steady:.3f} s steady (compiled step reused across calls; first step "
          f"{out['jaxviz_engine_compile_s']:.2f} s) vs torchattacks {out['torchattacks_step_s']:.3f} s "
          f"(incl. its label pass) -> steady-state ratio {out['steady_ratio']:.2f}x")
    print(f"  same weights: logits Pearson r = {r:.6f}, same top-1 on {same_labels:.0%}; max Linf "
          f"{out['jaxviz_max_linf_255']:.2f}/255 vs {out['torchattacks_max_linf_255']:.2f}/255")
    return out


if __name__ == "__main__":
    main()
