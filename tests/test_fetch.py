"""Setup's fetch of torchvision weight files, against a local HTTP server on 127.0.0.1 serving
files the tests make: right hash -> ported; wrong hash, a download cut short (with or without a
Content-Length) or an HTTP error -> refused with nothing left behind; no server -> one line naming
the file to download and the port command. Nothing fetches at run time."""
from __future__ import annotations

import ast
import hashlib
import http.server
import socket
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jaxviz.errors import WeightsError
from jaxviz.weights import fetch, store, tensorfile
from jaxviz.weights.fetch import FetchError, NetworkError, fetch_model
from jaxviz.weights.torch_format import save_torch_file
from tests.test_weights import _state

ROOT = Path(__file__).resolve().parents[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, str]] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        if self.path not in self.routes:
            self.send_error(404, "Not Found")
            return
        body, mode = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "cut": the server closes the connection halfway through the promised body.
        self.wfile.write(body[: len(body) // 2] if mode in ("cut", "no-length") else body)
        self.wfile.flush()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture()
def server():
    """``(base_url, routes)``: put ``routes['/models/NAME'] = (bytes, mode)`` to serve a file."""
    handler = type("Handler", (_Handler,), {"routes": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/models/", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("JAXVIZ_WEIGHTS", str(folder))
    store.load_params.cache_clear()
    yield folder
    store.load_params.cache_clear()


def _served_file(tmp_path: Path, seed: int = 3) -> tuple[bytes, str]:
    """A SqueezeNet 1.0 state dict in torch's zip format and its torchvision-style file name."""
    path = tmp_path / "made.pth"
    save_torch_file(_state("squeezenet1_0", seed), path)
    data = path.read_bytes()
    path.unlink()
    return data, f"squeezenet1_0-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def _nothing_left(*folders: Path) -> None:
    for folder in folders:
        assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == [], folder


def test_right_hash_is_downloaded_verified_and_ported(server, weights_dir, tmp_path):
    base, handler = server
    data, file = _served_file(tmp_path)
    handler.routes["/models/" + file] = (data, "full")
    ported = fetch_model("squeezenet1_0", url=base + file, file=file)
    assert ported == store.ported_path("squeezenet1_0") and ported.is_file()
    kept = weights_dir / "sources" / file
    assert kept.read_bytes() == data
    assert sorted(p.name for p in kept.parent.iterdir()) == [file]  # no temporary file left
    record = tensorfile.read_record(store.record_path("squeezenet1_0"))
    assert record["source"] == str(kept) and record["source_sha256"] == tensorfile.sha256_file(kept)
    model = store.load_model("squeezenet1_0")
    np.testing.assert_array_equal(model.params["features.0"]["kernel"],
                                  _state("squeezenet1_0")["features.0.weight"].transpose(2, 3, 1, 0))
    # Again: the file on disk has the right hash, so nothing is downloaded.
    handler.requests.clear()
    fetch_model("squeezenet1_0", url=base + file, file=file, port=False)
    assert handler.requests == []


def test_full_sha256_pin(server, weights_dir, tmp_path):
    base, handler = server
    data, file = _served_file(tmp_path)
    handler.routes["/models/x"] = (data, "full")
    with pytest.raises(FetchError, match="expected 0000000000000000…: refused"):
        fetch_model("squeezenet1_0", url=base + "x", file=file, sha256="0" * 64)
    _nothing_left(weights_dir / "sources")
    fetch_model("squeezenet1_0", url=base + "x", file=file, sha256=hashlib.sha256(data).hexdigest(), port=False)
    assert (weights_dir / "sources" / file).read_bytes() == data


def test_wrong_hash_is_refused_and_nothing_is_left(server, weights_dir, tmp_path):
    base, handler = server
    data, file = _served_file(tmp_path)
    other, _ = _served_file(tmp_path, seed=4)  # a different file under the first one's name
    handler.routes["/models/" + file] = (other, "full")
    with pytest.raises(FetchError, match=r"has sha256 .*, expected [0-9a-f]{8}…: refused"):
        fetch_model("squeezenet1_0", url=base + file, file=file)
    _nothing_left(weights_dir / "sources")
    assert store.status("squeezenet1_0") == "not ported"


@pytest.mark.parametrize("mode", ["cut", "no-length"])
def test_partial_download_is_never_ported(server, weights_dir, tmp_path, mode):
    """The server closes the connection halfway: with a Content-Length the short body is refused
    as such, without one its hash gives it away; either way no file and no port are left."""
    base, handler = server
    data, file = _served_file(tmp_path)
    handler.routes["/models/" + file] = (data, mode)
    match = "stopped after" if mode == "cut" else "refused"
    with pytest.raises(FetchError, match=match):
        fetch_model("squeezenet1_0", url=base + file, file=file)
    _nothing_left(weights_dir / "sources")
    assert not store.ported_path("squeezenet1_0").exists()


def test_http_error(server, weights_dir):
    base, _ = server
    with pytest.raises(NetworkError, match="HTTP 404"):
        fetch_model("squeezenet1_0", url=base + "nothing-here.pth")
    _nothing_left(weights_dir / "sources")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_network_says_what_to_download_in_one_line(weights_dir):
    url = f"http://127.0.0.1:{_closed_port()}/models/squeezenet1_0-b66bff10.pth"
    with pytest.raises(NetworkError) as e:
        fetch_model("squeezenet1_0", url=url, timeout=5)
    message = str(e.value)
    assert "\n" not in message
    assert "cannot download" in message
    assert "https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth" in message
    assert "`python scripts/port_weights.py squeezenet1_0 --from squeezenet1_0-b66bff10.pth`" in message
    _nothing_left(weights_dir / "sources")


def test_command_line(server, weights_dir, tmp_path, capsys):
    """``python -m jaxviz.weights.fetch``: one line per failure on stderr and exit 2."""
    base, _ = server
    assert fetch.main(["squeezenet1_0", "--base-url", f"http://127.0.0.1:{_closed_port()}/"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fetch: error: cannot download") and "port_weights.py" in err[0]
    assert fetch.main(["alexnet", "--base-url", base]) == 2
    assert "no published torchvision file" in capsys.readouterr().err
    assert fetch.main(["squeezenet1_0", "--base-url", base]) == 2  # 404: not there
    assert "HTTP 404" in capsys.readouterr().err


def test_download_needs_a_hash(tmp_path):
    with pytest.raises(FetchError, match="without a sha256"):
        fetch.download("http://127.0.0.1:9/x", tmp_path / "x.pth")


def test_unwritable_destination(server, tmp_path):
    base, handler = server
    data, file = _served_file(tmp_path)
    handler.routes["/models/" + file] = (data, "full")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FetchError, match="cannot write"):
        fetch_model("squeezenet1_0", url=base + file, file=file, dest_dir=blocker / "sources", port=False)


def test_nothing_fetches_at_run_time(weights_dir, monkeypatch):
    """Loading a model without weights says how to get them and opens no connection; only the
    fetch module (run by setup) imports a network library."""
    def no_network(*args, **kwargs):
        raise AssertionError("a network call at run time")
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(WeightsError, match="port_weights.py vgg16 --from"):
        store.load_model("vgg16")
    network = {"urllib", "urllib.request", "http.client", "socket", "requests", "httpx", "urllib3"}
    offenders = []
    for path in (ROOT / "jaxviz").rglob("*.py"):
        if path == ROOT / "jaxviz" / "weights" / "fetch.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n in network or n.split(".")[0] in
                          ("requests", "httpx", "urllib3")]
    assert offenders == []
