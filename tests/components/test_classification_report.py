"""The HTML report: files, embedded plots, the mistakes gallery, escaping and failure modes."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from torchkiln.components import classification_plots as plots
from torchkiln.components.classification_metrics import classification_metrics
from torchkiln.components.classification_report import write_report
from torchkiln.core.errors import DataError, KilnError

PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def noisy_probs(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier that is right about half the time: ``(probs (N, K), targets (N,))``."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % k  # every class present
    logits = torch.randn(n, k, generator=g)
    logits[torch.arange(n), targets] += 1.5
    return logits.softmax(dim=-1), targets


def image(i: int) -> np.ndarray:
    # grey and colour thumbnails both have to work
    return np.full((8, 8) if i % 2 else (8, 8, 3), i % 256, dtype=np.uint8)


def test_writes_html_and_json(tmp_path: Path) -> None:
    names = ["<b>cat</b>", "dog", "bird", "fish"]
    probs, targets = noisy_probs(40, 4)
    m = classification_metrics(probs, targets, names)
    extra = {"model": "cnn & <co>", "split": "test"}

    path = write_report(tmp_path / "eval", m, probs, targets, names, images=image, mistakes=5, extra=extra)

    assert path == tmp_path / "eval" / "report.html"
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json", "report.html"]  # no temp files
    data = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert data["accuracy"] == pytest.approx(m.accuracy)
    assert data["macro_auc"] == pytest.approx(m.macro_auc)
    assert data["confusion_matrix"] == m.confusion_matrix
    assert data["num_samples"] == 40
    assert data["title"] == "Evaluation report"
    assert data["extra"] == extra
    assert [c["name"] for c in data["per_class"]] == names

    page = path.read_text()
    pngs = PNG_URI.findall(page)
    assert len(pngs) == 4 + 5  # confusion, ROC, PR, reliability + one thumbnail per mistake
    assert all(base64.b64decode(png).startswith(b"\x89PNG") for png in pngs)
    assert page.count('<figure class="mistake">') == 5
    assert "&lt;b&gt;cat&lt;/b&gt;" in page and "<b>cat</b>" not in page
    assert "cnn &amp; &lt;co&gt;" in page
    assert f"{m.accuracy:.3f}" in page
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"https?://|<script|<link|@import|url\(", page)


@pytest.fixture
def no_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing the plots (the slow part) in tests about the page's content."""
    monkeypatch.setattr(plots, "_png", lambda fig: "data:image/png;base64,iVBORw0KGgo=")


@pytest.mark.usefixtures("no_drawing")
def test_gallery_shows_the_most_confident_mistakes(tmp_path: Path) -> None:
    targets = torch.tensor([0, 0, 1, 1, 1])
    probs = torch.tensor(
        [
            [0.9, 0.1],  # right
            [0.3, 0.7],  # wrong, confidence 0.7
            [0.6, 0.4],  # wrong, confidence 0.6
            [0.95, 0.05],  # wrong, confidence 0.95
            [0.2, 0.8],  # right
        ]
    )
    m = classification_metrics(probs, targets, ["a", "b"])

    page = write_report(tmp_path, m, probs, targets, ["a", "b"], mistakes=2).read_text()
    assert re.findall(r'<tr class="mistake"><td class="source">#(\d+)</td>', page) == ["3", "1"]
    assert len(PNG_URI.findall(page)) == 4  # plots only: no images were given

    page = write_report(tmp_path, m, probs, targets, ["a", "b"], mistakes=24).read_text()
    assert page.count('class="mistake"') == 3  # only three are wrong

    page = write_report(tmp_path, m, probs, targets, ["a", "b"], mistakes=0).read_text()
    assert page.count('class="mistake"') == 0


@pytest.mark.usefixtures("no_drawing")
def test_class_without_samples_is_noted(tmp_path: Path) -> None:
    names = ["a", "b", "never seen"]
    probs, targets = noisy_probs(30, 2)
    probs = torch.cat([probs * 0.9, torch.full((30, 1), 0.1)], dim=1)  # (30, 3), class 2 has no samples
    m = classification_metrics(probs, targets, names)

    path = write_report(tmp_path, m, probs, targets, names)
    page = path.read_text()
    assert "No samples of 'never seen'" in page
    assert "Never predicted: 'never seen'" in page
    assert "<td>—</td></tr>" in page  # its AUC
    assert json.loads((tmp_path / "metrics.json").read_text())["per_class"][2]["auc"] is None


def test_many_classes(tmp_path: Path) -> None:
    k = 25
    names = [f"class {i} $x$" for i in range(k)]  # "$" would be mathtext if not escaped
    probs, targets = noisy_probs(100, k)
    m = classification_metrics(probs, targets, names)
    page = write_report(tmp_path, m, probs, targets, names, mistakes=3).read_text()
    assert len(PNG_URI.findall(page)) == 4
    assert page.count("<tr><td>class ") == k


def test_bad_image_fails_before_writing(tmp_path: Path) -> None:
    probs, targets = noisy_probs(20, 2)
    m = classification_metrics(probs, targets, ["a", "b"])
    with pytest.raises(DataError, match=r"uint8 array of shape \(H, W\)"):
        write_report(
            tmp_path, m, probs, targets, ["a", "b"], images=lambda i: np.zeros((3, 8, 8), np.float32)
        )
    assert not (tmp_path / "metrics.json").exists()


def test_inconsistent_inputs_raise(tmp_path: Path) -> None:
    probs, targets = noisy_probs(20, 2)
    m = classification_metrics(probs, targets, ["a", "b"])
    with pytest.raises(DataError, match="same probs, targets and class names"):
        write_report(tmp_path, m, probs[:10], targets[:10], ["a", "b"])
    with pytest.raises(KilnError, match="'mistakes' parameter"):
        write_report(tmp_path, m, probs, targets, ["a", "b"], mistakes=-1)


