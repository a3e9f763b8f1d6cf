"""The scikit-learn contract of NeuralNetClassifier / NeuralNetRegressor, and bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import skorch
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from autofhe import NeuralNetClassifier, NeuralNetRegressor
from autofhe.errors import (
    AccumulatorBudgetError,
    AutofheError,
    DataError,
    DataTypeError,
    NotFittedError,
    ParameterError,
)

SKORCH_INIT = (
    "skorch stores **kwargs-routed parameters (module__*, iterator_train__*) and its own "
    "bookkeeping (history_, initialized_, virtual_params_) in __init__"
)
SKORCH_SET_PARAMS = (
    "skorch's set_params routes some of its own attributes (virtual params, callbacks) and "
    "cannot take arbitrary fuzz values such as -inf for them"
)
EXPECTED_FAILED = {
    "check_no_attributes_set_in_init": SKORCH_INIT,
    "check_set_params": SKORCH_SET_PARAMS,
}


@parametrize_with_checks(
    [
        NeuralNetClassifier(max_epochs=3, random_state=0),
        NeuralNetRegressor(max_epochs=3, random_state=0),
    ],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def fitted(request):
    X, y = request.getfixturevalue("breast_cancer")[0::2]
    return NeuralNetClassifier(random_state=0).fit(X, y), X


def test_defaults_are_the_seeds():
    params = NeuralNetClassifier().get_params()
    assert params["module__n_layers"] == 2
    assert params["module__activation_function"] is nn.ReLU
    assert params["module__n_hidden_neurons_multiplier"] == 4
    assert (params["n_w_bits"], params["n_a_bits"]) == (3, 3)
    assert params["n_accum_bits"] is None
    assert params["power_of_two_scaling"] is True
    assert (params["max_epochs"], params["lr"], params["verbose"]) == (10, 0.001, False)
    assert params["iterator_train__shuffle"] is True


def test_default_model_is_accurate(breast_cancer):
    """Ten epochs at lr 0.001 (the seed's defaults) reach float-MLP accuracy here."""
    Xtr, Xte, ytr, yte = breast_cancer
    model = NeuralNetClassifier(random_state=0).fit(Xtr, ytr)
    assert model.score(Xte, yte) >= 0.93
    assert model.n_features_in_ == 30
    assert model.module_.linears[0].in_features == 30
    assert model.module_.linears[0].out_features == 120  # multiplier 4


def test_integer_program_matches_training_forward(breast_cancer):
    Xtr, Xte, ytr, _ = breast_cancer
    model = NeuralNetClassifier(random_state=0, n_accum_bits=9).fit(Xtr, ytr)
    model.module_.eval()
    with torch.no_grad():
        torch_logits = model.module_(torch.from_numpy(Xte)).numpy()
    np.testing.assert_allclose(model.program.predict_raw(Xte), torch_logits, rtol=1e-5, atol=1e-5)


def test_training_forward_truncates_accumulators_like_the_lookups(breast_cancer):
    Xtr, Xte, ytr, _ = breast_cancer
    model = NeuralNetClassifier(
        random_state=0, module__n_hidden_neurons_multiplier=0.25, module__lookup_bits=5
    ).fit(Xtr, ytr)
    model.compile(Xtr)  # takes its lookup precision from the training
    report = model.fhe_report()
    assert report["lookup_bits_per_layer"] == [5]
    assert report["lsbs_removed_per_layer"][0] >= 3  # 8 neurons x 30 features: wide sums
    model.module_.eval()
    with torch.no_grad():
        torch_logits = model.module_(torch.from_numpy(Xte)).numpy()
    compiled = model.compiled_model.program.predict_raw(Xte)
    np.testing.assert_allclose(compiled, torch_logits, rtol=1e-5, atol=1e-5)
    # the untruncated program is another function: training really saw the truncation
    assert not np.allclose(model.program.predict_raw(Xte), torch_logits, atol=1e-3)


def test_n_init_keeps_the_start_with_the_lowest_training_loss(toy):
    X, y = toy
    params = dict(random_state=0, lr=0.2, max_epochs=5, batch_size=8)
    one = NeuralNetClassifier(**params).fit(X, y)
    best = NeuralNetClassifier(**params, n_init=4).fit(X, y)
    targets = y.astype(np.int64)
    # the first start is the n_init=1 model; another one trained to a lower loss
    assert best._quantized_loss(X, targets) < one._quantized_loss(X, targets)
    assert len(best.history_) == 5  # the history of the kept start, not of all four


def test_predict_proba_rows_sum_to_one(fitted):
    model, X = fitted
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], model.predict(X))


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["benign", "malignant"]),
        np.array([-7, 12]),
        np.array([1.0, 3.0]),
        np.array([False, True]),
    ],
    ids=["strings", "shifted-ints", "integral-floats", "bools"],
)
def test_any_label_type(labels, toy):
    X, y = toy
    y_labels = labels[y]
    model = NeuralNetClassifier(max_epochs=20, lr=0.01, random_state=0).fit(X, y_labels)
    np.testing.assert_array_equal(model.classes_, np.sort(labels))
    pred = model.predict(X)
    assert pred.dtype == y_labels.dtype
    assert set(pred) <= set(labels)
    assert (pred == y_labels).mean() > 0.8


