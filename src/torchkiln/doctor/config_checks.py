"""The config's checks: the device, what picks the best epoch, what kiln tune optimizes, the seed, the loss,
flips on digit or character data.

They read only the run config and the task (``tasks.base``), never a family.
"""

from __future__ import annotations

from pathlib import Path

import torch

from torchkiln.artifacts.bundle import init_from_bundle
from torchkiln.core.errors import ConfigError, KilnError, did_you_mean
from torchkiln.doctor.findings import Finding
from torchkiln.doctor.registry import check
from torchkiln.doctor.subject import LOADS, Subject
from torchkiln.engine.precision import resolve_device
from torchkiln.engine.tally import computed


@check(LOADS)
def data_loads(s: Subject) -> list[Finding]:
    """The data loads and passes the task's own checks (what kiln train would refuse, and its warnings)."""
    return list(s.loading)


@check("device")
def device(s: Subject) -> list[Finding]:
    """The device train.device asks for is on this machine (a GPU in the config, none here)."""
    name = s.cfg.train.device
    try:
        found = resolve_device(name)
    except ConfigError as exc:
        return [Finding("device", "error", str(exc))]
    if found.type == "mps" and not torch.backends.mps.is_available():
        return [
            Finding(
                "device",
                "error",
                "train.device is 'mps' but this machine has no Apple GPU (MPS is not available).",
                "Use auto (or cpu).",
            )
        ]
    return []


def reported(s: Subject) -> tuple[list[str], bool] | None:
    """The figures this run reports each epoch (``train/loss``, ``val/accuracy``...) and whether it has a
    val split; None when the data did not load (the config cannot be resolved without it)."""
    if s.resolved is None or s.data is None:
        return None
    train = s.task.train_module(s.resolved)
    names = [*computed(train.metrics(s.resolved)), *train.losses]
    has_val = bool(len(s.data.splits["val"]))
    return [f"{split}/{n}" for split in (("train", "val") if has_val else ("train",)) for n in names], has_val


def direction(s: Subject, figure: str) -> str | None:
    """ "max" or "min" for a figure whose better side is known (a loss, the task's primary metric)."""
    name = figure.partition("/")[2]
    if name == "loss":
        return "min"
    if name == s.task.primary_metric.name:
        return "max" if s.task.primary_metric.higher_is_better else "min"
    return None


def _side(best: str) -> str:
    return "higher" if best == "max" else "lower"


def on_test(figure: str, setting: str, what: str, default: str) -> Finding:
    return Finding(
        "monitor" if setting == "train.monitor" else "tuning",
        "error",
        f"{setting} is '{figure}': {what} would be chosen on the test split, so the test score kiln "
        f"evaluate reports would be tuned on itself (and kiln reports no test figure while training).",
        f"Use {default}: choose on val, and score test once, at the end.",
    )


@check("monitor")
def monitor(s: Subject) -> list[Finding]:
    """train.monitor is a val figure this run reports, and train.monitor_mode is the side it improves on."""
    found = reported(s)
    if found is None:
        return []
    valid, has_val = found
    assert s.resolved is not None  # reported() needs it
    t = s.resolved.train  # prepare may choose the monitor (a GAN without quality figures: its loss)
    default = s.cfg.default_monitor[0]
    if t.monitor.startswith("test/"):
        return [on_test(t.monitor, "train.monitor", "the best checkpoint and early stopping", default)]
    if t.monitor not in valid:
        return [
            Finding(
                "monitor",
                "error",
                f"train.monitor is '{t.monitor}', which this run does not report."
                f"{did_you_mean(t.monitor, valid)} Valid: {', '.join(valid)}. (Without a validation split "
                f"only train/ metrics exist.)",
            )
        ]
    out = []
    best = direction(s, t.monitor)
    if best is not None and best != t.monitor_mode:
        out.append(
            Finding(
                "monitor",
                "warning",
                f"train.monitor_mode is {t.monitor_mode}, but {t.monitor} is better when {_side(best)}: the "
                f"bundle would keep the worst epoch, and early stopping would wait for it to get worse.",
                f"Set train.monitor_mode: {best}.",
            )
        )
    if has_val and t.monitor.startswith("train/"):
        stops = t.early_stopping.patience is not None
        out.append(
            Finding(
                "monitor",
                "warning" if stops else "info",
                f"train.monitor is '{t.monitor}', a figure of the training split: it keeps improving while "
                f"the model overfits, so the best checkpoint is the last one"
                + (" and early stopping never stops on overfitting." if stops else "."),
                f"Monitor a val figure: {default}.",
            )
        )
    return out


