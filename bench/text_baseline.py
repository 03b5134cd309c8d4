"""TF-IDF + logistic regression (scikit-learn) on the exact split a torchkiln text run uses.

The baseline for docs/tasks/text-classification.md: the same data, the same stratified train/val/test
split (same seed, same fractions, via the same function), scored on the same test texts. The model is fit
on train; C is chosen on val; the test split is read once at the end.

    .venv/bin/python bench/text_baseline.py [--config examples/movie-reviews-lstm.yaml] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from torchkiln.components.splits import class_list, make_splits
from torchkiln.tasks.base import load_config
from torchkiln.tasks.text_classification.config import TextDataConfig
from torchkiln.tasks.text_classification.task import read_table, split_array


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/movie-reviews-lstm.yaml")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    cfg = load_config(a.config)
    d = cfg.data
    assert isinstance(d, TextDataConfig), "a text-classification config"
    table = read_table(d)
    classes = class_list(d, table.labels, split_array(table), d.path, items="texts")
    y = np.array([classes.index(lab) for lab in table.labels])
    split = make_splits(d, y, split_array(table), cfg.seed)  # what the torchkiln run uses
    texts = np.array(table.texts, dtype=object)
    part = {s: split == s for s in ("train", "val", "test")}
    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=True)
    x_train = vec.fit_transform(texts[part["train"]])  # the vocabulary sees train only
    best = max(
        (
            accuracy_score(
                y[part["val"]],
                LogisticRegression(C=c, max_iter=2000)
                .fit(x_train, y[part["train"]])
                .predict(vec.transform(texts[part["val"]])),
            ),
            c,
        )
        for c in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    )
    clf = LogisticRegression(C=best[1], max_iter=2000).fit(x_train, y[part["train"]])
    pred = clf.predict(vec.transform(texts[part["test"]]))
    seconds = time.perf_counter() - start
    result = {
        "data": d.path,
        "split": {s: int(m.sum()) for s, m in part.items()},
        "C": best[1],
        "val_accuracy": round(best[0], 4),
        "test_accuracy": round(float(accuracy_score(y[part["test"]], pred)), 4),
        "test_macro_f1": round(float(f1_score(y[part["test"]], pred, average="macro")), 4),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
