"""The measurement protocol shared by every benchmark (see ../shared/ANCHORS.md).

scikit-learn bundled dataset (or circles), 75/25 split with random_state=0, stratified for
classification, StandardScaler fit on the training part, float32 features.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

CLASSIFICATION_SETS = ("breast_cancer", "wine", "digits")


#: datasets whose target is a real value (unstratified split)
REGRESSION_SETS = ("diabetes",)


def load(name: str):
    if name == "circles":
        return datasets.make_circles(1000, noise=0.2, factor=0.5, random_state=0)
    if name == "moons":  # a second low-dimensional nonlinear boundary, for latency work
        return datasets.make_moons(1000, noise=0.3, random_state=0)
    if name == "clusters2000":  # 3 clusters per class: a boundary no line draws
        return datasets.make_classification(
            n_samples=2000, n_features=10, n_informative=6, n_clusters_per_class=3, random_state=1
        )
    if name == "classification50000":  # issue 33: rows at a user's scale
        return datasets.make_classification(
            n_samples=50_000, n_features=20, n_informative=10, random_state=0
        )
    if name == "wide200":  # issue 33: 200 features, 20 of them informative
        return datasets.make_classification(
            n_samples=5_000, n_features=200, n_informative=20, random_state=0
        )
    if name == "classification6000":
        return datasets.make_classification(
            n_samples=6000, n_features=8, n_informative=5, random_state=0
        )
    return getattr(datasets, f"load_{name}")(return_X_y=True)


def split(name: str):
    X, y = load(name)
    strat = None if name in REGRESSION_SETS else y
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=strat)
    scaler = StandardScaler().fit(Xtr)
    return (
        scaler.transform(Xtr).astype(np.float32),
        scaler.transform(Xte).astype(np.float32),
        ytr,
        yte,
    )


def float_mlp_accuracy(Xtr, Xte, ytr, yte) -> float:
    """scikit-learn's float MLPClassifier, as the anchors measure it."""
    return float(MLPClassifier(max_iter=500, random_state=0).fit(Xtr, ytr).score(Xte, yte))


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)
