"""The catalog's VADER text sets (movie-reviews, amazon-reviews, nyt-editorials, tweets), read from a small
fake vaderSentiment sdist laid out like the real one, and once from the real sdist."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchkiln.cli.main import app
from torchkiln.components import movie_reviews
from torchkiln.components.catalog import DATASETS, load_catalog, load_image_catalog, load_text_catalog
from torchkiln.components.movie_reviews import load_movie_reviews, movie_reviews_file, vader_file
from torchkiln.components.text_table import read_text_table
from torchkiln.core.errors import DataError

# Lines as the real files have them (ids, score formats, quirks), with CRLF line ends, except tweets (LF).
FAKE_LINES = {
    "movie-reviews": [
        "1\t2.26666666667\tThe Rock is destined to be great.",
        '2\t-1.5\tA "dull" film, sadly.',
        "3\t0.0\tIt is a film.",
        "4\t0.1\tMildly fun.",
    ],
    "amazon-reviews": [
        "1_1\t-0.9\ttroubleshooting ad-2500: no picture.",
        "254_5\t0\t - price: see above.",
        '11_7\t0.05\t"  this problem vanished after the first month.',
    ],
    "nyt-editorials": [
        "1_1\t0.4\tOn Dec. 19, ''Santa'' runs.",
        "1_2\t-1.15\tNo one came.",
        "1_3\t-0.05\tSo do the beef producers.",
    ],
    "tweets": [
        "1\t2.726315789\tWe were 17 deep &amp; @anonymous loved it http://url_removed",
        "2\t0\tExecute like lightning",
        "3\t-3.75\tWTF?",
    ],
}
EXPECTED = {
    "movie-reviews": (
        ["The Rock is destined to be great.", 'A "dull" film, sadly.', "It is a film.", "Mildly fun."],
        ["positive", "negative", "negative", "positive"],  # a score of 0 counts as negative
    ),
    "amazon-reviews": (
        [
            "troubleshooting ad-2500: no picture.",
            "- price: see above.",  # the space before it is stripped
            '"  this problem vanished after the first month.',  # an unmatched quote is plain text
        ],
        ["negative", "negative", "positive"],
    ),
    "nyt-editorials": (
        ["On Dec. 19, ''Santa'' runs.", "No one came.", "So do the beef producers."],
        ["positive", "negative", "negative"],
    ),
    "tweets": (
        ["We were 17 deep &amp; @anonymous loved it http://url_removed", "Execute like lightning", "WTF?"],
        ["positive", "negative", "negative"],
    ),
}  # fmt: skip
FILES = {
    "movie-reviews": "movieReviewSnippets_GroundTruth.txt",
    "amazon-reviews": "amazonReviewSnippets_GroundTruth.txt",
    "nyt-editorials": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}


def raises(message: str):
    return pytest.raises(DataError, match=re.escape(message))


def unwrapped(text: str) -> str:
    """``text`` without whitespace: rich wraps CLI output at the terminal width, even inside paths."""
    return "".join(text.split())


def fake_text(name: str, lines: list[str] | None = None) -> bytes:
    return ("\n" if name == "tweets" else "\r\n").join(lines or FAKE_LINES[name]).encode("utf-8")


def fake_sdist(folder: Path, texts: dict[str, bytes]) -> Path:
    """A tar.gz holding a tar.gz holding the text files, laid out like the vaderSentiment sdist."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for name, text in texts.items():
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{FILES[name]}")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    sdist = folder / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, mode="w:gz") as tar:
        info = tarfile.TarInfo(movie_reviews.VADER_INNER_TAR)
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return sdist


def use_fake_sdist(monkeypatch, tmp_path: Path, texts: dict[str, bytes]) -> Path:
    """Point the loaders at a fake sdist holding ``texts``: a fresh cache, and the hashes of the fakes."""
    monkeypatch.setenv("TORCHKILN_CACHE", str(tmp_path / "cache"))
    sdist = fake_sdist(tmp_path, texts)
    monkeypatch.setenv("TORCHKILN_VADER_SDIST", str(sdist))
    monkeypatch.setattr(movie_reviews, "VADER_SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    for name, text in texts.items():
        vset = dataclasses.replace(movie_reviews.VADER_SETS[name], sha256=hashlib.sha256(text).hexdigest())
        monkeypatch.setitem(movie_reviews.VADER_SETS, name, vset)
    return sdist


@pytest.fixture
def fake_vader(tmp_path, monkeypatch):
    return use_fake_sdist(monkeypatch, tmp_path, {name: fake_text(name) for name in FAKE_LINES})


@pytest.mark.parametrize("name", list(FAKE_LINES))
def test_each_set_loads_from_the_sdist_then_from_the_cache(fake_vader, tmp_path, name):
    table = load_text_catalog(name)
    assert (table.texts, table.labels) == EXPECTED[name]
    assert (
        table.splits is None and table.source == name and table.rows == list(range(1, len(table.texts) + 1))
    )
    assert not any("\r" in text for text in table.texts)
    # One member read per set, kept in the set's own folder; no other set is extracted.
    assert sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*")) == [
        Path(name),
        Path(name, FILES[name]),
    ]
    fake_vader.unlink()  # the second load reads the cache
    assert load_catalog(name).texts == table.texts
    entry = DATASETS.get(name)
    assert entry.kind == "text" and "MIT" in entry.license
    assert entry.source == f"hutto_ICWSM_2014/{FILES[name]} in the PyPI sdist of vaderSentiment==3.3.2"


