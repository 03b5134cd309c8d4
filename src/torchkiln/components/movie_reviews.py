"""The catalog's VADER text sets: ``movie-reviews``, ``amazon-reviews``, ``nyt-editorials`` and ``tweets``.

All four are the human-rated ground truth of VADER (Hutto & Gilbert, ICWSM 2014), shipped as
``hutto_ICWSM_2014.tar.gz`` inside the sdist of vaderSentiment 3.3.2 (the wheel lacks it). Each file has
one line per text, ``id<TAB>mean score<TAB>text``, with the mean of 20 or more raters' scores from -4 to
+4, CRLF line ends and no quoting. One code path reads any of them: a score above 0 is "positive", the
rest (including a score of exactly 0) "negative". The texts are kept as the file has them, HTML entities
such as ``&amp;`` included; only surrounding white space is stripped.

Importing :mod:`torchkiln.data` registers them (``kiln list datasets``); nothing is read until one is loaded.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torchkiln.components.download import cache_dir
from torchkiln.components.text_table import TextTable
from torchkiln.core.errors import DataError
from torchkiln.core.io import atomic_write, sha256_file


@dataclass(frozen=True)
class VaderSet:
    """One ground-truth file of VADER: its catalog name (also its cache folder), file name and SHA-256."""

    name: str
    member: str  # the file name inside hutto_ICWSM_2014/ in the inner tar
    sha256: str


# Module-level so tests can point them at a small fake sdist.
VADER_PACKAGE = "vaderSentiment==3.3.2"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_SETS = {
    s.name: s
    for s in (
        VaderSet(
            "movie-reviews",
            "movieReviewSnippets_GroundTruth.txt",
            "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
        ),
        VaderSet(
            "amazon-reviews",
            "amazonReviewSnippets_GroundTruth.txt",
            "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
        ),
        VaderSet(
            "nyt-editorials",
            "nytEditorialSnippets_GroundTruth.txt",
            "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
        ),
        VaderSet(
            "tweets",
            "tweets_GroundTruth.txt",
            "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
        ),
    )
}
VADER_CLASSES = ("negative", "positive")
_MAX_MEMBER_BYTES = 64 << 20  # the real files: 0.4 to 1.4 MB, the inner tar 2.3 MB; refuse anything absurd
_SDIST_ENV = "TORCHKILN_VADER_SDIST"
_OLD_SDIST_ENV = "TORCHKILN_MOVIE_REVIEWS_SDIST"  # its name before the other three sets; still read


def vader_member(name: str) -> str:
    """The path of a set's file inside the inner tar, e.g. ``hutto_ICWSM_2014/tweets_GroundTruth.txt``.

    Example:
        >>> vader_member("tweets")
        'hutto_ICWSM_2014/tweets_GroundTruth.txt'
    """
    return f"hutto_ICWSM_2014/{_vader_set(name).member}"


def vader_file(name: str) -> Path:
    """Find a VADER set's text file in the cache, else extract it from the vaderSentiment sdist into it.

    The sdist is looked for in ``cache_dir()/<name>/``, then at ``$TORCHKILN_VADER_SDIST`` (or its older
    name ``$TORCHKILN_MOVIE_REVIEWS_SDIST``), and is otherwise fetched with ``pip download`` (using your
    own pip index settings) into a temporary folder. Both the sdist and the text file are SHA-256 checked;
    only the one text file is read from the archives and kept.

    Args:
        name: one of ``movie-reviews``, ``amazon-reviews``, ``nyt-editorials``, ``tweets``.

    Returns:
        The cached text file, ``cache_dir()/<name>/<member file name>``.

    Raises:
        DataError: the name is not a VADER set, or no checked copy can be found or fetched; the message
            gives the manual fix.

    Example:
        >>> vader_file("tweets").name
        'tweets_GroundTruth.txt'
    """
    vset = _vader_set(name)
    folder = cache_dir() / vset.name
    dest = folder / vset.member
    if dest.is_file() and sha256_file(dest) == vset.sha256:
        return dest
    local = folder / VADER_SDIST
    override = os.environ.get(_SDIST_ENV) or os.environ.get(_OLD_SDIST_ENV)
    try:
        if local.is_file() or override:
            data = _member_from_sdist(local if local.is_file() else Path(override or ""), vset)
        else:
            with tempfile.TemporaryDirectory(prefix="torchkiln-pip-") as tmp:
                data = _member_from_sdist(_pip_download_sdist(Path(tmp)), vset)
    except DataError as e:
        raise DataError(
            f"The {vset.name} data set was not found in {folder}, and getting it failed: {e} Fix: run "
            f"`{sys.executable} -m pip download --no-deps --no-binary :all: {VADER_PACKAGE} -d "
            f"{folder}` (or copy {VADER_SDIST} there, or set {_SDIST_ENV} to it)."
        ) from None
    _write_bytes(dest, data)
    return dest


def load_vader_set(name: str) -> TextTable:
    """Read one VADER set: its texts, labels "negative" / "positive" (score > 0 is positive), no split.

    Args:
        name: one of ``movie-reviews``, ``amazon-reviews``, ``nyt-editorials``, ``tweets``.

    Returns:
        A :class:`TextTable` with ``source=name`` and ``splits=None``; ``rows`` are file lines.

    Raises:
        DataError: the file cannot be found or fetched, or a line is not ``id<TAB>score<TAB>text`` with a
            score from -4 to 4 and some text.

    Example:
        >>> load_vader_set("tweets").labels[:2]
        ['positive', 'positive']
    """
    path = vader_file(name)
    texts, labels, rows = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        line = line.rstrip("\r")  # the files end lines with CRLF
        parts = line.split("\t", 2)
        try:
            text, score = parts[2].strip(), float(parts[1])
        except (IndexError, ValueError):
            text, score = "", math.nan
        if not text or not -4 <= score <= 4:  # also refuses nan
            raise DataError(
                f"{path}, line {number}: expected 'id<TAB>score<TAB>text' with a score from -4 to 4, got "
                f"{line[:80]!r}. Fix: delete {path} and load again to extract the original file."
            )
        texts.append(text)
        labels.append(VADER_CLASSES[1] if score > 0 else VADER_CLASSES[0])
        rows.append(number)
    return TextTable(texts, labels, None, rows, [], name)


def movie_reviews_file() -> Path:
    """The MR text file, from the cache or extracted into it: :func:`vader_file` of ``movie-reviews``.

    Example:
        >>> movie_reviews_file().name
        'movieReviewSnippets_GroundTruth.txt'
    """
    return vader_file("movie-reviews")


def load_movie_reviews() -> TextTable:
    """Movie-review sentences: 10,605 Rotten Tomatoes snippets, labels "negative" / "positive", no split.

    The sentences of Pang & Lee's (2004) 2,000 movie reviews, each rated by at least 20 people. A score
    above 0 is "positive" (5,242 sentences); the rest are "negative" (5,363), which includes the 37
    sentences scored exactly 0. Quotes in the sentences are plain text (the file is not quoted); 22 keep
    ``&amp;``.

    Returns:
        A :class:`TextTable` with ``source="movie-reviews"`` and ``splits=None``; ``rows`` are file lines.

    Raises:
        DataError: the file cannot be found or fetched, or a line is not ``id, score, sentence``.

    Example:
        >>> table = load_movie_reviews()
        >>> len(table.texts), table.texts[0][:20]
        (10605, 'The Rock is destined')
    """
    return load_vader_set("movie-reviews")


def load_amazon_reviews() -> TextTable:
    """Amazon review sentences: 3,708 snippets of 309 customer reviews of 5 products, no split.

    The reviews of Hu & Liu (2004), split into sentences, all in lower case; ids are ``review_sentence``.
    A score above 0 is "positive" (2,128); the rest are "negative" (1,580), which includes the 98
    snippets scored exactly 0. 11 lines have a space before the text (stripped), 4 texts start with an
    unmatched ``"`` (kept), and 10 texts occur more than once ("!" three times), one with both labels.

    Returns:
        A :class:`TextTable` with ``source="amazon-reviews"`` and ``splits=None``; ``rows`` are file lines.

    Raises:
        DataError: the file cannot be found or fetched, or a line is not ``id, score, text``.

    Example:
        >>> load_amazon_reviews().texts[0]
        'troubleshooting ad-2500 and ad-2600 no picture scrolling b/w.'
    """
    return load_vader_set("amazon-reviews")


def load_nyt_editorials() -> TextTable:
    """New York Times editorial sentences: 5,190 snippets of 500 opinion articles, no split.

    A score above 0 is "positive" (2,204); the rest are "negative" (2,986), which includes the 244
    sentences scored exactly 0. Quotes are written as two apostrophes (``''``), as in movie-reviews; 71
    sentences occur twice, 11 of them with both labels.

    Returns:
        A :class:`TextTable` with ``source="nyt-editorials"`` and ``splits=None``; ``rows`` are file lines.

    Raises:
        DataError: the file cannot be found or fetched, or a line is not ``id, score, sentence``.

    Example:
        >>> load_nyt_editorials().labels[:3]
        ['positive', 'positive', 'positive']
    """
    return load_vader_set("nyt-editorials")


def load_tweets() -> TextTable:
    """Tweet-like texts: 4,200 (4,000 modelled on public tweets, 200 written to test VADER's rules), no split.

    User names are replaced by ``@anonymous`` and links by ``http://url_removed``; HTML entities stay as
    Twitter sent them (``&amp;`` 138 times, ``&lt;`` 29, ``&gt;`` 14). A score above 0 is "positive"
    (2,897, so 69 % of the set); the rest are "negative" (1,303), which includes the 4 texts scored
    exactly 0.

    Returns:
        A :class:`TextTable` with ``source="tweets"`` and ``splits=None``; ``rows`` are file lines.

    Raises:
        DataError: the file cannot be found or fetched, or a line is not ``id, score, text``.

    Example:
        >>> load_tweets().texts[1]
        'Yay. Another good phone interview.'
    """
    return load_vader_set("tweets")


def _vader_set(name: str) -> VaderSet:
    if name not in VADER_SETS:
        raise DataError(
            f"'{name}' is not one of the VADER text sets; expected one of {', '.join(VADER_SETS)}. "
            f"Fix: use one of those names."
        )
    return VADER_SETS[name]


def _pip_download_sdist(folder: Path) -> Path:
    """``pip download`` the vaderSentiment sdist into ``folder``; pip uses the user's index settings."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [VADER_PACKAGE, "-d", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"`pip download` could not run ({type(e).__name__}: {e}).") from None
    sdist = folder / VADER_SDIST
    if done.returncode != 0 or not sdist.is_file():
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise DataError(f"`pip download {VADER_PACKAGE}` failed (exit {done.returncode}: {tail}).")
    return sdist


def _member_from_sdist(sdist: Path, vset: VaderSet) -> bytes:
    """The checked bytes of one set's text file, read from the tar.gz inside the sdist without extracting."""
    if not sdist.is_file():
        raise DataError(f"The sdist {sdist} does not exist.")
    if (digest := sha256_file(sdist)) != VADER_SDIST_SHA256:
        raise DataError(f"{sdist} has SHA-256 {digest}, expected {VADER_SDIST_SHA256}.")
    member = vader_member(vset.name)
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_bytes = _tar_member_bytes(outer, VADER_INNER_TAR, sdist)
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            data = _tar_member_bytes(inner, member, sdist)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{sdist} cannot be unpacked ({type(e).__name__}: {e}).") from None
    if (digest := hashlib.sha256(data).hexdigest()) != vset.sha256:
        raise DataError(f"{member} in {sdist} has SHA-256 {digest}, expected {vset.sha256}.")
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
