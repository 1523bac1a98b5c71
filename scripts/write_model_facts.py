#!/usr/bin/env python
"""Record what tracing each registry model's module tells (jaxviz/models/facts.json), so that a
process loading a model does not trace it to learn it: its parameter shapes (the check of a
weights file) and whether it has grouped convolutions (``jaxviz.accel``'s choice of XLA-CPU
convolutions) and its layers' output shapes at its input size (the model's probe, read by every
command that checks layers or estimates memory). About 0.2 s (SqueezeNet) to 0.6 s
(EfficientNet-Lite0) of tracing at every command's start otherwise.

    python scripts/write_model_facts.py           # rewrite facts.json from the modules
    python scripts/write_model_facts.py --check   # exit 1 when facts.json is stale

tests/test_models.py runs the check for every model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxviz.accel.xla import has_grouped_convolutions  # noqa: E402
from jaxviz.models.bundled import BundledModel  # noqa: E402
from jaxviz.models.registry import FACTS_FILE, MODELS, ModelSpec  # noqa: E402
from jaxviz.trees import flatten  # noqa: E402


def traced_facts(spec: ModelSpec) -> dict:
    """``registry.recorded_facts`` of ``spec``, computed by tracing its module (no weights)."""
    module = spec.module()
    probe = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(probe.shape)))
    flat = {path: list(a.shape) for path, a in flatten(variables["params"]).items()}
    grouped = has_grouped_convolutions(module.apply, variables, probe)
    # The model's own probe (every layer's output at its input size), traced on abstract weights
    # with the recorded facts kept out of it.
    model = BundledModel(spec, variables["params"])
    model._probes.clear()
    model._repeated.clear()
    size = model.input_hw()
    out, acts = model._probe(size)
    return {"param_shapes": flat, "grouped_convolutions": bool(grouped),
            "probe": {"size": list(size), "output": None if out is None else [list(out.shape), str(out.dtype)],
                      "layers": [[name, list(a.shape), str(a.dtype)] for name, a in acts.items()],
                      "repeated": sorted(model._repeated)}}


def all_facts() -> dict:
    return {name: traced_facts(spec) for name, spec in MODELS.items()}


def render(facts: dict) -> str:
    return json.dumps(facts, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with facts.json instead of writing it")
    args = parser.parse_args(argv)
    text = render(all_facts())
    if args.check:
        current = FACTS_FILE.read_text() if FACTS_FILE.exists() else ""
        if current != text:
            print(f"{FACTS_FILE} is stale: run python scripts/write_model_facts.py", file=sys.stderr)
            return 1
        print(f"{FACTS_FILE}: up to date ({len(MODELS)} models)")
        return 0
    FACTS_FILE.write_text(text)
    print(f"wrote {FACTS_FILE} ({len(MODELS)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