def test_multiclass_proba(wine):
    Xtr, Xte, ytr, yte = wine
    model = NeuralNetClassifier(random_state=0).fit(Xtr, ytr)
    proba = model.predict_proba(Xte)
    assert proba.shape == (len(Xte), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert model.score(Xte, yte) >= 0.9


def test_same_seed_same_model_bit_for_bit(toy):
    X, y = toy
    a = NeuralNetClassifier(random_state=3, max_epochs=5).fit(X, y)
    rng_state = torch.get_rng_state()
    b = NeuralNetClassifier(random_state=3, max_epochs=5).fit(X, y)
    # the caller's global torch RNG is untouched by fit
    assert torch.equal(rng_state, torch.get_rng_state())
    for la, lb in zip(a.program.layers, b.program.layers):
        np.testing.assert_array_equal(la.weight, lb.weight)
        np.testing.assert_array_equal(la.bias, lb.bias)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = NeuralNetClassifier(random_state=4, max_epochs=5).fit(X, y)
    assert any(
        not np.array_equal(la.weight, lc.weight)
        for la, lc in zip(a.program.layers, c.program.layers)
    )


def test_clone_keeps_params_and_drops_fit(fitted):
    model, _ = fitted
    twin = clone(model)
    assert twin.get_params()["n_w_bits"] == model.n_w_bits
    assert not hasattr(twin, "program_")
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        twin.predict(np.zeros((1, 30)))


def test_pickle_roundtrip(fitted):
    model, X = fitted
    back = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    # the unpickled module still trains and predicts the same way
    back.module_.eval()
    model.module_.eval()
    with torch.no_grad():
        x = torch.from_numpy(X[:5])
        assert torch.equal(back.module_(x), model.module_(x))


def test_pipeline_and_grid_search(breast_cancer):
    Xtr, Xte, ytr, yte = breast_cancer
    pipe = make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0, max_epochs=5))
    grid = GridSearchCV(
        pipe,
        {"neuralnetclassifier__module__n_layers": [1, 2], "neuralnetclassifier__n_w_bits": [2, 4]},
        cv=2,
    )
    grid.fit(Xtr, ytr)
    assert len(grid.cv_results_["params"]) == 4
    best = grid.best_estimator_[-1]
    assert best.module__n_layers in (1, 2)
    assert len(best.module_.linears) == best.module__n_layers
    assert grid.score(Xte, yte) > 0.85


def test_class_weights_shift_predictions(toy):
    X, y = toy
    base = dict(max_epochs=30, lr=0.01, random_state=0)
    plain = NeuralNetClassifier(**base).fit(X, y)
    heavy = NeuralNetClassifier(**base, criterion__weight=torch.tensor([1.0, 50.0])).fit(X, y)
    assert (heavy.predict(X) == 1).sum() > (plain.predict(X) == 1).sum()
    listed = NeuralNetClassifier(**base, criterion__weight=[1.0, 50.0])
    with pytest.raises(TypeError):
        # torch's loss wants a tensor; a list is a user error skorch reports as a TypeError
        listed.fit(X, y)


