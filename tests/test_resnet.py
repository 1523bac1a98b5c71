"""ResNet-18/50 (torchvision layout): one new module (jaxviz.models.resnet) plus registry lines.

Truth checks, no torch: a state dict the test writes itself in torchvision's names and layouts
(OIHW convs, BN running statistics, ``downsample.0/1``, ``fc``; random values) is saved as a .pth
by our torch-free writer, ported by the store, and the network's logits equal an independent
NCHW re-implementation written here from the raw arrays (``lax.conv_general_dilated`` with OIHW
kernels, BN in eval mode, the residual adds, the padded max-pool, global average pool, fc) on a
non-square batch of two. The kinds' receptive fields equal the measured gradient support; each
block's incremental-occlusion rule equals recomputing the block; incremental occlusion equals
batched occlusion; the FLOP count equals torchvision's published GFLOPS; layer names are
torchvision's module paths with its shapes at 224 px.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.errors import JaxvizError, WeightsError
from jaxviz.models import bundled_model, layers
from jaxviz.models.kinds import MaxPool
from jaxviz.models.network import SequentialNet
from jaxviz.models.registry import get_spec
from jaxviz.models.resnet import BasicBlock, Bottleneck
from jaxviz.targets import Target
from jaxviz.weights.porting import state_dict_to_params
from jaxviz.weights.torch_format import save_torch_file
from tests.conftest import resnet18_model

HIGHEST = jax.lax.Precision.HIGHEST
_BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


# --------------------------------------------------------------------------- torchvision's layout, by hand

def torchvision_state_dict(depth: int, seed: int = 0) -> dict[str, np.ndarray]:
    """{key: array} shaped as ``torchvision.models.resnet{depth}().state_dict()``, random values
    (written from torchvision's architecture, not from jaxviz's)."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)

    def bn(name, c):
        state[f"{name}.weight"] = (0.5 + rng.random(c)).astype(np.float32)
        state[f"{name}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        state[f"{name}.running_mean"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        state[f"{name}.running_var"] = (0.5 + rng.random(c)).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(0, np.int64)

    expansion = 1 if depth == 18 else 4
    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for i, (count, planes) in enumerate(zip(_BLOCKS[depth], (64, 128, 256, 512)), start=1):
        for j in range(count):
            p, stride = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
            if depth == 18:
                conv(f"{p}.conv1", planes, inplanes, 3), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
            if stride != 1 or inplanes != planes * expansion:
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1), bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    state["fc.weight"] = (rng.standard_normal((1000, inplanes)) / np.sqrt(inplanes)).astype(np.float32)
    state["fc.bias"] = (0.1 * rng.standard_normal(1000)).astype(np.float32)
    return state


def reference_logits(state: dict[str, np.ndarray], depth: int, x_nchw: np.ndarray) -> np.ndarray:
    """torchvision's ResNet forward (eval mode) on NCHW images, from the raw torch-layout arrays."""
    def conv(x, key, stride, pad):
        return jax.lax.conv_general_dilated(x, jnp.asarray(state[f"{key}.weight"]), (stride, stride),
                                            ((pad, pad), (pad, pad)), dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                            precision=HIGHEST)

    def bn(x, key):
        c = lambda v: jnp.asarray(state[f"{key}.{v}"])[None, :, None, None]  # noqa: E731
        return (x - c("running_mean")) / jnp.sqrt(c("running_var") + 1e-5) * c("weight") + c("bias")

    relu = lambda v: jnp.maximum(v, 0.0)  # noqa: E731
    x = relu(bn(conv(jnp.asarray(x_nchw), "conv1", 2, 3), "bn1"))
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i, count in enumerate(_BLOCKS[depth], start=1):
        for j in range(count):
            p, stride = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
            if depth == 18:
                out = relu(bn(conv(x, f"{p}.conv1", stride, 1), f"{p}.bn1"))
                out = bn(conv(out, f"{p}.conv2", 1, 1), f"{p}.bn2")
            else:  # V1.5: the stride on the 3x3
                out = relu(bn(conv(x, f"{p}.conv1", 1, 0), f"{p}.bn1"))
                out = relu(bn(conv(out, f"{p}.conv2", stride, 1), f"{p}.bn2"))
                out = bn(conv(out, f"{p}.conv3", 1, 0), f"{p}.bn3")
            identity = x
            if f"{p}.downsample.0.weight" in state:
                identity = bn(conv(x, f"{p}.downsample.0", stride, 0), f"{p}.downsample.1")
            x = relu(out + identity)
    pooled = x.mean(axis=(2, 3))
    return np.asarray(jnp.dot(pooled, jnp.asarray(state["fc.weight"]).T, precision=HIGHEST) + state["fc.bias"])


