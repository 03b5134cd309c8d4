"""Transfer learning with few labels: EfficientNet-Lite0 from ImageNet weights against the same
architecture trained from scratch, both on 100 labelled Fashion-MNIST images per class.

Both runs use the same recipe (``examples/fashion-mnist-transfer.yaml``), the same 1,000 training
images (``data.limit_per_class: 100``, fixed seed) and are scored on the full 10,000-image test set.
The from-scratch run drops the pretrained weights and, having nothing to protect, trains the whole
network at the full rate (no ``backbone_lr_mult``). The target is a gain of >= 10 points of test
accuracy.

    .venv/bin/python bench/transfer.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torchkiln

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "fashion-mnist-transfer.yaml"


def run(pretrained: bool, runs: Path, extra: list[str]) -> tuple[float, float]:
    overrides = [
        f"model.pretrained={str(pretrained).lower()}",
        f"runs_dir={runs}",
        "tracking.mlflow=false",
        "tracking.tensorboard=false",
        *extra,
    ]
    if not pretrained:
        # Nothing pretrained to protect: the whole network learns at the full rate.
        overrides.append("model.backbone_lr_mult=1.0")
    run_dir = torchkiln.train(torchkiln.load_config(RECIPE, overrides))
    seconds = torchkiln.load_predictor(run_dir).bundle.meta["trained"]["seconds"]
    accuracy = torchkiln.evaluate(run_dir).metrics.accuracy
    print(f"  pretrained={pretrained}: test accuracy {accuracy:.4f} after {seconds} s of training")
    return accuracy, seconds


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--set", action="append", default=[], help="extra overrides for both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch, t_s = run(False, Path(tmp), args.set)
        transfer, t_t = run(True, Path(tmp), args.set)
    print(f"from scratch:       {scratch:.4f} ({t_s} s)")
    print(f"ImageNet transfer:  {transfer:.4f} ({t_t} s)")
    print(f"gain: {100 * (transfer - scratch):+.1f} points   target >= +10")


if __name__ == "__main__":
    main()