@check("tuning")
def tuning(s: Subject) -> list[Finding]:
    """kiln tune optimizes a val figure this run reports, and the evaluation does not score what was tuned."""
    if s.cfg.tune is None:
        return []
    figure, goal = s.cfg.tune.objective((s.resolved or s.cfg).train)
    if figure.startswith("test/"):
        return [on_test(figure, "tune.metric", "the trials' best", s.cfg.default_monitor[0])]
    out = []
    found = reported(s)
    if found is not None and figure not in found[0]:
        out.append(
            Finding(
                "tuning",
                "error",
                f"tune.metric is '{figure}', which this run does not report.{did_you_mean(figure, found[0])} "
                f"Valid: {', '.join(found[0])}.",
                "Set tune.metric to one of them (default: train.monitor).",
            )
        )
    best = direction(s, figure)
    if best is not None and {"max": "maximize", "min": "minimize"}[best] != goal:
        out.append(
            Finding(
                "tuning",
                "warning",
                f"tune.direction is {goal}, but {figure} is better when {_side(best)}: the study would "
                "search for the worst settings.",
                f"Set tune.direction: {'maximize' if best == 'max' else 'minimize'} (or leave it out).",
            )
        )
    return out + _tuned_on(s, figure)


def _tuned_on(s: Subject, figure: str) -> list[Finding]:
    """What the study's best trial would be judged on: the evaluated split, and settings that are luck."""
    assert s.cfg.tune is not None
    out = []
    tuned_split = figure.partition("/")[0]
    if s.cfg.evaluate.split == tuned_split:
        out.append(
            Finding(
                "tuning",
                "warning",
                f"evaluate.split is {tuned_split}, the split kiln tune picks the best trial on: its score "
                f"would be the tuned one, higher than on data the study never saw.",
                "Evaluate on test (evaluate.split: test, the default).",
            )
        )
    luck = [k for k in s.cfg.tune.params if k == "seed" or k.startswith("data.split")]
    if luck:
        out.append(
            Finding(
                "tuning",
                "warning",
                f"tune.params searches {', '.join(luck)}: that picks the luckiest seed or split, not better "
                f"settings, and its best score will not repeat.",
                f"Remove {', '.join(luck)} from tune.params; to see the spread, train the best config with a "
                f"few --seed values.",
            )
        )
    return out


@check("seed")
def seed(s: Subject) -> list[Finding]:
    """The seed is written in the config, and GPU runs say whether they must repeat bit for bit."""
    out = []
    if "seed" not in s.cfg.model_fields_set:
        out.append(
            Finding(
                "seed",
                "info",
                "seed is not set, so it is 0: the split, the first weights and the data order are the same "
                "in every run of this config (reproducible), and two runs never differ by chance alone.",
                "Write seed: N in the config to make it explicit; to measure the spread, train with a few "
                "--seed values.",
            )
        )
    try:
        on_gpu = resolve_device(s.cfg.train.device).type == "cuda"
    except ConfigError:
        on_gpu = False  # the device check reports it
    if on_gpu and not s.cfg.train.deterministic:
        out.append(
            Finding(
                "seed",
                "info",
                "train.deterministic is false on a GPU: some CUDA kernels sum in varying order, so two runs "
                "of one seed can differ in the last digits.",
                "Set train.deterministic: true for bitwise repeats (a little slower).",
            )
        )
    return out


