"""`kiln`: thin wrappers over :mod:`torchkiln.api`. Parse arguments, call one function, print the result."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import signal
from dataclasses import replace
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from torchkiln.cli.dashboard import dashboard_command
from torchkiln.cli.deploy import containerize_command
from torchkiln.cli.doctor import check_before_training, doctor_command
from torchkiln.cli.env import env_command
from torchkiln.cli.explain import explain_command
from torchkiln.cli.help import use_cli_help
from torchkiln.cli.lr_find import lr_find_command
from torchkiln.cli.monitor import monitor_app
from torchkiln.cli.registry import registry_app
from torchkiln.cli.retrain import retrain_command
from torchkiln.cli.runs import runs_app
from torchkiln.cli.tune import tune_command
from torchkiln.core._version import __version__
from torchkiln.core.cli_options import (
    BatchSizeOpt,
    EpochsOpt,
    LrOpt,
    NameOpt,
    RunsDirOpt,
    SeedOpt,
    SetOpt,
    run_overrides,
)
from torchkiln.core.cli_options import DeviceOpt as TrainDeviceOpt
from torchkiln.core.console import err, out, show_warnings
from torchkiln.core.console import fail as _fail
from torchkiln.core.errors import KilnError, PredictError
from torchkiln.core.io import new_text_file

if TYPE_CHECKING:
    from torchkiln.exporter import ExportResult

use_cli_help()  # PATH, INT, [a|b] in every command's help, not Python types
app = typer.Typer(
    name="kiln",
    help="torchkiln: train, evaluate and package PyTorch models from data and a short YAML file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect run configs.", no_args_is_help=True)
datasets_app = typer.Typer(help="The built-in dataset catalog.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(datasets_app, name="datasets")
app.add_typer(registry_app, name="registry")
app.add_typer(runs_app, name="runs")
app.add_typer(monitor_app, name="monitor")
app.command("containerize")(containerize_command)
app.command("dashboard")(dashboard_command)
app.command("doctor")(doctor_command)
app.command("env")(env_command)
app.command("explain")(explain_command)
app.command("lr-find")(lr_find_command)
app.command("retrain")(retrain_command)
app.command("tune")(tune_command)


def _version(value: bool) -> None:
    if value:
        print(f"torchkiln {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """torchkiln: train, evaluate and package PyTorch models from data and a short YAML file."""
    show_warnings()


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML.")] = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    device: TrainDeviceOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    runs_dir: RunsDirOpt = None,
    resume: Annotated[
        Path | None, typer.Option(metavar="RUN", help="Continue the run in this directory.")
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train in N processes on this machine through torchrun (DDP): one per GPU, or gloo on "
            "the CPU. train.batch_size is the batch of all N together. Several machines: docs/scale.md.",
        ),
    ] = None,
    doctor: Annotated[
        bool,
        typer.Option(
            "--doctor/--no-doctor",
            help="First run kiln doctor's quick checks of the data and config: print their warnings, stop "
            "at an error.",
        ),
    ] = True,
) -> None:
    """Train a model. The last line printed is the run directory.

    Flags such as --epochs are short for one --set each: --epochs 20 is --set train.epochs=20."""
    from torchkiln import api

    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    fail = _fail_on_rank if world != "1" else _fail
    err.quiet = rank != "0"  # in a process group, one set of messages: rank 0's (errors: every rank's)
    try:
        overrides = run_overrides(
            set_, epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed, name=name,
            runs_dir=runs_dir,
        )  # fmt: skip
    except KilnError as exc:
        fail(exc)
    if doctor and config is not None and resume is None and "WORLD_SIZE" not in os.environ:
        check_before_training(config, overrides)  # kiln doctor --quick, once (not in each torchrun rank)
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        args = [str(config)] if config is not None else []
        args += [f"--set={o}" for o in overrides] + (["--resume", str(resume)] if resume is not None else [])
        raise typer.Exit(torchrun(args, nproc=nproc))
    epochs = _resume_epochs(overrides) if resume is not None else None
    if resume is not None and (config is not None or (overrides and epochs is None)):
        err.print(
            "error: --resume continues a run with the config saved in its directory, so it takes no CONFIG "
            "and no setting but --epochs N (to train a run longer). Start a new run to change other "
            "settings: kiln train CONFIG --set ...",
            soft_wrap=True,
        )
        raise typer.Exit(code=2)
    try:
        if resume is not None:
            from torchkiln.tasks.training import resume_point

            point = resume_point(resume)
            early = point.complete and point.epoch < point.epochs  # early stopping would stop it again
            if early or (point.complete and (epochs is None or epochs <= point.epochs)):
                then = (
                    f"stopped early: {point.stopped}; its bundle is left as it is. Start a new run to train "
                    f"further"
                    if early
                    else f"all {point.epochs} epochs done; its bundle is left as it is. To train it longer: "
                    f"kiln train --resume {resume} --epochs N, with N over {point.epochs}"
                )
                err.print(f"{resume} is complete ({then}).", soft_wrap=True)
                err.print(f"bundle: {resume / 'bundle'}")
                if rank == "0":
                    print(resume)
                return
            if epochs is not None:  # the run's new length
                point = dataclasses.replace(point, epochs=epochs)
            err.print(f"resuming {resume} at {point.describe()}", soft_wrap=True)
            run_dir = api.train(resume=resume, epochs=epochs)
        elif config is None:
            err.print("error: give a CONFIG file, or --resume RUN_DIR. Example: kiln train kiln.yaml")
            raise typer.Exit(code=2)
        else:
            run_dir = api.train(api.load_config(config, overrides))
    except KilnError as exc:
        fail(exc)
    if rank != "0":
        return  # rank 0 reports and writes the bundle
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    summary = meta["trained"]
    if not summary["metrics"]:
        err.print(
            f"stopped before the first epoch ended ({summary['stopped']}); resume with --resume {run_dir}"
        )
    else:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items() if k != "epoch")
        best = f"best epoch {summary['best_epoch'] + 1}: {metrics}  ({summary['seconds']} s of training)"
        err.print(best, soft_wrap=True)
    from torchkiln.tasks.training import late_epochs_note

    train_cfg = api.load_config(run_dir / "config.yaml").train
    note = late_epochs_note(summary, train_cfg.monitor, train_cfg.early_stopping.patience)
    if summary["metrics"] and note:
        err.print(f"note: {note}", soft_wrap=True)
    if base := meta.get("baseline"):  # a classifier beside its linear baseline on val (evaluate.baseline)
        verdict = "BELOW it (see the warning above)" if base["below"] else "above it"
        err.print(
            f"baseline on val: {base['name']} {base['val_accuracy']:.4f}; the model's "
            f"{base['model_val_accuracy']:.4f} is {verdict}",
            soft_wrap=True,
        )
    err.print(f"bundle: {run_dir / 'bundle'}")
    print(run_dir)


def torchrun(args: list[str], *, nproc: int) -> int:
    """Run ``kiln train ARGS`` in ``nproc`` processes on this machine (``torchrun --standalone``); the exit
    code: 0, 2 when the first rank to fail exited with a kiln error (its message is above), else 1.

    Each process gets an equal share of the CPU threads unless ``OMP_NUM_THREADS`` is set.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # The launcher's own log lines and traceback repeat what the failed rank printed: keep only ours.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    launch = ["--standalone", f"--nproc-per-node={nproc}", "-m", "torchkiln.train", *args]
    try:
        run(get_args_parser().parse_args(launch))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"it was killed by {signal.Signals(-code).name}" if code < 0 else f"it exited with code {code}"
        said = " Its message is above." if code > 0 else ""
        err.print(
            f"error: rank {rank} of {nproc} failed first ({how}); the other processes were stopped.{said}",
            soft_wrap=True,
        )
        return 2 if code == 2 else 1
    return 0


