"""Chapter 2: neurons, forward and backward by hand, nn.Module, the training loop, saving and fine-tuning.

Run: .venv/bin/python examples/ch2_neural_networks.py  (about 6 s on 2 CPU cores, measured in docs/learn.md)
Trains on scikit-learn's real 8x8 digits (bundled, nothing is downloaded). Each section asserts what it
teaches; docs/learn.md maps the book's sections to this file and to the kiln feature that does it for real.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)


def activations() -> None:
    """Section 2.1: a neuron is f(Wx + b); the activations are the book's formulas."""
    x = torch.linspace(-5, 5, 11)
    assert torch.allclose(torch.sigmoid(x), 1 / (1 + torch.exp(-x)))
    assert torch.allclose(torch.tanh(x), (x.exp() - (-x).exp()) / (x.exp() + (-x).exp()))
    assert torch.equal(torch.relu(x), torch.maximum(x, torch.zeros(1)))
    assert torch.allclose(F.leaky_relu(x, 0.01), torch.maximum(0.01 * x, x))
    big = torch.tensor([1000.0, 1001.0])  # exp(1000) overflows: softmax subtracts the max first
    assert torch.allclose(torch.softmax(big, 0), torch.softmax(big - 1001, 0))
    neuron = nn.Linear(3, 1)  # W (1, 3) and b (1,)
    v = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(torch.relu(neuron(v)), torch.relu(neuron.weight @ v + neuron.bias))


def backprop_by_hand(x: torch.Tensor, y: torch.Tensor) -> None:
    """Section 2.2: the chain rule by hand for Linear -> ReLU -> Linear -> cross-entropy, then autograd."""
    n, hidden, classes = len(x), 32, 10
    w1 = (torch.randn(hidden, x.shape[1]) * 0.1).requires_grad_()  # (H, D)
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(classes, hidden) * 0.1).requires_grad_()  # (C, H)
    b2 = torch.zeros(classes, requires_grad=True)
    pre = x @ w1.T + b1  # (N, H)
    h = pre.clamp(min=0)  # ReLU
    logits = h @ w2.T + b2  # (N, C)
    F.cross_entropy(logits, y).backward()  # autograd's answer, in .grad
    with torch.no_grad():  # the same by hand: d(mean CE)/d logits = (softmax - one_hot) / N
        d_logits = (logits.softmax(1) - F.one_hot(y, classes)) / n  # (N, C)
        d_w2, d_b2 = d_logits.T @ h, d_logits.sum(0)
        d_pre = (d_logits @ w2) * (pre > 0)  # back through Linear, then ReLU's 0/1 slope
        d_w1, d_b1 = d_pre.T @ x, d_pre.sum(0)
    for mine, auto in ((d_w1, w1.grad), (d_b1, b1.grad), (d_w2, w2.grad), (d_b2, b2.grad)):
        assert torch.allclose(mine, auto, atol=1e-6)
    print("backprop: hand-written gradients equal autograd's for all 4 parameters")


class MLP(nn.Module):
    """Section 2.3: layers are attributes (so .parameters() finds them); forward says how they connect."""

    def __init__(self, inputs: int = 64, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 64) -> (B, classes) logits
        return self.fc2(torch.relu(self.fc1(x)))


def losses() -> None:
    """Section 2.4: CrossEntropyLoss takes raw logits (it applies log-softmax itself)."""
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    ce = nn.CrossEntropyLoss()(logits, target)
    assert torch.allclose(ce, F.nll_loss(F.log_softmax(logits, 1), target))
    assert not torch.allclose(ce, nn.CrossEntropyLoss()(logits.softmax(1), target))  # softmax twice: wrong
    p, t = torch.randn(4), torch.tensor([0.0, 1, 1, 0])
    assert torch.allclose(nn.BCEWithLogitsLoss()(p, t), nn.BCELoss()(torch.sigmoid(p), t), atol=1e-6)


Optimizer = torch.optim.Optimizer


def run_epoch(model: nn.Module, loader: DataLoader, optimizer: Optimizer | None) -> tuple[float, float]:
    """Section 2.5: one pass; with an optimizer it trains, without it evaluates. Returns (loss, accuracy)."""
    model.train(optimizer is not None)  # train() vs eval(): dropout and batch norm depend on it
    total = correct = count = 0.0
    with torch.set_grad_enabled(optimizer is not None):  # no graph (and less memory) when evaluating
        for xb, yb in loader:
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if optimizer is not None:
                optimizer.zero_grad()  # gradients accumulate otherwise
                loss.backward()
                optimizer.step()
            total += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            count += len(yb)
    return total / count, correct / count