def test_movie_reviews_functions_keep_working(fake_vader, tmp_path):
    assert movie_reviews_file() == tmp_path / "cache" / "movie-reviews" / FILES["movie-reviews"]
    assert load_movie_reviews().labels == EXPECTED["movie-reviews"][1]


def test_the_older_sdist_variable_is_still_read(fake_vader, monkeypatch):
    monkeypatch.delenv("TORCHKILN_VADER_SDIST")
    monkeypatch.setenv("TORCHKILN_MOVIE_REVIEWS_SDIST", str(fake_vader))
    assert load_text_catalog("tweets").texts == EXPECTED["tweets"][0]


def test_a_damaged_cache_file_is_extracted_again(fake_vader, tmp_path):
    cached = vader_file("nyt-editorials")
    cached.write_bytes(b"1_1\t0.4\ttruncated")
    assert load_text_catalog("nyt-editorials").texts == EXPECTED["nyt-editorials"][0]
    assert cached.read_bytes() == fake_text("nyt-editorials")


@pytest.mark.parametrize(
    "bad",
    [
        "2\tfine\tA text.",  # not a number
        "2\t4.5\tA text.",  # outside -4..4
        "2\tnan\tA text.",
        "2\t1.0\t   ",  # no text
        "2 1.0 A text.",  # spaces, not tabs
    ],
)
def test_a_malformed_line_names_the_line_and_the_fix(tmp_path, monkeypatch, bad):
    use_fake_sdist(monkeypatch, tmp_path, {"tweets": fake_text("tweets", ["1\t0.5\tFine.", bad, ""])})
    path = tmp_path / "cache" / "tweets" / "tweets_GroundTruth.txt"
    message = (
        f"{path}, line 2: expected 'id<TAB>score<TAB>text' with a score from -4 to 4, got {bad!r}. "
        f"Fix: delete {path} and load again to extract the original file."
    )
    with pytest.raises(DataError) as info:
        load_text_catalog("tweets")
    assert str(info.value) == message


def test_a_malformed_crlf_line_is_shown_without_its_cr(tmp_path, monkeypatch):
    use_fake_sdist(monkeypatch, tmp_path, {"amazon-reviews": b"1_1\t0.5\tok\r\n1_2\t-\tbad\r\n"})
    path = tmp_path / "cache" / "amazon-reviews" / "amazonReviewSnippets_GroundTruth.txt"
    with pytest.raises(DataError) as info:
        load_text_catalog("amazon-reviews")
    assert str(info.value) == (
        f"{path}, line 2: expected 'id<TAB>score<TAB>text' with a score from -4 to 4, got '1_2\\t-\\tbad'. "
        f"Fix: delete {path} and load again to extract the original file."
    )


def test_a_member_checksum_mismatch_is_refused_and_nothing_is_cached(fake_vader, monkeypatch, tmp_path):
    vset = dataclasses.replace(movie_reviews.VADER_SETS["nyt-editorials"], sha256="0" * 64)
    monkeypatch.setitem(movie_reviews.VADER_SETS, "nyt-editorials", vset)
    folder = tmp_path / "cache" / "nyt-editorials"
    digest = hashlib.sha256(fake_text("nyt-editorials")).hexdigest()
    with pytest.raises(DataError) as info:
        load_text_catalog("nyt-editorials")
    assert str(info.value) == (
        f"The nyt-editorials data set was not found in {folder}, and getting it failed: "
        f"hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt in {fake_vader} has SHA-256 {digest}, "
        f"expected {'0' * 64}. Fix: run `{sys.executable} -m pip download --no-deps --no-binary :all: "
        f"vaderSentiment==3.3.2 -d {folder}` (or copy vaderSentiment-3.3.2.tar.gz there, or set "
        "TORCHKILN_VADER_SDIST to it)."
    )
    assert not folder.exists()