def _fail_on_rank(exc: KilnError) -> NoReturn:
    """:func:`fail` in a process group: the message says which rank failed."""
    err.quiet = False
    _fail(KilnError(f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}: {exc}"))


def _resume_epochs(overrides: list[str]) -> int | None:
    """N from ``--epochs N`` (``--set train.epochs=N``), the one setting a resume takes; None without it,
    or with others."""
    if len(overrides) != 1 or not overrides[0].startswith("train.epochs="):
        return None
    value = overrides[0].removeprefix("train.epochs=")
    if not value.isdigit() or int(value) < 1:
        err.print(f"error: --set train.epochs={value}: expected a whole number of epochs, at least 1.")
        raise typer.Exit(code=2)
    return int(value)


def write_answers(answers: list[dict[str, Any]], path: Path, *, overwrite: bool) -> int:
    """``kiln predict --out``: JSON lines as they are, or a CSV with a column per key (in order of first
    appearance), nested values (a classifier's top_k, a forecast's arrays) as JSON text."""
    with new_text_file(path, overwrite=overwrite) as fh:
        if path.suffix.lower() == ".jsonl":
            fh.writelines(json.dumps(a) + "\n" for a in answers)
        else:
            columns = list(dict.fromkeys(k for a in answers for k in a))
            writer = csv.writer(fh)
            writer.writerow(columns)
            for a in answers:
                cells = [a.get(c, "") for c in columns]
                writer.writerow([json.dumps(v) if isinstance(v, list | dict) else v for v in cells])
    return len(answers)


DeviceOpt = Annotated[
    str,
    typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N. ONNX bundles run on the CPU."),
]


@app.command()
def evaluate(
    path: Annotated[Path, typer.Argument(help="A run directory or a bundle.")],
    split: Annotated[
        str | None, typer.Option(help="train, val or test (default: the config's evaluate.split).")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for metrics.json and the report (default: RUN/eval/SPLIT)."),
    ] = None,
    device: DeviceOpt = "auto",
    mlflow: Annotated[
        bool,
        typer.Option(
            help="Log the metrics (test_*) and the report to the run's MLflow run, if it was trained with "
            "tracking.mlflow on."
        ),
    ] = True,
    baseline: Annotated[
        bool | None,
        typer.Option(
            "--baseline/--no-baseline",
            help="Classifiers: put the model beside a linear baseline (TF-IDF or pixels + logistic "
            "regression) on the same split (default: the config's evaluate.baseline, on).",
        ),
    ] = None,
) -> None:
    """Evaluate on a split: metrics.json and an HTML report with plots (classifiers: beside a linear
    baseline, and the worst mistakes; forecasters: beside naive, seasonal naive, ETS and ARIMA)."""
    from torchkiln import api

    show_warnings(("torchkiln.tracking",))  # what became of the MLflow logging
    try:
        result = api.evaluate(
            path, split=split, out_dir=out_dir, device=device, mlflow=mlflow, baseline=baseline
        )
    except KilnError as exc:
        _fail(exc)
    for part in result.summary():
        out.print(part)
    for note in result.notes:
        err.print(Text(f"note: {note}"), soft_wrap=True)
    out.print(f"metrics: {result.metrics_file}")
    out.print(f"report:  {result.report}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle or run directory.")],
    inputs: Annotated[list[Path] | None, typer.Argument(help="Image files (image models).")] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", help="A text to classify (text models); repeatable.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Texts to classify: a .txt file (one per line) or a .csv/.tsv/.jsonl."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, help="Classes to show (default: the config's task.top_k).")
    ] = None,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history", help="Forecasters: a CSV of the series so far (the training file's columns)."
        ),
    ] = None,
    horizon: Annotated[
        int | None, typer.Option("--horizon", min=1, help="Forecasters: steps to show (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="Print JSON lines.")] = False,
    out_: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the answers to a .csv (a row each) or .jsonl file instead of printing; detectors: "
            "a folder, to draw the boxes on each image (with predictions.jsonl).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Predict each input with the bundle's own preprocessing: a class, or a forecast (--history).

    Images: files, folders (their images, recursively) or quoted globs ("data/**/*.png"). An input far
    from the training inputs (another image mode, or size) gets a warning line on stderr; it is answered."""
    from torchkiln import api
    from torchkiln.tasks.base import PredictArgs

    show_warnings(("torchkiln.predict",))
    args = PredictArgs(tuple(inputs or ()), tuple(text or ()), file, history, horizon, top_k)
    try:
        predictor = api.load_predictor(bundle, device=device)
        task = predictor.bundle.task
        extra = [PredictArgs.FLAGS[f] for f in args.given() if f not in task.cli_options]
        if extra:
            takes = [flag for f, flag in PredictArgs.FLAGS.items() if f in task.cli_options]
            listed = f"{', '.join(takes[:-1])} and {takes[-1]}" if len(takes) > 1 else takes[0]
            raise PredictError(
                f"This bundle is {'an' if task.kind[0] in 'aeiou' else 'a'} {task.kind} model, which does "
                f"not take {' or '.join(extra)}. "
                f"It takes {listed}."
            )
        table = out_ is not None and out_.suffix.lower() in (".csv", ".jsonl")
        if out_ is not None and not table:
            if "out_dir" not in task.cli_options:
                raise PredictError(f"--out {out_}: expected a .csv or .jsonl file name.")
            args = replace(args, out_dir=out_)  # a folder: the task draws its answers there
        lines = task.cli_predict(predictor, args, as_json=as_json or table)
        if out_ is not None and table:
            n = write_answers([json.loads(line) for line in lines], out_, overwrite=overwrite)
            err.print(f"wrote {n} answer(s) to {out_}", soft_wrap=True)
            return
    except KilnError as exc:
        _fail(exc)
    for line in lines:
        if as_json:
            print(line)
        else:
            out.print(line, highlight=False, soft_wrap=True)


class Format(StrEnum):
    onnx = "onnx"
    torch = "torch"


class Quantize(StrEnum):
    dynamic = "dynamic"
    static = "static"


class PruneMethod(StrEnum):
    l1_structured = "l1-structured"
    l1_unstructured = "l1-unstructured"


@app.command("export")
def export_(
    bundle: Annotated[Path, typer.Argument(help="A trained bundle or its run directory.")],
    format: Annotated[
        Format, typer.Option(help="onnx (ONNX Runtime) or torch (a pruned eager model).")
    ] = Format.onnx,
    quantize: Annotated[Quantize | None, typer.Option(help="int8: static (CNNs) or dynamic.")] = None,
    prune: Annotated[
        float | None, typer.Option(help="Fraction of weights (unstructured) or channels to remove.")
    ] = None,
    prune_method: Annotated[PruneMethod, typer.Option()] = PruneMethod.l1_structured,
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tune epochs after pruning.")] = 8,
    finetune_lr_mult: Annotated[
        float, typer.Option(help="Fine-tune learning rate as a multiple of the run's.")
    ] = 0.5,
    calibration_split: Annotated[str, typer.Option(help="Split to calibrate static int8 on.")] = "val",
    calibration_data: Annotated[
        Path | None, typer.Option(help=".npy/.npz of model inputs to calibrate on instead.")
    ] = None,
    split: Annotated[str, typer.Option(help="Held-out split for the parity checks.")] = "test",
    budget: Annotated[
        float | None,
        typer.Option(help="Metric points the variant may lose (default 0.1 for fp32 ONNX, else 1.0)."),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Max |Δ| eager vs ONNX fp32 (x the largest |output| if > 1).")
    ] = 1e-4,
    bench_seconds: Annotated[float, typer.Option(help="Timed seconds per latency measurement.")] = 2.0,
    out_: Annotated[
        Path | None, typer.Option("--out", help="Variant folder (default: beside the bundle).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="Where a pruned model fine-tunes: auto, cpu, cuda or cuda:N.")
    ] = "auto",
) -> None:
    """Export a gated variant: ONNX, int8 and/or pruned. Exit code 1 if the variant is rejected."""
    from torchkiln import api

    try:
        result = api.export(
            bundle,
            format=format.value,
            quantize=quantize.value if quantize else None,
            prune=prune,
            prune_method=prune_method.value,
            finetune_epochs=finetune_epochs,
            finetune_lr_mult=finetune_lr_mult,
            calibration_split=calibration_split,
            calibration_data=calibration_data,
            split=split,
            budget=budget,
            tolerance=tolerance,
            bench_seconds=bench_seconds,
            out=out_,
            device=device,
        )
    except KilnError as exc:
        _fail(exc)
    Console(width=max(out.width, 120)).print(_export_table(result))  # wide enough for 8 columns
    for check in result.checks:
        mark = "[green]pass[/]" if check.passed else "[bold red]FAIL[/]"
        out.print(f"{mark} {check.name}: {check.detail}", highlight=False, soft_wrap=True)
    for note in result.notes:
        out.print(f"[yellow]note[/] {note}", highlight=False, soft_wrap=True)
    out.print(f"report:  {result.report_html}", soft_wrap=True)
    if not result.passed:
        err.print(f"rejected: {result.name} was not written (see the report)")
        raise typer.Exit(code=1)
    print(result.variant)


def _export_table(result: ExportResult) -> Table:
    table = Table(title=f"kiln export: {result.name}")
    for col in ("model", "file", "params", "metric", "max |Δ|", "p50 b1 ms", "p99 b1 ms", "p50 b32 ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result.rows:
        b1, b32 = r.latency["1"], r.latency["32"]
        table.add_row(
            r.name,
            f"{r.file_bytes / 1e6:.2f} MB",
            f"{r.params:,}",
            f"{r.metric:.2f}",
            "—" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
            f"{b1['p50_ms']:.3f}",
            f"{b1['p99_ms']:.3f}",
            f"{b32['p50_ms']:.2f}",
        )
    return table


@app.command()
def serve(
    uris: Annotated[
        list[str] | None,
        typer.Argument(help="Bundle folders or registry URIs (models:/NAME@champion); or use --config."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Serve settings YAML (docs/serving.md).")] = None,
    name: Annotated[str | None, typer.Option(help="URL name of the (single) model.")] = None,
    challenger: Annotated[str | None, typer.Option(help="A second model for A/B or shadow traffic.")] = None,
    challenger_weight: Annotated[float, typer.Option(help="A/B share of request keys, 0 to 1.")] = 0.0,
    shadow: Annotated[bool, typer.Option(help="Mirror requests to the challenger; never return it.")] = False,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes; more than 1 runs gunicorn.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Inputs per model call (default 32).")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="How long a batch waits to fill.")] = None,
    model_threads: Annotated[int | None, typer.Option(help="Threads per model call (default 1).")] = None,
    log_url: Annotated[
        str | None, typer.Option(help="Prediction log URL (SQLAlchemy); 'off' = none.")
    ] = None,
    registry_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for models:/ URIs.")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto (default: CUDA when available), cpu, cuda or cuda:N.")
    ] = None,
) -> None:
    """Serve models over HTTP: dynamic batching, A/B and shadow traffic, metrics and a prediction log."""
    from torchkiln import api

    models = None
    if uris:
        if len(uris) > 1 and (name or challenger):
            err.print("error: --name and --challenger apply to one model; give one URI, or use --config.")
            raise typer.Exit(code=2)
        first = {"uri": uris[0], "name": name, "challenger": challenger, "shadow": shadow}
        first["challenger_weight"] = challenger_weight
        models = [{k: v for k, v in first.items() if v is not None}] + [{"uri": u} for u in uris[1:]]
    values = {
        "models": models, "host": host, "port": port, "workers": workers, "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "model_threads": model_threads, "registry_uri": registry_uri, "device": device,
    }  # fmt: skip
    if log_url is not None:
        values["log_url"] = log_url  # "off" turns the log off (a settings validator maps it to null)
    try:
        settings = api.serve_settings(config, **values)
        from torchkiln.engine.precision import resolve_device

        resolve_device(settings.device, setting="--device")  # no CUDA here: fail now, not at each load
        where = f"http://{settings.host}:{settings.port}"
        err.print(f"serving {', '.join(m.uri for m in settings.models)} on {where}", soft_wrap=True)
        api.serve(settings)
    except KilnError as exc:
        _fail(exc)


@config_app.command("show")
def config_show(
    config: Annotated[Path, typer.Argument(help="Run config YAML.")],
    set_: SetOpt = None,
    raw: Annotated[
        bool, typer.Option(help="Skip resolving data-dependent defaults (no data access).")
    ] = False,
) -> None:
    """Print the resolved config: every default filled in, data-dependent ones from the data."""
    from torchkiln import api
    from torchkiln.core.config_io import dump_config

    try:
        cfg = api.load_config(config, set_ or [])
        print(dump_config(cfg if raw else api.resolve(cfg)), end="")
    except KilnError as exc:
        _fail(exc)


class Kind(StrEnum):
    datasets = "datasets"
    models = "models"
    tasks = "tasks"


@app.command("list")
def list_(kind: Annotated[Kind, typer.Argument(help="datasets, models or tasks.")]) -> None:
    """List what is registered."""
    from torchkiln.components.catalog import DATASETS
    from torchkiln.components.models import MODELS
    from torchkiln.tasks import TASKS

    table = Table(title=kind.value)
    table.add_column("name", style="bold")
    if kind.value != "tasks":
        table.add_column("kind" if kind.value == "datasets" else "task")
    table.add_column("description")
    TASKS.names()  # loads every task family, which registers its models
    registry = {"datasets": DATASETS, "models": MODELS, "tasks": TASKS}[kind.value]
    for entry in registry:
        what = getattr(entry.obj, "kind" if kind.value == "datasets" else "task", None)
        table.add_row(entry.name, *([str(what)] if kind.value != "tasks" else []), entry.summary)
    out.print(table)


@datasets_app.command("fetch")
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="A catalog name (kiln list datasets).")],
    to: Annotated[
        Path,
        typer.Option("--out", help="Where to write: an image folder, or NAME.csv for texts and series."),
    ],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty folder or an existing CSV.")] = False,
    split: Annotated[
        str | None, typer.Option(help="Write only this split (train, val or test); not for time series.")
    ] = None,
) -> None:
    """Write a catalog dataset out as you would bring it yourself: image folders, or text or series CSVs."""
    from torchkiln.components.catalog import write_catalog

    try:
        path, written = write_catalog(name, to, split=split, overwrite=overwrite)
    except KilnError as exc:
        _fail(exc)
    out.print(f"wrote {written} to {path}")


# A task family's own commands (forecasting's backtest) are ``torchkiln.commands`` entry points.
for _ep in sorted(entry_points(group="torchkiln.commands"), key=lambda e: e.name):
    app.command(_ep.name)(_ep.load())
