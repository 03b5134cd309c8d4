"""Downloads into the cache: one file, atomically, checked against its SHA-256 before it is kept."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from torchkiln.core.errors import DataError


def cache_dir() -> Path:
    """Return the download cache: ``$TORCHKILN_CACHE``, or ``~/.cache/torchkiln`` when unset.

    Example:
        >>> cache_dir() / "fashion-mnist"
        PosixPath('/home/me/.cache/torchkiln/fashion-mnist')
    """
    return Path(os.environ.get("TORCHKILN_CACHE") or Path.home() / ".cache" / "torchkiln").expanduser()


def download(url: str, dest: Path, *, sha256: str | Sequence[str], timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and check its SHA-256; ``dest`` appears only once the check passed.

    The bytes go to a temporary file beside ``dest``, which is renamed on success and deleted on any
    failure, so a cache never holds a partial or unverified file.

    Args:
        url: what to fetch (http, https or file).
        dest: where to put it; its folder is created.
        sha256: the expected hex digest, or several accepted digests.
        timeout: seconds to wait for the server.

    Returns:
        ``dest``.

    Raises:
        DataError: the download failed or the digest does not match.

    Example:
        >>> download(base + "t10k-labels-idx1-ubyte.gz", cache_dir() / "t10k-labels-idx1-ubyte.gz",
        ...          sha256="67da17c7...")  # doctest: +SKIP
    """
    accepted = (sha256,) if isinstance(sha256, str) else tuple(sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() not in accepted:
            raise DataError(
                f"{url} downloaded with SHA-256 {digest.hexdigest()}, expected {' or '.join(accepted)}; "
                f"the file was deleted. Fix: retry (the transfer may have been cut or altered), or check "
                f"that the URL points at the original file."
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"Downloading {url} failed ({type(e).__name__}: {e}). Fix: check the network and the URL."
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
