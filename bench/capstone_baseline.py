"""The capstone's honest baseline: logistic regression on raw pixels, at the same operating point.

    python bench/capstone_baseline.py [--work runs/capstone] [--run RUN]

It reads the stand-in folder ``make capstone`` writes (``examples/capstone/standin.py``; written here if
missing), carves val from train as the capstone's config does (the 16-image val merged into train, then a
stratified 10 %), fits scikit-learn's ``LogisticRegression`` on the 28x28 pixels of train, chooses the
threshold on val for recall >= 0.95 with torchkiln's own ``choose_threshold``, and reports test
sensitivity and specificity with Wilson intervals. With ``--run``, the capstone run's test figures
(``eval/test/metrics.json``) are printed beside it, with the ratio of their false positive rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from torchkiln.components.classification_metrics import wilson_interval
from torchkiln.components.classification_threshold import ThresholdConfig, choose_threshold
from torchkiln.components.splits import stratified_split

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "capstone"))
from standin import POSITIVE, Sizes, write_standin  # noqa: E402


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(p for p in folder.glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(p), dtype=np.float32).ravel() / 255 for p in files])
    y = np.array([p.parent.name == POSITIVE for p in files])
    return x, y


def rate(hits: int, total: int) -> str:
    low, high = wilson_interval(hits, total)
    return f"{hits / total:.3f} [{low:.3f}, {high:.3f}] ({hits}/{total})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/capstone"))
    parser.add_argument("--run", type=Path, help="a capstone run directory, to print its test figures beside")
    args = parser.parse_args()
    folder, _ = write_standin(args.work.resolve() / "data", Sizes())
    x_train, y_train = load(folder / "train")
    x_val, y_val = load(folder / "val")
    x, y = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])  # the capstone's re-split
    part = stratified_split(y.astype(np.int64), val=0.0, test=0.1, seed=0)
    fit, val = part == "train", part == "test"
    x_test, y_test = load(folder / "test")
    t0 = time.perf_counter()
    model = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced").fit(x[fit], y[fit])
    seconds = time.perf_counter() - t0
    choice = choose_threshold(
        torch.from_numpy(model.predict_proba(x[val])[:, 1]),
        torch.from_numpy(y[val]),
        ThresholdConfig(recall=0.95),
    )
    hit = model.predict_proba(x_test)[:, 1] >= choice.chosen
    tp, tn = int((hit & y_test).sum()), int((~hit & ~y_test).sum())
    n_pos, n_neg = int(y_test.sum()), int((~y_test).sum())
    print(
        f"stand-in: {int(fit.sum())} train, {int(val.sum())} val, {len(y_test)} test images; "
        f"fit in {seconds:.1f} s"
    )
    print(f"logistic regression on pixels, threshold {choice.chosen:.4f} chosen on val for recall >= 0.95:")
    print(f"  sensitivity {rate(tp, n_pos)}, specificity {rate(tn, n_neg)}")
    if args.run:
        b = json.loads((args.run / "eval" / "test" / "metrics.json").read_text(encoding="utf-8"))["binary"]
        sens, spec = b["sensitivity"], b["specificity"]
        print(f"the capstone run ({b['chosen_by']}):")
        print(
            f"  sensitivity {rate(sens['hits'], sens['total'])}, "
            f"specificity {rate(spec['hits'], spec['total'])}"
        )
        fpr_base, fpr_run = 1 - tn / n_neg, 1 - spec["value"]
        print(
            f"  false positive rate at the operating point: {fpr_run:.3f} vs {fpr_base:.3f} "
            f"({fpr_run / fpr_base:.2f}x)"
        )


if __name__ == "__main__":
    main()
