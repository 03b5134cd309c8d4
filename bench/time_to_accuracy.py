"""Time to 90 % Fashion-MNIST test accuracy: the book's loop against torchkiln's default recipe.

The book's loop (the seed's chapter 3 CNN: conv16-conv32-fc128, Adam at 1e-3, batch 64, torchvision
``FashionMNIST`` with ``ToTensor`` and a ``DataLoader`` with ``num_workers=0``) trains epoch by epoch
and is scored on the test set after each epoch; its time is the training time up to the first epoch
that reaches the target. torchkiln's recipe (``examples/fashion-mnist.yaml``) uses a one-cycle
schedule whose length is set by ``train.epochs``, so it is run with 1, 2, 3... epochs until a run
reaches the target on the test set; its time is that run's training time. Scoring time is excluded
for both. Ratio = book time / torchkiln time; the target is >= 3.

    .venv/bin/python bench/time_to_accuracy.py
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import torchkiln
from torchkiln.components.catalog import fashion_mnist_files

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "fashion-mnist.yaml"


class BookCNN(nn.Module):
    """The seed's chapter 3 CNN, verbatim."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def torchvision_root(tmp: Path) -> Path:
    """torchvision's FashionMNIST wants the un-gzipped IDX files in root/FashionMNIST/raw/."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in fashion_mnist_files().values():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as src, (raw / path.name.removesuffix(".gz")).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp


def book_loop(root: Path, target: float, max_epochs: int) -> tuple[float, int, float]:
    torch.manual_seed(0)
    tf = transforms.ToTensor()
    train = DataLoader(datasets.FashionMNIST(root, train=True, transform=tf), batch_size=64, shuffle=True)
    test = DataLoader(datasets.FashionMNIST(root, train=False, transform=tf), batch_size=1000)
    model = BookCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    spent, acc = 0.0, 0.0
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        model.train()
        for x, y in train:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        spent += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            acc = sum((model(x).argmax(1) == y).sum().item() for x, y in test) / 10_000
        print(f"  book epoch {epoch}: test accuracy {acc:.4f}, training so far {spent:.1f} s", flush=True)
        if acc >= target:
            return spent, epoch, acc
    return spent, max_epochs, acc


def kiln_recipe(runs: Path, target: float, max_epochs: int) -> tuple[float, int, float]:
    for epochs in range(1, max_epochs + 1):
        cfg = torchkiln.load_config(
            RECIPE,
            [
                f"train.epochs={epochs}",
                f"runs_dir={runs}",
                "tracking.mlflow=false",
                "tracking.tensorboard=false",
                "train.checkpoint_every=0",
            ],
        )
        run_dir = torchkiln.train(cfg)
        trained = torchkiln.load_predictor(run_dir).bundle.meta["trained"]
        acc = torchkiln.evaluate(run_dir).metrics.accuracy
        print(
            f"  torchkiln {epochs} epoch(s): test accuracy {acc:.4f}, training {trained['seconds']} s",
            flush=True,
        )
        if acc >= target:
            return trained["seconds"], epochs, acc
    return float("nan"), max_epochs, acc


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--max-epochs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("book loop:")
        book_t, book_e, book_a = book_loop(torchvision_root(Path(tmp)), args.target, args.max_epochs)
        print("torchkiln default recipe:")
        kiln_t, kiln_e, kiln_a = kiln_recipe(Path(tmp) / "runs", args.target, args.max_epochs)
    print(f"book loop:  {book_t:.1f} s ({book_e} epochs, test accuracy {book_a:.4f})")
    print(f"torchkiln:  {kiln_t:.1f} s ({kiln_e} epochs, test accuracy {kiln_a:.4f})")
    ratio = book_t / kiln_t
    print(f"speed-up to {args.target:.0%} test accuracy (book / torchkiln): {ratio:.2f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