def test_an_sdist_checksum_mismatch_is_refused(fake_vader, monkeypatch, tmp_path):
    monkeypatch.setattr(movie_reviews, "VADER_SDIST_SHA256", "0" * 64)
    digest = hashlib.sha256(fake_vader.read_bytes()).hexdigest()
    with raises(f"getting it failed: {fake_vader} has SHA-256 {digest}, expected {'0' * 64}. Fix: run"):
        load_text_catalog("tweets")
    assert not (tmp_path / "cache" / "tweets").exists()


def test_a_sdist_without_the_file_is_refused(tmp_path, monkeypatch):
    sdist = use_fake_sdist(monkeypatch, tmp_path, {"movie-reviews": fake_text("movie-reviews")})
    with raises(f"{sdist} holds no file hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt."):
        load_text_catalog("amazon-reviews")
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("../evil.txt"), io.BytesIO(b""))
    monkeypatch.setenv("TORCHKILN_VADER_SDIST", str(other))
    monkeypatch.setattr(movie_reviews, "VADER_SDIST_SHA256", hashlib.sha256(other.read_bytes()).hexdigest())
    with raises(f"{other} holds no file {movie_reviews.VADER_INNER_TAR}."):
        load_text_catalog("movie-reviews")
    assert not (tmp_path / "evil.txt").exists()


def test_an_unknown_set_name():
    with raises(
        "'imdb' is not one of the VADER text sets; expected one of movie-reviews, amazon-reviews, "
        "nyt-editorials, tweets. Fix: use one of those names."
    ):
        vader_file("imdb")


def test_catalog_kind_checks(fake_vader):
    with raises("The catalog data set 'tweets' holds text, not images; expected one of"):
        load_image_catalog("tweets")
    with raises(
        "The catalog data set 'digits' holds images, not text; expected one of amazon-reviews, "
        "movie-reviews, nyt-editorials, tweets."
    ):
        load_text_catalog("digits")


def test_cli_lists_and_fetches_the_sets(fake_vader, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["list", "datasets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in FAKE_LINES:
        assert f" {name} " in result.output
    # The table wraps its cells at the terminal's width: the summary is checked where the table reads it.
    summaries = {entry.name: entry.summary for entry in DATASETS}
    assert summaries["tweets"].startswith("Tweet-like texts (VADER): 4,200, positive if score > 0 (2,897)")
    assert "Tweet-like texts" in result.output
    result = runner.invoke(app, ["datasets", "fetch", "tweets", "--out", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "data" / "tweets.csv"
    assert unwrapped(f"wrote 3 rows to {path}") in unwrapped(result.output)
    assert read_text_table(path).texts == EXPECTED["tweets"][0]
    result = runner.invoke(
        app, ["datasets", "fetch", "movie-reviews", "--out", str(tmp_path), "--split", "test"]
    )
    assert result.exit_code == 2
    message = "This data set has no 'test' split (it has no splits). Leave out --split to write all of it."
    assert unwrapped(message) in unwrapped(result.output)


def test_movie_reviews_from_the_real_sdist(tmp_path, monkeypatch):
    """The real file, fetched the way the catalog fetches it (pip download from the package index), then
    read again from the cache."""
    monkeypatch.setenv("TORCHKILN_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHKILN_VADER_SDIST", raising=False)
    monkeypatch.delenv("TORCHKILN_MOVIE_REVIEWS_SDIST", raising=False)
    table = load_text_catalog("movie-reviews")
    assert len(table.texts) == 10605 and table.labels.count("positive") == 5242
    assert table.labels.count("negative") == 5363
    assert table.texts[0].startswith("The Rock is destined")
    cached = list((tmp_path / "movie-reviews").iterdir())
    assert cached, "the catalog keeps what it fetched"
    assert load_text_catalog("movie-reviews").texts == table.texts


def test_the_other_sets_from_the_real_sdist(tmp_path, monkeypatch):
    """The three other real files, from one pip download of the sdist: sizes, labels, known first texts."""
    monkeypatch.setenv("TORCHKILN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "pip").mkdir()
    monkeypatch.setenv("TORCHKILN_VADER_SDIST", str(movie_reviews._pip_download_sdist(tmp_path / "pip")))
    expected = {  # name: (texts, positive, first text)
        "amazon-reviews": (3708, 2128, "troubleshooting ad-2500 and ad-2600 no picture scrolling b/w."),
        "nyt-editorials": (5190, 2204, "On Dec. 19, around noon, New York City's Union Square Business"),
        "tweets": (4200, 2897, "Somehow I was blessed with some really amazing friends in my life"),
    }
    for name, (size, positive, first) in expected.items():
        table = load_text_catalog(name)
        assert len(table.texts) == size and table.labels.count("positive") == positive, name
        assert table.texts[0].startswith(first) and not any(t != t.strip() for t in table.texts)
