"""The evidence ``kiln retrain`` decides on: McNemar's test on paired correctness, the gates, and the
decision record.

Champion and challenger answer the same fresh test items. Only the items where they disagree on being
right carry evidence: ``b`` the champion got right and the challenger wrong, ``c`` the reverse. Under
"neither is better" each such item is a fair coin, so ``c ~ Binomial(b + c, 1/2)``; McNemar's exact test
reads its p-value off that binomial, and the mid-p version counts only half the probability of the
observed count (less conservative, and still close to the nominal level; Fagerland et al., 2013).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from torchkiln.core.config_io import apply_override, format_errors
from torchkiln.core.errors import ConfigError
from torchkiln.core.io import atomic_write_text


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of "the challenger is right more often than the champion" on paired items.

    ``b``: champion right, challenger wrong; ``c``: champion wrong, challenger right. The one-sided
    p-values test c > b; the two-sided ones test c != b.
    """

    b: int
    c: int
    p_exact: float  # one-sided, P(X >= c)
    p_midp: float  # one-sided, P(X > c) + P(X = c) / 2
    p_exact_two_sided: float
    p_midp_two_sided: float

    @property
    def discordant(self) -> int:
        return self.b + self.c


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> McNemar:
    """McNemar's exact and mid-p tests on two models' per-item correctness (same items, same order).

    Args:
        champion_correct, challenger_correct: ``(N,)`` booleans.

    Returns:
        The discordant counts and the one- and two-sided p-values (1.0 when no item is discordant).

    Raises:
        ValueError: the two arrays differ in length.

    Example:
        >>> mcnemar(np.array([1, 1, 0, 0, 0], bool), np.array([1, 1, 1, 1, 1], bool)).p_exact
        0.125
    """
    from scipy.stats import binom

    a, z = np.asarray(champion_correct, bool), np.asarray(challenger_correct, bool)
    if a.shape != z.shape:
        raise ValueError(f"paired correctness needs two arrays of one shape; got {a.shape} and {z.shape}")
    b, c = int((a & ~z).sum()), int((~a & z).sum())
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0, 1.0, 1.0, 1.0)
    p_eq = float(binom.pmf(c, n, 0.5))
    upper = float(binom.sf(c - 1, n, 0.5))  # P(X >= c)
    lower = float(binom.cdf(c, n, 0.5))  # P(X <= c)
    exact2 = min(1.0, 2 * min(upper, lower))
    return McNemar(
        b=b,
        c=c,
        p_exact=upper,
        p_midp=upper - p_eq / 2,
        p_exact_two_sided=exact2,
        p_midp_two_sided=min(1.0, exact2 - p_eq),
    )


