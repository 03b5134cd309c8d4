"""The honest baseline of a classifier: a linear model on the same splits, and a paired comparison.

Before a network is trusted it should beat what a linear model reaches on the same data, in seconds:

- **text**: TF-IDF over word 1- and 2-grams (sublinear tf) + logistic regression;
- **images**: logistic regression on the standardized pixels, or, when an image has more than
  :data:`PIXEL_LIMIT` values, on :data:`RANDOM_FEATURES` random ReLU features of the image average-pooled
  to 32x32 (a fixed projection, seeded).

Both are fit on the train split (at most :data:`MAX_TRAIN` items, a stratified sample) with the inverse
regularization ``C`` chosen on the val split, then scored on the evaluated split. :func:`run_baseline` caches
what it predicts per data hash (``cache_dir()/baselines``), so a second ``kiln evaluate`` of the same data is
instant. :func:`compare` pairs the model's answers with the baseline's on the same items: the accuracy and
macro-F1 differences with paired bootstrap intervals.

scikit-learn is imported only when a baseline is fit (``pip install 'torchkiln[datasets]'``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from torchkiln.components.download import cache_dir
from torchkiln.core.errors import ConfigError, DataError
from torchkiln.core.io import atomic_write, atomic_write_text

log = logging.getLogger("torchkiln.baseline")

Kind = Literal["text", "pixels"]
VERSION = 1  # part of the cache key: bump it when the baselines change
MAX_TRAIN = 10_000  # training items the baseline is fit on (a stratified sample when there are more)
MAX_VAL = 5_000  # val items C is chosen on
PIXEL_LIMIT = 4_096  # more values per image than this: random features of the pooled image instead
POOLED = 32  # ... pooled to POOLED x POOLED first
RANDOM_FEATURES = 2_048
TEXT_C = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
PIXEL_C = (0.01, 0.1)  # standardized pixels want strong regularization (Fashion-MNIST val: 0.01 best)
TEXT_ITERATIONS = 1_000  # L-BFGS converges on TF-IDF features well before this
PIXEL_ITERATIONS = 100  # pixels converge slowly; 100 L-BFGS steps are within 0.1 point of 300 (seconds)
RESAMPLES = 2_000  # paired bootstrap resamples
INSTALL_HINT = "pip install 'torchkiln[datasets]'"


@dataclass(frozen=True)
class BaselineInputs:
    """One split as the baseline reads it: the texts, or the images as a uint8/float array ``(N, ...)``."""

    items: Sequence[str] | np.ndarray
    labels: np.ndarray  # (N,) int64 class indices

    def __post_init__(self) -> None:
        if len(self.items) != len(self.labels):
            raise DataError(
                f"BaselineInputs got {len(self.items)} items but {len(self.labels)} labels; expected one "
                f"label per item. Pass the items and labels of the same split."
            )


@dataclass(frozen=True)
class BaselineResult:
    """What the baseline predicted on the evaluated split, and how it was fit."""

    name: str
    probs: np.ndarray  # (N, K) float32, the evaluated split's items in order
    c: float  # the inverse regularization strength chosen on val
    val_accuracy: float | None  # at that C; None without a val split
    train_items: int  # the items it was fit on
    seconds: float  # fitting and predicting (0 from the cache: see ``cached``)
    cached: bool = False

    def describe(self) -> str:
        chosen = f"C={self.c:g} chosen on val" if self.val_accuracy is not None else f"C={self.c:g} (no val)"
        return f"{self.name}; fit on {self.train_items:,} train items, {chosen}"


def baseline_name(kind: Kind, item_shape: tuple[int, ...] = ()) -> str:
    """The baseline's name for a kind of input (and, for images, their shape).

    Example:
        >>> baseline_name("pixels", (1, 28, 28))
        'logistic regression on the pixels'
    """
    if kind == "text":
        return "TF-IDF (1-2-grams) + logistic regression"
    if math.prod(item_shape) <= PIXEL_LIMIT:
        return "logistic regression on the pixels"
    pooled = f"{POOLED}x{POOLED}-pooled pixels"
    return f"logistic regression on {RANDOM_FEATURES:,} random ReLU features of the {pooled}"


def run_baseline(
    kind: Kind,
    train: BaselineInputs,
    val: BaselineInputs | None,
    target: BaselineInputs,
    *,
    num_classes: int,
    seed: int = 0,
    cache: bool = True,
) -> BaselineResult:
    """Fit the baseline of ``kind`` on ``train`` (``C`` chosen on ``val``) and predict ``target``'s items.

    Args:
        kind: ``"text"`` (TF-IDF + logistic regression) or ``"pixels"`` (logistic regression on images).
        train: the train split; at most :data:`MAX_TRAIN` items are used (a stratified sample, seeded).
        val: the val split that chooses ``C``; None or empty: ``C=1``.
        target: the split to predict (the evaluated one; may be ``val`` itself).
        num_classes: ``K``; the probabilities have a column per class even when train lacks one.
        seed: seeds the sample and the random features.
        cache: reuse (and store) the prediction in ``cache_dir()/baselines``, keyed by a hash of the data.

    Returns:
        A :class:`BaselineResult`.

    Raises:
        ConfigError: scikit-learn is not installed. DataError: train holds fewer than two classes.

    Example:
        >>> r = run_baseline("text", train, val, test, num_classes=2)
        >>> r.probs.shape
        (1061, 2)
    """
    key = _cache_key(kind, train, val, target, num_classes, seed)
    folder = cache_dir() / "baselines"
    if cache and (hit := _read_cache(folder, key)) is not None:
        return hit
    start = time.perf_counter()
    result = _fit_predict(kind, train, val, target, num_classes=num_classes, seed=seed)
    result = BaselineResult(**{**asdict(result), "seconds": round(time.perf_counter() - start, 2)})
    if cache:
        _write_cache(folder, key, result)
    return result


def _fit_predict(
    kind: Kind,
    train: BaselineInputs,
    val: BaselineInputs | None,
    target: BaselineInputs,
    *,
    num_classes: int,
    seed: int,
) -> BaselineResult:
    linear = _sklearn()
    rng = np.random.default_rng(seed)
    fit_on = _sample(train.labels, MAX_TRAIN, rng)
    y = train.labels[fit_on]
    if len(np.unique(y)) < 2:
        raise DataError(
            f"The baseline needs at least two classes in the train split; it holds {len(np.unique(y))}. "
            f"Add items of the other classes, or set evaluate.baseline: false."
        )
    features = _text_features(train, fit_on) if kind == "text" else _pixel_features(train, fit_on, seed)
    x = features(train.items, fit_on)
    has_val = val is not None and len(val.labels) > 0
    # Without val nothing is chosen: scikit-learn's default for texts, the usual winner for pixels.
    grid = {(True, "text"): TEXT_C, (True, "pixels"): PIXEL_C, (False, "text"): (1.0,)}.get(
        (has_val, kind), PIXEL_C[:1]
    )
    iterations = TEXT_ITERATIONS if kind == "text" else PIXEL_ITERATIONS
    fits = [(c, _fit(linear, c, iterations, x, y)) for c in grid]
    c, model = fits[0]
    val_accuracy = None
    if has_val and val is not None:
        on = _sample(val.labels, MAX_VAL, rng)
        xv = features(val.items, on)
        scores = [(m.score(xv, val.labels[on]), -cv, cv, m) for cv, m in fits]
        val_accuracy, _, c, model = max(scores, key=lambda s: s[:2])  # ties: the stronger regularization
    probs = np.zeros((len(target.labels), num_classes), dtype=np.float32)
    if len(target.labels):
        probs[:, model.classes_] = model.predict_proba(features(target.items, None))
    name = baseline_name(kind, tuple(np.asarray(train.items).shape[1:]) if kind == "pixels" else ())
    return BaselineResult(name, probs, float(c), _round(val_accuracy), len(fit_on), 0.0)


def _sklearn() -> Any:
    try:
        from sklearn import linear_model
    except ImportError:
        raise ConfigError(
            f"The classification baseline needs scikit-learn, which is not installed. Install it with: "
            f"{INSTALL_HINT}, or set evaluate.baseline: false."
        ) from None
    return linear_model


def _fit(linear: Any, c: float, iterations: int, x: Any, y: np.ndarray) -> Any:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # the pixel baseline stops at PIXEL_ITERATIONS on purpose
        warnings.simplefilter("ignore", ConvergenceWarning)
        return linear.LogisticRegression(C=c, max_iter=iterations).fit(x, y)


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


def sample_indices(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """At most ``limit`` indices of ``labels``, every class keeping its share, in split order.

    For a task whose items are costly to read (image files): read only these for the train (``MAX_TRAIN``)
    and val (``MAX_VAL``) splits; :func:`run_baseline` would sample them down to that anyway.

    Example:
        >>> len(sample_indices(np.array([0] * 30 + [1] * 10), 8))
        8
    """
    return _sample(np.asarray(labels), limit, np.random.default_rng(seed))


def _sample(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` indices, every class keeping its share (sorted, so the sample keeps split order)."""
    n = len(labels)
    if n <= limit:
        return np.arange(n)
    keep = []
    for k in np.unique(labels):
        where = np.flatnonzero(labels == k)
        take = max(1, round(len(where) * limit / n))
        keep.append(rng.choice(where, size=min(take, len(where)), replace=False))
    return np.sort(np.concatenate(keep))


