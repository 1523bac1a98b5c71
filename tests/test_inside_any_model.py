"""The "inside the network" and dataset family on any model: the bundled tiny CNN, a user's linen CNN
(residual add, BatchNorm) and a user's nnx CNN — activations equal an independent forward pass,
the scan's top-k equals a brute-force sort, measured receptive fields equal the geometry worked
out by hand, patches put back in noise reproduce the activation, neighbours equal brute force;
batch == single, non-square inputs, batch > 1."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import activations as A
from jaxviz import embedding as E
from jaxviz.errors import JaxvizError
from jaxviz.images import load_image, load_images, save_image
from jaxviz.interface import ReceptiveField
from jaxviz.patches import layer_field, measured_fields, top_patches, unit_boxes, visible_extent
from jaxviz.scan_index import collect_sources, index_images, scan

# Receptive fields at 16 px worked out by hand for the user models, which declare no geometry:
# 3x3/2 "SAME" (16 px: no top padding) (3, 2, 0), 3x3 "SAME" (7, 2, -2), again (11, 2, -4);
# BatchNorm and the residual add (stem + conv2: the union) change nothing. The bundled models
# declare theirs (composed from every kernel, stride and padding).
HAND_FIELDS = {
    "user_linen": {"stem": (3, 2, 0), "block/conv1": (7, 2, -2), "block/bn": (7, 2, -2),
                   "block/conv2": (11, 2, -4), "block": (11, 2, -4)},
    "user_nnx": {"stem": (3, 2, 0), "bn": (3, 2, 0), "layers.0": (7, 2, -2), "layers.1": (11, 2, -4)},
}


def spatial_layers(model, size=16) -> list[str]:
    """The model's layers with a non-empty (h, w, C) output at ``size``, in forward order."""
    shapes = model.layer_shapes(size)
    return [n for n in model.layer_names if len(shapes.get(n, ())) == 3 and 0 not in shapes[n]]


