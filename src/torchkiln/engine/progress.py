"""Rich progress bars: loss, metric, throughput and ETA, updated only when the loop logs."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, *, epochs: int, describe: str, every: int = 1, console: Console | None = None) -> None:
        self.epochs, self.every = epochs, every
        self.console = console or Console(stderr=True)
        self.console.print(f"[bold]training[/] on {describe}")
        self.bar = RichProgress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[metrics]}"),
            TextColumn("{task.fields[throughput]:.0f} samples/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task_id: int | None = None

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.bar.stop()

    def start_epoch(self, epoch: int, total: int, *, done: int = 0) -> None:
        if self.task_id is not None:
            self.bar.remove_task(self.task_id)
        self.task_id = self.bar.add_task(
            "train",
            total=total,
            completed=done,
            epoch=epoch + 1,
            epochs=self.epochs,
            loss=float("nan"),
            metrics="",
            throughput=0.0,
        )

    def update(self, completed: int, *, loss: float, metrics: dict[str, float], throughput: float) -> None:
        """Called every ``train.log_every`` steps; ``metrics`` are the running train metrics of the epoch."""
        if self.task_id is not None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.bar.update(
                self.task_id, completed=completed, loss=loss, metrics=shown, throughput=throughput
            )

    def end_epoch(self, results: dict[str, float]) -> None:
        """The epoch's line, every ``every`` epochs and at the last; cut to the width of a terminal."""
        n = int(results["epoch"]) + 1
        if not self.every or (n % self.every and n != self.epochs):
            return
        shown = "  ".join(f"{k} {v:.4f}" for k, v in results.items() if k != "epoch")
        line = f"epoch {n}/{self.epochs}  {shown}"
        if self.console.is_terminal and len(line) > self.console.width:  # a log file keeps the whole line
            line = line[: self.console.width - 1] + "…"
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)