class RetrainSettings(BaseModel):
    """Every gate of ``kiln retrain``, with its default. YAML (``--settings``) or flags."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.05, gt=0, lt=1, description="The challenger must beat the champion at p < alpha.")
    test: Literal["mid-p", "exact"] = Field("mid-p", description="Which one-sided McNemar p-value gates.")
    min_effect: float = Field(
        0.01, ge=0, le=1, description="...and by at least this much accuracy (0.01 = 1 point)."
    )
    test_fraction: float = Field(
        0.3, gt=0, lt=1, description="Share of each class of the new data held out as the fresh test set."
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the new data added to val.")
    min_test_items: int = Field(20, ge=1, description="Refuse to judge on a smaller fresh test set.")
    from_scratch: bool = Field(False, description="Train the challenger from scratch, not from the champion.")
    epochs: int | None = Field(
        None, ge=1, description="The challenger's train.epochs (default: the config's)."
    )
    seed: int = Field(0, description="Splits the new data into train/val/test.")
    replay_items: int = Field(500, ge=0, description="Replay this many last logged inputs (0: skip).")
    min_replay_agreement: float = Field(
        0.0, ge=0, le=1, description="Reject below this agreement with the champion on replayed traffic."
    )
    shadow_requests: int = Field(
        50, ge=1, description="With --server: judge the shadow on this many requests."
    )
    shadow_timeout_s: float = Field(300, gt=0, description="...which must reach the log within this time.")
    shadow_settle_s: float = Field(
        5, ge=0, description="How long the last shadow answers may lag in the log."
    )
    shadow_max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Roll back when more mirrored requests than this fail in the challenger.",
    )
    shadow_max_p99_ms: float | None = Field(
        1000, gt=0, description="...or its p99 model latency exceeds this."
    )
    shadow_min_agreement: float = Field(
        0.0, ge=0, le=1, description="...or it agrees less with the champion."
    )
    canary_weight: float = Field(
        0.1, ge=0, le=1, description="With --server: then answer this share of request keys (0: no canary)."
    )
    canary_good_error_rate: float = Field(
        0.001, gt=0, lt=1, description="The sequential test's healthy failure rate (H0)."
    )
    canary_max_error_rate: float = Field(
        0.05, gt=0, lt=1, description="...against this failing one (H1): roll back when it is likelier."
    )
    canary_alpha: float = Field(0.05, gt=0, lt=0.5, description="The risk of rolling back a healthy canary.")
    canary_beta: float = Field(0.05, gt=0, lt=0.5, description="The risk of promoting a failing canary.")
    canary_min_requests: int = Field(
        30, ge=1, description="Pass no canary, and judge no p99, on fewer canary requests."
    )
    canary_max_requests: int = Field(
        500, ge=1, description="Undecided by then: pass if its failure rate <= canary_max_error_rate."
    )
    canary_max_p99_ms: float | None = Field(
        1000, gt=0, description="Roll back when the canary's p99 request latency exceeds this."
    )
    canary_timeout_s: float = Field(600, gt=0, description="The canary must reach a decision within this.")
    promote: bool = Field(True, description="Move alias champion to a challenger that passes every gate.")

    @model_validator(mode="after")
    def _rates_in_order(self) -> RetrainSettings:
        if self.canary_good_error_rate >= self.canary_max_error_rate:
            raise ValueError(
                f"canary_good_error_rate ({self.canary_good_error_rate}) must be below canary_max_error_rate "
                f"({self.canary_max_error_rate}): the sequential test tells the two apart"
            )
        if self.canary_min_requests > self.canary_max_requests:
            raise ValueError(
                f"canary_min_requests ({self.canary_min_requests}) must not exceed canary_max_requests "
                f"({self.canary_max_requests})"
            )
        return self


def load_retrain_settings(
    path: Path | None = None, overrides: Sequence[str] = (), **values: Any
) -> RetrainSettings:
    """The gates of ``kiln retrain``: the YAML file ``path`` (``--settings``), then ``KEY=VALUE``
    ``overrides`` (``--set``), then ``values`` (flags; None is left out).

    Raises:
        ConfigError: the file is missing or not a YAML mapping, an override is not KEY=VALUE, or a gate is
            unknown or out of range (all of them listed).

    Example:
        >>> load_retrain_settings(overrides=["alpha=0.01"], from_scratch=None).alpha
        0.01
    """
    raw: Any = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(
                f"Retrain settings file '{path}' does not exist. Check the path, or leave --settings out for "
                "the defaults (docs/monitoring.md lists them)."
            )
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"Retrain settings file '{path}' is not valid YAML: {exc}. Fix the syntax."
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"Retrain settings file '{path}' must hold a mapping of gates (alpha: 0.01); got "
                f"{type(raw).__name__}."
            )
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' is not KEY=VALUE. Example: --set alpha=0.01")
        raw = apply_override(raw, item)
    raw |= {k: v for k, v in values.items() if v is not None}
    try:
        return RetrainSettings(**raw)
    except ValidationError as exc:
        what, fix = "The retrain settings are invalid", "Fix the setting; docs/monitoring.md lists them."
        raise ConfigError(format_errors(exc, RetrainSettings, what=what, fix=fix)) from None


@dataclass
class DecisionRecord:
    """What ``kiln retrain`` saw and decided; ``decision.json`` in the retrain folder and in MLflow."""

    model: str
    outcome: Literal["promoted", "accepted", "rejected", "failed", "planned"]  # failed: a live step raised
    reason: str
    settings: dict[str, Any]
    champion: dict[str, Any]  # version, uri, metrics on the fresh test set
    challenger: dict[str, Any]  # run_dir, registered version (if any), metrics
    data: dict[str, Any]  # sources, policy, counts, data_sha256, test_sha256
    test: dict[str, Any] = field(default_factory=dict)  # McNemar figures
    replay: dict[str, Any] | None = None
    live: dict[str, Any] | None = None  # promotion on a server: reload figures
    drift_report: str | None = None
    created: str = ""

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True, default=str) + "\n")
        return path


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    accuracy_gain: float
    p_value: float


def judge(
    champion_correct: np.ndarray, challenger_correct: np.ndarray, settings: RetrainSettings
) -> tuple[Verdict, McNemar]:
    """The offline gate: the challenger must be significantly better (p < alpha) and by min_effect.

    Example:
        >>> verdict, test = judge(champ, chall, RetrainSettings())
        >>> verdict.passed, verdict.reason
    """
    n = len(champion_correct)
    test = mcnemar(champion_correct, challenger_correct)
    gain = float(np.mean(challenger_correct) - np.mean(champion_correct)) if n else 0.0
    p = test.p_midp if settings.test == "mid-p" else test.p_exact
    figures = (
        f"accuracy {np.mean(champion_correct):.4f} -> {np.mean(challenger_correct):.4f} "
        f"({gain * 100:+.2f} points) on {n} fresh test items; McNemar b={test.b} c={test.c}, "
        f"one-sided {settings.test} p={p:.4g}"
    )
    if n < settings.min_test_items:
        return Verdict(
            False,
            f"the fresh test set has {n} items, fewer than min_test_items "
            f"({settings.min_test_items}); bring more new data",
            gain,
            p,
        ), test
    if p >= settings.alpha:
        return Verdict(False, f"not significantly better: {figures} >= alpha {settings.alpha}", gain, p), test
    if gain < settings.min_effect:
        why = f"better, but by less than min_effect {settings.min_effect * 100:.2f} points: {figures}"
        return Verdict(False, why, gain, p), test
    return Verdict(True, f"significantly better: {figures} < alpha {settings.alpha}", gain, p), test


def plan(record: DecisionRecord, settings: RetrainSettings) -> list[str]:
    """The steps and gates of a retrain, as lines (what ``--dry-run`` prints)."""
    s = settings
    return [
        f"retrain '{record.model}': champion version {record.champion['version']}",
        f"1. data: {', '.join(record.data['sources']) or '(none given)'}; new data split per class "
        f"{1 - s.test_fraction - s.val_fraction:.0%} train / {s.val_fraction:.0%} val / "
        f"{s.test_fraction:.0%} "
        f"fresh test (seed {s.seed}); the original train+val kept",
        f"2. train a challenger {'from scratch' if s.from_scratch else 'fine-tuned from the champion'}"
        + (f" for {s.epochs} epoch(s)" if s.epochs else ""),
        f"3. gate: McNemar one-sided {s.test} p < {s.alpha} AND accuracy gain >= {s.min_effect * 100:.2f} "
        f"points, on at least {s.min_test_items} fresh test items",
        "4. register the challenger, alias challenger",
        f"5. replay the last {s.replay_items} logged requests (with --feedback-from); gate: agreement with "
        f"the champion >= {s.min_replay_agreement}",
        f"6. with --server: shadow for {s.shadow_requests} logged requests; roll back past error rate "
        f"{s.shadow_max_error_rate}, p99 {s.shadow_max_p99_ms} ms, agreement below {s.shadow_min_agreement}; "
        + (
            f"then a canary answering {s.canary_weight:.0%} of request keys, judged by a sequential test of "
            f"its failure rate ({s.canary_good_error_rate} healthy vs {s.canary_max_error_rate} failing, "
            f"alpha {s.canary_alpha}, beta {s.canary_beta}; {s.canary_min_requests} to "
            f"{s.canary_max_requests} canary requests) and its p99 (<= {s.canary_max_p99_ms} ms); rolled "
            "back by itself past either"
            if s.canary_weight > 0
            else "no canary (canary_weight 0)"
        ),
        "7. "
        + (
            "promote: alias champion -> challenger, reload the server (--server), check every worker"
            if s.promote
            else "no promotion (promote: false): the challenger alias stays for review"
        ),
    ]


def shadow_failures(figures: dict[str, Any], s: RetrainSettings) -> list[str]:
    """Which shadow gates the figures of :func:`torchkiln.monitor.live.shadow_figures` fail ([]: none)."""
    failed = []
    if figures["error_rate"] > s.shadow_max_error_rate:
        failed.append(
            f"error rate {figures['error_rate']:.3f} > shadow_max_error_rate {s.shadow_max_error_rate}"
        )
    p99 = figures["p99_ms"]
    if s.shadow_max_p99_ms and p99 is not None and p99 > s.shadow_max_p99_ms:
        failed.append(f"p99 {p99:.1f} ms > shadow_max_p99_ms {s.shadow_max_p99_ms}")
    agreement = figures["agreement"]
    if agreement is not None and agreement < s.shadow_min_agreement:
        failed.append(f"agreement {agreement:.3f} < shadow_min_agreement {s.shadow_min_agreement}")
    return failed


@dataclass(frozen=True)
class CanaryTest:
    """Wald's sequential probability ratio test of a canary's failure rate, read after every request.

    Each canary request fails or not. H0: it fails at ``p0`` (healthy); H1: at ``p1`` (failing). After
    ``n`` requests with ``k`` failures the log-likelihood ratio is
    ``k ln(p1/p0) + (n - k) ln((1 - p1)/(1 - p0))``. It crosses ``ln((1 - beta)/alpha)``: roll back (a
    healthy canary is rolled back with probability about ``alpha``); it crosses ``ln(beta/(1 - alpha))``:
    healthy (a failing canary passes with probability about ``beta``). Wald (1945); the test needs, on
    average, far fewer requests than a fixed-size test of the same risks.

    Example:
        >>> t = CanaryTest(p0=0.001, p1=0.05, alpha=0.05, beta=0.05)
        >>> t.decide(failures=0, requests=59), t.decide(failures=1, requests=10)
        ('pass', 'fail')
    """

    p0: float
    p1: float
    alpha: float
    beta: float

    @property
    def upper(self) -> float:
        return float(np.log((1 - self.beta) / self.alpha))

    @property
    def lower(self) -> float:
        return float(np.log(self.beta / (1 - self.alpha)))

    def llr(self, failures: int, requests: int) -> float:
        ok = requests - failures
        return float(failures * np.log(self.p1 / self.p0) + ok * np.log((1 - self.p1) / (1 - self.p0)))

    def decide(self, failures: int, requests: int) -> Literal["pass", "fail"] | None:
        """'fail' past the upper bound, 'pass' past the lower one, None while undecided."""
        llr = self.llr(failures, requests)
        if llr >= self.upper:
            return "fail"
        if llr <= self.lower:
            return "pass"
        return None

    @classmethod
    def of(cls, s: RetrainSettings) -> CanaryTest:
        return cls(s.canary_good_error_rate, s.canary_max_error_rate, s.canary_alpha, s.canary_beta)


def canary_verdict(
    failures: int, requests: int, p99_ms: float | None, s: RetrainSettings
) -> tuple[Literal["pass", "fail"] | None, str]:
    """The canary's decision after ``requests`` canary requests (``failures`` of them failed) and the p99
    of their latency: ('fail', why) at once past a limit; ('pass', why) once the sequential test says
    healthy on at least ``canary_min_requests``; (None, '') while undecided. At ``canary_max_requests``
    it decides by the observed failure rate.
    """
    test = CanaryTest.of(s)
    llr = test.llr(failures, requests)
    rate = failures / requests if requests else 0.0
    figures = f"{failures} of {requests} canary requests failed ({rate:.3f})"
    decision = test.decide(failures, requests)
    if decision == "fail":
        return "fail", (
            f"{figures}: the sequential test prefers canary_max_error_rate {s.canary_max_error_rate} to "
            f"canary_good_error_rate {s.canary_good_error_rate} (log-likelihood ratio {llr:.2f} >= "
            f"{test.upper:.2f})"
        )
    if requests < s.canary_min_requests:
        return None, ""
    if s.canary_max_p99_ms and p99_ms is not None and p99_ms > s.canary_max_p99_ms:
        return "fail", f"p99 {p99_ms:.1f} ms > canary_max_p99_ms {s.canary_max_p99_ms} on {requests} requests"
    if decision == "pass":
        return (
            "pass",
            f"{figures}: healthy by the sequential test (log-likelihood ratio {llr:.2f} <= {test.lower:.2f})",
        )
    if requests >= s.canary_max_requests:
        if rate <= s.canary_max_error_rate:
            return (
                "pass",
                f"{figures} <= canary_max_error_rate {s.canary_max_error_rate} at canary_max_requests",
            )
        return "fail", f"{figures} > canary_max_error_rate {s.canary_max_error_rate} at canary_max_requests"
    return None, ""
