#!/usr/bin/env python
"""Benchmark-environment check: a torchvision ResNet's .pth ports to jaxviz and gives torch's logits.

Needs torch + torchvision (the separate benchmark environment, never the project's):
    /work/benchenv/bin/python scripts/check_resnet.py [resnet18 resnet50]
For each model: ``torchvision.models.NAME()`` with random weights and random BatchNorm statistics
(what eval mode reads) is saved with ``torch.save``; ``scripts/port_weights.py NAME --from FILE``
ports it torch-free into a temporary weights folder (``$JAXVIZ_WEIGHTS``), ``load_model(NAME)``
loads it, and both networks run on the same random batches (224x224 batch 2, and non-square
224x200 and 97x131 to exercise the padded max-pool and odd strided shapes). PASS when the
max |logit difference| / max |logit| < 1e-4. Exit code 1 on any FAIL.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _randomise(net, torch, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters (torchvision inits them to 0/1)."""
    g = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            module.running_var.copy_(0.5 + torch.rand(c, generator=g))
            module.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            module.bias.data.copy_(0.1 * torch.randn(c, generator=g))


def main(argv: list[str]) -> int:
    import torch
    import torchvision

    names = argv or ["resnet18", "resnet50"]
    torch.set_num_threads(2)
    torch.manual_seed(0)
    failures = 0
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JAXVIZ_WEIGHTS"] = str(Path(tmp) / "weights")  # before jaxviz reads it
        import jax

        from jaxviz.weights.store import load_model
        from scripts.port_weights import main as port_weights

        for i, name in enumerate(names):
            net = getattr(torchvision.models, name)()
            with torch.no_grad():
                _randomise(net, torch, i)
            net.eval()
            source = Path(tmp) / f"{name}-random.pth"  # no sha256 prefix in the name: nothing to verify
            torch.save(net.state_dict(), source)
            if port_weights([name, "--from", str(source)]) != 0:
                print(f"FAIL {name}: port_weights.py refused {source}")
                failures += 1
                continue
            model = load_model(name)
            apply = jax.jit(model.apply)
            for shape in [(2, 224, 224, 3), (1, 224, 200, 3), (2, 97, 131, 3)]:
                x = rng.standard_normal(shape).astype(np.float32)
                ours = np.asarray(apply(model.params, x))
                with torch.no_grad():
                    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
                abs_err = float(np.abs(ours - theirs).max())
                err = abs_err / (float(np.abs(theirs).max()) + 1e-12)
                same_top1 = bool((ours.argmax(-1) == theirs.argmax(-1)).all())
                ok = err < 1e-4 and same_top1
                failures += not ok
                print(f"{'PASS' if ok else 'FAIL'} {name:<9} input {shape[1]}x{shape[2]} batch {shape[0]}: "
                      f"max |dlogit| {abs_err:.2e}, relative {err:.2e}, top-1 {'same' if same_top1 else 'DIFFERS'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