def fit(model: nn.Module, train: DataLoader, val: DataLoader, epochs: int, lr: float) -> list[float]:
    """Train with early stopping on the validation loss; the model ends with its best weights."""
    optimizer = torch.optim.Adam((p for p in model.parameters() if p.requires_grad), lr=lr)
    best, best_state, wait, history = float("inf"), None, 0, []
    for _ in range(epochs):
        history.append(run_epoch(model, train, optimizer)[0])
        val_loss, _ = run_epoch(model, val, None)
        if val_loss < best:  # clone: state_dict() returns the live tensors, which training changes
            best, best_state, wait = val_loss, {k: v.clone() for k, v in model.state_dict().items()}, 0
        elif (wait := wait + 1) >= 3:
            break  # early stopping: 3 epochs without a better val loss
    model.load_state_dict(best_state)
    return history


def save_and_load(model: MLP, x: torch.Tensor) -> None:
    """Section 2.6: save and load weights (a state_dict: tensors only, never pickled code)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_file(model.state_dict(), Path(tmp) / "mlp.safetensors")
        torch.save(model.state_dict(), Path(tmp) / "mlp.pt")
        a, b = MLP(), MLP()
        a.load_state_dict(load_file(Path(tmp) / "mlp.safetensors"))
        b.load_state_dict(torch.load(Path(tmp) / "mlp.pt", weights_only=True))  # refuses pickled objects
    with torch.no_grad():
        assert torch.equal(a.eval()(x), model.eval()(x)) and torch.equal(b.eval()(x), a(x))


def fine_tune(model: MLP, x: torch.Tensor, y: torch.Tensor, splits: tuple[np.ndarray, ...]) -> float:
    """Section 2.6: a new task (is the digit >= 5?): freeze fc1, replace the output layer, train the rest."""
    for p in model.fc1.parameters():
        p.requires_grad = False
    model.fc2 = nn.Linear(model.fc2.in_features, 2)
    frozen, big = model.fc1.weight.clone(), (y >= 5).long()

    def loader(part: np.ndarray, shuffle: bool = False) -> DataLoader:
        return DataLoader(TensorDataset(x[part], big[part]), batch_size=64, shuffle=shuffle)

    train, val, test = splits
    fit(model, loader(train, shuffle=True), loader(val), epochs=10, lr=1e-2)
    tuned = run_epoch(model, loader(test), None)[1]
    assert torch.equal(model.fc1.weight, frozen) and tuned > 0.9, tuned
    return tuned


def main() -> None:
    activations()
    losses()
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)  # (1797, 64), values 0..16
    y = torch.tensor(digits.target)
    idx = torch.arange(len(x)).numpy()
    train, rest = train_test_split(idx, test_size=0.4, stratify=digits.target, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=digits.target[rest], random_state=0)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6  # statistics of train only: no leak
    x = (x - mean) / std
    backprop_by_hand(x[train[:64]], y[train[:64]])

    def loader(part: np.ndarray, shuffle: bool = False) -> DataLoader:
        return DataLoader(TensorDataset(x[part], y[part]), batch_size=64, shuffle=shuffle)

    model = MLP()
    history = fit(model, loader(train, shuffle=True), loader(val), epochs=30, lr=1e-3)
    val_acc, test_acc = run_epoch(model, loader(val), None)[1], run_epoch(model, loader(test), None)[1]
    assert history[-1] < history[0] / 3, history  # the loss went down
    assert val_acc > 0.9, val_acc  # chance is 0.1
    print(
        f"training: loss {history[0]:.3f} -> {history[-1]:.3f} in {len(history)} epochs; val accuracy "
        f"{val_acc:.3f}, test accuracy {test_acc:.3f} (measured once, at the end)"
    )

    save_and_load(model, x[test])
    tuned = fine_tune(model, x, y, (train, val, test))
    print(f"fine-tune: fc1 frozen (unchanged), new 2-class head: test accuracy {tuned:.3f}")
    print("kiln equivalent: kiln train examples/fashion-mnist.yaml")


if __name__ == "__main__":
    main()
