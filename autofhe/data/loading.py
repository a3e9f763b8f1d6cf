"""Loading datasets for the search: .npy (+ labels), .npz, .csv and scikit-learn's bundled
sets (``sklearn:NAME``); never with pickle, never from the network. Also the task inference and
the train / validation / test split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from autofhe.data.table import read_csv
from autofhe.data.validation import check_X, check_Xy
from autofhe.errors import DataError, DataTypeError

__all__ = ["TASKS", "Dataset", "infer_task", "load_dataset", "load_features", "split_dataset"]


TASKS = ("classification", "regression")
"""The learning tasks a :class:`Dataset` can describe."""

#: Most distinct values an integer-valued target may hold and still be read as class labels.
MAX_INFERRED_CLASSES = 50
#: Up to this many distinct integer values are read as classes whatever their counts; above it
#: (counts, ages, scores) only when every value has the rows a class needs.
SURE_CLASSES = 10
#: Fewest rows each class needs in :func:`split_dataset` (validation and test get one or more).
MIN_ROWS_PER_CLASS = 5
#: Fewest rows :func:`split_dataset` needs so that no part of the 60/20/20 split is empty.
MIN_ROWS_FOR_SPLITS = 3

# name -> (loader name in sklearn.datasets, task); every one ships with scikit-learn.
_SKLEARN_SETS = {
    "breast_cancer": ("load_breast_cancer", "classification"),
    "circles": ("make_circles", "classification"),
    "diabetes": ("load_diabetes", "regression"),
    "digits": ("load_digits", "classification"),
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
}
_SKLEARN_PREFIX = "sklearn:"
_SKLEARN_NAMES = ", ".join(_SKLEARN_PREFIX + name for name in _SKLEARN_SETS)
_FORMS = (
    f"supported forms are {_SKLEARN_PREFIX}NAME ({', '.join(_SKLEARN_SETS)}), a .npy file of "
    "features (labels from --labels y.npy or a sibling y.npy), a .npz file holding arrays X and "
    "y, or a .csv file with a header row and --label-column NAME"
)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Dataset:
    """A validated dataset ready for the search.

    Build one with :func:`load_dataset`. ``X`` and ``y`` are made read-only so that
    ``fingerprint`` keeps describing them; two datasets compare equal when their fingerprints,
    names, tasks and sources do (the arrays themselves are left out of ``==`` and ``repr``).

    Attributes
    ----------
    X : numpy.ndarray
        Features, a finite 2-D float32 array (validated by :func:`check_X`).
    y : numpy.ndarray
        One entry per row of ``X``: labels of any type for classification, float32 targets
        for regression. Always 1-D.
    name : str
        Short name the study name is derived from, e.g. ``"breast_cancer"``, or the file stem
        (``"<folder>_X"`` when the stem is just ``X``).
    task : str
        ``"classification"`` or ``"regression"``.
    fingerprint : str
        SHA-256 hex digest of the shapes, dtypes and raw bytes of ``X`` and ``y``: the same data
        gives the same fingerprint, any changed value a different one.
    source : str
        Human-readable origin, e.g. ``"sklearn:wine"`` or ``"/data/X.npy + /data/y.npy"``.
    labels_source : str or None
        Path of the labels file when it was found automatically (a sibling ``y.npy``), else
        None.
    """

    X: np.ndarray = field(repr=False, compare=False)
    y: np.ndarray = field(repr=False, compare=False)
    name: str
    task: str
    fingerprint: str
    source: str
    labels_source: str | None = None

    def __post_init__(self) -> None:
        for arr in (self.X, self.y):
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False


def infer_task(y) -> str:
    """Guess whether ``y`` holds class labels or regression targets.

    Parameters
    ----------
    y : array-like
        The targets, one per row.

    Returns
    -------
    str
        ``"classification"`` when ``y`` holds strings, booleans or other objects, or
        integer-valued numbers with fewer distinct values than half the rows and either at
        most 10 distinct values, or at most 50 that each occur on at least 5 rows (enough to
        be split as classes); ``"regression"`` otherwise. So 40 different counts, most of
        them on a few rows, are a regression target.
    """
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.dtype.kind in "OSUb":
        return "classification"
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:
        return "regression"  # complex, dates, multi-output: left for check_y to judge
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        return "regression"
    counts = np.unique(arr, return_counts=True)[1]
    if len(counts) >= arr.shape[0] / 2:
        return "regression"
    if len(counts) <= SURE_CLASSES:
        return "classification"
    if len(counts) <= MAX_INFERRED_CLASSES and counts.min() >= MIN_ROWS_PER_CLASS:
        return "classification"
    return "regression"


def _check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise DataError(
            f"task must be 'classification' or 'regression'; got {task!r}. Leave it unset to "
            "infer the task from the labels."
        )


def _fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    for name, arr in (("X", X), ("y", y)):
        arr = np.ascontiguousarray(arr)
        if arr.dtype.kind == "O":  # raw bytes of an object array are addresses: hash the values
            dtype = "object"
            payload = "\x1f".join(f"{type(v).__name__}:{v!r}" for v in arr.ravel()).encode()
        else:  # one byte order, so equal values give equal bytes on any machine
            arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            dtype = arr.dtype.str
            payload = arr.tobytes()
        digest.update(f"{name}|{dtype}|{arr.shape}|{len(payload)}\n".encode())
        digest.update(payload)
    return digest.hexdigest()


def _finish(
    X,
    y,
    *,
    task: str | None,
    name: str,
    source: str,
    labels_source: str | None = None,
) -> Dataset:
    """Validate raw arrays, settle the task and build the :class:`Dataset`."""
    X = check_X(X)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise DataError(
            f"y must be 1-D (one label or target per row); got shape {y.shape} from {source}. "
            "Multi-output targets are not supported: pass a single column."
        )
    if task is None:
        task = infer_task(y)
    elif task == "classification" and y.dtype.kind == "f" and np.isfinite(y).all():
        fractional = y[y != np.round(y)]
        if fractional.size:
            raise DataError(
                f"task='classification' but y holds non-integer numbers (e.g. {fractional[0]}); "
                "use task='regression' (--task regression), or bin the target into classes."
            )
    elif task == "regression" and y.dtype.kind in "OSUb":
        example = y[:1].tolist()[0] if y.size else None
        raise DataTypeError(
            f"task='regression' needs numeric targets, but y holds {y.dtype} values (e.g. "
            f"{example!r}); use task='classification' (--task classification), or encode the "
            "target as numbers."
        )
    X, y = check_Xy(X, y, classification=task == "classification")
    if len(X) > 1 and (X == X[0]).all():
        raise DataError(
            f"every feature of {source} is constant (all {len(X)} rows are equal): no model "
            "can learn from it; check that the right columns were saved as X."
        )
    return Dataset(
        X=X,
        y=y,
        name=name,
        task=task,
        fingerprint=_fingerprint(X, y),
        source=source,
        labels_source=labels_source,
    )


def dataset_from_arrays(X, y, *, name: str, source: str, task: str | None = None) -> Dataset:
    """A :class:`Dataset` of in-memory arrays, checked and fingerprinted as a loaded one
    (``task`` None: inferred from ``y``); ``source`` says where they came from."""
    _check_task(task)
    return _finish(X, y, task=task, name=name, source=source)


def _load_sklearn(spec: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    name = spec[len(_SKLEARN_PREFIX) :].strip().lower()
    if name not in _SKLEARN_SETS:
        raise DataError(
            f"unknown scikit-learn dataset {spec!r}; choose one of {_SKLEARN_NAMES}, or pass a "
            ".npy, .npz or .csv file."
        )
    from sklearn import datasets  # imported here: only this form needs it

    loader, task = _SKLEARN_SETS[name]
    if name == "circles":
        X, y = datasets.make_circles(1000, noise=0.2, factor=0.5, random_state=0)
    else:  # bundled with scikit-learn: nothing is downloaded
        X, y = getattr(datasets, loader)(return_X_y=True)
    return X, y, name, task


def _file_name(path: Path) -> str:
    """The study-friendly name of a data file: its stem, or ``<folder>_X`` for ``X.*``."""
    stem = path.stem
    if stem in ("X", "x") and path.parent.name:
        return f"{path.parent.name}_{stem}"
    return stem


def _read_magic(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc}); check its permissions.") from None


def _refuse_pickle(path: Path) -> DataError:
    return DataError(
        f"{path} holds an object (pickled) array; object arrays are never loaded because "
        "unpickling can run arbitrary code (allow_pickle=False). Save a numeric array instead, "
        "e.g. np.save(path, X.astype(np.float32))."
    )


def _load_npy(path: Path) -> np.ndarray:
    magic = _read_magic(path)
    if magic != _NPY_MAGIC:
        if magic[:1] == b"\x80":  # a pickle stream saved under a .npy name
            raise _refuse_pickle(path)
        raise DataError(
            f"{path} is not a NumPy .npy file (it starts with {magic!r}); save it with "
            f"np.save, or use another form: {_FORMS}."
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, EOFError) as exc:
        raise DataError(
            f"cannot read {path} as a .npy file ({exc or type(exc).__name__}: it looks "
            "truncated); save it again with np.save."
        ) from None
    except Exception as exc:  # a damaged header: ValueError, SyntaxError, TokenError...
        raise _unreadable(path, ".npy file", "np.save", exc) from None


def _unreadable(path: Path, form: str, saver: str, exc: Exception) -> DataError:
    """The error for a file NumPy cannot parse (a damaged header or member)."""
    if "allow_pickle" in str(exc):
        return _refuse_pickle(path)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return DataError(
        f"cannot read {path} as a {form} ({type(exc).__name__}: {first}); save it again "
        f"with {saver}."
    )


def _load_npz(path: Path, keys: tuple[str, ...] = ("X", "y")) -> tuple[np.ndarray, ...]:
    if _read_magic(path)[: len(_ZIP_MAGIC)] != _ZIP_MAGIC:
        raise DataError(
            f"{path} is not a NumPy .npz archive; save it with np.savez(path, X=X, y=y), or use "
            f"another form: {_FORMS}."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            missing = [key for key in keys if key not in found]
            if missing:
                raise DataError(
                    f"{path} has no array named {' or '.join(repr(m) for m in missing)}; it "
                    f"holds {found}. Save it with np.savez(path, X=features, y=labels)."
                )
            return tuple(archive[key] for key in keys)
    except DataError:
        raise
    except Exception as exc:  # not a zip, a damaged member, a pickled member...
        raise _unreadable(path, ".npz archive", "np.savez", exc) from None


def _refuse_option(option: str, value, form: str) -> None:
    if value is not None:
        raise DataError(
            f"{option}={value!r} does not apply to {form}; it is only used with "
            + ("a .npy features file." if option == "labels" else "a .csv file.")
            + " Leave it out."
        )


def load_dataset(
    data: str,
    *,
    labels: str | None = None,
    label_column: str | None = None,
    task: str | None = None,
) -> Dataset:
    """Load and validate a dataset for the search (``autofhe search --data ...``).

    Parameters
    ----------
    data : str
        ``"sklearn:NAME"`` for a set bundled with scikit-learn (breast_cancer, circles,
        diabetes, digits, iris, wine; nothing is downloaded), or the path of a ``.npy`` file of
        features, a ``.npz`` archive holding arrays ``X`` and ``y``, or a ``.csv`` file with a
        header row. Files are never unpickled.
    labels : str, optional
        Path of a ``.npy`` file of labels, for a ``.npy`` features file. Without it, a file
        named ``y.npy`` next to the features is used.
    label_column : str, optional
        Header name of the label column; required for a ``.csv`` file.
    task : {"classification", "regression"}, optional
        The learning task; inferred from the labels with :func:`infer_task` when omitted.

    Returns
    -------
    Dataset
        Float32 features, 1-D labels, and where they came from.

    Raises
    ------
    DataError
        When the source is missing, unreadable, of an unsupported form, or its data is invalid
        (NaN, wrong shapes, a single class, ...). :class:`~autofhe.errors.DataTypeError` when a
        CSV feature cell is not a number.
    """
    _check_task(task)
    data = os.fspath(data)
    if data.strip().lower().startswith(_SKLEARN_PREFIX):
        _refuse_option("labels", labels, "a scikit-learn dataset")
        _refuse_option("label_column", label_column, "a scikit-learn dataset")
        X, y, name, default_task = _load_sklearn(data.strip())
        return _finish(X, y, task=task or default_task, name=name, source=f"sklearn:{name}")

    path = Path(data).expanduser()
    if not path.exists():
        hint = (
            f" Did you mean {_SKLEARN_PREFIX}{data}?"
            if data.strip().lower() in _SKLEARN_SETS
            else f" Check the path; {_FORMS}."
        )
        raise DataError(f"data file not found: {str(path)!r}.{hint}")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder, not a data file; {_FORMS}.")
    path = Path(os.path.abspath(path))
    suffix = path.suffix.lower()
    name = _file_name(path)

    if suffix == ".npy":
        _refuse_option("label_column", label_column, "a .npy file")
        labels_source = None
        if labels is None:
            sibling = path.parent / "y.npy"
            if path.name == "y.npy":
                raise DataError(
                    f"{path} is the labels file; pass the features file (e.g. X.npy) as data."
                )
            if not sibling.is_file():
                raise DataError(
                    f"no labels for {path}: looked for {sibling}, which does not exist; pass the "
                    "labels file with --labels y.npy (labels= in Python)."
                )
            labels_path = labels_source = str(sibling)
        else:
            labels_path = os.path.abspath(Path(os.fspath(labels)).expanduser())
            if not Path(labels_path).is_file():
                raise DataError(f"labels file not found: {labels_path!r}; check the path.")
            if Path(labels_path).suffix.lower() != ".npy":
                raise DataError(
                    f"labels file {labels_path!r} must be a .npy file; save the labels with "
                    "np.save('y.npy', y)."
                )
        X = _load_npy(path)
        y = _load_npy(Path(labels_path))
        return _finish(
            X,
            y,
            task=task,
            name=name,
            source=f"{path} + {labels_path}",
            labels_source=labels_source,
        )
    if suffix == ".npz":
        _refuse_option("labels", labels, "a .npz file (it holds y)")
        _refuse_option("label_column", label_column, "a .npz file")
        X, y = _load_npz(path)
        return _finish(X, y, task=task, name=name, source=str(path))
    if suffix == ".csv":
        _refuse_option("labels", labels, "a .csv file (use label_column)")
        X, y = read_csv(path, label_column, forms=_FORMS)
        return _finish(X, y, task=task, name=name, source=f"{path} (label column {label_column!r})")
    raise DataError(f"unsupported data file {str(path)!r} (extension {suffix!r}); {_FORMS}.")


def split_dataset(
    ds: Dataset, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split a dataset 60/20/20 into training, validation and test parts.

    Parameters
    ----------
    ds : Dataset
        The dataset, from :func:`load_dataset`.
    seed : int, default=0
        ``random_state`` of both :func:`sklearn.model_selection.train_test_split` calls.

    Returns
    -------
    tuple of numpy.ndarray
        ``X_train, X_valid, X_test, y_train, y_valid, y_test``. For classification every part
        keeps the class proportions of ``ds.y`` (stratified).

    Raises
    ------
    DataError
        When a part would be empty, or (classification) a class has fewer than 5 rows.
    """
    classification = ds.task == "classification"
    n_rows = ds.X.shape[0]
    if classification:
        classes, counts = np.unique(ds.y, return_counts=True)
        needed = max(MIN_ROWS_FOR_SPLITS, MIN_ROWS_PER_CLASS * len(classes))
        why = f"{MIN_ROWS_PER_CLASS} per class for {len(classes)} classes"
    else:
        needed = MIN_ROWS_FOR_SPLITS
        why = "one row each for training, validation and test"
    if n_rows < needed:
        raise DataError(
            f"too few rows for the splits: {ds.name!r} has {n_rows} rows but the 60/20/20 "
            f"train/validation/test split needs at least {needed} ({why}); add rows."
        )
    if classification:
        rare = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n < MIN_ROWS_PER_CLASS]
        if rare:
            listed = ", ".join(f"{c!r} ({n} row{'s' * (n != 1)})" for c, n in rare)
            # numbers read as classes may be quantities (counts, scores): say how to say so
            numeric = (
                " If y holds quantities rather than class labels, pass --task regression."
                if ds.y.dtype.kind in "iuf"
                else ""
            )
            raise DataError(
                (
                    f"class {listed} of {ds.name!r} has fewer than {MIN_ROWS_PER_CLASS} rows; a "
                    f"stratified 60/20/20 split needs at least {MIN_ROWS_PER_CLASS} rows per "
                    "class. Collect more rows of that class, merge it into another, or drop it."
                    if len(rare) == 1
                    else f"classes {listed} of {ds.name!r} have fewer than {MIN_ROWS_PER_CLASS} "
                    f"rows each; a stratified 60/20/20 split needs at least {MIN_ROWS_PER_CLASS} "
                    "rows per class. Collect more rows of those classes, merge them, or drop "
                    "them."
                )
                + numeric
            )
    X_rest, X_test, y_rest, y_test = train_test_split(
        ds.X, ds.y, test_size=0.2, random_state=seed, stratify=ds.y if classification else None
    )
    X_train, X_valid, y_train, y_valid = train_test_split(
        X_rest,
        y_rest,
        test_size=0.25,
        random_state=seed,
        stratify=y_rest if classification else None,
    )
    return X_train, X_valid, X_test, y_train, y_valid, y_test


def load_features(path: str | os.PathLike, *, label_column: str | None = None) -> np.ndarray:
    """Features only, for prediction: ``.npy``, ``.npz`` (array ``X``) or a ``.csv`` with a
    header (``label_column``, when given, is dropped). Read and validated like training data."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a folder, not a file; pass the path of the features to predict.")
    if not p.is_file():
        raise DataError(f"{p} does not exist; pass the path of the features to predict.")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return check_X(_load_npy(p))
    if suffix == ".npz":
        return check_X(_load_npz(p, ("X",))[0])
    if suffix != ".csv":
        raise DataError(f"{p}: use a .npy, .npz or .csv file of features.")
    return check_X(read_csv(p, label_column, features_only=True, forms=_FORMS)[0])