def _text_features(train: BaselineInputs, fit_on: np.ndarray) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
    vectorizer.fit([train.items[i] for i in fit_on])  # the vocabulary and idf see train only

    def features(items: Sequence[str] | np.ndarray, on: np.ndarray | None) -> Any:
        chosen = list(items) if on is None else [items[i] for i in on]
        return vectorizer.transform(chosen)

    return features


def _pixel_features(train: BaselineInputs, fit_on: np.ndarray, seed: int) -> Any:
    """Standardized pixels (mean and std of the train sample), or random ReLU features of pooled images."""
    import torch

    shape = np.asarray(train.items).shape[1:]
    project = None
    if math.prod(shape) > PIXEL_LIMIT:
        width = (shape[0] if len(shape) == 3 else 1) * POOLED * POOLED
        g = torch.Generator().manual_seed(seed)
        project = torch.randn(width, RANDOM_FEATURES, generator=g) / math.sqrt(width)

    def raw(items: np.ndarray, on: np.ndarray | None) -> np.ndarray:
        chosen = np.asarray(items if on is None else items[on], dtype=np.float32) / 255.0
        if project is None:
            return chosen.reshape(len(chosen), -1)
        t = torch.from_numpy(chosen)
        t = t.unsqueeze(1) if t.ndim == 3 else t  # (N, C, H, W)
        pooled = torch.nn.functional.adaptive_avg_pool2d(t, POOLED).flatten(1)
        pooled = (pooled - pooled.mean(1, keepdim=True)) / pooled.std(1, keepdim=True).clamp(min=1e-6)
        return torch.relu(pooled @ project).numpy()

    base = raw(np.asarray(train.items), fit_on)
    mean, std = base.mean(0), base.std(0) + 1e-6

    def features(items: Sequence[str] | np.ndarray, on: np.ndarray | None) -> np.ndarray:
        return (raw(np.asarray(items), on) - mean) / std

    return features


