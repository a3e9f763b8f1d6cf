"""Dataset loading for the search: every form, the fingerprint, task inference and the splits."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from autofhe.data import Dataset, infer_task, load_dataset, split_dataset
from autofhe.errors import AutofheError, DataError, DataTypeError


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def npy_pair(tmp_path, toy):
    """``<tmp>/toyset/X.npy`` and its sibling ``y.npy``."""
    X, y = toy
    folder = tmp_path / "toyset"
    folder.mkdir()
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return folder, X, y


# -- sklearn ------------------------------------------------------------------------------------


def test_sklearn_breast_cancer():
    ds = load_dataset("sklearn:breast_cancer")
    assert ds.X.shape == (569, 30)
    assert ds.X.dtype == np.float32
    assert ds.y.shape == (569,)
    assert ds.task == "classification"
    assert ds.name == "breast_cancer"
    assert ds.source == "sklearn:breast_cancer"
    assert ds.labels_source is None
    assert re.fullmatch(r"[0-9a-f]{64}", ds.fingerprint)


def test_sklearn_wine_has_three_classes():
    ds = load_dataset("sklearn:wine")
    assert ds.X.shape == (178, 13)
    assert sorted(np.unique(ds.y).tolist()) == [0, 1, 2]
    assert ds.task == "classification"


def test_sklearn_diabetes_is_regression():
    ds = load_dataset("sklearn:diabetes")
    assert ds.task == "regression"
    assert ds.X.shape == (442, 10)
    assert ds.y.dtype == np.float32
    assert ds.y.ndim == 1


def test_sklearn_circles_digits_iris():
    circles = load_dataset("sklearn:circles")
    assert circles.X.shape == (1000, 2)
    assert sorted(np.unique(circles.y).tolist()) == [0, 1]
    assert circles.task == "classification"
    # make_circles with random_state=0: loading twice gives the very same data.
    assert load_dataset("sklearn:circles").fingerprint == circles.fingerprint
    assert load_dataset("sklearn:digits").X.shape == (1797, 64)
    assert load_dataset("sklearn:iris").X.shape == (150, 4)


def test_sklearn_unknown_name_lists_valid_names():
    with pytest.raises(
        DataError, match=r"unknown scikit-learn dataset 'sklearn:mnist'.*sklearn:wine"
    ):
        load_dataset("sklearn:mnist")


def test_sklearn_name_without_prefix_gets_a_hint():
    with pytest.raises(DataError, match=r"not found.*Did you mean sklearn:wine\?"):
        load_dataset("wine")


def test_sklearn_refuses_file_options():
    with pytest.raises(DataError, match=r"label_column='target' does not apply"):
        load_dataset("sklearn:wine", label_column="target")


# -- .npy ---------------------------------------------------------------------------------------


def test_npy_with_sibling_labels(npy_pair):
    folder, X, y = npy_pair
    ds = load_dataset(str(folder / "X.npy"))
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.labels_source == str(folder / "y.npy")
    assert ds.source == f"{folder / 'X.npy'} + {folder / 'y.npy'}"
    assert ds.name == "toyset_X"  # a bare "X" stem is prefixed with its folder
    assert ds.task == "classification"


def test_npy_with_explicit_labels(tmp_path, toy):
    X, y = toy
    np.save(tmp_path / "features.npy", X.astype(np.float64))
    np.save(tmp_path / "targets.npy", y)
    ds = load_dataset(str(tmp_path / "features.npy"), labels=str(tmp_path / "targets.npy"))
    assert ds.labels_source is None
    assert ds.name == "features"
    assert ds.X.dtype == np.float32
    np.testing.assert_array_equal(ds.X, X)


def test_npy_without_labels_says_where_it_looked(tmp_path, toy):
    np.save(tmp_path / "X.npy", toy[0])
    with pytest.raises(DataError, match=r"looked for .*y\.npy.*--labels y\.npy"):
        load_dataset(str(tmp_path / "X.npy"))


def test_npy_object_array_is_never_unpickled(tmp_path, toy):
    np.save(tmp_path / "X.npy", np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", toy[1][:2])
    with pytest.raises(DataError, match=r"object arrays are never loaded.*numeric array"):
        load_dataset(str(tmp_path / "X.npy"))


def test_npy_that_is_a_pickle_is_refused(tmp_path, toy):
    (tmp_path / "X.npy").write_bytes(pickle.dumps(toy[0]))
    np.save(tmp_path / "y.npy", toy[1])
    with pytest.raises(DataError, match=r"object arrays are never loaded"):
        load_dataset(str(tmp_path / "X.npy"))


def test_npy_that_is_text_is_a_format_error(tmp_path):
    (tmp_path / "X.npy").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"not a NumPy \.npy file.*supported forms are"):
        load_dataset(str(tmp_path / "X.npy"), labels=str(tmp_path / "X.npy"))


def test_npy_label_length_mismatch(tmp_path, toy):
    X, y = toy
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y[:-1])
    with pytest.raises(DataError, match=r"X has 60 rows but y has 59"):
        load_dataset(str(tmp_path / "X.npy"))


def test_npy_nan_in_features_is_refused(tmp_path, toy):
    X, y = toy
    X = X.copy()
    X[3, 2] = np.nan
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(DataError, match=r"NaN or infinity.*row 3, column 2"):
        load_dataset(str(tmp_path / "X.npy"))


# -- .npz ---------------------------------------------------------------------------------------


def test_npz(tmp_path, toy):
    X, y = toy
    np.savez(tmp_path / "toy.npz", X=X, y=y)
    ds = load_dataset(str(tmp_path / "toy.npz"))
    assert ds.X.shape == (60, 4)
    assert ds.name == "toy"
    assert ds.source == str(tmp_path / "toy.npz")
    assert ds.labels_source is None
    np.testing.assert_array_equal(ds.y, y)


def test_npz_missing_arrays_names_what_it_found(tmp_path, toy):
    np.savez(tmp_path / "toy.npz", features=toy[0], target=toy[1])
    with pytest.raises(DataError, match=r"no array named 'X' or 'y'.*\['features', 'target'\]"):
        load_dataset(str(tmp_path / "toy.npz"))


def test_npz_object_array_is_refused(tmp_path, toy):
    np.savez(tmp_path / "toy.npz", X=np.array([[object()]] * 60, dtype=object), y=toy[1])
    with pytest.raises(DataError, match=r"object arrays are never loaded"):
        load_dataset(str(tmp_path / "toy.npz"))


# -- .csv ---------------------------------------------------------------------------------------


def test_csv_with_string_labels(tmp_path):
    rows = ["a,b,species"] + [f"{i},{i * 0.5},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    path = _write_csv(tmp_path / "pets.csv", "\n".join(rows) + "\n")
    ds = load_dataset(str(path), label_column="species")
    assert ds.X.shape == (20, 2)
    assert ds.X.dtype == np.float32
    assert ds.X[3].tolist() == [3.0, 1.5]
    assert ds.y[:2].tolist() == ["dog", "cat"]
    assert ds.task == "classification"
    assert ds.name == "pets"
    assert ds.source == f"{path} (label column 'species')"


def test_csv_label_column_anywhere_and_numeric_regression(tmp_path):
    rows = ["price,size,rooms"] + [f"{100.5 + 3.7 * i},{i},{i % 4}" for i in range(30)]
    path = _write_csv(tmp_path / "houses.csv", "\n".join(rows))
    ds = load_dataset(str(path), label_column="price")
    assert ds.task == "regression"
    assert ds.y.dtype == np.float32
    assert ds.X[2].tolist() == [2.0, 2.0]
    assert ds.y[1] == pytest.approx(104.2)


def test_csv_same_data_as_npy_gives_same_fingerprint(tmp_path):
    X = np.array([[0.5, 1.0], [2.0, 3.0], [4.0, -1.0], [1.0, 1.0]], dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    lines = ["f0,f1,label"] + [f"{a},{b},{c}" for (a, b), c in zip(X.tolist(), y.tolist())]
    csv_path = _write_csv(tmp_path / "same.csv", "\n".join(lines))
    from_npy = load_dataset(str(tmp_path / "X.npy"), task="classification")
    from_csv = load_dataset(str(csv_path), label_column="label", task="classification")
    assert from_csv.fingerprint == from_npy.fingerprint


def test_csv_missing_label_column_lists_columns(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,b,target\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"--label-column NAME.*'a', 'b', 'target'"):
        load_dataset(str(path))
    with pytest.raises(DataError, match=r"label column 'label' is not in the header.*'target'"):
        load_dataset(str(path), label_column="label")


def test_csv_non_numeric_feature_cell(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,color,y\n1,2,0\n3,red,1\n")
    with pytest.raises(DataTypeError, match=r"line 3 \(data row 1\), column 'color' holds 'red'"):
        load_dataset(str(path), label_column="y")


def test_csv_empty_cell_is_missing(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,,1\n")
    with pytest.raises(DataError, match=r"column 'b' is missing.*SimpleImputer") as info:
        load_dataset(str(path), label_column="y")
    assert not isinstance(info.value, DataTypeError)


def test_csv_ragged_row(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,1\n")
    with pytest.raises(DataError, match=r"line 3 has 2 cells but the header has 3"):
        load_dataset(str(path), label_column="y")


# -- missing files and wrong formats ------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_dataset(str(missing))


def test_unknown_extension_names_supported_forms(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"unsupported data file.*'\.parquet'.*sklearn:NAME"):
        load_dataset(str(path))


def test_binary_csv_is_a_format_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match=r"not UTF-8 text"):
        load_dataset(str(path), label_column="y")


def test_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError):
        load_dataset(str(tmp_path / "nope.csv"))
    assert issubclass(DataError, AutofheError)


# -- task ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (np.array(["a", "b"] * 10), "classification"),
        (np.array([True, False] * 10), "classification"),
        (np.array([1, "x", None] * 10, dtype=object), "classification"),
        (np.array([0, 1, 2] * 10), "classification"),
        (np.array([0.0, 1.0] * 10), "classification"),
        (np.arange(250) % 50, "classification"),  # 50 distinct values, 5 rows each: classes
        (np.arange(102) % 51, "regression"),  # 51 distinct values: too many
        (np.arange(10), "regression"),  # as many values as rows: not classes
        (np.array([0, 1, 2, 3] * 2), "regression"),  # 4 values in 8 rows: not < half
        (np.array([0.5, 1.0] * 10), "regression"),  # not integer-valued
        (np.linspace(0, 1, 40), "regression"),
        (np.array([[0], [1]] * 10), "classification"),  # a column vector counts as 1-D
    ],
)
def test_infer_task(y, expected):
    assert infer_task(y) == expected


def test_explicit_task_overrides_inference(npy_pair):
    folder, _, y = npy_pair
    ds = load_dataset(str(folder / "X.npy"), task="regression")
    assert ds.task == "regression"
    assert ds.y.dtype == np.float32
    np.testing.assert_array_equal(ds.y, y.astype(np.float32))


def test_bad_task_is_refused(npy_pair):
    folder, _, _ = npy_pair
    with pytest.raises(
        DataError, match=r"task must be 'classification' or 'regression'; got 'clf'"
    ):
        load_dataset(str(folder / "X.npy"), task="clf")


def test_classification_of_fractional_targets_suggests_regression(tmp_path, toy):
    np.save(tmp_path / "X.npy", toy[0])
    np.save(tmp_path / "y.npy", np.linspace(0, 1, 60))
    with pytest.raises(DataError, match=r"non-integer numbers.*task='regression'"):
        load_dataset(str(tmp_path / "X.npy"), task="classification")


def test_regression_of_string_labels_suggests_classification(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,y\n" + "".join(f"{i},c{i % 2}\n" for i in range(10)))
    with pytest.raises(DataTypeError, match=r"needs numeric targets.*'c0'.*classification"):
        load_dataset(str(path), label_column="y", task="regression")


def test_single_class_is_refused(tmp_path, toy):
    np.save(tmp_path / "X.npy", toy[0])
    np.save(tmp_path / "y.npy", np.zeros(60, dtype=int))
    with pytest.raises(DataError, match=r"single class"):
        load_dataset(str(tmp_path / "X.npy"), task="classification")


# -- fingerprint --------------------------------------------------------------------------------


def test_fingerprint_same_data_same_digest_any_change_differs(tmp_path, toy):
    X, y = toy
    for folder in ("a", "b", "c", "d"):
        (tmp_path / folder).mkdir()
    np.save(tmp_path / "a" / "X.npy", X)
    np.save(tmp_path / "a" / "y.npy", y)
    np.save(tmp_path / "b" / "X.npy", X.copy())
    np.save(tmp_path / "b" / "y.npy", y.copy())
    X_changed = X.copy()
    X_changed[10, 1] += 1e-3
    np.save(tmp_path / "c" / "X.npy", X_changed)
    np.save(tmp_path / "c" / "y.npy", y)
    y_changed = y.copy()
    y_changed[0] = 1 - y_changed[0]
    np.save(tmp_path / "d" / "X.npy", X)
    np.save(tmp_path / "d" / "y.npy", y_changed)
    a, b, c, d = (load_dataset(str(tmp_path / f / "X.npy")) for f in "abcd")
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3


def test_fingerprint_depends_on_dtype(tmp_path, toy):
    X, y = toy
    np.savez(tmp_path / "ints.npz", X=X, y=y.astype(np.int64))
    np.savez(tmp_path / "floats.npz", X=X, y=y.astype(np.float64))
    ints = load_dataset(str(tmp_path / "ints.npz"))
    floats = load_dataset(str(tmp_path / "floats.npz"))
    assert ints.task == floats.task == "classification"
    assert ints.fingerprint != floats.fingerprint


def test_dataset_arrays_are_read_only_and_eq_uses_fingerprint():
    a = load_dataset("sklearn:iris")
    b = load_dataset("sklearn:iris")
    assert a == b
    assert hash(a) == hash(b)
    assert "fingerprint=" in repr(a)
    with pytest.raises(ValueError, match="read-only"):
        a.X[0, 0] = 1.0
    assert isinstance(a, Dataset)


# -- splits -------------------------------------------------------------------------------------


def test_split_sizes_and_stratification():
    ds = load_dataset("sklearn:breast_cancer")
    X_train, X_valid, X_test, y_train, y_valid, y_test = split_dataset(ds, seed=0)
    assert (len(X_train), len(X_valid), len(X_test)) == (341, 114, 114)
    assert (len(y_train), len(y_valid), len(y_test)) == (341, 114, 114)
    assert X_train.shape[1] == 30
    overall = np.mean(ds.y)
    for part in (y_train, y_valid, y_test):
        assert np.mean(part) == pytest.approx(overall, abs=0.01)
    # The parts are disjoint and cover every row.
    rows = np.concatenate([X_train, X_valid, X_test])
    assert len(np.unique(rows, axis=0)) == len(np.unique(ds.X, axis=0))


def test_split_stratifies_every_class_of_wine():
    ds = load_dataset("sklearn:wine")
    _, _, _, y_train, y_valid, y_test = split_dataset(ds)
    overall = np.bincount(ds.y) / len(ds.y)
    for part in (y_train, y_valid, y_test):
        np.testing.assert_allclose(np.bincount(part, minlength=3) / len(part), overall, atol=0.03)


def test_split_is_seeded():
    ds = load_dataset("sklearn:diabetes")
    first = split_dataset(ds, seed=3)
    again = split_dataset(ds, seed=3)
    other = split_dataset(ds, seed=4)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])
    assert (len(first[0]), len(first[1]), len(first[2])) == (264, 89, 89)


def test_split_too_few_rows(tmp_path):
    np.savez(tmp_path / "tiny.npz", X=np.array([[0.0], [1.0]]), y=np.array([0.5, 1.5]))
    ds = load_dataset(str(tmp_path / "tiny.npz"))
    assert ds.task == "regression"
    with pytest.raises(DataError, match=r"too few rows for the splits: 'tiny' has 2 rows.*least 3"):
        split_dataset(ds)


def test_split_rare_class_is_named(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(63, 3))
    y = np.array(["common"] * 30 + ["usual"] * 30 + ["rare"] * 3)
    np.savez(tmp_path / "rare.npz", X=X, y=y)
    ds = load_dataset(str(tmp_path / "rare.npz"))
    assert ds.task == "classification"
    with pytest.raises(DataError, match=r"class 'rare' \(3 rows\).*at least 5 rows per class"):
        split_dataset(ds)
