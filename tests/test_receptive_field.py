"""Receptive fields from the architecture == the support of the input gradient, for every named
spatial layer of every registered architecture (random weights; no download needed).

To make the gradient of a unit non-zero at *every* input pixel it depends on, the network is made
linear and monotone: ReLU/ReLU6 become the identity, all weights are made positive (normalised so
nothing overflows), and max-pools become sum-pools over the same windows (a max-pool's gradient
reaches only the arg-max; the geometry — kernel, stride, padding, ceil_mode — is unchanged). Then
d unit / d input > 0 exactly on the unit's receptive field clipped to the image.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.models import layers
from jaxviz.models.registry import MODELS, Model, layer_shapes
from jaxviz.patches import visible_extent

SIZE = 64


def _sum_pool(x, kernel, stride, ceil_mode=False, padding=0):
    """``layers.max_pool``'s windows (same padding), summed instead of maxed."""
    pads = [layers.pool_padding(size, kernel, stride, ceil_mode, padding) for size in x.shape[1:3]]
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, kernel, kernel, 1), (1, stride, stride, 1),
                                 ((0, 0), pads[0], pads[1], (0, 0)))


@pytest.fixture(autouse=True)
def sum_pools(monkeypatch):
    # network.py looks ``layers.max_pool`` up at call time, so this swaps every max-pool.
    monkeypatch.setattr(layers, "max_pool", _sum_pool)


def _positive(params):
    """Positive weights, each conv kernel normalised to sum 1 per output channel (values stay
    O(1) through 16 layers). numpy: per-op eager dispatch would cost seconds."""
    def fix(path, p):
        p = np.abs(np.asarray(p, np.float32)) + 1e-3
        if path[-1].key == "kernel" and p.ndim == 4:
            p = p / p.sum(axis=(0, 1, 2), keepdims=True)
        return jnp.asarray(p)
    return jax.tree_util.tree_map_with_path(fix, params)


def _spatial_layers(spec, size):
    shapes = layer_shapes(spec, size)
    return [n for n in spec.layer_names if len(shapes[n]) == 3], shapes


def _linear_model(spec, size, stop):
    identity = lambda x: x  # noqa: E731
    module = spec.module(relu=identity, relu6=identity)
    x = jnp.zeros((1, size, size, 3))
    # Shapes by abstract evaluation (an eager init costs ~20 s for Lite0), only for the stages
    # we run; values random positive.
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, stop=stop))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: rng.random(s.shape, np.float32), shapes)
    return Model(spec, _positive(params), module)


def _support(model, layer, size, units, channel=-1):
    """Boolean (len(units), H, W) masks where d act[y, x, channel] / d input != 0."""
    ys, xs = np.asarray(units).T

    @jax.jit
    def grads(params):
        f = lambda inp: model.apply(params, inp, stop=layer)[0, :, :, channel]  # noqa: E731
        out, vjp = jax.vjp(f, jnp.zeros((1, size, size, 3)))
        cotangents = jnp.zeros((len(units),) + out.shape).at[np.arange(len(units)), ys, xs].set(1.0)
        return jax.vmap(vjp)(cotangents)[0]

    return np.abs(np.asarray(grads(model.params)[:, 0])).sum(-1) > 0


def _expected(rf, y, x, size, extent=None):
    """The box clipped to the pixels the network sees ([0, extent), default the image)."""
    extent = size if extent is None else extent
    top, left, bottom, right = rf.box(y, x)
    mask = np.zeros((size, size), bool)
    mask[max(top, 0):min(bottom, extent), max(left, 0):min(right, extent)] = True
    return mask


# VGG's adaptive average pool to 7x7 is spatial; its field is only "the whole input" when it
# averages (input >= 7*32 px): see KNOWN_WRONG below.
KNOWN_WRONG = {("vgg16", "avgpool"), ("vgg19", "avgpool")}

CASES = [(name, layer) for name, spec in MODELS.items()
         for layer in _spatial_layers(spec, SIZE)[0]]


