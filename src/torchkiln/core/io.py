"""File helpers. Atomic writes: a temporary file beside the target, fsync, then rename over it.

Readers (a resuming run, a server, a browser) never see half a file, and a crash leaves the previous
version in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from torchkiln.core.errors import DataError


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, mode: int = 0o644) -> None:
    """Call ``write(fh)`` on a temporary file, fsync it, and rename it to ``path``.

    Example:
        >>> atomic_write(Path("last.pt"), lambda fh: torch.save(state, fh))
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes files private; ours are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def new_text_file(path: Path, *, overwrite: bool = False) -> Iterator[TextIO]:
    """Write a UTF-8 file a user asked for (a CSV export): into a temporary file beside ``path``, renamed
    over it at the end, so an interrupted write leaves no half-written file.

    Raises:
        DataError: ``path`` exists (and not ``overwrite``), is a folder, or cannot be written.

    Example:
        >>> with new_text_file(Path("data/x.csv")) as fh:
        ...     fh.write("a,b\n")
    """
    path = Path(path)
    if path.is_dir() or (path.exists() and not overwrite):
        raise DataError(
            f"{path} already exists; expected a new file. Fix: choose another path, delete it, or replace "
            f"it (--overwrite on the command line, overwrite=True in Python)."
        )
    # Not mkstemp: its 0600 mode would stick to a file the user shares; "x" mode honours the umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = tmp.open("x", encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(f"Cannot write {path} ({exc}). Fix: choose a folder you can write to.") from None
    try:
        with fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` for UTF-8 text."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def absolute_if_exists(path: str) -> str:
    """An existing file or folder as an absolute path (runs can then resume from anywhere); a catalog
    name as it is."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def beside(path: str | Path) -> list[str]:
    """The entries of ``path``'s folder, spelled as ``path`` is (``data/digits`` for ``data/digit``), so a
    did-you-mean for a mistyped path can offer the file or folder that is there. Empty if there is no folder.

    Example:
        >>> did_you_mean("data/digit", beside("data/digit") + ["digits"])
        " Did you mean 'data/digits'?"
    """
    parent = Path(path).parent
    try:
        return [str(parent / child.name) for child in parent.iterdir() if not child.name.startswith(".")]
    except OSError:
        return []