def test_the_text_mistakes_table_reads_left_to_right(tmp_path: Path) -> None:
    """Texts and labels are aligned left (they were right-aligned like numbers); the scores stay right."""
    names = ["negative", "positive"]
    probs, targets = noisy_probs(30, 2)
    m = classification_metrics(probs, targets, names)
    page = write_report(
        tmp_path / "eval", m, probs, targets, names, texts=lambda i: f"review number {i}", mistakes=3
    ).read_text()
    rows = page.count('<tr class="mistake">')
    table = page[page.index('<table class="mistakes">') :]  # the operating point's table has numbers too
    assert rows and table.count('<td class="num">') == 2 * rows
    assert "table.mistakes th,table.mistakes td{text-align:left" in page  # the CSS is inlined in the page


@pytest.mark.usefixtures("no_drawing")
def test_mistakes_are_named_by_their_source_on_the_page_and_all_listed_in_metrics_json(
    tmp_path: Path,
) -> None:
    targets = torch.tensor([0, 0, 1, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.95, 0.05], [0.2, 0.8]])  # 3, 1, 2 wrong
    m = classification_metrics(probs, targets, ["a", "b"])
    paths = [f"data/<b>{c}</b>/{i:02d}.png" for i, c in enumerate("aabbb")]

    page = write_report(
        tmp_path, m, probs, targets, ["a", "b"], images=image, sources=paths.__getitem__, mistakes=2
    ).read_text()

    assert re.findall(r'<span class="source">([^<]+)</span>', page) == [
        "data/&lt;b&gt;b&lt;/b&gt;/03.png",
        "data/&lt;b&gt;a&lt;/b&gt;/01.png",
    ]  # the two most confident, by path, escaped
    listed = json.loads((tmp_path / "metrics.json").read_text())["mistakes"]
    assert [(w["index"], w["source"], w["true"], w["predicted"]) for w in listed] == [
        (3, paths[3], "b", "a"),
        (1, paths[1], "a", "b"),
        (2, paths[2], "b", "a"),  # beyond the page's 2: metrics.json lists every mistake
    ]
    assert listed[0]["confidence"] == pytest.approx(0.95) and listed[0]["p_true"] == pytest.approx(0.05)
    assert "text" not in listed[0]


@pytest.mark.usefixtures("no_drawing")
def test_text_mistakes_list_their_text_and_source(tmp_path: Path) -> None:
    probs, targets = noisy_probs(30, 2)
    m = classification_metrics(probs, targets, ["negative", "positive"])
    write_report(
        tmp_path,
        m,
        probs,
        targets,
        ["negative", "positive"],
        texts=lambda i: f"review {i}",
        sources=lambda i: f"reviews.csv:{i + 2}",
        mistakes=1,
    )
    listed = json.loads((tmp_path / "metrics.json").read_text())["mistakes"]
    assert len(listed) == m.num_samples - round(m.accuracy * m.num_samples) > 1
    assert all(w["text"] == f"review {w['index']}" for w in listed)
    assert all(w["source"] == f"reviews.csv:{w['index'] + 2}" for w in listed)
    assert [w["confidence"] for w in listed] == sorted((w["confidence"] for w in listed), reverse=True)


def test_a_two_class_report_is_taken_at_its_operating_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchkiln.components.classification_threshold import Decision

    drawn: list = []  # the figures, not drawn: the marker is read off their axes
    monkeypatch.setattr(plots, "_png", lambda fig: drawn.append(fig) or "data:image/png;base64,iVBORw0KGgo=")
    targets = torch.tensor([0, 0, 0, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.65, 0.35], [0.2, 0.8]])
    m = classification_metrics(probs, targets, ["a", "b"], decision=Decision(positive=1, threshold=0.3))
    page = write_report(
        tmp_path, m, probs, targets, ["a", "b"], chosen_by="recall >= 0.95 on val"
    ).read_text()

    saved = json.loads((tmp_path / "metrics.json").read_text())
    b = saved["binary"]
    assert (b["threshold"], b["chosen_by"], b["tp"], b["fp"], b["tn"], b["fn"]) == (
        0.3,
        "recall >= 0.95 on val",
        2,
        1,
        2,
        0,
    )
    assert (
        b["specificity"]["hits"] == 2
        and b["specificity"]["total"] == 3
        and 0 < b["specificity"]["low"] < 2 / 3
    )
    # The one mistake at p('b') >= 0.3 is item 1 (p 0.4, a false positive); argmax would miss item 3 instead.
    assert [(w["index"], w["predicted"], w["confidence"]) for w in saved["mistakes"]] == [(1, "b", 0.4)]
    assert "<h2>Operating point</h2>" in page and "p(&#39;b&#39;) &gt;= 0.3" in page
    assert "95% Wilson score interval" in page and "Brier score" in page
    roc, pr = drawn[1].axes[0], drawn[2].axes[0]  # after the confusion matrix
    for ax, x, y in ((roc, 1 / 3, 1.0), (pr, 1.0, 2 / 3)):  # (FPR, TPR) and (recall, precision)
        [marker] = [line for line in ax.get_lines() if line.get_label() == "at p('b') >= 0.3"]
        assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx((x, y))


@pytest.mark.usefixtures("no_drawing")
def test_a_multiclass_report_has_no_operating_point(tmp_path: Path) -> None:
    probs, targets = noisy_probs(12, 3)
    m = classification_metrics(probs, targets, ["a", "b", "c"])
    page = write_report(tmp_path, m, probs, targets, ["a", "b", "c"]).read_text()
    assert (
        "Operating point" not in page
        and json.loads((tmp_path / "metrics.json").read_text())["binary"] is None
    )