@check("loss")
def loss(s: Subject) -> list[Finding]:
    """The task's loss takes the loss settings the config gives (label smoothing, class weights)."""
    cfg = s.resolved or s.cfg
    fn = s.task.loss(cfg)
    t, kind = cfg.train, type(fn).__name__
    out = []
    if t.label_smoothing and getattr(fn, "label_smoothing", 0.0) != t.label_smoothing:
        out.append(
            Finding(
                "loss",
                "warning",
                f"train.label_smoothing is {t.label_smoothing}, but this task's loss ({kind}) has no label "
                f"smoothing: the setting changes nothing.",
                "Remove train.label_smoothing.",
            )
        )
    if isinstance(t.class_weights, list) and getattr(fn, "weight", None) is None:
        out.append(
            Finding(
                "loss",
                "warning",
                f"train.class_weights is set, but this task's loss ({kind}) takes no class weights: the "
                f"setting changes nothing.",
                "Remove train.class_weights.",
            )
        )
    return out


@check("init-from")
def init_from(s: Subject) -> list[Finding]:
    """The bundle model.init_from names holds weights this run's model can start from."""
    if not s.cfg.model.init_from or s.resolved is None:
        return []
    modules = s.task.train_module(s.resolved).build_modules(s.resolved)
    try:
        notes = init_from_bundle(modules, s.cfg.model.init_from, s.resolved)
    except KilnError as exc:
        return [Finding("init-from", "error", str(exc))]
    return [Finding("init-from", "info", note) for note in notes]


# Data whose orientation is the label: a mirrored "2" or "b" is not a "2" or a "b" any more.
DIGIT_WORDS = frozenset(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
# catalog names and file stems of digit and character data sets ("fashion-mnist" is clothes: not one)
GLYPH_DATA = frozenset({"digits", "mnist", "emnist", "kmnist", "qmnist", "usps", "svhn"})
BIG_ROTATION = 45.0  # degrees: past this a "6" can turn into a "9" (10 to 15 is the usual range for digits)


def _glyph_data(s: Subject) -> str | None:
    """Why the data looks like digits or characters, from its names alone (no pixel is read); None if not."""
    data = s.cfg.data
    stem = Path(str(getattr(data, "path", ""))).name.lower().removesuffix(".npz").removesuffix(".idx")
    if stem in GLYPH_DATA:
        return f"the data is '{stem}', a digit or character data set"
    named = s.view.classes if s.view is not None else getattr(data, "classes", None) or ()
    classes = [str(c) for c in named]
    glyphs = [c for c in classes if (len(c) == 1 and c.isalnum()) or c.lower() in DIGIT_WORDS]
    if len(classes) >= 2 and len(glyphs) == len(classes):
        shown = ", ".join(f"'{c}'" for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
        return f"its classes are digits or characters ({shown})"
    return None


def _turns(step: object) -> str | None:
    """What an augment step does that changes a glyph's identity, None if nothing."""
    name = getattr(step, "name", "")
    if name in ("horizontal_flip", "vertical_flip") and getattr(step, "p", 0.0) > 0:
        return f"{name} (p={step.p:g})"  # type: ignore[attr-defined]
    if name == "rotation" and getattr(step, "degrees", 0.0) > BIG_ROTATION:
        return f"rotation (up to {step.degrees:g} degrees)"  # type: ignore[attr-defined]
    return None


@check("orientation")
def orientation(s: Subject) -> list[Finding]:
    """data.augment flips (or turns far) digit or character images, whose orientation is the label."""
    steps = getattr(s.cfg.data, "augment", None) or []
    turns = [t for t in map(_turns, steps) if t is not None]
    why = _glyph_data(s) if turns else None
    if why is None:
        return []
    return [
        Finding(
            "orientation",
            "warning",
            f"data.augment has {', '.join(turns)}, but {why}: the images' orientation is the "
            f"label (a mirrored '2' or 'b' is not a '2' or a 'b', a '6' turned over is a '9'), so "
            f"training would learn from images whose label is wrong.",
            f"Remove the flips from data.augment and keep rotations to {BIG_ROTATION:g} degrees or less "
            f"(translate or random_crop keep the label); flips suit data whose mirror image is the same "
            f"class, such as clothes or photos.",
        )
    ]
