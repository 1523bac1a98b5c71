#!/usr/bin/env python
"""Benchmark-environment check: our Flax models equal torchvision's on the same weights.

Needs torch + torchvision (the separate benchmark environment, never the project's):
    PYTHONPATH=. /path/to/benchenv/bin/python scripts/check_ports.py
For each torchvision architecture, the ported weights (real where available, else random Flax
parameters) are converted back to a torchvision state dict and both networks run on the same
random batch (non-square 224x200 included, to exercise ceil-mode pooling and VGG's adaptive pool).
"""
from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    import jax
    import torch
    import torchvision

    from jaxviz.models.registry import Model, get_spec, init_params
    from jaxviz.weights.porting import params_to_state_dict
    from jaxviz.weights.store import load_model, status

    torch.set_num_threads(2)
    failures = 0
    rng = np.random.default_rng(0)
    for name in ["squeezenet1_1", "squeezenet1_0", "vgg16", "vgg19"]:
        spec = get_spec(name)
        real = status(name) != "not ported"
        model = load_model(name) if real else Model(spec, init_params(spec, seed=1), spec.module())
        net = getattr(torchvision.models, name)()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in params_to_state_dict(spec, model.params).items()})
        net.eval()
        for shape in [(2, 224, 224, 3), (1, 224, 200, 3)]:
            x = rng.standard_normal(shape).astype(np.float32)
            ours = np.asarray(jax.jit(model.apply)(model.params, x))
            with torch.no_grad():
                theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
            err = np.abs(ours - theirs).max() / (np.abs(theirs).max() + 1e-12)
            ok = err < 1e-4
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} {name:<14} {'real' if real else 'random'} weights "
                  f"input {shape[1]}x{shape[2]}: max rel. error of logits {err:.2e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