def _check_logits(model, state, depth, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)  # NHWC, non-square
    ours = np.asarray(jax.jit(model.apply)(model.params, jnp.asarray(x)))
    want = reference_logits(state, depth, x.transpose(0, 3, 1, 2))
    assert ours.shape == want.shape == (shape[0], 1000)
    scale = float(np.abs(want).max())
    assert scale > 0.1  # the network does something
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4 * scale)


def test_resnet18_port_of_a_torchvision_pth_gives_torchvisions_logits(tmp_path, monkeypatch):
    """The user's path: ``port_weights.py resnet18 --from FILE`` (store.port_model) then load_model."""
    from jaxviz.weights import store
    state = torchvision_state_dict(18)
    source = tmp_path / "resnet18-mine.pth"
    save_torch_file(state, source)
    monkeypatch.setenv("JAXVIZ_WEIGHTS", str(tmp_path / "weights"))
    try:
        store.port_model("resnet18", source)
        model = store.load_model("resnet18")
    finally:
        store.load_params.cache_clear()  # no random resnet18 for later tests
    np.testing.assert_array_equal(model.params["layer2.0"]["downsample.1"]["mean"],
                                  state["layer2.0.downsample.1.running_mean"])
    np.testing.assert_array_equal(model.params["layer3.1"]["conv2"]["kernel"],
                                  state["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
    _check_logits(model, state, 18, (2, 72, 56, 3))


@pytest.mark.slow
def test_resnet50_port_gives_torchvisions_logits():
    state = torchvision_state_dict(50, seed=3)
    spec = get_spec("resnet50")
    model = bundled_model(spec, state_dict_to_params(spec, state))
    _check_logits(model, state, 50, (2, 72, 56, 3))


def test_port_refuses_a_state_dict_that_does_not_fit():
    spec = get_spec("resnet18")
    state = torchvision_state_dict(18)
    bad = {**state, "layer2.0.downsample.0.weight": np.zeros((128, 64, 3, 3), np.float32)}
    with pytest.raises(WeightsError, match=r"layer2.0.downsample.0.weight: expected shape \(128, 64, 1, 1\)"):
        state_dict_to_params(spec, bad)
    missing = {k: v for k, v in state.items() if not k.startswith("layer3.0.downsample.1")}
    with pytest.raises(WeightsError, match="layer3.0.downsample.1.* is missing"):
        state_dict_to_params(spec, missing)
    with pytest.raises(WeightsError, match="layer2.0.conv3.weight is not a parameter"):  # a resnet50 key
        state_dict_to_params(spec, {**state, "layer2.0.conv3.weight": np.zeros((512, 128, 1, 1), np.float32)})


# --------------------------------------------------------------------------- names and shapes

def _abstract(name: str):
    spec = get_spec(name)
    shapes = jax.eval_shape(lambda: spec.module().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
    return bundled_model(spec, shapes)


@pytest.mark.parametrize("name,width,last", [("resnet18", 1, "layer4.1"), ("resnet50", 4, "layer4.2")])
def test_layer_names_are_torchvision_module_paths_with_its_shapes(name, width, last):
    model = _abstract(name)
    counts = _BLOCKS[18 if name == "resnet18" else 50]
    blocks = tuple(f"layer{i}.{j}" for i, n in enumerate(counts, start=1) for j in range(n))
    assert model.layer_names == ("conv1", "bn1", "relu", "maxpool") + blocks + ("avgpool", "fc")
    shapes = model.layer_shapes(224)
    assert shapes["conv1"] == shapes["bn1"] == shapes["relu"] == (112, 112, 64)
    assert shapes["maxpool"] == (56, 56, 64)
    for i, (hw, planes) in enumerate(zip((56, 28, 14, 7), (64, 128, 256, 512)), start=1):
        for j in range(counts[i - 1]):
            assert shapes[f"layer{i}.{j}"] == (hw, hw, planes * width)
    assert shapes["layer4." + last[-1]] == (7, 7, 512 * width)  # 7x7x512 (18), 7x7x2048 (50)
    assert shapes["avgpool"] == (512 * width,) and shapes["fc"] == (1000,)
    # every name and alias resolves, inner modules are layers too
    for layer in model.layer_names:
        assert model.resolve_layer(layer) == layer
    assert {model.resolve_layer(f"layer{i}") for i in range(1, 5)} == {f"layer{i}.{counts[i - 1] - 1}" for i in range(1, 5)}
    assert model.resolve_layer("layer4") == model.feature_layer == model.cam_layer == last
    assert model.layer_shapes(224)["layer2.0/downsample.0"] == (28, 28, 128 * width)
    with pytest.raises(JaxvizError, match="did you mean"):
        model.resolve_layer("layer5.0")
    assert model.preprocessing is get_spec("squeezenet1_1").preprocessing  # TORCHVISION
    assert model.eval_transform == get_spec("squeezenet1_1").eval_transform


def test_cam_weights_are_the_fc_kernel_and_accelerate_keeps_values():
    from jaxviz.accel import accelerate
    from jaxviz.cam import cam_weights
    model = resnet18_model()
    np.testing.assert_array_equal(cam_weights(model), model.params["fc"]["kernel"])
    x = jax.random.normal(jax.random.key(5), (2, 64, 48, 3))
    fast = accelerate(model)  # the rewrite: padded max-pool (-inf padding), convs, ReLUs

    def logits_and_gradient(m):  # one program per model (op by op, ResNet-18 compiled 314 small ones)
        both = jax.jit(lambda p, v: (m.apply(p, v), jax.grad(lambda v: m.apply(p, v)[:, 3].sum())(v)))
        return both(m.params, x)
    (y_fast, g_fast), (y, g) = logits_and_gradient(fast), logits_and_gradient(model)
    np.testing.assert_allclose(y_fast, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_fast, g, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- receptive fields

def _sum_pool_stage(stage: MaxPool, x):
    """The max-pool's windows (padding, ceil mode) summed: every pixel of a window gets gradient."""
    def pool(v):
        pads = [layers.pool_padding(n, stage.kernel, stage.stride, stage.ceil_mode, stage.padding) for n in v.shape[1:3]]
        return jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, stage.kernel, stage.kernel, 1),
                                     (1, stage.stride, stage.stride, 1), ((0, 0), pads[0], pads[1], (0, 0)))
    return layers.Lambda(pool, name=stage.name)(x)


def _monotone_model(name: str, hw):
    """Positive kernels (sum 1 per output channel), neutral BN with small positive biases, max-pools
    summing: every BN output (the only ReLU inputs) is > 0 on a zero input, so the network is
    linear with positive weights and d unit / d input > 0 exactly on the unit's field."""
    spec = get_spec(name)
    module = SequentialNet(spec.stages, overrides=((MaxPool, _sum_pool_stage),))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1,) + hw + (3,))))["params"]
    rng = np.random.default_rng(0)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            p = rng.random(s.shape, np.float32) + 1e-3
            return jnp.asarray(p / p.sum(axis=tuple(range(p.ndim - 1)), keepdims=True))
        if leaf == "mean":
            return jnp.zeros(s.shape)
        if leaf in ("var", "scale"):
            return jnp.ones(s.shape)
        return jnp.asarray(1e-3 * (1.0 + rng.random(s.shape, np.float32)))
    params = jax.tree_util.tree_map_with_path(fill, shapes)
    return bundled_model(spec, params).derive(module=module)


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_receptive_fields_equal_gradient_support(name):
    from jaxviz.patches import visible_extent
    hw = (96, 80)  # non-square; layer1 .. layer3 fields are partly inside the image
    model = _monotone_model(name, hw)
    shapes = model.layer_shapes(hw)
    spatial = [n for n in model.layer_names if len(shapes[n]) == 3]
    assert spatial[-1].startswith("layer4")
    fields = model.receptive_fields(hw)
    units = [(layer, y, x) for layer in spatial
             for y, x in sorted({(0, 0), (shapes[layer][0] - 1, shapes[layer][1] - 1),
                                 (shapes[layer][0] // 2, min(shapes[layer][1] // 2 + 1, shapes[layer][1] - 1))})]
    bns = [f"{s}/{m}" for s in spatial if s.startswith("layer") for m in ("bn1", "bn2")] + ["bn1"]

    @jax.jit
    def supports(params):
        zero = jnp.zeros((1,) + hw + (3,))
        acts, vjp = jax.vjp(lambda v: model.activations(params, v, spatial), zero)
        cot = {l: jnp.zeros((len(units),) + a.shape) for l, a in acts.items()}
        for i, (l, y, x) in enumerate(units):
            cot[l] = cot[l].at[i, 0, y, x, -1].set(1.0)
        relu_inputs = model.activations(params, zero, bns)
        return jax.vmap(vjp)(cot)[0][:, 0], jnp.min(jnp.stack([a.min() for a in relu_inputs.values()]))

    grads, lo = supports(model.params)
    assert float(lo) > 0  # every ReLU is the identity here
    masks = np.abs(np.asarray(grads)).sum(-1) > 0
    for (layer, y, x), mask in zip(units, masks):
        top, left, bottom, right = fields[layer].box(y, x)
        eh, ew = visible_extent(model, layer, hw)
        want = np.zeros(hw, bool)
        want[max(top, 0):min(bottom, eh), max(left, 0):min(right, ew)] = True
        rows, cols = np.nonzero(mask)
        assert np.array_equal(mask, want), (layer, (y, x), fields[layer].box(y, x),
                                            (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    # the published fields: ResNet-18 435 px, ResNet-50 427 px, both stride 32
    assert fields[spatial[-1]].size == {"resnet18": 435, "resnet50": 427}[name] and fields[spatial[-1]].stride == 32


# --------------------------------------------------------------------------- incremental occlusion

def _block_params(kind, hw, seed):
    module = kind.module()
    params = module.init(jax.random.key(seed), jnp.zeros((1,) + hw + (kind.in_features,)))["params"]
    rng = np.random.default_rng(seed)

    def randomise(path, p):
        leaf = path[-1].key
        if leaf in ("scale", "var"):
            return jnp.asarray(0.5 + rng.random(p.shape, np.float32))
        if leaf in ("bias", "mean"):
            return jnp.asarray(0.2 * rng.standard_normal(p.shape).astype(np.float32))
        return p
    return module, jax.tree_util.tree_map_with_path(randomise, params)


@pytest.mark.parametrize("kind", [BasicBlock("b", 6, 6, 1), BasicBlock("b", 6, 10, 2), BasicBlock("b", 6, 10, 1),
                                  Bottleneck("b", 8, 2, 1), Bottleneck("b", 6, 2, 1), Bottleneck("b", 6, 3, 2)],
                         ids=lambda k: f"{type(k).__name__}-{k.in_features}-{k.out_features}-s{k.stride}")
def test_block_rule_equals_recomputing_the_block(kind):
    """A changed box through the main path and the shortcut: the updated output equals the block
    run on the changed input, at borders and inside, odd non-square sizes; plan gives its box."""
    hw = (13, 10)
    module, params = _block_params(kind, hw, seed=kind.in_features + kind.stride)
    x = jax.random.normal(jax.random.key(1), hw + (kind.in_features,))
    # jitted, as incremental occlusion runs them (op-by-op, each new shape compiled a program per op)
    block = jax.jit(lambda p, x: module.apply({"params": p}, x[None])[0])
    update = jax.jit(kind.update, static_argnums=3)
    clean, ctx = jax.jit(kind.clean)(params, x)
    np.testing.assert_allclose(clean, block(params, x), rtol=1e-5, atol=1e-5)
    for (a, b), box in [((0, 0), (3, 2)), ((10, 8), (3, 2)), ((5, 3), (4, 4)), ((12, 0), (1, 10)), ((0, 0), (13, 10))]:
        patch = jax.random.normal(jax.random.key(a * 31 + b), box + (kind.in_features,))
        changed = x.at[a:a + box[0], b:b + box[1]].set(patch)
        oa, ob, out = update(params, ctx, (jnp.asarray(a), jnp.asarray(b), patch), hw)
        assert out.shape[:2] == kind.plan(hw, box)[1]
        got = clean.at[int(oa):int(oa) + out.shape[0], int(ob):int(ob) + out.shape[1]].set(out)
        want = block(params, changed)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert not np.allclose(want, clean)  # the change did reach the output


def test_incremental_occlusion_equals_batched_on_resnet18():
    from jaxviz.occlusion import incremental_occlusion, incremental_plan, occlusion
    model = resnet18_model()
    x = jax.random.normal(jax.random.key(7), (2, 64, 56, 3))
    for window in (12, 16):  # the blocks, the downsampling layer2.0 included, run incrementally
        plan = incremental_plan(model.incremental_stages, (64, 56), (window, window))
        assert [st.name for st, *_ in plan][-3:] == ["layer1.0", "layer1.1", "layer2.0"]
    for target, window, stride in [(None, 12, 12), (Target(index=5, layer="layer2.0", y=1, x=2), 12, 12),
                                   (Target(index=3, layer="layer1.1/bn2"), 16, 11)]:  # 16 / 11: cropped windows
        a = incremental_occlusion(model, model.params, x, target, window=window, stride=stride)
        b = occlusion(model, model.params, x, target, window=window, stride=stride)
        span = float(np.ptp(np.asarray(b)))
        assert span > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * span)


def test_flop_count_equals_torchvisions_gflops_and_saving_runs():
    """2 x multiply-adds of convs (incl. the 1x1 downsamples) and fc: torchvision publishes 1.81
    (ResNet-18) and 4.09 (ResNet-50) GFLOPS (multiply-adds) at 224 px."""
    from jaxviz.occlusion import _flops, flop_saving
    for name, gflops in (("resnet18", 1.81), ("resnet50", 4.09)):
        model = _abstract(name)
        assert round(_flops(model, (224, 224), None) / 2e9, 2) == gflops
        saving = flop_saving(model, input_size=224, window=32, stride=16)
        assert 1.0 < saving < 10.0
        assert flop_saving(model, input_size=224, window=224, stride=224) == pytest.approx(1.0)
    small = dataclasses.replace(get_spec("resnet18"), input_size=64)  # bigger windows save less
    assert flop_saving(bundled_model(small, _abstract("resnet18").params), input_size=64, window=8, stride=8) > \
        flop_saving(bundled_model(small, _abstract("resnet18").params), input_size=64, window=24, stride=8)
