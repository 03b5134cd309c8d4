r"""The closed loop on real Fashion-MNIST: serve, drift, feedback, retrain, shadow, canary, promotion,
recovery.

    python examples/closed_loop.py [--work runs/closed-loop] [--reuse]

This is what `make closed-loop` runs. Every step uses the product as a user would, and prints its figures:

1. train a quick Fashion-MNIST champion (or --reuse the last one), register it as models:/fashion@champion
   with the challenger alias on the same version, and serve it with `kiln serve` (a subprocess on a free
   loopback port, the challenger in shadow, every request body kept in the prediction log);
2. replay clean test images over HTTP, then darker ones (brightness x 0.5);
3. `kiln monitor watch --once` on each window: the drift alert reaches a local webhook for the dark one only;
4. POST /v1/feedback: the true labels of the dark images;
5. `kiln retrain` fine-tunes a challenger on them (the feedback-labelled bodies of the log);
6. the challenger wins on the fresh dark test set, goes through shadow on the live server, then answers a
   share of the requests as a canary until a sequential test passes it (a thread sends the labelled dark
   traffic both phases wait for), and is promoted;
7. the replaced champion goes back into the shadow arm, so both versions answer the same new dark
   traffic: the prediction log shows which version answered each request, and live accuracy recovers.

Everything (data, runs, the MLflow store, the registry cache, the log) goes under --work. The loop waits
on events (readiness, log rows, the challenger's reload), never on fixed sleeps.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from serving_loop import Loop, close_the_loop, darker, environment, kiln, step

ROOT = Path(__file__).resolve().parent.parent


def fetch_data(work: Path, env: dict[str, str]) -> tuple[Path, Path]:
    train, test = work / "data" / "fashion-train", work / "data" / "fashion-test"
    for split, out in (("train", train), ("test", test)):
        if not (out / split).is_dir():
            kiln("datasets", "fetch", "fashion-mnist", "--split", split, "--out", str(out), env=env)
    return train / "train", test / "test"


def original_manifest(train: Path, work: Path, per_class: int) -> Path:
    """The champion's training data: `per_class` training images of each class, as a CSV manifest
    (kiln retrain merges new data into an image folder or manifest, so the data is files, not the catalog)."""
    manifest = work / "data" / f"original-{per_class}.csv"
    if not manifest.is_file():
        rng = random.Random(0)
        rows = []
        for folder in sorted(p for p in train.iterdir() if p.is_dir()):
            files = sorted(folder.glob("*.png"))
            rows += [(str(p.resolve()), folder.name, "train") for p in rng.sample(files, per_class)]
        with manifest.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("path", "label", "split"), *rows])
    return manifest


def champion_run(args: argparse.Namespace, manifest: Path, env: dict[str, str]) -> Path:
    last = args.work / "champion-run"
    if args.reuse and last.is_file() and (Path(last.read_text().strip()) / "bundle").is_dir():
        run = Path(last.read_text().strip())
        print(f"reusing the champion run {run} (--reuse)")
        return run
    t0 = time.monotonic()
    run = Path(
        kiln(
            "train", str(ROOT / "examples" / "fashion-mnist.yaml"), "--set", f"data.path={manifest}",
            "--set", f"runs_dir={args.work / 'runs'}", "--set", "tracking.tensorboard=false",
            "--epochs", str(args.epochs), "--name", "fashion-champion",
            env=env,
        )
    )  # fmt: skip
    print(f"trained in {time.monotonic() - t0:.0f} s: {run}")
    last.write_text(f"{run}\n", encoding="utf-8")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/closed-loop"), help="everything goes here")
    parser.add_argument("--reuse", action="store_true", help="reuse the last champion run in --work")
    parser.add_argument("--per-class", type=int, default=400, help="training images per class")
    parser.add_argument("--epochs", type=int, default=4, help="the champion's epochs")
    parser.add_argument("--retrain-epochs", type=int, default=4, help="the challenger's epochs")
    parser.add_argument("--clean", type=int, default=300, help="clean test images replayed")
    parser.add_argument("--shifted", type=int, default=2000, help="dark test images replayed and labelled")
    parser.add_argument("--after", type=int, default=1000, help="dark images sent after the promotion")
    parser.add_argument("--window", type=int, default=300, help="the drift check's window (inputs)")
    parser.add_argument("--canary-weight", type=float, default=0.25, help="the canary's share of requests")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    for old in ("serve", "monitor", "retrain"):  # a fresh log and fresh reports each run
        shutil.rmtree(args.work / old, ignore_errors=True)
    (args.work / "serve").mkdir()
    env, token = environment(args.work)
    t_start = time.monotonic()

    step("1. Champion: train")
    train_dir, test_dir = fetch_data(args.work, env)
    manifest = original_manifest(train_dir, args.work, args.per_class)
    run = champion_run(args, manifest, env)
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    best = max(h["val/accuracy"] for h in history)
    print(f"  {len(history)} epochs on {args.per_class} images per class: best val accuracy {best:.3f}")

    test = [(p, p.parent.name) for p in sorted(test_dir.glob("*/*.png"))]
    random.Random(1).shuffle(test)
    n = [args.clean, args.shifted, 1000, args.after]
    clean = [(p.read_bytes(), lab) for p, lab in test[: n[0]]]
    dark = [(darker(p.read_bytes()), lab) for p, lab in test[n[0] : sum(n)]]
    shifted, shadow_pool, after = dark[: n[1]], dark[n[1] : n[1] + n[2]], dark[n[1] + n[2] :]
    loop = Loop(
        "fashion", args.work, env, token, window=args.window, retrain_epochs=args.retrain_epochs,
        canary_weight=args.canary_weight,
    )  # fmt: skip
    try:
        close_the_loop(loop, run, clean=clean, shifted=shifted, shadow_pool=shadow_pool, after=after)
    finally:
        print(f"the loop took {time.monotonic() - t_start:.0f} s; all files under {args.work}")


if __name__ == "__main__":
    main()
