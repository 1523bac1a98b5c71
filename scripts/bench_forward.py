#!/usr/bin/env python
"""Forward and input-gradient throughput (images/s) per model at batch 1 and 16, first-call
compile time, and cold vs warm process start with the persistent compilation cache.

    python scripts/bench_forward.py [--models squeezenet1_1 ...] [--repeats 5] [--torch]

--torch also times torchvision's SqueezeNet 1.1 on the same weights (benchmark environment only).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

_CHILD = """
import time; t0 = time.perf_counter()
import jax, numpy as np
from jaxviz.runtime import enable_compilation_cache; enable_compilation_cache()
from jaxviz.weights.store import load_model
m = load_model('squeezenet1_1'); x = np.zeros((1, 224, 224, 3), np.float32)
jax.block_until_ready(jax.jit(m.apply)(m.params, x)); print(time.perf_counter() - t0)
"""


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time torchvision (benchmark env)")
    args = parser.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from jaxviz.weights.store import available_models, load_model
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    results = {}
    for name in args.models or available_models():
        model = load_model(name)
        forward = jax.jit(model.apply)
        score = lambda p, x: jnp.sum(jnp.max(model.apply(p, x).reshape(x.shape[0], -1), axis=-1))
        grad = jax.jit(jax.grad(score, argnums=1))
        for batch in (1, 16):
            x = np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)
            start = time.perf_counter()
            jax.block_until_ready(forward(model.params, x))
            compile_s = time.perf_counter() - start
            fwd = _time(lambda: jax.block_until_ready(forward(model.params, x)), args.repeats)
            jax.block_until_ready(grad(model.params, x))
            bwd = _time(lambda: jax.block_until_ready(grad(model.params, x)), args.repeats)
            results[(name, batch)] = batch / fwd
            print(f"{name:<20} batch {batch:>2}: forward {batch / fwd:7.1f} img/s  input-gradient "
                  f"{batch / bwd:7.1f} img/s  first call {compile_s:5.2f} s")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAXVIZ_CACHE_DIR": cache}
        cold, warm = (float(subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                                           text=True, check=True).stdout) for _ in range(2))
    print(f"process start to first squeezenet1_1 prediction: cold cache {cold:.2f} s, warm cache {warm:.2f} s")
    if args.torch and ("squeezenet1_1", 16) in results:
        import torch
        import torchvision

        from jaxviz.weights.porting import params_to_state_dict
        torch.set_num_threads(2)
        model = load_model("squeezenet1_1")
        net = torchvision.models.squeezenet1_1().eval()
        net.load_state_dict({k: torch.tensor(v) for k, v in params_to_state_dict(model.spec, model.params).items()})
        x = torch.randn(16, 3, 224, 224)
        with torch.no_grad():
            net(x)
            t = _time(lambda: net(x), args.repeats)
        print(f"torchvision squeezenet1_1 batch 16: forward {16 / t:.1f} img/s; "
              f"jaxviz / torch = {results[('squeezenet1_1', 16)] * t / 16:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
