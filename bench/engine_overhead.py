"""Engine overhead: the torchkiln engine against a minimal hand-written loop, same everything else.

Both train the same model (the default ``cnn``), on the same in-memory Fashion-MNIST batches, with
the same batch size, optimizer, memory format and number of steps. Runs alternate (baseline, engine,
baseline, ...) and the median time of each is compared. Ratio = baseline time / engine time, so
1.0 means no overhead and the target is >= 0.97.

    .venv/bin/python bench/engine_overhead.py --steps 100 --repeats 3 [--precision bf16]

Both loops run in the same precision (``--precision``, fp32 by default): with ``auto`` the engine
would pick bf16 on a CPU with AMX or AVX512-BF16 and race an fp32 baseline, which measures bf16,
not the loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from torchkiln.tasks import get_task
from torchkiln.tasks.base import load_config
from torchkiln.tasks.training import train_task


def config(steps: int, batch_size: int, runs_dir: str, precision: str):
    per_class = steps * batch_size // 10
    return load_config(
        {
            "task": "image-classification",
            "data": {"path": "fashion-mnist", "limit_per_class": per_class, "split": {"val": 0.0}},
            "model": {"name": "cnn"},
            "train": {
                "epochs": 1,
                "batch_size": batch_size,
                "checkpoint_every": 0,
                "log_every": 50,
                "monitor": "train/loss",
                "monitor_mode": "min",
                "scheduler": {"name": "none"},
                "precision": precision,
            },
            "tracking": {"mlflow": False, "tensorboard": False},
            "runs_dir": runs_dir,
        }
    )


def baseline(cfg, task, data) -> float:
    """The minimal loop: model, AdamW, cross-entropy, the same batches, nothing else."""
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg).to(memory_format=torch.channels_last)
    # foreach=True as the engine uses it, so the ratio measures the loop and not the optimizer kernel.
    o = cfg.train.optimizer
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    amp = cfg.train.precision == "bf16"
    split = data.splits["train"]
    bs = cfg.train.batch_size
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    model.train()
    start = time.perf_counter()
    for b in range(len(split) // bs):
        idx = order[b * bs : (b + 1) * bs]
        x = split.images[idx].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), split.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()
    return time.perf_counter() - start


def engine(cfg, task, data, runs_dir: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=runs_dir))
    state = train_task(cfg, task, data, run_dir, bundle=False).state
    return state.elapsed  # time inside train_one_epoch, measured by the engine itself


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(args.steps, args.batch_size, tmp, args.precision)
        task = get_task(cfg.task.kind)
        cfg, data = task.prepare(cfg)
        steps = len(data.splits["train"]) // args.batch_size
        base_t, eng_t = [], []
        baseline(cfg, task, data)  # warm-up: allocator, oneDNN kernels
        for _ in range(args.repeats):
            base_t.append(baseline(cfg, task, data))
            eng_t.append(engine(cfg, task, data, Path(tmp)))
    b, e = statistics.median(base_t), statistics.median(eng_t)
    print(
        f"steps per run: {steps}, batch size {args.batch_size}, threads {torch.get_num_threads()}, "
        f"{args.precision} in both"
    )
    print(f"baseline loop: median {b:.2f} s  runs {[round(t, 2) for t in base_t]}")
    print(f"torchkiln:     median {e:.2f} s  runs {[round(t, 2) for t in eng_t]}")
    print(f"ratio (baseline / torchkiln): {b / e:.3f}   target >= 0.97")


if __name__ == "__main__":
    main()