# ---- the cache ---------------------------------------------------------------------------------------


def _cache_key(
    kind: Kind,
    train: BaselineInputs,
    val: BaselineInputs | None,
    target: BaselineInputs,
    num_classes: int,
    seed: int,
) -> str:
    h = hashlib.sha256(f"v{VERSION}|{kind}|{num_classes}|{seed}|{MAX_TRAIN}|{MAX_VAL}".encode())
    for part in (train, val, target):
        if part is None:
            h.update(b"|none")
            continue
        h.update(f"|{len(part.labels)}|".encode())
        h.update(np.ascontiguousarray(part.labels, dtype=np.int64).tobytes())
        if kind == "text":
            for text in part.items:
                h.update(str(text).encode("utf-8", "surrogatepass") + b"\x00")
        else:
            arr = np.ascontiguousarray(part.items)
            h.update(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes())
    return h.hexdigest()


def _read_cache(folder: Path, key: str) -> BaselineResult | None:
    meta_file, probs_file = folder / f"{key}.json", folder / f"{key}.npy"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        probs = np.load(probs_file, allow_pickle=False)  # never unpickle: a plain float32 array
        return BaselineResult(
            name=str(meta["name"]),
            probs=probs,
            c=float(meta["c"]),
            val_accuracy=meta["val_accuracy"],
            train_items=int(meta["train_items"]),
            seconds=float(meta["seconds"]),
            cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: fit again (and overwrite)


def _write_cache(folder: Path, key: str, result: BaselineResult) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{key}.npy", lambda f: np.save(f, result.probs, allow_pickle=False))
        meta = {k: v for k, v in asdict(result).items() if k not in ("probs", "cached")}
        atomic_write_text(folder / f"{key}.json", json.dumps(meta) + "\n")  # last: it marks a whole entry
    except OSError as exc:  # a read-only cache costs a refit next time, nothing more
        log.info(
            "The baseline's cache in %s cannot be written (%s); it will be fit again next time.", folder, exc
        )


# ---- the paired comparison ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """``model - baseline`` on the same items: the value, its paired bootstrap 95 % interval, and the share
    of resamples in which the model is not better (``<= 0``)."""

    value: float
    low: float
    high: float
    p_not_better: float


def macro_f1(
    preds: np.ndarray, targets: np.ndarray, num_classes: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Macro-F1 of ``preds``, once per row of ``weights`` (item counts of a resample; None: each item once).

    As torchmetrics' macro average: classes with no true item and no prediction are left out.

    Returns:
        ``(R,)`` macro-F1 values, one per row of ``weights`` (``(1,)`` when None).

    Example:
        >>> macro_f1(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
        array([0.66666667])
    """
    w = np.ones((1, len(targets))) if weights is None else np.asarray(weights, dtype=np.float64)
    pred_hot = np.eye(num_classes)[preds]  # (N, K)
    true_hot = np.eye(num_classes)[targets]
    tp = w @ (pred_hot * true_hot)  # (R, K)
    predicted, actual = w @ pred_hot, w @ true_hot
    present = (predicted + actual) > 0
    f1 = np.divide(2 * tp, predicted + actual, out=np.zeros_like(tp), where=present)
    return (f1 * present).sum(1) / np.maximum(present.sum(1), 1)


def paired_bootstrap(
    model_preds: np.ndarray,
    baseline_preds: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Difference]:
    """Paired bootstrap of ``model - baseline`` accuracy and macro-F1 over the same items.

    Each resample draws ``N`` items with replacement and scores both classifiers on that same draw; the
    interval is the 2.5th and 97.5th percentile of the differences.

    Args:
        model_preds, baseline_preds: ``(N,)`` predicted classes of the two classifiers.
        targets: ``(N,)`` true classes.
        num_classes: ``K``.
        resamples: bootstrap resamples.
        seed: seeds the draws.

    Returns:
        ``{"accuracy": Difference, "macro_f1": Difference}``.

    Raises:
        DataError: the arrays differ in length or are empty.

    Example:
        >>> d = paired_bootstrap(np.array([1, 1, 1, 0]), np.array([1, 0, 0, 0]), np.array([1, 1, 1, 1]), 2)
        >>> d["accuracy"].value
        0.5
    """
    n = len(targets)
    if n == 0 or len(model_preds) != n or len(baseline_preds) != n:
        raise DataError(
            f"paired_bootstrap needs predictions of both classifiers for the same, non-empty items; got "
            f"{len(model_preds)} model, {len(baseline_preds)} baseline and {n} true labels."
        )
    rng = np.random.default_rng(seed)
    # Counts of each item per resample, in chunks so that memory stays bounded for large splits.
    acc_diffs, f1_diffs = [], []
    gain = (model_preds == targets).astype(np.float64) - (baseline_preds == targets)  # (N,)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=rows).astype(np.float64)  # (R, N)
        acc_diffs.append(counts @ gain / n)
        f1_diffs.append(
            macro_f1(model_preds, targets, num_classes, counts)
            - macro_f1(baseline_preds, targets, num_classes, counts)
        )
    full = {
        "accuracy": float(gain.mean()),
        "macro_f1": float(
            macro_f1(model_preds, targets, num_classes)[0] - macro_f1(baseline_preds, targets, num_classes)[0]
        ),
    }
    out = {}
    for name, diffs in (("accuracy", np.concatenate(acc_diffs)), ("macro_f1", np.concatenate(f1_diffs))):
        low, high = np.percentile(diffs, [2.5, 97.5])
        out[name] = Difference(full[name], float(low), float(high), float((diffs <= 1e-12).mean()))
    return out


@dataclass(frozen=True)
class BaselineComparison:
    """The model beside its baseline on the evaluated split (``metrics.json``'s ``baseline``)."""

    name: str
    detail: str  # how it was fit: train items, C
    accuracy: float
    macro_f1: float
    model_accuracy: float
    model_macro_f1: float
    accuracy_difference: Difference
    macro_f1_difference: Difference
    resamples: int
    seconds: float

    @property
    def verdict(self) -> Literal["better", "not clearly better", "not better"]:
        """``better``: the accuracy difference's interval is above 0; ``not better``: the model's accuracy
        is at or below the baseline's; else ``not clearly better``."""
        d = self.accuracy_difference
        if d.value <= 0:
            return "not better"
        return "better" if d.low > 0 else "not clearly better"

    def line(self) -> str:
        """One line for ``kiln evaluate`` and the report."""
        d = self.accuracy_difference
        diff = f"{100 * d.value:+.2f} points [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
        scores = f"accuracy {self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f}"
        head = f"baseline ({self.name}): {scores}; model {diff}"
        if self.verdict == "better":
            return f"{head}: the model beats it."
        if self.verdict == "not clearly better":
            return f"{head}: NOT clearly better than the baseline (the 95% interval includes 0)."
        return f"{head}: the model does NOT beat the baseline. {BELOW_BASELINE_FIXES}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        return out


BELOW_BASELINE_FIXES = (
    "Usual fixes: pretrained weights or embeddings (model.pretrained, model.args.embeddings: minilm for "
    "text), a smaller model, more regularization (dropout, weight decay), or a pretrained encoder (minilm)."
)


def compare(
    model_preds: np.ndarray,
    targets: np.ndarray,
    result: BaselineResult,
    *,
    num_classes: int,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> BaselineComparison:
    """The model's predictions beside the baseline's on the same items.

    Args:
        model_preds: ``(N,)`` the model's answers (at its operating point).
        targets: ``(N,)`` true classes.
        result: :func:`run_baseline` on the same split.
        num_classes: ``K``.
        resamples: paired bootstrap resamples.
        seed: seeds them.

    Returns:
        A :class:`BaselineComparison`.

    Example:
        >>> compare(preds, targets, run_baseline("text", tr, va, te, num_classes=2), num_classes=2).verdict
        'better'
    """
    base = result.probs.argmax(1)
    diffs = paired_bootstrap(model_preds, base, targets, num_classes, resamples=resamples, seed=seed)
    return BaselineComparison(
        name=result.name,
        detail=result.describe(),
        accuracy=float((base == targets).mean()),
        macro_f1=float(macro_f1(base, targets, num_classes)[0]),
        model_accuracy=float((model_preds == targets).mean()),
        model_macro_f1=float(macro_f1(model_preds, targets, num_classes)[0]),
        accuracy_difference=diffs["accuracy"],
        macro_f1_difference=diffs["macro_f1"],
        resamples=resamples,
        seconds=result.seconds,
    )
