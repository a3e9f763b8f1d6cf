"""Validation of user data: every check raises a DataError that names the problem, shows the
offending value and says how to fix it. Nothing is coerced in a way that changes results:
numbers stored as objects become floats, anything else is refused.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import type_of_target

from autofhe.errors import DataError, DataTypeError

__all__ = ["check_X", "check_Xy", "check_y"]


def _as_numeric(values, name: str) -> np.ndarray:
    if sparse.issparse(values):
        raise DataTypeError(
            f"{name} is a sparse matrix ({values.shape}); sparse input is not supported: "
            f"densify it first with {name}.toarray()."
        )
    if hasattr(values, "to_numpy"):  # pandas / polars frames and series
        values = values.to_numpy()
    try:
        arr = np.asarray(values)
    except Exception as exc:  # ragged nested lists and the like
        raise DataError(
            f"{name} cannot be read as an array ({exc}); pass a 2-D numeric array."
        ) from None
    if arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind == "c":
        raise DataTypeError(
            f"{name} has complex dtype {arr.dtype}: Complex data not supported; pass real "
            "numbers (e.g. the real and imaginary parts as separate features)."
        )
    if arr.dtype.kind == "O":
        try:
            return arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise DataTypeError(
                f"{name} holds non-numeric values ({exc}); encode categorical columns as "
                "numbers first, e.g. with sklearn.preprocessing.OneHotEncoder."
            ) from None
    raise DataTypeError(
        f"{name} has non-numeric dtype {arr.dtype} (e.g. {arr.flat[0]!r} if any); encode "
        "categorical columns as numbers first, e.g. with sklearn.preprocessing.OneHotEncoder."
        if arr.size
        else f"{name} has non-numeric dtype {arr.dtype}; pass numbers."
    )


def _refuse_first(arr: np.ndarray, bad: np.ndarray, message: str) -> None:
    """Raise ``message`` (formatted with the first bad value, its place and the count)."""
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(message.format(n=int(bad.sum()), value=arr[row, col], row=row, col=col))


def check_X(X, *, n_features: int | None = None, estimator: str = "the model") -> np.ndarray:
    """Return ``X`` as a finite 2-D float32 array, or raise a :class:`DataError`."""
    arr = _as_numeric(X, "X")
    if arr.ndim != 2:
        hint = (
            " Reshape your data with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) "
            "for a single sample."
            if arr.ndim == 1
            else ""
        )
        raise DataError(
            f"X must be a 2-D array (n_samples, n_features); got {arr.ndim}-D with shape "
            f"{arr.shape}.{hint}"
        )
    if arr.shape[0] == 0:
        raise DataError(
            f"X is empty: 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required; "
            "pass at least one row."
        )
    if arr.shape[1] == 0:
        raise DataError(
            f"X is empty: 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required; "
            "pass at least one column."
        )
    if arr.dtype.kind == "f":
        _refuse_first(
            arr,
            ~np.isfinite(arr),
            "X contains NaN or infinity ({n} values; first {value} at row {row}, column {col}); "
            "remove those rows or impute them, e.g. with sklearn.impute.SimpleImputer.",
        )
        # finite here, infinite once in float32: say so rather than "infinity" later
        _refuse_first(
            arr,
            np.abs(arr) > np.finfo(np.float32).max,
            "X holds {value:g} at row {row}, column {col} ({n} values beyond float32's range "
            "of +-3.4e+38); rescale that feature (e.g. log or "
            "sklearn.preprocessing.StandardScaler) or drop the rows.",
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise DataError(
            f"X has {arr.shape[1]} features, but {estimator} is expecting {n_features} features "
            "as input; pass the same columns as in fit."
        )
    return arr.astype(np.float32)


def check_y(y, n_samples: int, *, classification: bool) -> np.ndarray:
    """Return ``y`` as an array with one entry (classification) or row (regression) per sample."""
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    if y is None:
        raise DataError(
            "This estimator requires y to be passed, but the target y is None; pass one label "
            "per row of X."
        )
    arr = np.asarray(y)
    if classification:
        if arr.ndim == 2 and arr.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; use y.ravel().",
                DataConversionWarning,
                stacklevel=3,
            )
            arr = arr.ravel()
        if arr.ndim != 1:
            raise DataError(
                f"y must be 1-D (one label per row) for a classifier; got shape {arr.shape}. "
                "Multi-output classification is not supported."
            )
    else:
        arr = _as_numeric(arr, "y")
        if arr.ndim not in (1, 2):
            raise DataError(f"y must be 1-D or 2-D for a regressor; got shape {arr.shape}.")
    if arr.shape[0] != n_samples:
        raise DataError(
            f"X has {n_samples} rows but y has {arr.shape[0]}; pass one label per row of X."
        )
    if classification:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError("y contains NaN or infinity; drop the rows without a valid label.")
        if arr.dtype.kind == "O" and any(v is None for v in arr):
            raise DataError("y contains None; drop the rows without a valid label.")
        if arr.dtype.kind == "f" and type_of_target(arr) == "continuous":
            example = arr[arr != np.round(arr)][0]
            raise DataError(
                f"Unknown label type: continuous target (e.g. {example}) "
                "given to a classifier; use NeuralNetRegressor, or bin the target into classes."
            )
        classes = np.unique(arr)
        if len(classes) < 2:
            raise DataError(
                f"y has a single class ({classes[0]!r}): a classifier needs at least 2 classes; "
                "check the labels or use a regressor."
            )
    else:
        if not np.isfinite(arr).all():
            raise DataError("y contains NaN or infinity; drop the rows without a valid target.")
        arr = arr.astype(np.float32)
    return arr


def check_Xy(
    X, y, *, classification: bool, n_features: int | None = None, estimator: str = "the model"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a training set (see :func:`check_X` and :func:`check_y`)."""
    X = check_X(X, n_features=n_features, estimator=estimator)
    if X.shape[0] < 2:
        raise DataError(
            f"X has n_samples=1: training needs at least 2 samples (got shape {X.shape}); "
            "pass more rows."
        )
    return X, check_y(y, X.shape[0], classification=classification)


# -- datasets for the search ------------------------------------------------------------------