def scanned_layers(model) -> tuple[str, ...]:
    spatial = spatial_layers(model)
    return tuple(dict.fromkeys((spatial[1], spatial[len(spatial) // 2])))


def independent_activations(model, x, layers=None) -> dict[str, np.ndarray]:
    """Layer outputs computed without jaxviz: flax's capture_intermediates for linen modules
    (bundled included), the nnx module's submodules called by hand."""
    if model.name == "user_nnx":
        from flax import nnx
        m = nnx.merge(model.graphdef, model.params)
        m.eval()
        stem = m.stem(x)
        bn = m.bn(stem)
        l0 = m.layers[0](nnx.relu(bn))
        l1 = m.layers[1](nnx.relu(l0))
        out = {"stem": stem, "bn": bn, "layers.0": l0, "layers.1": l1}
        return {layer: out[layer] for layer in (layers or out)}
    variables = model.params if "params" in model.params else {"params": model.params}
    _, state = model.module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    out = {}
    for layer in layers or spatial_layers(model, x.shape[1:3]):
        node = state["intermediates"]
        for part in layer.split("/"):
            node = node[part]
        out[layer] = node["__call__"][0]
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("any")
    rng = np.random.default_rng(5)
    for i in range(11):
        h, w = rng.integers(10, 30, size=2)
        save_image(rng.random((h, w, 3)) ** rng.uniform(0.4, 2.5), root / f"{i:02d}.png")
    return root


def test_activations_equal_an_independent_forward_pass(any_model, rng):
    x = jnp.asarray(rng.normal(size=(2, 16, 24, 3)), jnp.float32)  # batch 2, non-square
    want = independent_activations(any_model, x, spatial_layers(any_model, (16, 24)) + [any_model.feature_layer])
    for layer, ref in want.items():
        got = A.feature_maps(any_model, any_model.params, x, layer)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=layer)
        one = A.feature_maps(any_model, any_model.params, x[1:], layer)  # batch == single
        np.testing.assert_allclose(one[0], got[1], rtol=1e-5, atol=1e-5, err_msg=layer)
    deepest = spatial_layers(any_model, (16, 24))[-1]
    assert A.check_spatial(any_model, deepest, (16, 24)) == deepest
    if any_model.name == "tiny":  # at 1 px the pool leaves 0 x 0 ("SAME" padding never does)
        with pytest.raises(JaxvizError, match="empty .* smallest input size where it is not is 2 px"):
            A.check_spatial(any_model, deepest, 1)
    feats = E.pooled_features(any_model, any_model.params, x, any_model.feature_layer)
    np.testing.assert_allclose(feats, np.asarray(want[any_model.feature_layer]).mean((1, 2)), rtol=1e-5, atol=1e-5)


def test_measured_fields_equal_the_geometry(any_model):
    """Gradient support == the fields worked out by hand (user models) or declared (bundled
    models: every layer whose field fits the input; the tiny model also at 15 px, where the pool
    drops the last conv row, and non-square)."""
    size = max(any_model.input_hw()) if any_model.input_size else 16
    declared = any_model.receptive_fields(size)
    if any_model.name in HAND_FIELDS:
        assert declared is None  # a user's model declares no geometry: patches measure it
        want = {layer: ReceptiveField(*f) for layer, f in HAND_FIELDS[any_model.name].items()}
    else:
        want = {n: declared[n] for n in spatial_layers(any_model, size) if n in declared and declared[n].size <= size}
        assert len(want) >= 4
    assert measured_fields(any_model, any_model.params, list(want), size) == want
    assert layer_field(any_model, list(want)[-1], size) == want[list(want)[-1]]
    if any_model.name == "tiny":
        for other in (15, (16, 22)):
            fields = any_model.receptive_fields(other)
            assert measured_fields(any_model, any_model.params, list(want), other) == {n: fields[n] for n in want}
        # the 2x2 pool drops conv row 14 at 15 px, but conv row 13 still sees input row 14
        assert visible_extent(any_model, "features.4", 15) == (15, 15)


def _brute_force_topk(model, images01, layer, k):
    acts = np.asarray(independent_activations(model, model.preprocess(jnp.asarray(images01)), [layer])[layer])
    n, h, w, c = acts.shape
    flat = acts.reshape(n, h * w, c)
    val, pos = flat.max(1), flat.argmax(1)
    order = np.stack([np.lexsort((np.arange(n), -val[:, ch]))[:k] for ch in range(c)])  # (C, k)
    values = np.take_along_axis(val.T, order, 1)
    positions = np.take_along_axis(pos.T, order, 1)
    return values, order, positions // w, positions % w


def test_scan_topk_equals_brute_force(any_model, folder, tmp_path, size=(16, 20)):
    """Non-square input (the square case: tests/test_scan.py); batches of 3 over 11 images."""
    sources = collect_sources([folder])
    layers = scanned_layers(any_model)
    index = scan(any_model, sources, tmp_path / "ix", layers=layers, topk=4, batch=3, input_size=size, fit="stretch")
    assert index.meta["model"] == any_model.name and index.meta["feature_layer"] == any_model.feature_layer
    images = load_images(sources, size, "stretch")
    for layer in layers:
        values, image, y, x = _brute_force_topk(any_model, images, layer, 4)
        t = index.topk[layer]
        np.testing.assert_allclose(t.values, values, rtol=1e-5, atol=1e-5, err_msg=layer)
        np.testing.assert_array_equal(t.image, image, err_msg=layer)
        np.testing.assert_array_equal(t.y, y, err_msg=layer)
        np.testing.assert_array_equal(t.x, x, err_msg=layer)
    feature = any_model.feature_layer
    want = independent_activations(any_model, any_model.preprocess(jnp.asarray(images)), [feature])[feature]
    np.testing.assert_allclose(index.features, np.asarray(want).mean((1, 2)), rtol=1e-5, atol=1e-5)
    if any("/" in layer for layer in layers):  # a linen path is a nested file: topk/block/conv1.npz
        assert all((index.path / "topk" / f"{layer}.npz").is_file() for layer in layers)


def test_patches_put_back_in_noise_reproduce_the_activation(any_model, folder, tmp_path, rng):
    """The unit sees exactly its (declared or measured) field: paste each patch into noise at its
    box and the activation is the recorded one."""
    layer = scanned_layers(any_model)[-1]
    index = scan(any_model, collect_sources([folder]), tmp_path / "ix", layers=[layer], topk=2, batch=4, input_size=24)
    channels = [0, 3]
    tiles, values = top_patches(any_model, index, layer, channels, images=index_images(index, any_model))
    size = index.meta["input_size"]
    t = index.topk[layer]
    field = layer_field(any_model, layer, 24)
    assert tiles.shape == (2, 2, field.size, field.size, 3)
    if any_model.name in HAND_FIELDS:
        assert field == ReceptiveField(*HAND_FIELDS[any_model.name][layer])
    changed = 0
    for ci, channel in enumerate(channels):
        for j in range(2):
            y, x = int(t.y[channel, j]), int(t.x[channel, j])
            top, left, bottom, right = (int(v) for v in unit_boxes(any_model, layer, [y], [x], size)[0])
            image = load_image(index.source(int(t.image[channel, j])), size, index.meta["fit"], any_model.eval_transform)
            noise = rng.random(image.shape).astype(np.float32)
            placed = noise.copy()
            t0, l0, t1, l1 = max(top, 0), max(left, 0), min(bottom, size), min(right, size)
            placed[t0:t1, l0:l1] = tiles[ci, j][t0 - top:t1 - top, l0 - left:l1 - left]
            act = any_model.activation(any_model.params, any_model.preprocess(jnp.asarray(placed[None])), layer)
            np.testing.assert_allclose(float(act[0, y, x, channel]), float(values[ci, j]), rtol=2e-4, atol=2e-5)
            alone = any_model.activation(any_model.params, any_model.preprocess(jnp.asarray(noise[None])), layer)
            changed += not np.isclose(float(alone[0, y, x, channel]), float(values[ci, j]), rtol=1e-3)
    assert changed, "vacuous: the noise alone gives the recorded activations"


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
def test_neighbours_equal_brute_force(any_model, rng):
    images = rng.uniform(size=(9, 16, 20, 3)).astype(np.float32)  # non-square
    feats = E.model_features(any_model, images, batch=4)  # batches of 4: padding on the last
    feature = any_model.feature_layer
    ref = np.asarray(independent_activations(any_model, any_model.preprocess(jnp.asarray(images)), [feature])
                     [feature]).mean((1, 2))
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-5)
    single = E.model_features(any_model, images[4:5])
    np.testing.assert_allclose(single[0], feats[4], rtol=1e-5, atol=1e-5)  # batch == single
    for metric in ("cosine", "l2"):
        dist, idx = E.nearest_neighbors(feats[:3], feats, 4, metric=metric)
        if metric == "l2":
            d = np.sqrt(((ref[:3, None].astype(np.float64) - ref[None]) ** 2).sum(-1))
        else:
            unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
            d = 1.0 - unit[:3].astype(np.float64) @ unit.T
        # brute force on the jaxviz features (exact ranking), distances also vs the independent ones
        own = feats.astype(np.float64)
        if metric == "l2":
            d_own = np.sqrt(((own[:3, None] - own[None]) ** 2).sum(-1))
        else:
            u = own / np.linalg.norm(own, axis=1, keepdims=True)
            d_own = 1.0 - u[:3] @ u.T
        order = np.argsort(d_own, axis=1, kind="stable")[:, :4]
        np.testing.assert_array_equal(idx, order)
        np.testing.assert_allclose(dist, np.take_along_axis(d_own, order, 1), atol=2e-5)
        np.testing.assert_allclose(dist, np.take_along_axis(d, order, 1), atol=1e-4)


@pytest.mark.slow_on_resnet18  # the ResNet-18 case runs under -m slow (conftest)
@pytest.mark.parametrize("rule", ["gradient", "deconv"])
def test_unit_signals_equal_the_neuron_attributions_in_image_space(any_model, rule, rng):
    """One unit per image (different units, batch 2, non-square): equals the attribution family's
    gradient / deconvnet of the same neuron target for that image alone, carried back through the
    preprocessing (vjp), and the true-gradient rule equals central differences on a few pixels."""
    import jax

    from jaxviz import saliency as S
    from jaxviz.patches import unit_signals
    from jaxviz.targets import Target

    model = any_model
    layer = scanned_layers(model)[-1]
    images = np.random.default_rng(11).random((2, 16, 24, 3)).astype(np.float32)  # not the shared rng:
    # its draws depend on the tests run before, and a dead unit (ReLU off) has an all-zero signal
    h, w, c = model.layer_shapes((16, 24))[layer]
    acts = np.asarray(model.activation(model.params, model.preprocess(jnp.asarray(images)), layer))
    positions = [(h // 2, w - 1), (0, w // 3)]
    units = np.array([[y, x, int(np.argmax(acts[n, y, x]))] for n, (y, x) in enumerate(positions)], np.int32)
    assert all(acts[n, y, x, ch] > 0 for n, (y, x, ch) in enumerate(units))  # live units: signals can be compared
    got = np.asarray(unit_signals(model, model.params, jnp.asarray(images), layer, jnp.asarray(units), rule=rule))
    fn = S.gradients if rule == "gradient" else S.deconvnet_gradients
    for n, (y, x, ch) in enumerate(units):
        img = jnp.asarray(images[n:n + 1])
        g = fn(model, model.params, model.preprocess(img), Target(index=int(ch), layer=layer, y=int(y), x=int(x)))
        want = jax.vjp(model.preprocess, img)[1](g)[0]
        np.testing.assert_allclose(got[n], np.asarray(want[0]), rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert np.abs(got).max() > 0
    if rule == "gradient":
        def unit(img, n):
            return float(model.activation(model.params, model.preprocess(jnp.asarray(img[None], jnp.float32)), layer)
                         [0, units[n, 0], units[n, 1], units[n, 2]])
        grad64, eps, checked = got.astype(np.float64), 1e-2, 0
        for n in range(2):
            for (py, px, pc) in zip(*np.unravel_index(np.argsort(-np.abs(grad64[n]).ravel())[:4], grad64[n].shape)):
                plus, minus = images[n].copy(), images[n].copy()
                plus[py, px, pc] += eps
                minus[py, px, pc] -= eps
                f0, fp, fm = unit(images[n], n), unit(plus, n), unit(minus, n)
                right, left = (fp - f0) / eps, (f0 - fm) / eps
                if abs(right - left) > 0.02 * max(abs(right), abs(left)):
                    continue  # a ReLU / max-pool kink within eps: no derivative to compare
                np.testing.assert_allclose((fp - fm) / (2 * eps), grad64[n, py, px, pc], rtol=2e-2,
                                           atol=1e-3 * np.abs(grad64[n]).max())
                checked += 1
        assert checked >= 2, "vacuous: kinks next to every checked pixel"


def test_techniques_that_need_layers_say_so_for_a_plain_apply_fn(tmp_path):
    from tests.user_models import apply_fn_model
    from jaxviz.filters import first_conv
    model = apply_fn_model()
    x = jnp.zeros((1, 16, 16, 3))
    for call in (lambda: A.feature_maps(model, model.params, x, "stem"),
                 lambda: E.model_features(model, np.zeros((1, 16, 16, 3), np.float32)),
                 lambda: scan(model, ["chelsea"], tmp_path / "ix", layers=["stem"])):
        with pytest.raises(JaxvizError, match="apply_fn"):
            call()
    with pytest.raises(JaxvizError, match="no convolution"):
        first_conv(model)
    assert not (tmp_path / "ix").exists()
