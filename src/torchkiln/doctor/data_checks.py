"""The labels' and the pixels' checks: class balance and class sizes, normalization, exposure."""

from __future__ import annotations

import numpy as np

from torchkiln.components.image_scan import ImageScan
from torchkiln.components.splits import SPLITS
from torchkiln.doctor.findings import EXAMPLES, ITEMS, Finding, plural, share
from torchkiln.doctor.registry import check
from torchkiln.doctor.subject import Subject

IMBALANCED = 4.0  # largest / smallest train class from which a model drifts to the large class
UNEVEN = 2.0  # from here it is worth knowing
MIN_TRAIN = 10  # items of a class below which a model learns little of it
MIN_EVAL = 10  # items of a class in val or test below which its recall moves in steps of over 10 points
# Normalized pixels whose mean is off 0 by more than FAR_MEAN, or whose spread is off 1 by more than a factor
# FAR_STD, are far: the mistakes are gross (the 0..255 scale, a std typed 10x too small). Conventions such as
# mean = std = 0.5 (pixels in [-1, 1]) leave photos a spread of about 0.45 (ImageNet's pixel std is 0.226).
FAR_MEAN = 2.0
FAR_STD = 4.0
BLOWN = 0.9  # share of pixels at full white from which an image is blown out (not a shot on a white backdrop)
DARK = 16  # an image whose brightest pixel is below this (of 255) shows almost nothing
FLAT = 2  # grey levels between the darkest and the brightest pixel of a constant image


def _counts(s: Subject, split: str) -> np.ndarray | None:
    part = s.items(split)
    if part is None or part.labels is None or s.view is None:
        return None
    return np.bincount(part.labels, minlength=len(s.view.classes))


def _imbalance(train: np.ndarray, classes: list[str], handled: str) -> list[Finding]:
    """The train split's largest class against its smallest; ``handled``: what in the config evens it out."""
    big, small = int(train.argmax()), int(train.argmin())
    if not train[small] or train[big] / train[small] < UNEVEN:
        return []
    ratio = train[big] / train[small]
    two = (
        " For two classes, choose the decision threshold on val (task.threshold)."
        if len(classes) == 2
        else ""
    )
    effect = (
        f"; {handled} evens it out."
        if handled
        else ": a model leans to the large class, and accuracy hides it."
    )
    return [
        Finding(
            "class-balance",
            "info" if handled or ratio < IMBALANCED else "warning",
            f"train is imbalanced: '{classes[big]}' has {train[big]:,} items, '{classes[small]}' "
            f"{train[small]:,} ({ratio:.1f} to 1){effect}",
            "Set train.class_weights: auto or data.sampler: balanced (one of them), and judge the model "
            f"by per-class recall (kiln evaluate's report), not accuracy.{two}",
            count=int(train[small]),
        )
    ]


def _thin(split: str, counts: np.ndarray, classes: list[str]) -> list[Finding]:
    """The classes of ``split`` with too few items to learn (train) or to measure (val, test)."""
    least = MIN_TRAIN if split == "train" else MIN_EVAL
    thin = [c for c in np.argsort(counts, kind="stable") if counts[c] < least]
    if not thin:
        return []
    named = ", ".join(f"'{classes[c]}' {counts[c]}" for c in thin[:EXAMPLES])
    more = f" and {len(thin) - EXAMPLES} more" if len(thin) > EXAMPLES else ""
    if split == "train":
        why, fix = "too few to learn from", "Add train items of these classes (or merge them into others)."
    else:
        why = "too few to measure: a class of n items moves its recall in steps of 100/n points"
        fix = f"Add {split} items of these classes, or raise data.split.{split}."
    return [
        Finding(
            "class-balance",
            "warning",
            f"{split}: {plural(len(thin), 'class', 'classes')} under {least} items ({named}{more}), {why}.",
            fix,
            count=len(thin),
            items=tuple(f"{classes[c]}: {counts[c]}" for c in thin),
        )
    ]


