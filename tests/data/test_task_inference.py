"""Task inference for integer-valued targets with many distinct values (counts, scores)."""

from __future__ import annotations

import numpy as np
import pytest

from autofhe.data import infer_task, load_dataset, split_dataset
from autofhe.errors import DataError


def _counts(n_rows: int = 200, seed: int = 0) -> np.ndarray:
    """40 distinct counts as a float column (how a CSV or a float .npy holds them)."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(40), rng.poisson(12, size=n_rows - 40).clip(0, 39)])
    return y.astype(np.float64)


def test_forty_distinct_counts_are_a_regression_target(tmp_path):
    y = _counts()
    assert len(np.unique(y)) == 40 and np.bincount(y.astype(int)).min() < 5
    assert infer_task(y) == "regression"
    X = np.random.default_rng(1).normal(size=(len(y), 3))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    ds = load_dataset(str(tmp_path / "X.npy"))
    assert ds.task == "regression"
    split_dataset(ds)  # and it splits


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (np.arange(300) % 10, "classification"),  # 10 labels: classes whatever their counts
        (np.r_[np.arange(297) % 9, 9], "classification"),  # 10 labels, one rare: still classes
        (np.arange(300) % 30, "classification"),  # 30 labels of 10 rows each
        (np.r_[np.arange(300) % 30, 30], "regression"),  # 31 values, one on a single row
    ],
)
def test_many_values_are_classes_only_when_every_value_can_be_split(y, expected):
    assert infer_task(y) == expected


def test_rare_numeric_classes_suggest_task_regression(tmp_path):
    y = np.r_[np.arange(297) % 9, 9].astype(float)  # read as 10 classes, one has 1 row
    X = np.random.default_rng(0).normal(size=(len(y), 3))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    ds = load_dataset(str(tmp_path / "X.npy"))
    assert ds.task == "classification"
    with pytest.raises(DataError, match=r"9\.0 \(1 row\).*pass --task regression"):
        split_dataset(ds)


def test_rare_string_classes_do_not_suggest_regression():
    from autofhe.data import Dataset

    y = np.array(["a"] * 20 + ["b"])
    ds = Dataset(
        X=np.zeros((21, 2)), y=y, name="s", task="classification", fingerprint="-", source="-"
    )
    with pytest.raises(DataError) as err:
        split_dataset(ds)
    assert "regression" not in str(err.value)
