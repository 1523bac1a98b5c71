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


# ---- memory bombs: every declared size is checked before any byte is read --------------------

def _one_storage_file(path, tensor_shape, stride, *, storage_elems=1, legacy=True) -> None:
    base = np.arange(storage_elems, dtype=np.float32)
    tree = {"w": _Tensor(_Storage("0", base.dtype, 0, base.nbytes), base.dtype, 0, tensor_shape, stride)}
    torch_format._write(str(path), tree, {"0": base}, legacy)


_RSS_SCRIPT = """
import resource, sys
from jaxviz.errors import WeightsError
from jaxviz.weights.torch_format import load_torch_file
try:
    load_torch_file(sys.argv[1])
    print("LOADED")
except WeightsError as e:
    print("REFUSED", e)
# VmHWM: this process's own peak (ru_maxrss survives exec, so it would report pytest's peak).
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(int(hwm[0].split()[1]) // 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _peak_rss_mb(path) -> tuple[str, int]:
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=120, check=True).stdout
    *lines, rss = out.strip().splitlines()
    return "\n".join(lines), int(rss)


@FORMATS
def test_stride_0_tensor_from_a_tiny_file_is_refused(tmp_path, legacy):
    """A few hundred bytes declaring a 1.2 GB (or 16 GiB) broadcast tensor: refused from its shape."""
    path = tmp_path / "bomb.pt"
    _one_storage_file(path, (30000, 10000), (0, 0), legacy=legacy)  # 1.2 GB of one float
    assert path.stat().st_size < 1000
    with pytest.raises(WeightsError, match=r"w of shape \(30000, 10000\) asks for 1\.12 GiB"):
        load_torch_file(path)
    message, rss = _peak_rss_mb(path)
    assert message.startswith("REFUSED") and rss < 300, (message, rss)
    _one_storage_file(path, (4, 2**30), (0, 0), legacy=legacy)
    with pytest.raises(WeightsError, match="asks for 16.00 GiB"):
        load_torch_file(path)


def test_sixteen_gib_tensor_is_refused_even_under_a_large_budget(tmp_path):
    path = tmp_path / "big.pt"
    _one_storage_file(path, (4, 2**30), (2**30, 1), legacy=False)
    with pytest.raises(WeightsError, match="reads past its storage"):  # 4 bytes cannot hold 16 GiB
        load_torch_file(path, max_bytes=1 << 40)
    with pytest.raises(WeightsError, match="asks for 16.00 GiB, over"):
        load_torch_file(path)


def test_zip_member_that_would_inflate_to_gigabytes_is_refused(tmp_path):
    """A deflated storage of 300 MB of zeros (a ~300 KB file) is refused from its declared size,
    whether its tensor uses all of it or only 4 bytes."""
    chunk = bytes(1 << 20)
    for shape in ((300 << 18,), (1,)):
        path = tmp_path / f"zipbomb{len(shape)}{shape[0]}.pt"
        w = np.zeros(1, np.float32)
        tree = {"w": _Tensor(_Storage("0", w.dtype, 0, 300 << 20), w.dtype, 0, shape, (1,))}
        body = b"\x80\x02" + torch_format._pickle_tree(tree, legacy=False) + b"."
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.writestr("archive/data.pkl", body)
            with zf.open("archive/data/0", "w", force_zip64=True) as member:
                for _ in range(300):
                    member.write(chunk)
        assert path.stat().st_size < 2 << 20
        with pytest.raises(WeightsError, match=r"asks for 300\.0 MiB|storages declare 300\.0 MiB"):
            load_torch_file(path)
    message, rss = _peak_rss_mb(path)
    assert message.startswith("REFUSED") and rss < 300, (message, rss)


@FORMATS
def test_pickle_length_field_cannot_preallocate(tmp_path, legacy):
    """A string opcode claiming 2**40 bytes reads what the file has and fails."""
    import struct
    bomb = b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc"
    path = tmp_path / "len.pt"
    if legacy:
        path.write_bytes(pickle.dumps(torch_format._LEGACY_MAGIC, protocol=2) + bomb)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", bomb)
    with pytest.raises(WeightsError):
        load_torch_file(path)
    message, rss = _peak_rss_mb(path)
    assert message.startswith("REFUSED") and rss < 300, (message, rss)


@FORMATS
def test_expected_shapes_are_checked_before_reading(tmp_path, legacy, monkeypatch):
    path = tmp_path / "w.pt"
    save_torch_file(_state(), path, legacy=legacy)
    got = load_torch_file(path, expected={"conv.weight": (4, 3, 2, 5), "not.there": (1,)})
    _assert_same(got, _state())  # other keys pass through; absent ones are the caller's concern
    monkeypatch.setattr(torch_format, "_materialise", lambda *a: pytest.fail("read a tensor"))
    with pytest.raises(WeightsError, match=r"conv\.weight: expected shape \(4, 3, 5, 2\), found \(4, 3, 2, 5\)"):
        load_torch_file(path, expected={"conv.weight": (4, 3, 5, 2)})


@FORMATS
def test_missing_storage_is_refused(tmp_path, legacy):
    base = np.arange(4, dtype=np.float32)
    tree = {"w": _Tensor(_Storage("7", base.dtype, 0, base.nbytes), base.dtype, 0, (4,), (1,))}
    path = str(tmp_path / "m.pt")
    if legacy:  # the storage list names "0" only; "7" has a dtype but no bytes
        torch_format._write(path, tree, {"0": base}, legacy)
        match = "storage '7'|storage 0 has no declared dtype"
    else:
        torch_format._write(path, tree, {"0": base}, legacy)
        match = "storage '7', which the file does not hold"
    with pytest.raises(WeightsError, match=match):
        load_torch_file(path)


def test_budget_is_a_parameter(tmp_path):
    path = tmp_path / "w.pt"
    save_torch_file({"w": np.zeros((64, 64), np.float32)}, path)
    assert load_torch_file(path, max_bytes=16384)["w"].shape == (64, 64)
    with pytest.raises(WeightsError, match="asks for"):
        load_torch_file(path, max_bytes=16383)
