"""Fuzzing the data loaders: whatever a file holds, the outcome is data or an AutofheError."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autofhe.data import load_dataset
from autofhe.data.loading import load_features
from autofhe.errors import AutofheError, DataError

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

_NPY_HEADER = b"\x93NUMPY\x01\x00"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _mutated(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in cuts:
        if out:
            out[position % len(out)] = value
    return bytes(out)


_arrays = st.sampled_from(
    [
        np.random.default_rng(0).normal(size=(20, 3)),
        np.arange(12, dtype=np.int8).reshape(4, 3),
        np.array(["a", "b"]),
        np.zeros((0, 2)),
        np.array([[1e300, 0.0], [1.0, 2.0]]),
        np.array([[np.nan, 1.0], [2.0, 3.0]]),
        np.ones((3, 2, 2)),
        np.array([1 + 2j, 3j]),
        np.array(7.0),
    ]
)
_cuts = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)


def _load_both(path, **kwargs) -> None:
    """Both loaders on ``path``: anything but an AutofheError fails the test."""
    for load in (lambda: load_dataset(str(path), **kwargs), lambda: load_features(path)):
        try:
            load()
        except AutofheError:
            pass


@FUZZ
@given(array=_arrays, cuts=_cuts, labels=st.booleans(), truncate=st.integers(0, 400))
def test_npy_files(tmp_path, array, cuts, labels, truncate):
    data = _mutated(_npy_bytes(array), cuts)
    if truncate:
        data = data[:truncate]
    (tmp_path / "X.npy").write_bytes(data)
    if labels:
        np.save(tmp_path / "y.npy", np.arange(len(array) if array.ndim else 1) % 2)
    _load_both(tmp_path / "X.npy")


@FUZZ
@given(array=_arrays, cuts=_cuts, names=st.sampled_from([("X", "y"), ("X",), ("a", "y")]))
def test_npz_files(tmp_path, array, cuts, names):
    buffer = io.BytesIO()
    arrays = {"X": array, "y": np.arange(len(array) if array.ndim else 1) % 2, "a": array}
    np.savez(buffer, **{name: arrays[name] for name in names})
    (tmp_path / "d.npz").write_bytes(_mutated(buffer.getvalue(), cuts))
    _load_both(tmp_path / "d.npz")


@FUZZ
@given(
    text=st.text(
        alphabet=st.sampled_from([*'0123456789.,-e\n"ab xyNaninf\r\t;', "\x00", "é"]),
        max_size=200,
    ),
    column=st.sampled_from([None, "y", "a"]),
)
def test_csv_files(tmp_path, text, column):
    (tmp_path / "d.csv").write_text("a,b,y\n" + text, encoding="utf-8")
    _load_both(tmp_path / "d.csv", label_column=column)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".npy", ".npz", ".csv"]))
def test_arbitrary_bytes(tmp_path, data, suffix):
    (tmp_path / f"d{suffix}").write_bytes(data)
    _load_both(tmp_path / f"d{suffix}", label_column="y" if suffix == ".csv" else None)


# The fuzz tests above pass if the loaders refuse everything; these fail then: well-formed
# files of the same kinds load, values unchanged.
_good = st.integers(2, 30).flatmap(
    lambda rows: st.tuples(
        st.lists(
            st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
            min_size=rows,
            max_size=rows,
        ),
        st.lists(st.integers(0, 2), min_size=rows, max_size=rows),
    )
)


@FUZZ
@given(data=_good, form=st.sampled_from(["npy", "npz", "csv"]))
# rows that differ in float64 only (found by the fuzzer in a CI run)
@example(data=([[0.0, 0.0, 0.0], [0.0, 0.0, 3.9213664722465955e-182]], [0, 1]), form="npy")
def test_well_formed_files_load_unchanged(tmp_path, data, form):
    rows, labels = data
    X, y = np.array(rows), np.array(labels)
    stored = X.astype(np.float32)  # what the loader keeps: 4e-182 and 0 are one value there
    if (stored == stored[0]).all() or len(set(labels)) < 2:  # constant features, one class
        return
    if form == "npy":
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y)
        path = tmp_path / "X.npy"
    elif form == "npz":
        path = tmp_path / "d.npz"
        np.savez(path, X=X, y=y)
    else:
        path = tmp_path / "d.csv"
        table = np.column_stack([X, y])
        np.savetxt(path, table, delimiter=",", header="a,b,c,y", comments="", fmt="%.17g")
    kwargs = {"label_column": "y"} if form == "csv" else {}
    ds = load_dataset(str(path), task="classification", **kwargs)
    np.testing.assert_array_equal(ds.X, X.astype(ds.X.dtype))  # stored as float32
    assert ds.y.tolist() == y.tolist()
    np.testing.assert_array_equal(load_features(path, **kwargs), ds.X)


def test_zip_bomb_like_npz_member_is_refused_or_loaded(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("X.npy", _NPY_HEADER + b"\xff" * 50)
        archive.writestr("y.npy", b"nonsense")
    with pytest.raises(DataError):
        load_dataset(str(tmp_path / "d.npz"))
    with pytest.raises(DataError):
        load_features(tmp_path / "d.npz")


def test_a_value_beyond_float32_is_not_called_infinity(tmp_path):
    X = np.random.default_rng(0).normal(size=(40, 3))
    X[5, 1] = 1e300
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(40) % 2)
    for load in (
        lambda: load_dataset(str(tmp_path / "d.npz")),
        lambda: load_features(tmp_path / "d.npz"),
    ):
        with pytest.raises(DataError, match=r"1e\+300 at row 5, column 1 .*float32") as info:
            load()
        assert "infinity" not in str(info.value)


def test_a_folder_is_named_a_folder(tmp_path):
    (tmp_path / "X.npy").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        load_dataset(str(tmp_path / "X.npy"))
    with pytest.raises(DataError, match="is a folder"):
        load_features(tmp_path / "X.npy")


def test_all_constant_features_are_refused_before_any_trial(tmp_path):
    """Was: the search ran and its trials ended as "compile: 35-bit accumulators"."""
    np.savez(tmp_path / "d.npz", X=np.ones((50, 4)), y=np.arange(50) % 2)
    with pytest.raises(DataError, match="every feature .* is constant"):
        load_dataset(str(tmp_path / "d.npz"))
    X = np.ones((50, 4))
    X[:, 2] = np.arange(50)  # one varying column is data
    np.savez(tmp_path / "e.npz", X=X, y=np.arange(50) % 2)
    assert load_dataset(str(tmp_path / "e.npz")).X.shape == (50, 4)
