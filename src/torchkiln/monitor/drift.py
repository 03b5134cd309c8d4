"""Drift detection: compare a window of served traffic with the reference profile, signal by signal.

A *signal* is what the server has for each item: numeric input statistics (the task's
``summarize_inputs``: for images the mean and std of the model input), continuous output signals (the
task's ``output_signals`` other than a classifier's: a forecast's level and spread), the predicted class,
the confidence, and a penultimate-layer embedding. :func:`detect` runs one test per signal, feature and
method (a *row*) and gives one verdict for the window:

- ``"not enough data"`` when the window has fewer than ``DriftSettings.min_window`` items (default 50):
  a small window never alarms;
- ``"drift"`` when any row is drifted, else ``"no drift"``.

Thresholds come in two kinds (:class:`Thresholds`):

- **fixed defaults**, with no calibration: rows with a p-value (KS, chi-square, MMD, classifier) alarm
  when ``p < alpha / m``, m the number of such rows (Bonferroni, so the chance that a clean window alarms
  on any of them is at most ``alpha``, default 0.01); PSI rows alarm when ``PSI > 0.25`` (the usual
  "significant shift");
- **calibrated** per deployment by :func:`torchkiln.monitor.calibrate.calibrate`: one threshold on the
  statistic of each row, chosen on clean windows drawn from the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from torchkiln.core.errors import ConfigError, DataError, did_you_mean
from torchkiln.monitor import stats
from torchkiln.monitor.signals import Signals

MIN_WINDOW = 50
ALPHA = 0.01
PSI_THRESHOLD = 0.25

Verdict = Literal["drift", "no drift", "not enough data"]


# Methods by kind of signal: continuous 1-D (input statistics, output signals, confidence), classes,
# embeddings.
CONTINUOUS_METHODS = ("ks", "psi")
CLASS_METHODS = ("chi2", "psi")
EMBEDDING_METHODS = ("mmd", "classifier")


@dataclass(frozen=True)
class DriftSettings:
    """How :func:`detect` and :func:`~torchkiln.monitor.calibrate.calibrate` test a window.

    Attributes:
        min_window: a smaller window gives "not enough data", never an alarm. 50: below it a KS test on
            200-vs-thousands items cannot see even a large shift reliably, and PSI bins hold ~5 items.
        input_methods: tests on each numeric input statistic, from ``CONTINUOUS_METHODS``.
        output_methods: tests on each continuous output signal (a forecast's level and spread), from
            ``CONTINUOUS_METHODS``.
        confidence_methods: tests on the confidence, from ``CONTINUOUS_METHODS``.
        class_methods: tests on the predicted classes, from ``CLASS_METHODS``.
        embedding_methods: tests on the embeddings, from ``EMBEDDING_METHODS``.
        psi_bins: quantile bins of continuous PSI.
        permutations: permutations of the MMD test (its smallest p-value is 1 / (permutations + 1), so it
            must exceed m / alpha to ever alarm under the fixed thresholds).
        max_reference: the embedding tests use at most this many reference rows (seeded subsample),
            which bounds the (N, N) kernel.
        seed: seed of the subsample, the permutations and the classifier's split.
    """

    min_window: int = MIN_WINDOW
    input_methods: tuple[str, ...] = ("ks", "psi")
    output_methods: tuple[str, ...] = ("ks", "psi")
    confidence_methods: tuple[str, ...] = ("ks",)
    class_methods: tuple[str, ...] = ("chi2",)
    embedding_methods: tuple[str, ...] = ("mmd",)
    psi_bins: int = stats.PSI_BINS
    permutations: int = 500
    max_reference: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("input_methods", CONTINUOUS_METHODS),
            ("output_methods", CONTINUOUS_METHODS),
            ("confidence_methods", CONTINUOUS_METHODS),
            ("class_methods", CLASS_METHODS),
            ("embedding_methods", EMBEDDING_METHODS),
        ):
            for method in getattr(self, name):
                if method not in allowed:
                    raise ConfigError(
                        f"Unknown method '{method}' in DriftSettings.{name}; expected one of "
                        f"{', '.join(allowed)}.{did_you_mean(method, allowed)}"
                    )
        for name in ("min_window", "psi_bins", "permutations", "max_reference"):
            if getattr(self, name) < 2:
                raise ConfigError(
                    f"The '{name}' parameter of DriftSettings must be an int >= 2. Got {getattr(self, name)} "
                    f"instead. Fix: leave it at its default {getattr(DriftSettings, name)}."
                )


@dataclass(frozen=True)
class Thresholds:
    """When a row counts as drifted; JSON-serialisable with :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        alpha: fixed default: the chance that a clean window alarms on any p-value row (Bonferroni).
        psi: fixed default: a PSI row alarms above it.
        calibrated: row key (``DriftRow.key``) -> threshold on its statistic; when set it decides every
            row, and the two defaults above are unused.
        target_false_alarm, window_size, rounds: how ``calibrated`` was obtained (None for defaults).
        measured_false_alarm: the share of calibration windows that alarmed.
    """

    alpha: float = ALPHA
    psi: float = PSI_THRESHOLD
    calibrated: Mapping[str, float] = field(default_factory=dict)
    target_false_alarm: float | None = None
    window_size: int | None = None
    rounds: int | None = None
    measured_false_alarm: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or self.psi <= 0:
            raise ConfigError(
                f"Thresholds need 0 < alpha < 1 and psi > 0; got alpha={self.alpha}, psi={self.psi}. "
                f"Fix: use the defaults alpha={ALPHA}, psi={PSI_THRESHOLD}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"calibrated": dict(self.calibrated)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"Thresholds got unknown keys {unknown}; expected some of "
                f"{sorted(cls.__dataclass_fields__)}. Fix: load a file that Thresholds.to_dict wrote."
            )
        return cls(**data)


@dataclass(frozen=True)
class DriftRow:
    """One test of one feature of one signal.

    Attributes:
        signal: "input", "output", "prediction", "confidence" or "embedding".
        feature: the input statistic's or output signal's name, or the signal's name for the others.
        method: "ks", "psi", "chi2", "mmd" or "classifier".
        rule: "p_value" (drifted when ``p_value < threshold``) or "statistic" (when
            ``statistic > threshold``).
    """

    signal: str
    feature: str
    method: str
    statistic: float
    p_value: float | None
    threshold: float
    rule: Literal["p_value", "statistic"]
    drifted: bool

    @property
    def key(self) -> str:
        return row_key(self.signal, self.feature, self.method)


def row_key(signal: str, feature: str, method: str) -> str:
    """``"signal/feature/method"``, the name of a row in calibrated thresholds and in gauges."""
    return f"{signal}/{feature}/{method}"


@dataclass(frozen=True)
class DriftReport:
    """The verdict on one window, and the rows behind it (none when there is not enough data)."""

    verdict: Verdict
    rows: tuple[DriftRow, ...]
    n_ref: int
    n_cur: int
    min_window: int

    @property
    def drifted(self) -> bool | None:
        """True or False, or None for "not enough data" (what :class:`~.alerts.AlertState` takes)."""
        return None if self.verdict == "not enough data" else self.verdict == "drift"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rows": [asdict(r) | {"key": r.key} for r in self.rows]}


# A test: (reference, current, settings, bandwidth or None, p_values wanted) -> TestResult.
_Test = Callable[[np.ndarray, np.ndarray, DriftSettings, float | None, bool], stats.TestResult]


def _ks(ref: np.ndarray, cur: np.ndarray, s: DriftSettings, _: float | None, p: bool) -> stats.TestResult:
    if p:
        return stats.ks_test(ref, cur)
    return stats.TestResult(stats.ks_statistic(ref, cur), None, len(ref), len(cur))


def _psi(ref: np.ndarray, cur: np.ndarray, s: DriftSettings, _: float | None, p: bool) -> stats.TestResult:
    return stats.psi(ref, cur, bins=s.psi_bins)


def _mmd(ref: np.ndarray, cur: np.ndarray, s: DriftSettings, bw: float | None, p: bool) -> stats.TestResult:
    assert bw is not None
    if p:
        return stats.mmd_test(ref, cur, bandwidth=bw, permutations=s.permutations, seed=s.seed)
    return stats.TestResult(stats.mmd2(ref, cur, bandwidth=bw), None, len(ref), len(cur))


def _classifier(
    ref: np.ndarray, cur: np.ndarray, s: DriftSettings, _: float | None, p: bool
) -> stats.TestResult:
    return stats.classifier_auc(ref, cur, seed=s.seed)


_CONTINUOUS: dict[str, _Test] = {"ks": _ks, "psi": _psi}
_EMBEDDING: dict[str, _Test] = {"mmd": _mmd, "classifier": _classifier}
_CLASS: dict[str, Callable[..., stats.TestResult]] = {"chi2": stats.chi2_test, "psi": stats.class_psi}


@dataclass(frozen=True)
class Statistic:
    """One row's statistic before a threshold is applied (what calibration collects)."""

    signal: str
    feature: str
    method: str
    result: stats.TestResult

    @property
    def key(self) -> str:
        return row_key(self.signal, self.feature, self.method)


def embedding_reference(
    reference: Signals, settings: DriftSettings, *, bandwidth: float | None = None
) -> tuple[np.ndarray, float] | None:
    """The reference rows the embedding tests use (at most ``max_reference``, seeded) and the kernel width.

    Args:
        reference: the reference signals; None is returned when they have no embeddings.
        settings: ``max_reference`` and ``seed``.
        bandwidth: the RBF width; None takes the median heuristic of these rows.
    """
    if reference.embeddings is None:
        return None
    emb = np.asarray(reference.embeddings)
    if len(emb) > settings.max_reference:
        pick = np.random.default_rng(settings.seed).choice(len(emb), settings.max_reference, replace=False)
        emb = emb[np.sort(pick)]
    return emb, bandwidth if bandwidth is not None else stats.median_bandwidth(emb, seed=settings.seed)


def statistics(
    reference: Signals,
    window: Signals,
    *,
    settings: DriftSettings,
    embedding_ref: tuple[np.ndarray, float] | None,
    p_values: bool = True,
) -> list[Statistic]:
    """Every row's statistic for the signals both samples have; ``p_values=False`` skips the costly parts.

    ``embedding_ref`` is :func:`embedding_reference` of the reference (passed in so calibration computes
    it once).
    """
    out: list[Statistic] = []
    for signal, ref, cur, methods in (
        ("input", reference.inputs, window.inputs, settings.input_methods),
        ("output", reference.outputs, window.outputs, settings.output_methods),
    ):
        for name in sorted(set(ref) & set(cur)):
            for m in methods:
                res = _CONTINUOUS[m](ref[name], cur[name], settings, None, p_values)
                out.append(Statistic(signal, name, m, res))
    if reference.classes is not None and window.classes is not None:
        if reference.num_classes != window.num_classes:
            raise DataError(
                f"The reference has {reference.num_classes} classes and the window {window.num_classes}; "
                f"expected the same model. Fix: compare a window with its own model version's reference."
            )
        k = int(reference.num_classes or 0)
        for m in settings.class_methods:
            res = _CLASS[m](reference.classes, window.classes, num_classes=k)
            out.append(Statistic("prediction", "class", m, res))
    if reference.confidence is not None and window.confidence is not None:
        for m in settings.confidence_methods:
            res = _CONTINUOUS[m](reference.confidence, window.confidence, settings, None, p_values)
            out.append(Statistic("confidence", "confidence", m, res))
    if embedding_ref is not None and window.embeddings is not None:
        emb, width = embedding_ref
        for m in settings.embedding_methods:
            res = _EMBEDDING[m](emb, np.asarray(window.embeddings), settings, width, p_values)
            out.append(Statistic("embedding", "embedding", m, res))
    if not out:
        raise DataError(
            "The reference and the window share no signal; expected at least one of inputs or outputs (by "
            "name), classes, confidence or embeddings in both. Fix: log the same signals the reference "
            "profile has."
        )
    return out


@dataclass(frozen=True)
class Measurement:
    """Every row's statistic for one window, before thresholds; no statistics when the window is too small."""

    statistics: tuple[Statistic, ...]
    n_ref: int
    n_cur: int
    min_window: int


def measure(
    reference: Signals,
    window: Signals,
    *,
    settings: DriftSettings | None = None,
    embedding_ref: tuple[np.ndarray, float] | None = None,
) -> Measurement:
    """The costly half of :func:`detect`: the statistics and p-values of a window, not yet judged.

    Args:
        reference: the reference profile's signals.
        window: the same signals of the window's items.
        settings: the tests to run and the minimum window; None for the defaults.
        embedding_ref: :func:`embedding_reference` of ``reference``, to compute it once for many windows;
            None computes it here.

    Raises:
        DataError: the reference is smaller than the minimum window, or the two share no signal.
    """
    settings = settings or DriftSettings()
    n_ref, n_cur = len(reference), len(window)
    if n_ref < settings.min_window:
        raise DataError(
            f"The reference has {n_ref} items; expected at least min_window={settings.min_window}. "
            f"Fix: build the reference profile from more held-out data."
        )
    if n_cur < settings.min_window:
        return Measurement((), n_ref, n_cur, settings.min_window)
    if embedding_ref is None:
        embedding_ref = embedding_reference(reference, settings)
    found = statistics(reference, window, settings=settings, embedding_ref=embedding_ref)
    return Measurement(tuple(found), n_ref, n_cur, settings.min_window)


def _judge_rows(found: tuple[Statistic, ...], thresholds: Thresholds) -> list[DriftRow]:
    if thresholds.calibrated:
        missing = [s.key for s in found if s.key not in thresholds.calibrated]
        if missing:
            raise ConfigError(
                f"The calibrated thresholds have no row {missing}; they cover "
                f"{sorted(thresholds.calibrated)}. Fix: calibrate again with the same signals and settings."
            )
        limits = thresholds.calibrated
        return [
            DriftRow(s.signal, s.feature, s.method, s.result.statistic, s.result.p_value, limits[s.key],
                     "statistic", s.result.statistic > limits[s.key])
            for s in found
        ]  # fmt: skip
    level = stats.bonferroni(thresholds.alpha, sum(s.result.p_value is not None for s in found))
    rows = []
    for s in found:
        r = s.result
        if r.p_value is None:
            rows.append(DriftRow(s.signal, s.feature, s.method, r.statistic, None, thresholds.psi,
                                 "statistic", r.statistic > thresholds.psi))  # fmt: skip
        else:
            rows.append(DriftRow(s.signal, s.feature, s.method, r.statistic, r.p_value, level,
                                 "p_value", r.p_value < level))  # fmt: skip
    return rows


def judge(measurement: Measurement, thresholds: Thresholds | None = None) -> DriftReport:
    """The cheap half of :func:`detect`: apply thresholds to a measurement.

    Raises:
        ConfigError: calibrated thresholds lack a row the measurement has.
    """
    m = measurement
    if not m.statistics:
        return DriftReport("not enough data", (), m.n_ref, m.n_cur, m.min_window)
    rows = tuple(_judge_rows(m.statistics, thresholds or Thresholds()))
    verdict: Verdict = "drift" if any(r.drifted for r in rows) else "no drift"
    return DriftReport(verdict, rows, m.n_ref, m.n_cur, m.min_window)


def detect(
    reference: Signals,
    window: Signals,
    *,
    thresholds: Thresholds | None = None,
    settings: DriftSettings | None = None,
) -> DriftReport:
    """Whether a window of traffic has drifted from the reference: ``judge(measure(...), thresholds)``.

    Args:
        reference: the reference profile's signals (held-out data at training time).
        window: the same signals of the window's items.
        thresholds: calibrated ones (:func:`~torchkiln.monitor.calibrate.calibrate`), or None for the
            fixed defaults (Bonferroni at ``alpha`` = 0.01 over the p-value rows, PSI > 0.25).
        settings: the tests to run and the minimum window; None for the defaults.

    Returns:
        A :class:`DriftReport`: "not enough data" (no rows) for a window under ``settings.min_window``
        items, else one row per signal, feature and method and the verdict "drift" or "no drift".

    Raises:
        DataError: the reference is smaller than the minimum window, or the two share no signal.
        ConfigError: calibrated thresholds lack a row this window has.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ref = Signals(inputs={"mean": rng.normal(size=2000)})
        >>> detect(ref, Signals(inputs={"mean": rng.normal(size=30)})).verdict
        'not enough data'
        >>> detect(ref, Signals(inputs={"mean": rng.normal(1.0, size=200)})).verdict
        'drift'
    """
    return judge(measure(reference, window, settings=settings), thresholds)