def test_regressor(diabetes):
    Xtr, Xte, ytr, yte = diabetes
    model = NeuralNetRegressor(random_state=0).fit(Xtr, ytr)
    pred = model.predict(Xte)
    assert pred.shape == yte.shape
    # sklearn's float MLPRegressor(max_iter=500) scores R2 = 0.13 on this split; we get 0.35
    assert model.score(Xte, yte) > 0.25
    two = NeuralNetRegressor(random_state=0).fit(Xtr, np.c_[ytr, -ytr])
    assert two.predict(Xte).shape == (len(Xte), 2)
    assert not hasattr(model, "predict_proba")


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, "SELU"])
def test_layers_and_activations(toy, n_layers, activation):
    X, y = toy
    model = NeuralNetClassifier(
        module__n_layers=n_layers,
        module__activation_function=activation,
        module__n_hidden_neurons_multiplier=0.5,
        random_state=0,
        max_epochs=2,
    ).fit(X, y)
    assert len(model.program.layers) == n_layers
    assert [layer.weight.shape[0] for layer in model.program.layers[:-1]] == [2] * (n_layers - 1)
    assert model.predict(X).shape == (len(X),)


# -- bad input: one clear error each, naming the value and the fix ----------------------------


def _fit(X, y, **params):
    return NeuralNetClassifier(**{"max_epochs": 1, **params}).fit(X, y)


def test_nan_and_inf(toy):
    X, y = toy
    X = X.copy()
    X[3, 2] = np.nan
    with pytest.raises(
        DataError, match=r"NaN or infinity \(1 values; first nan at row 3, column 2\)"
    ):
        _fit(X, y)
    X[3, 2] = np.inf
    with pytest.raises(DataError, match="impute"):
        _fit(X, y)


def test_wrong_dimensions(toy):
    X, y = toy
    with pytest.raises(DataError, match=r"2-D array .* got 1-D with shape \(60,\).*reshape"):
        _fit(X[:, 0], y)
    with pytest.raises(DataError, match=r"got 3-D with shape \(60, 4, 1\)"):
        _fit(X[:, :, None], y)


def test_length_mismatch(toy):
    X, y = toy
    with pytest.raises(DataError, match="X has 60 rows but y has 59; pass one label per row"):
        _fit(X, y[:-1])


def test_continuous_labels_are_refused(toy):
    X, _ = toy
    with pytest.raises(DataError, match="continuous target .*NeuralNetRegressor"):
        _fit(X, np.linspace(0, 1, len(X)))


def test_single_class(toy):
    X, _ = toy
    with pytest.raises(DataError, match=r"single class \('spam'\).*at least 2 classes"):
        _fit(X, np.array(["spam"] * len(X)))


def test_non_numeric_features(toy):
    X, y = toy
    with pytest.raises(DataTypeError, match="non-numeric dtype <U.*OneHotEncoder"):
        _fit(X.astype(str), y)
    objects = X.astype(object)
    objects[0, 0] = "red"
    with pytest.raises(DataTypeError, match="non-numeric values .*'red'.*OneHotEncoder"):
        _fit(objects, y)
    with pytest.raises(DataTypeError, match=r"sparse input is not supported.*toarray\(\)"):
        _fit(sparse.csr_matrix(X), y)


def test_empty_data(toy):
    _, y = toy
    with pytest.raises(DataError, match=r"0 sample\(s\).*pass at least one row"):
        _fit(np.zeros((0, 3)), y[:0])
    with pytest.raises(DataError, match=r"0 feature\(s\).*pass at least one column"):
        _fit(np.zeros((5, 0)), y[:5])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_w_bits": 1}, "n_w_bits=1 is out of range: use an integer from 2 to 16"),
        ({"n_a_bits": 17}, "n_a_bits=17 is out of range: use an integer from 2 to 16"),
        ({"n_w_bits": 2.5}, r"n_w_bits=2.5 must be an integer from 2 to 16"),
        ({"module__n_layers": 0}, "module__n_layers=0 is out of range: use an integer from 1"),
        ({"n_accum_bits": 1}, "n_accum_bits=1 is out of range"),
        (
            {"module__n_hidden_neurons_multiplier": -1},
            "module__n_hidden_neurons_multiplier=-1 must be a positive finite number",
        ),
        ({"lr_schedule": "linear"}, "lr_schedule='linear' is not a schedule; use one of"),
        ({"n_init": 0}, "n_init=0 is out of range: use an integer from 1 to 100"),
        ({"n_init": 2.0}, "n_init=2.0 must be an integer from 1 to 100"),
        # never checked before: params.py's table is the one source
        ({"lr": -0.1}, "lr=-0.1 must be a positive finite number"),
        ({"lr": float("nan")}, "lr=nan must be a positive finite number"),
        ({"max_epochs": 0}, "max_epochs=0 is out of range: use an integer from 1"),
        ({"optimizer__weight_decay": 2.0}, "optimizer__weight_decay=2.0 must be a finite"),
        ({"batch_size": 0}, "batch_size=0 is out of range: .* or -1 for all rows at once"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be an integer from 1"),
        ({"module__lookup_bits": 1}, "module__lookup_bits=1 is out of range"),
    ],
)
def test_out_of_range_parameters(toy, params, message):
    X, y = toy
    with pytest.raises(ParameterError, match=message):
        _fit(X, y, **params)


