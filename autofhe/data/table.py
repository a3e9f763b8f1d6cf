"""Reading a CSV table of features (and a label column), with one clear error per fault:
the line, the column and the value, and how to fix it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from autofhe.errors import DataError, DataTypeError

__all__ = ["read_csv"]

# Feature cells that mean "no value" (compared lower-cased, after stripping blanks).
_MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


def _parse_labels(cells: list[str]) -> np.ndarray:
    """CSV labels as int64, else float64, else strings (class names)."""
    try:
        return np.array([int(c) for c in cells], dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        return np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        return np.array(cells, dtype=str)


def read_csv(
    path: Path, label_column: str | None, features_only: bool = False, *, forms: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and labels of a CSV file with a header; ``features_only`` (prediction): no
    label column is needed, and ``label_column`` is dropped when the header has it. ``forms``
    names the other data forms, for the errors of a file that is no CSV text."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [(line, row) for line, row in _csv_rows(fh) if any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text ({exc}); save the table as UTF-8 CSV, or use another "
            f"form: {forms}."
        ) from None
    except csv.Error as exc:
        raise DataError(f"cannot parse {path} as CSV ({exc}); {forms}.") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc}); check its permissions.") from None
    if not rows:
        raise DataError(f"{path} is empty; a .csv file needs a header row and data rows.")
    header = [c.strip() for c in rows[0][1]]
    columns = ", ".join(repr(c) for c in header)
    if features_only and (label_column is None or label_column.strip() not in header):
        label_column = None
    elif label_column is None:
        raise DataError(
            f"{path} is a CSV file: say which column holds the labels with --label-column NAME "
            f"(label_column= in Python); the columns are {columns}."
        )
    hits = (
        []
        if label_column is None
        else [i for i, c in enumerate(header) if c == label_column.strip()]
    )
    if label_column is not None and not hits:
        raise DataError(
            f"label column {label_column!r} is not in the header of {path}; the columns are "
            f"{columns}."
        )
    if len(hits) > 1:
        raise DataError(
            f"label column {label_column!r} appears {len(hits)} times in the header of {path} "
            f"(columns {hits}); rename the duplicates so the label column is unique."
        )
    label_at = hits[0] if hits else None
    features = [i for i in range(len(header)) if i != label_at]
    X = np.empty((len(rows) - 1, len(features)), dtype=np.float64)
    labels: list[str] = []
    for r, (line, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {line} has {len(row)} cells but the header has {len(header)}; "
                "every row needs one cell per column."
            )
        label = "" if label_at is None else row[label_at].strip()
        if label_at is not None and not label:
            raise DataError(
                f"{path}, line {line} has no label in column {label_column!r}; drop the rows "
                "without a label."
            )
        labels.append(label)
        for j, i in enumerate(features):
            cell = row[i].strip()
            if cell.lower() in _MISSING_CELLS:
                raise DataError(
                    f"{path}, line {line} (data row {r}), column {header[i]!r} is missing "
                    f"(value {cell!r}); impute the missing values first, e.g. with "
                    "sklearn.impute.SimpleImputer, or drop those rows."
                )
            try:
                X[r, j] = float(cell)
            except ValueError:
                raise DataTypeError(
                    f"{path}, line {line} (data row {r}), column {header[i]!r} holds {cell!r}, "
                    "which is not a number; feature columns must be numeric: encode "
                    "categorical columns as numbers first (e.g. one-hot), or drop the column."
                ) from None
    return X, (None if label_at is None else _parse_labels(labels))


def _csv_rows(fh):
    reader = csv.reader(fh)
    for row in reader:
        yield reader.line_num, row
