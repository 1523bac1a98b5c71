"""Tests for the torch-free reader/writer of ``torch.save`` files (zip and legacy formats)."""

import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxviz.errors import WeightsError
from jaxviz.weights import torch_format
from jaxviz.weights.torch_format import _Storage, _Tensor, load_torch_file, save_torch_file

FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 2, 5)).astype(np.float32),  # non-square 4-D
        "half": rng.standard_normal((3, 2)).astype(np.float16),
        "bf16": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
        "bytes": rng.integers(0, 256, (2, 7), dtype=np.uint8),
        "bn.num_batches_tracked": np.array(12345678901, dtype=np.int64),  # 0-d
        "mask": np.array([True, False, True]),
        "double": rng.standard_normal(4),
        "empty": np.zeros((0, 3), np.float32),
    }


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), key  # bit-exact, NaN-safe


@FORMATS
def test_round_trip(tmp_path, legacy):
    path = tmp_path / "w.pt"
    save_torch_file(_state(), path, legacy=legacy)
    assert zipfile.is_zipfile(path) != legacy
    _assert_same(load_torch_file(path), _state())


def test_zip_only_dtypes(tmp_path):
    # uint16 has no storage class: torch writes an untyped storage plus _rebuild_tensor_v3.
    state = {"u16": np.arange(6, dtype=np.uint16).reshape(2, 3)}
    save_torch_file(state, tmp_path / "w.pt")
    _assert_same(load_torch_file(tmp_path / "w.pt"), state)
    with pytest.raises(WeightsError, match="zip format"):
        save_torch_file(state, tmp_path / "l.pt", legacy=True)


def test_writer_copies_non_contiguous_and_big_endian(tmp_path):
    base = np.arange(12, dtype=">f4").reshape(3, 4)
    save_torch_file({"t": base.T}, tmp_path / "w.pt")
    got = load_torch_file(tmp_path / "w.pt")["t"]
    assert got.dtype == np.float32 and np.array_equal(got, base.T)


@FORMATS
def test_reader_honours_offsets_and_strides(tmp_path, legacy):
    # Several views of one shared storage, as torch saves slices and transposes.
    base = np.arange(24, dtype=np.float32)
    storage = _Storage("0", base.dtype, 0, base.nbytes)
    tree = {
        "full": _Tensor(storage, base.dtype, 0, (2, 3, 4), (12, 4, 1)),
        "transposed": _Tensor(storage, base.dtype, 0, (4, 3), (1, 4)),
        "offset": _Tensor(storage, base.dtype, 5, (2, 2), (6, 1)),
        "broadcast": _Tensor(storage, base.dtype, 1, (3, 2), (0, 1)),
        "scalar": _Tensor(storage, base.dtype, 23, (), ()),
        "count": 7,  # plain Python ints become 0-d arrays
    }
    path = str(tmp_path / "views.pt")
    torch_format._write(path, tree, {"0": base}, legacy)
    got = load_torch_file(path)
    np.testing.assert_array_equal(got["full"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(got["transposed"], base[:12].reshape(3, 4).T)
    np.testing.assert_array_equal(got["offset"], [[5, 6], [11, 12]])
    np.testing.assert_array_equal(got["broadcast"], [[1, 2]] * 3)
    assert got["scalar"].shape == () and got["scalar"] == 23
    assert got["count"].shape == () and got["count"] == 7
    assert got["transposed"].flags.writeable and got["transposed"].flags.c_contiguous


@FORMATS
def test_view_past_end_of_storage_is_rejected(tmp_path, legacy):
    base = np.arange(6, dtype=np.float32)
    tree = {"t": _Tensor(_Storage("0", base.dtype, 0, base.nbytes), base.dtype, 2, (2, 3), (3, 1))}
    path = str(tmp_path / "bad.pt")
    torch_format._write(path, tree, {"0": base}, legacy)
    with pytest.raises(WeightsError, match="past its storage"):
        load_torch_file(path)


@FORMATS
def test_wrapped_state_dict(tmp_path, legacy):
    path = tmp_path / "ckpt.pt"
    wrapped = {"epoch": np.array(3), "state_dict": _state(), "optimizer": {"lr": np.array(0.1)}}
    save_torch_file(wrapped, path, legacy=legacy)
    _assert_same(load_torch_file(path), _state())
    save_torch_file({"model": {"net": _state()}}, path, legacy=legacy)
    _assert_same(load_torch_file(path), _state())


def test_ordered_dict_with_metadata(tmp_path):
    # torch's state_dict() is an OrderedDict carrying a _metadata attribute (pickle BUILD).
    w = np.ones((2, 2), np.float32)
    tensor = _Tensor(_Storage("0", w.dtype, 0, w.nbytes), w.dtype, 0, (2, 2), (2, 1))
    body = (b"\x80\x02ccollections\nOrderedDict\n)R(" + torch_format._dumps("w")
            + torch_format._pickle_tree(tensor, legacy=False) + b"u"
            + pickle.dumps({"_metadata": {"": {"version": 1}}}, protocol=2)[2:-1] + b"b.")
    path = tmp_path / "od.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/data/0", w.tobytes())
    _assert_same(load_torch_file(path), {"w": w})


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@FORMATS
def test_disallowed_global_is_rejected_without_running(tmp_path, legacy):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Evil(str(marker))}, protocol=2)
    path = tmp_path / "evil.pt"
    if legacy:
        header = (torch_format._LEGACY_MAGIC, torch_format._LEGACY_PROTOCOL, {})
        path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in header) + payload)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
    with pytest.raises(WeightsError, match=r"refusing to load global (os|posix)\.system"):
        load_torch_file(path)
    assert not marker.exists()


@FORMATS
def test_truncated_file_is_rejected(tmp_path, legacy):
    path = tmp_path / "w.pt"
    save_torch_file(_state(), path, legacy=legacy)
    data = path.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match=str(path)):
            load_torch_file(path)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", bytes(range(256)) * 4])
def test_garbage_is_rejected(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError):
        load_torch_file(path)


def test_zip_without_data_pkl_and_missing_file(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(WeightsError, match="data.pkl"):
        load_torch_file(path)
    with pytest.raises(WeightsError, match="no such file"):
        load_torch_file(tmp_path / "missing.pt")


def test_non_tensor_entry_is_rejected(tmp_path):
    path = str(tmp_path / "s.pt")
    torch_format._write(path, {"arch": "resnet18"}, {}, legacy=False)
    with pytest.raises(WeightsError, match="'arch' is a str"):
        load_torch_file(path)


def test_writer_rejects_object_arrays(tmp_path):
    with pytest.raises(WeightsError, match="cannot be saved"):
        save_torch_file({"x": np.array(["a"], dtype=object)}, tmp_path / "o.pt")