def test_unknown_activation(toy):
    X, y = toy
    with pytest.raises(ParameterError, match="'Relu' is not a torch activation.*torch.nn.ReLU"):
        _fit(X, y, module__activation_function="Relu")


def test_impossible_budget_names_smallest(toy):
    X, y = toy
    with pytest.raises(AccumulatorBudgetError, match="n_accum_bits=5 is too small.*>= 6"):
        _fit(X, y, n_accum_bits=5)  # 3-bit weights x 7 (unsigned 3-bit ReLU outputs) = 21


def test_feature_count_mismatch_and_inferred_dims(fitted):
    model, X = fitted
    expected = "X has 29 features, but NeuralNetClassifier is expecting 30"
    with pytest.raises(DataError, match=expected):
        model.predict(X[:, :-1])
    with pytest.raises(TypeError, match="module__input_dim is inferred from the data"):
        NeuralNetClassifier(module__input_dim=3)


def test_errors_share_one_hierarchy(toy):
    """Every kind of failure the estimators raise is caught by one ``except AutofheError``
    and by the class generic tooling expects (a built-in or scikit-learn's)."""
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    X, y = toy
    cases = [
        (lambda: NeuralNetClassifier().predict(X), NotFittedError, SklearnNotFittedError),
        (lambda: _fit(X, y, module__n_layers=0), ParameterError, ValueError),
        (lambda: _fit(X, y, n_accum_bits=5), AccumulatorBudgetError, ValueError),
        (lambda: _fit(X[:, 0], y), DataError, ValueError),
        (lambda: _fit(X.astype(str), y), DataTypeError, TypeError),
    ]
    for call, kind, expected_by_tooling in cases:
        with pytest.raises(AutofheError) as info:
            call()
        assert type(info.value) is kind
        assert isinstance(info.value, expected_by_tooling)


def test_raw_features_need_no_scaler(breast_cancer):
    """Per-feature standardization is part of the model (client side, free under FHE)."""
    Xtr, Xte, ytr, yte = breast_cancer
    factor = np.logspace(-3, 3, Xtr.shape[1]).astype(np.float32)
    shift = np.linspace(-50, 500, Xtr.shape[1]).astype(np.float32)
    scaled = NeuralNetClassifier(random_state=0).fit(Xtr, ytr).score(Xte, yte)
    raw = NeuralNetClassifier(random_state=0).fit(Xtr * factor + shift, ytr)
    assert raw.score(Xte * factor + shift, yte) >= scaled - 0.03
    np.testing.assert_allclose(raw.program.input_offset, (Xtr * factor + shift).mean(0), rtol=1e-4)


class _EvalLoss(skorch.callbacks.Callback):
    """Loss of the quantized network in inference mode after every epoch."""

    def __init__(self, X, y):
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)

    def initialize(self):
        self.losses = []
        return self

    @torch.no_grad()
    def on_epoch_end(self, net, **kwargs):
        net.module_.eval()
        self.losses.append(float(net.criterion_(net.module_(self.X), self.y)))
        net.module_.train()


def test_training_ends_on_its_best_epoch(toy):
    X, y = toy
    record = _EvalLoss(X, y.astype(np.int64))
    # a high constant rate makes the loss jump around from epoch to epoch
    model = NeuralNetClassifier(
        random_state=0, lr=0.2, max_epochs=30, batch_size=8, callbacks=[record]
    ).fit(X, y)
    assert min(record.losses) < record.losses[-1]  # the last epoch is not the best one here
    with torch.no_grad():
        final = float(model.criterion_(model.module_(record.X), record.y))
    assert final == pytest.approx(min(record.losses), rel=1e-6)


@pytest.mark.parametrize(("schedule", "final_lr"), [("constant", 0.01), ("cosine", 0.0)])
def test_lr_schedule(toy, schedule, final_lr):
    X, y = toy
    model = NeuralNetClassifier(random_state=0, lr=0.01, max_epochs=8, lr_schedule=schedule)
    model.fit(X, y)
    assert model.optimizer_.param_groups[0]["lr"] == pytest.approx(final_lr, abs=1e-12)
