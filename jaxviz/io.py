"""Writing files: the one atomic write every jaxviz write path goes through.

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in ``path``'s own folder
(``.NAME.XXXX.tmp``, so the final ``os.replace`` is atomic), fsyncs it and renames it into place.
On ANY failure (a read-only folder, a full disk, an exception inside ``write``, KeyboardInterrupt)
the temporary file is removed and ``path`` is untouched: nothing half-written is ever left under
a final name. An ``OSError`` becomes a ``WriteError``: one line (``cannot write PATH: reason``)
that is both a ``JaxvizError`` (the CLI prints it, exit 2) and an ``OSError`` (callers that
handle OS errors keep working).

Users: ``images.save_image``, the CLI's --out/--npy/--json files and figures (``save_figure``),
the scan index, the weights store and ported weights (``jaxviz.weights.tensorfile`` re-exports
``atomic_write``), fast-style checkpoints and the gallery.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from jaxviz.errors import JaxvizError

__all__ = ["WriteError", "atomic_write", "check_output_dir", "keep", "outputs", "save_figure", "write_bytes",
           "write_text"]

# Files created inside an ``outputs()`` block (a command's run): removed if the run fails.
_created: list[Path] | None = None


class WriteError(JaxvizError, OSError):
    """A file could not be written (read-only location, full disk, ...): one line.

    ``errno``/``strerror`` are the underlying OS error's; ``str()`` is the whole message.
    """

    def __init__(self, message: str, errno: int | None = None, strerror: str | None = None):
        if errno is not None:
            super().__init__(errno, strerror)
        else:
            super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, what: str = "",
                 track: bool = True) -> Any:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    Args:
      path: the final file; its folder must exist.
      write: writes the content to the binary file object it is given; its result is returned.
      what: a word for the error message ("checkpoint", "figure"): ``cannot write what PATH: ...``.
      track: a new file is removed again if the enclosing ``outputs()`` block fails (False: the
        caller manages the file's life, e.g. a scan index that a rerun resumes).
    Raises:
      WriteError: the location is not writable or the disk is full (``path`` untouched, no
        temporary file left). Any other exception of ``write`` propagates, also cleaned up.
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteError(f"cannot write {label}: {_reason(e)}", e.errno, _reason(e)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would differ from a plain open()
        new = not path.exists()
        os.replace(tmp, path)
        if new and track and _created is not None:
            _created.append(path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(f"cannot write {label}: {_reason(e)}", e.errno, _reason(e)) from None
        raise
    return result


@contextmanager
def outputs() -> Iterator[None]:
    """A command's writes as one unit: if the block fails (any exception but KeyboardInterrupt,
    which keeps what a resumable run saved), the files it created are removed again, so a
    failed command leaves nothing behind (files it replaced stay: they are complete)."""
    global _created
    outer, _created = _created, []
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException:
        for path in reversed(_created):
            try:
                path.unlink()
            except OSError:
                pass
        raise
    finally:
        _created = outer


def keep(path: str | os.PathLike) -> None:
    """Keep ``path`` even if the current ``outputs()`` block fails (a checkpoint to resume from)."""
    if _created is not None:
        _created[:] = [p for p in _created if p != Path(path)]


def write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "") -> None:
    atomic_write(path, lambda f: f.write(data), what=what)


def write_text(path: str | os.PathLike, text: str, *, what: str = "") -> None:
    write_bytes(path, text.encode("utf-8"), what=what)


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 100, close: bool = True, **kwargs) -> None:
    """A matplotlib figure saved through ``atomic_write`` (format from the suffix, tight box)."""
    path = Path(path)
    fmt = (path.suffix.lstrip(".") or "png").lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    kwargs.setdefault("bbox_inches", "tight")
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, **kwargs), what="figure")
    finally:
        if close:
            import matplotlib.pyplot as plt
            plt.close(fig)


def check_output_dir(folder: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, a folder that does not exist or cannot be written to.

    Tries to create (and removes) a temporary file there: permission bits say nothing for root,
    a read-only mount does.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():  # e.g. --out some_file/fig.png
            raise JaxvizError(f"{what} directory {folder} is a file, not a directory")
        raise JaxvizError(f"{what} directory does not exist: {folder}")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".jaxviz-", suffix=".probe")
    except OSError as e:
        # an existing folder that answers "no such file" to a new file: /proc, /sys
        reason = "it does not take new files" if e.errno == errno.ENOENT else _reason(e)
        raise WriteError(f"cannot write to {what} directory {folder}: {reason}", e.errno, reason) from None
    os.close(fd)
    os.unlink(tmp)
    return folder