@check("class-balance")
def class_balance(s: Subject) -> list[Finding]:
    """Classes are balanced enough to learn, and each split has enough of every class to learn or measure."""
    train = _counts(s, "train")
    if train is None or s.view is None or not len(train):
        return []
    classes, balancing = list(s.view.classes), s.view.balancing
    weights = "train.class_weights" if s.cfg.train.class_weights is not None else ""
    out = _imbalance(train, classes, " and ".join(x for x in (weights, balancing) if x))
    if weights and balancing:
        out.append(
            Finding(
                "class-balance",
                "warning",
                f"train.class_weights and {balancing} both even out the classes: together a rare item is "
                f"drawn more often and also weighs more, so the rare classes end up over-weighted.",
                "Keep one of them.",
            )
        )
    for split in SPLITS:
        counts = train if split == "train" else _counts(s, split)
        if counts is not None and counts.sum():
            out += _thin(split, counts, classes)
    return out


def _pixel_stats(scan: ImageScan) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of all pixels, as fractions of 255."""
    mean = scan.mean.mean(axis=0)
    std = np.sqrt(np.maximum(scan.square.mean(axis=0) - mean**2, 0.0))
    return mean / 255.0, std / 255.0


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


@check("normalization")
def normalization(s: Subject) -> list[Finding]:
    """The normalization the config or the pretrained weights set is close to the train images' own."""
    norm = s.view.normalization if s.view is not None else None
    scan = s.scan("train")
    if norm is None or scan is None or not len(scan):
        return []
    mean, std = _pixel_stats(scan)
    given_mean, given_std = np.asarray(norm.mean), np.asarray(norm.std)
    if len(given_mean) != len(mean):
        return []
    shift = (mean - given_mean) / given_std  # the normalized pixels' mean, per channel
    spread = std / given_std  # their std
    if np.abs(shift).max() <= FAR_MEAN and (spread.max() <= FAR_STD and spread.min() >= 1 / FAR_STD):
        return []
    scale = (
        " The config's look like the 0..255 scale; kiln's are fractions of 255."
        if given_mean.max() > 1
        else ""
    )
    return [
        Finding(
            "normalization",
            "warning",
            f"The normalization of {norm.source} (mean {_fmt(norm.mean)}, std {_fmt(norm.std)}) is far from "
            f"the train images' own (mean {_fmt(mean)}, std {_fmt(std)}): normalized, their pixels average "
            f"{_fmt(shift)} with a spread of {_fmt(spread)}, where about 0 and 1 are expected.{scale}",
            "Remove data.mean and data.std to compute them from the train split, or give them as fractions "
            "of 255 (for pretrained weights: check that the images are of the kind the weights learned on).",
        )
    ]


@check("image-exposure")
def image_exposure(s: Subject) -> list[Finding]:
    """No image is constant (one grey), blown out (90% full white) or black (nothing above 16 of 255)."""
    out = []
    for split in SPLITS:
        scan, part = s.scan(split), s.items(split)
        if scan is None or part is None:
            continue
        constant = scan.high.astype(int) - scan.low <= FLAT
        kinds = {
            "constant (a single grey level)": constant,
            f"blown out (at least {BLOWN:.0%} of their pixels full white)": (scan.white >= BLOWN) & ~constant,
            f"black (no pixel above {DARK} of 255)": (scan.high < DARK) & ~constant,
        }
        for what, mask in kinds.items():
            bad = np.flatnonzero(mask)
            if not len(bad):
                continue
            items = tuple(part.name(int(i)) for i in bad[:ITEMS])
            out.append(
                Finding(
                    "image-exposure",
                    "warning",
                    f"{split}: {share(len(bad), len(part))} images are {what}, e.g. {items[0]}: they show "
                    f"the model nothing to learn from or to be scored on.",
                    "Remove them or replace them with readable images (a failed scan or export, a wrong "
                    "window or bit depth).",
                    count=len(bad),
                    items=items,
                )
            )
    return out
