"""The scale of the GAN quality figures: real against real, and real against deliberately degraded "fakes".

FID, KID and precision/recall are measured on the packaged reference classifier's features
(``fashion-mnist-cnn``, 128 per image), not Inception's, so published FIDs say nothing about what a good
value is here. This prints the floor (``real_vs_real``: n test images as the real set against n train
images as the fakes of a perfect generator, at n = 1000, 5000 and 10000; FID is biased upwards at small
n), then the test images spoiled on purpose, each against the same 10,000 train images as real set:
blurred, noised, and collapsed onto five classes and onto one.

    .venv/bin/python bench/gan_real_vs_real.py [--n 1000 5000 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from torchkiln.components.catalog import load_fashion_mnist
from torchkiln.tasks.image_generation.quality import (
    REFERENCE_FEATURES,
    extract,
    generative_quality,
    load_features,
    real_vs_real,
)

COLUMNS = ("FID", "KID ± std over subsets", "precision", "recall")


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * round(3 * sigma) + 1
    return TF.gaussian_blur(images, kernel_size=[k, k], sigma=[sigma, sigma])


def noised(images: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def row(name: str, figures: dict[str, float], seconds: float) -> str:
    n = f"{int(figures['n_real'])} / {int(figures['n_fake'])}"
    f = figures
    cells = f"{f['fid']:.3f} | {f['kid']:.4f} ± {f['kid_std']:.4f} | {f['precision']:.3f} | {f['recall']:.3f}"
    return f"| {name} | {n} | {cells} | {seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    data = load_fashion_mnist()
    features = load_features(REFERENCE_FEATURES)
    images = torch.from_numpy(data.images).unsqueeze(1)  # (70000, 1, 28, 28) uint8
    train_idx, test_idx = np.flatnonzero(data.splits == "train"), np.flatnonzero(data.splits == "test")
    train, test = images[train_idx], images[test_idx]
    test_labels = torch.from_numpy(data.labels[test_idx])
    train_feats, test_feats = extract(features, train), extract(features, test)
    seconds = time.perf_counter() - t0
    print(f"features ({features.num_features} per image) of {len(images):,} images: {seconds:.1f} s")

    print(f"\n| fakes | n real / fake | {' | '.join(COLUMNS)} | s |")
    print(f"|---|---|{'---|' * len(COLUMNS)}---|")
    for n in args.n:
        t = time.perf_counter()
        print(
            row(
                f"real vs real (train vs test), n={n}",
                real_vs_real(train_feats, test_feats, n, args.seed),
                time.perf_counter() - t,
            ),
            flush=True,
        )

    g = torch.Generator().manual_seed(args.seed)
    real = train_feats[
        torch.randperm(len(train_feats), generator=g)[:10_000]
    ]  # the real set of every row below
    one_class = test_labels == 1  # Trouser: 1,000 images
    five_classes = test_labels < 5
    degraded = {
        "test images, clean (the n=10000 floor)": lambda: test,
        "test blurred, sigma 0.7 px": lambda: blurred(test, 0.7),
        "test blurred, sigma 1.5 px": lambda: blurred(test, 1.5),
        "test + noise, std 10/255": lambda: noised(test, 10, args.seed),
        "test + noise, std 40/255": lambda: noised(test, 40, args.seed),
        "test, 5 classes only (collapse)": lambda: test[five_classes],
        "test, 1 class only (Trouser)": lambda: test[one_class],
    }
    for name, make in degraded.items():
        t = time.perf_counter()
        fake = extract(features, make())
        print(row(name, generative_quality(real, fake, seed=args.seed), time.perf_counter() - t), flush=True)


if __name__ == "__main__":
    main()
