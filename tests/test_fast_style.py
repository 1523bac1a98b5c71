"""Fast style / CIN truth: blend (1, 0) == style 1 exactly; one jitted forward pass on any size
divisible by 4 (others rejected); instance norm normalises; checkpoint save -> resume continues
identically."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import fast_style as fs
from jaxviz.checkpoints import load_checkpoint, save_checkpoint
from jaxviz.errors import JaxvizError

SMALL = fs.FastStyleConfig(num_styles=2, width=4, res_blocks=1, size=16, batch=2,
                           content_layer="features.4", style_layers=("features.1", "features.4"))


def _perturbed(params, seed=0):
    """Distinct per-style gamma/beta (init is ones/zeros, identical across styles)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_cin_blend_one_zero_equals_single_style_network():
    params = _perturbed(fs.init_state(SMALL, jax.random.key(0)).params)
    x = jnp.asarray(np.random.default_rng(0).random((2, 12, 16, 3)), jnp.float32)
    net2 = SMALL.network()
    out = fs.stylize(net2, params, x, jnp.array([1.0, 0.0]))
    # a one-style network holding only style 1's gamma/beta
    one = jax.tree_util.tree_map_with_path(
        lambda p, v: v[:1] if p[-1].key in ("gamma", "beta") else v, params)
    net1 = fs.TransformNet(1, SMALL.width, SMALL.res_blocks)
    # same values up to XLA fusing the two (differently shaped) programs differently
    np.testing.assert_allclose(np.asarray(out), np.asarray(fs.stylize(net1, one, x)), rtol=0, atol=2e-6)
    # and bit for bit the network's own style 1 (one-hot row)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(fs.stylize(net2, params, x, jnp.eye(2)[jnp.array([0, 0])])))
    # the mixed affine parameters are exactly style 1's
    g = params["down0"]["norm"]["gamma"]
    np.testing.assert_array_equal(np.asarray(jnp.array([[1.0, 0.0]]) @ g)[0], np.asarray(g[0]))
    out2 = fs.stylize(net2, params, x, jnp.array([0.0, 1.0]))
    assert not np.allclose(np.asarray(out), np.asarray(out2))
    # mixing is linear in gamma/beta: (0.5, 0.5) == network with averaged gamma/beta
    avg = jax.tree_util.tree_map_with_path(
        lambda p, v: v.mean(0, keepdims=True) if p[-1].key in ("gamma", "beta") else v, params)
    np.testing.assert_allclose(np.asarray(fs.stylize(net2, params, x, jnp.array([0.5, 0.5]))),
                               np.asarray(fs.stylize(net1, avg, x)), atol=1e-5)


def test_instance_norm_normalises_each_image_and_channel():
    cin = fs.ConditionalInstanceNorm(1)
    x = jnp.asarray(np.random.default_rng(1).normal(3.0, 2.0, (2, 5, 6, 4)), jnp.float32)
    v = cin.init(jax.random.key(0), x, jnp.ones((2, 1)))
    y = np.asarray(cin.apply(v, x, jnp.ones((2, 1))))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(1, 2)), 1, atol=1e-3)


def test_forward_any_size_divisible_by_four_and_rejects_others():
    params = fs.init_state(SMALL, jax.random.key(1)).params
    net = SMALL.network()
    for h, w in ((8, 8), (12, 20)):
        x = jnp.full((3, h, w, 3), 0.5)
        out = fs.stylize(net, params, x, jnp.array([0.2, 0.8]))
        assert out.shape == (3, h, w, 3)
        assert float(out.min()) >= 0 and float(out.max()) <= 1
    # batch == per-image (instance norm: no batch statistics)
    x = jnp.asarray(np.random.default_rng(2).random((2, 8, 12, 3)), jnp.float32)
    both = fs.stylize(net, params, x)
    np.testing.assert_allclose(np.asarray(both[1:]), np.asarray(fs.stylize(net, params, x[1:])), atol=1e-6)
    # the stylisation is one jitted call: its jaxpr is a single pjit of the whole network
    jaxpr = jax.make_jaxpr(lambda p, z: fs._forward()(net, p, z, jnp.ones((2, 2)) / 2))(params, x)
    assert [e.primitive.name for e in jaxpr.eqns] == ["pjit"] or len(jaxpr.eqns) <= 3
    # caller-given XLA options (the front ends' dense-convolution choice) change no value
    from jaxviz.accel.xla import compiler_options
    fast = fs.stylize(net, params, x, compiler_options=compiler_options(dense_convolutions=True))
    np.testing.assert_allclose(np.asarray(fast), np.asarray(both), atol=1e-5)
    # inside a caller's jit it is a plain (option-free) part of the caller's program
    inside = jax.jit(lambda p, z: fs.stylize(net, p, z, compiler_options=compiler_options(True)))(params, x)
    np.testing.assert_allclose(np.asarray(inside), np.asarray(both), atol=1e-5)
    for bad in ((1, 10, 8, 3), (1, 8, 6, 3), (8, 8, 3)):
        with pytest.raises(JaxvizError, match="divisible by 4|images"):
            fs.stylize(net, params, jnp.zeros(bad))
    with pytest.raises(JaxvizError):
        fs.stylize(net, params, jnp.zeros((1, 8, 8, 3)), jnp.ones((3,)))


