"""Fetch torchvision's published weight files and port them: run by ``scripts/setup.sh`` only.

Nothing in jaxviz calls this at run time: a model whose weights are absent says how to get them
(``jaxviz models``), and loading never touches the network.

    python -m jaxviz.weights.fetch squeezenet1_1 vgg16      # download, verify, port
    JAXVIZ_FETCH_URL=http://mirror/models/ python -m jaxviz.weights.fetch resnet18

Each file comes from ``https://download.pytorch.org/models/NAME-<sha256 prefix>.pth`` (or the
given base URL), streams into a temporary file beside its destination (``weights/sources``), is
verified against its sha256 (the prefix torchvision puts in the file name, as ``torch.hub``
checks it, or a full sha256 when the caller pins one) and only then renamed into place and
ported. A download that stops early, fails its hash or cannot be written leaves nothing behind,
so a partial file is never ported. When the network cannot be reached the error is one line
naming the file to download and the command that ports it.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from jaxviz.errors import JaxvizError, WeightsError
from jaxviz.weights.sources import TORCHVISION_FILES, TORCHVISION_URL, expected_prefix, sources_dir

__all__ = ["FetchError", "download", "fetch_model"]

_CHUNK = 1 << 20
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class FetchError(WeightsError):
    """A download that failed, stopped early or did not match its hash (nothing was kept)."""


class NetworkError(FetchError):
    """The server could not be reached or the transfer broke off."""


def _opener(url: str) -> urllib.request.OpenerDirector:
    # A proxy from the environment must not intercept a loopback server (the tests' own).
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in _LOOPBACK:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, prefix: str | None = None,
             timeout: float = 60.0, log: Callable[[str], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` if its sha256 is ``sha256`` (or starts with ``prefix``).

    The bytes go to a temporary file in ``dest``'s folder, renamed to ``dest`` only once the whole
    body (``Content-Length`` bytes, when the server sends it) has arrived and its hash matches.
    An existing ``dest`` with the right hash is kept without any download.

    Raises:
      NetworkError: the server is unreachable, answers with an error, or the transfer stops early.
      FetchError: the hash differs, no hash was given, or ``dest``'s folder cannot be written.
    """
    if not (sha256 or prefix):
        raise FetchError(f"refusing to download {url} without a sha256 to verify it against")
    dest = Path(dest)

    def matches(digest: str) -> bool:
        return digest == sha256 if sha256 else digest.startswith(prefix)

    if dest.is_file():
        from jaxviz.weights.tensorfile import sha256_file
        if matches(sha256_file(dest)):
            return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise FetchError(f"cannot write {dest}: {e.strerror or e}") from None
    try:
        digest, received, declared = hashlib.sha256(), 0, None
        with os.fdopen(fd, "wb") as out:
            try:
                with _opener(url).open(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    declared = int(length) if length and length.isdigit() else None
                    if log:
                        size = f" ({declared / 2**20:.1f} MiB)" if declared else ""
                        log(f"fetching {url}{size}")
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        digest.update(block)
                        received += len(block)
            except http.client.IncompleteRead as e:
                received += len(e.partial)
                raise NetworkError(f"the download of {url} stopped after {received} of "
                                   f"{declared or '?'} bytes") from None
            except urllib.error.HTTPError as e:
                raise NetworkError(f"{url} answered HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    socket.timeout, TimeoutError) as e:
                reason = getattr(e, "reason", None) or e
                raise NetworkError(f"cannot download {url} ({reason})") from None
        if declared is not None and received != declared:
            raise NetworkError(f"the download of {url} stopped after {received} of {declared} bytes")
        if not matches(digest.hexdigest()):
            want = sha256[:16] if sha256 else prefix
            raise FetchError(f"{url} has sha256 {digest.hexdigest()[:16]}…, expected {want}…: "
                             "refused (a corrupt, truncated or substituted file)")
        os.replace(tmp, dest)
    except OSError as e:  # the disk, not the network (those became NetworkError above)
        _remove(tmp)
        raise FetchError(f"cannot write {dest}: {e.strerror or e}") from None
    except BaseException:
        _remove(tmp)
        raise
    return dest


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def fetch_model(name: str, *, url: str | None = None, file: str | None = None,
                dest_dir: str | os.PathLike | None = None, sha256: str | None = None, port: bool = True,
                timeout: float = 60.0, log: Callable[[str], None] | None = None) -> Path:
    """Download torchvision's weight file of ``name``, verify it, and port it into the store.

    Args:
      name: a registered model with a torchvision file (``TORCHVISION_FILES``).
      url: where to get it (default ``https://download.pytorch.org/models/<file>``).
      file: the name to keep it under (default torchvision's, ``NAME-<sha256 prefix>.pth``; its
        prefix is what the download is checked against unless ``sha256`` is given).
      dest_dir: where the file is kept (default ``weights/sources``, where the store finds it).
      sha256: a full sha256 to require instead of the file name's prefix.
      port: port it after the download (``store.port_model``).

    Returns the ported file (or the downloaded one with ``port=False``).

    Raises:
      WeightsError: an unknown model, a failed download (one line: which file to download by
        hand and how to port it), a hash that differs, or a port that fails.
    """
    from jaxviz.models.registry import get_spec
    if name not in TORCHVISION_FILES:
        raise WeightsError(f"{name} has no published torchvision file; fetchable: {', '.join(TORCHVISION_FILES)}")
    get_spec(name)  # refuse a model this jaxviz does not have before downloading anything
    official = TORCHVISION_FILES[name]
    file = file or official
    url = url or TORCHVISION_URL + official
    dest = Path(dest_dir) / file if dest_dir else sources_dir() / file
    try:
        path = download(url, dest, sha256=sha256, prefix=expected_prefix(dest), timeout=timeout, log=log)
    except NetworkError as e:
        what = "it" if url == TORCHVISION_URL + official else TORCHVISION_URL + official
        raise NetworkError(f"{e}; on a machine with internet download {what} and run "
                           f"`python scripts/port_weights.py {name} --from {official}`") from None
    if not port:
        return path
    from jaxviz.weights.store import port_model
    return port_model(name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxviz.weights.fetch",
                                     description="Download torchvision's weight files, verify their sha256, port them.")
    parser.add_argument("models", nargs="+", help=f"models to fetch: {', '.join(TORCHVISION_FILES)}")
    parser.add_argument("--base-url", default=os.environ.get("JAXVIZ_FETCH_URL") or TORCHVISION_URL,
                        help="where the files are (default $JAXVIZ_FETCH_URL or torchvision's)")
    parser.add_argument("--no-port", action="store_true", help="download and verify only")
    args = parser.parse_args(argv)
    base = args.base_url if args.base_url.endswith("/") else args.base_url + "/"
    failed = 0
    for name in args.models:
        try:
            file = TORCHVISION_FILES.get(name, "")
            path = fetch_model(name, url=base + file if file else None, port=not args.no_port,
                               log=lambda line: print(line, file=sys.stderr))
            print(f"{name:<20} -> {path}")
        except JaxvizError as e:
            print(f"fetch: error: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