def _all_supports(model, layers, size, units, channel=-1):
    """{layer: (len(units[layer]), H, W) bool} from ONE jitted, vmapped vjp over every unit."""
    picks = [(layer, y, x) for layer in layers for y, x in units[layer]]

    @jax.jit
    def grads(params):
        f = lambda inp: model.apply(params, inp, stop=layers[-1], capture=tuple(layers))[1]  # noqa: E731
        acts, vjp = jax.vjp(f, jnp.zeros((1, size, size, 3)))
        cot = {l: jnp.zeros((len(picks),) + a.shape) for l, a in acts.items()}
        for i, (l, y, x) in enumerate(picks):
            cot[l] = cot[l].at[i, 0, y, x, channel].set(1.0)
        return jax.vmap(vjp)(cot)[0][:, 0]

    masks = np.abs(np.asarray(grads(model.params))).sum(-1) > 0
    out, i = {}, 0
    for layer in layers:
        out[layer] = masks[i:i + len(units[layer])]
        i += len(units[layer])
    return out


# VGG at 48 px keeps its cost down (pool5 is 1x1); the others at 64 px.
SIZES = {"vgg16": 48, "vgg19": 48, "vgg19_caffe": 48}


@pytest.mark.parametrize("name", [n if n not in ("vgg19", "vgg19_caffe") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in MODELS])
def test_receptive_fields_match_gradient_support(name):
    spec = MODELS[name]
    size = SIZES.get(name, SIZE)
    spatial, shapes = _spatial_layers(spec, size)
    spatial = [n for n in spatial if (name, n) not in KNOWN_WRONG]
    fields = spec.receptive_fields(size)
    model = _linear_model(spec, size, stop=spatial[-1])
    # corners (boxes clipped at both ends) and an off-centre interior unit (y != x)
    units = {layer: sorted({(0, 0), (shapes[layer][0] - 1, shapes[layer][1] - 1),
                            (shapes[layer][0] // 2, min(shapes[layer][1] // 2 + 1, shapes[layer][1] - 1))})
             for layer in spatial}
    # The last channel: in a fire module the 3x3-expand half, whose field is the layer's field
    # (the 1x1-expand half sees less: see test_fire_expand1x1_channels_see_less).
    got = _all_supports(model, spatial, size, units)
    for layer in spatial:
        for (y, x), mask in zip(units[layer], got[layer]):
            want = _expected(fields[layer], y, x, size, visible_extent(spec, layer, size))
            if not np.array_equal(mask, want):
                rows, cols = np.nonzero(mask)
                emp = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) if len(rows) else None
                pytest.fail(f"{name} {layer} unit ({y},{x}): computed box {fields[layer].box(y, x)} "
                            f"(clipped to {size}px) but the gradient support is {emp}")


@pytest.mark.parametrize("name", sorted({n for n, _ in KNOWN_WRONG}))
@pytest.mark.xfail(strict=True, reason="receptive_fields treats adaptive_avgpool with spatial != 7 as "
                   "global; at 64 px (pool5 2x2 -> 7x7) each bin sees one or two pool5 units")
def test_vgg_adaptive_avgpool_field(name):
    spec = MODELS[name]
    fields = spec.receptive_fields(SIZE)
    model = _linear_model(spec, SIZE, stop="avgpool")
    for y, x in [(0, 0), (6, 6), (3, 3)]:
        mask = _support(model, "avgpool", SIZE, [(y, x)])[0]
        assert np.array_equal(mask, _expected(fields["avgpool"], y, x, SIZE))


def test_deeper_layers_have_larger_fields():
    spec = MODELS["squeezenet1_1"]
    fields = spec.receptive_fields(224)
    sizes = [fields[spec.resolve_layer(n)].size for n in ("conv1", "fire3", "fire6", "fire9")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


@pytest.mark.parametrize("name", ["squeezenet1_1", "squeezenet1_0"])
def test_fire_expand1x1_channels_see_less(name):
    """Channels [0, expand1x1) of a fire module skip the 3x3 conv: ``patches.unit_field`` knows."""
    from jaxviz.patches import unit_field
    spec = MODELS[name]
    fire = spec.resolve_layer("fire3")
    model = _linear_model(spec, SIZE, stop=fire)
    h, w = layer_shapes(spec, SIZE)[fire][:2]
    units = [(0, 0), (h // 2, w // 2 + 1)]
    for channel in (0, 63, 64, 127):
        field = unit_field(spec, fire, channel, SIZE)
        masks = _support(model, fire, SIZE, units, channel=channel)
        for (y, x), mask in zip(units, masks):
            want = _expected(field, y, x, SIZE, visible_extent(spec, fire, SIZE))
            assert np.array_equal(mask, want), (channel, y, x)
    assert unit_field(spec, fire, 0, SIZE).size < unit_field(spec, fire, 64, SIZE).size