def test_checkpoint_resume_continues_identically(tiny_model, tmp_path):
    rng = np.random.default_rng(3)
    content = rng.random((3, 20, 20, 3)).astype(np.float32)
    styles = [rng.random((16, 16, 3)).astype(np.float32) for _ in range(2)]
    step = fs.make_train_step(SMALL, tiny_model, tiny_model.params, styles)
    start = fs.init_state(SMALL, jax.random.key(7))
    straight = fs.train(SMALL, start, step, content, 4)
    half = fs.train(SMALL, start, step, content, 2)
    path = tmp_path / "ckpt.msgpack"
    save_checkpoint(path, SMALL, half)
    config, loaded = load_checkpoint(path)
    assert config == SMALL and loaded.step == 2 and loaded.losses == half.losses
    resumed = fs.train(config, loaded, step, content, 2)
    assert resumed.step == 4
    np.testing.assert_array_equal(np.asarray(resumed.losses), np.asarray(straight.losses))
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(resumed.opt_state), jax.tree_util.tree_leaves(straight.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert straight.losses[-1] < straight.losses[0] * 1.5  # finite, training runs
    (tmp_path / "junk").write_bytes(b"not msgpack")
    with pytest.raises(JaxvizError):
        load_checkpoint(tmp_path / "junk")
    with pytest.raises(JaxvizError):
        load_checkpoint(tmp_path / "missing")


def test_damaged_checkpoints_give_one_error_line(tmp_path):
    from flax import serialization
    state = fs.init_state(SMALL, jax.random.key(0))
    good = tmp_path / "good.msgpack"
    save_checkpoint(good, SMALL, state)
    raw = good.read_bytes()
    payload = serialization.msgpack_restore(raw)
    bad_shape = dict(payload, params={**payload["params"], "out": {
        "kernel": np.zeros((3, 3, 4, 3), np.float32), "bias": payload["params"]["out"]["bias"]}})
    bad_config = dict(payload, config='{"num_styles": 2, "width": "x"}')
    nan_params = dict(payload, params=jax.tree_util.tree_map(lambda a: np.full_like(a, np.nan), payload["params"]))
    cases = {"truncated": raw[: len(raw) // 2], "empty": b"", "garbage": bytes(range(256)) * 4,
             "shape": serialization.msgpack_serialize(bad_shape),
             "config": serialization.msgpack_serialize(bad_config),
             "version": serialization.msgpack_serialize(dict(payload, version=99)),
             "no params": serialization.msgpack_serialize({k: v for k, v in payload.items() if k != "params"}),
             "nan": serialization.msgpack_serialize(nan_params)}
    for name, data in cases.items():
        path = tmp_path / f"{name}.msgpack"
        path.write_bytes(data)
        with pytest.raises(JaxvizError) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value) and "checkpoint" in str(info.value), name
    assert load_checkpoint(good)[1].step == 0


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    state = fs.init_state(SMALL, jax.random.key(0))
    path = tmp_path / "ck.msgpack"
    save_checkpoint(path, SMALL, state)
    before = path.read_bytes()
    # a failure while writing (full disk) keeps the old file and leaves no temporary file
    from jaxviz.weights import tensorfile
    real_fsync = tensorfile.os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tensorfile.os, "fsync", full)
    with pytest.raises(JaxvizError, match="No space left"):
        save_checkpoint(path, SMALL, fs.TrainState(5, state.params, state.opt_state, state.key))
    monkeypatch.setattr(tensorfile.os, "fsync", real_fsync)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck.msgpack"]
    # an unwritable folder (simulated: the tests may run as root): one error line, nothing written
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tensorfile.tempfile, "mkstemp", read_only)
    with pytest.raises(JaxvizError, match="cannot write checkpoint .*Permission denied"):
        save_checkpoint(tmp_path / "other.msgpack", SMALL, state)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.msgpack"]
    with pytest.raises(JaxvizError, match="folder"):
        save_checkpoint(tmp_path, SMALL, state)


def test_random_crops_are_crops():
    images = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 6, 3)
    crops = np.asarray(fs.random_crops(images, jax.random.key(0), 5, 4))
    assert crops.shape == (5, 4, 4, 3)
    flat = np.asarray(images)
    for c in crops:
        found = any(np.array_equal(c, flat[i, y:y + 4, x:x + 4]) or np.array_equal(c, flat[i, y:y + 4, x:x + 4][:, ::-1])
                    for i in range(2) for y in range(3) for x in range(3))
        assert found


