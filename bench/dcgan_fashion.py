"""DCGAN on Fashion-MNIST: the example recipe (<= 15 minutes) against the same GAN after one epoch, each
scored on the test split (10,000 generated against the 10,000 real test images) beside the
real-versus-real floor (10,000 real training images against the same test images).

FID, KID and precision/recall are measured on the penultimate features of the packaged Fashion-MNIST
classifier (``task.features: fashion-mnist-cnn``). The target is an FID within 3x the floor, and below
the one-epoch model's.

    .venv/bin/python bench/dcgan_fashion.py [--out runs/bench-dcgan] [--only recipe] [--plots docs/tasks/img]
    .venv/bin/python bench/dcgan_fashion.py --runs recipe=RUN one-epoch=RUN --plots docs/tasks/img

``--plots`` writes the validation FID per epoch (``dcgan-fid-curve.png``) and each run's class grid
(``dcgan-<name>.png``: eight seeds per class, a class per row).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torchkiln

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "dcgan-fashion.yaml"
FLOOR_5000 = 0.96  # bench/gan_real_vs_real.py: the FID of 5,000 real train images against 5,000 test images
RUNS = {
    "recipe": [],
    "one-epoch": ["train.epochs=1"],
}


def run(name: str, runs: Path, extra: list[str]) -> Path:
    overrides = [*RUNS[name], f"runs_dir={runs}", f"name=dcgan-{name}", "tracking.mlflow=false", *extra]
    return torchkiln.train(torchkiln.load_config(RECIPE, overrides))


def score(run_dir: Path) -> dict[str, Any]:
    ev = torchkiln.evaluate(run_dir, mlflow=False)
    trained = torchkiln.load_predictor(run_dir, device="cpu").bundle.meta["trained"]
    return ev.results | {"train_s": trained["seconds"], "epochs": trained["epochs"], "run_dir": str(run_dir)}


def plots(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchkiln.tasks.image_generation.generate import generate_images, save_grid

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for name, run_dir in runs.items():
        history = json.loads((run_dir / "history.json").read_text())
        ax.plot([h["epoch"] + 1 for h in history], [h["val/fid"] for h in history], "o-", label=name)
    ax.axhline(FLOOR_5000, color="grey", linestyle="--", label=f"real vs real at n = 5,000 ({FLOOR_5000})")
    ax.set(xlabel="epoch", ylabel="val FID (classifier features)", yscale="log")
    ax.set_title("DCGAN on Fashion-MNIST: val FID, 5,000 generated vs 5,000 real", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "dcgan-fid-curve.png")
    for name, run_dir in runs.items():
        predictor = torchkiln.load_predictor(run_dir, device="cpu")
        classes = predictor.labels
        rows = [generate_images(predictor, n=8, label=c, seed=0) for c in classes]
        import torch

        save_grid(torch.cat(rows), out / f"dcgan-{name}.png", nrow=8)


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dcgan"), help="where the runs go")
    parser.add_argument("--only", action="append", choices=list(RUNS), help="run only these (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    parser.add_argument("--plots", type=Path, help="write the FID curve and the class grids here")
    parser.add_argument("--runs", nargs="*", default=[], help="score these finished runs (NAME=RUN_DIR)")
    args = parser.parse_args()
    if args.runs:
        dirs = {p.split("=", 1)[0]: Path(p.split("=", 1)[1]) for p in args.runs}
    else:
        dirs = {name: run(name, args.out, args.set) for name in args.only or RUNS}
    rows = {name: score(d) for name, d in dirs.items()}
    if args.plots:
        plots(dirs, args.plots)
    heads = ("epochs", "train s", "FID", "KID", "prec.", "recall", "FID/floor")
    print(f"{'model':22} " + " ".join(f"{h:>9}" for h in heads))
    floor = None
    for name, r in rows.items():
        m = r["model"]
        floor = r["real_vs_real"]
        print(
            f"{name:22} {r['epochs']:9d} {r['train_s']:9.0f} {m['fid']:9.3f} {m['kid']:9.4f} "
            f"{m['precision']:9.3f} {m['recall']:9.3f} {r['fid_ratio']:9.2f}"
        )
    if floor is not None:
        print(
            f"{'real vs real (floor)':22} {'':9} {'':9} {floor['fid']:9.3f} {floor['kid']:9.4f} "
            f"{floor['precision']:9.3f} {floor['recall']:9.3f} {1.0:9.2f}"
        )
    for name, r in rows.items():
        c = r["copying"]
        print(
            f"{name}: nearest-training-image distance, generated {c['fake_to_train']:.3f} vs held-out real "
            f"{c['test_to_train']:.3f} (ratio {c['ratio']:.2f})"
        )


if __name__ == "__main__":
    main()
