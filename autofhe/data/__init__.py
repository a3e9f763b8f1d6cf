"""Validation of user data (and, for the search, loading of datasets).

Every check raises a :class:`~autofhe.errors.DataError` whose message names the problem, shows
the offending value and says how to fix it. Nothing is coerced in a way that changes results:
numbers stored as objects become floats, anything else is refused.
"""

from autofhe.data.loading import (
    TASKS,
    Dataset,
    dataset_from_arrays,
    infer_task,
    load_dataset,
    load_features,
    split_dataset,
)
from autofhe.data.validation import check_X, check_Xy, check_y

__all__ = [
    "TASKS",
    "Dataset",
    "check_X",
    "check_Xy",
    "check_y",
    "dataset_from_arrays",
    "infer_task",
    "load_dataset",
    "load_features",
    "split_dataset",
]