def test_cli_fast_style_apply_and_bad_inputs(tmp_path, capsys):
    from jaxviz.cli import main
    from jaxviz.images import load_image
    state = fs.init_state(SMALL, jax.random.key(2))
    state = fs.TrainState(0, _perturbed(state.params), state.opt_state, state.key)
    ckpt = tmp_path / "m.msgpack"
    save_checkpoint(ckpt, SMALL, state)
    net, mix = SMALL.network(), jnp.array([0.3, 0.7])
    out = tmp_path / "o.png"
    # chelsea (300 x 451) at --size 48 is 32 x 48: multiples of 4, one forward pass as it is
    assert main(["fast-style", "apply", "chelsea", "--model", str(ckpt), "--size", "48",
                 "--style-mix", "0.3,0.7", "--out", str(out)]) == 0
    got = load_image(out)
    assert got.shape == (32, 48, 3)
    ref = np.asarray(fs.stylize(net, state.params, load_image("chelsea", (32, 48), fit="stretch")[None], mix))[0]
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6
    # --size 30 is 20 x 30: kept exactly (reflect-padded to 20 x 32 for the network, cropped back)
    assert main(["fast-style", "apply", "chelsea", "--model", str(ckpt), "--size", "30",
                 "--style-mix", "0.3,0.7", "--out", str(out)]) == 0
    got = load_image(out)
    assert got.shape == (20, 30, 3)
    image = load_image("chelsea", (20, 30), fit="stretch")
    padded = np.pad(image, ((0, 0), (1, 1), (0, 0)), mode="reflect")
    ref = np.asarray(fs.stylize(net, state.params, padded[None], mix))[0, :, 1:31]
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6
    capsys.readouterr()
    for argv in (["fast-style", "apply", "chelsea", "--model", str(ckpt), "--style-mix", "1,2,3", "--out", str(out)],
                 ["fast-style", "apply", "chelsea", "--model", str(tmp_path / "none"), "--out", str(out)],
                 ["fast-style", "apply", "chelsea", "--model", "multistyle2", "--out", str(out)],
                 ["fast-style", "train", "--styles", "brick", "--content-dir", str(tmp_path), "--lr", "nan",
                  "--out", str(tmp_path / "c.msgpack")],
                 ["fast-style", "train", "--styles", "brick", "--content-dir", str(tmp_path / "nodir"),
                  "--out", str(tmp_path / "c.msgpack")],
                 ["fast-style"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err


@pytest.mark.slow
def test_cli_fast_style_train_resume_vgg(tmp_path):
    from jaxviz.cli import main
    from jaxviz.images import load_image, save_image
    (tmp_path / "c").mkdir()
    for name in ("chelsea", "coffee"):
        save_image(load_image(name, 40, fit="stretch"), tmp_path / "c" / f"{name}.png")
    ckpt = tmp_path / "m.msgpack"
    argv = ["fast-style", "train", "--styles", "brick", "gravel", "--content-dir", str(tmp_path / "c"),
            "--out", str(ckpt), "--steps", "2", "--size", "32", "--batch", "1", "--width", "4", "--res-blocks", "1"]
    assert main(argv) == 0
    assert main(argv) == 0  # resumes
    assert load_checkpoint(ckpt)[1].step == 4


def test_cli_resume_refuses_other_settings_or_styles(tmp_path, capsys):
    """Resuming keeps the checkpoint's network, training settings and styles: a flag given with
    another value, or other style images, is refused (rc 2, checkpoint untouched); the same
    values, or the flags left out, pass the check."""
    import dataclasses

    from jaxviz.cli import main
    config = dataclasses.replace(SMALL, style_names=("brick", "gravel"))
    ckpt = tmp_path / "m.msgpack"
    save_checkpoint(ckpt, config, fs.init_state(config, jax.random.key(0)))
    before = ckpt.read_bytes()
    base = ["fast-style", "train", "--content-dir", str(tmp_path), "--out", str(ckpt), "--steps", "1"]
    for extra, message in [(["--styles", "brick", "gravel", "--size", "32"], "trained with --size 16"),
                           (["--styles", "brick", "gravel", "--width", "8", "--lr", "0.5"],
                            "trained with --width 4, --lr 0.001"),
                           (["--styles", "gravel", "brick"], "styles brick, gravel, not gravel, brick"),
                           (["--styles", "brick", "grass"], "not brick, grass"),
                           (["--styles", "brick", "gravel", "--seed", "5"],  # it was accepted and ignored
                            "--seed does nothing when resuming")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert ckpt.read_bytes() == before
    # the same settings pass the check (and fail later only on the empty content folder)
    assert main(base + ["--styles", "brick", "gravel", "--size", "16", "--width", "4"]) == 2
    assert "no .png/.jpg images in" in capsys.readouterr().err
