"""The compiled model: one value (program + circuit + decoding) that saves and loads as data."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from autofhe import NeuralNetClassifier, NeuralNetRegressor
from autofhe.errors import BundleError, CompilationError, ParameterError
from autofhe.fhe.bundle import (
    bundle_digest,
    load_model,
    load_model_archive,
    save_archive,
    save_bundle,
)
from autofhe.fhe.model import CompiledModel, Decoding


@pytest.fixture(scope="module")
def classifier(wine):
    Xtr, _, ytr, _ = wine
    labels = np.array(["a", "b", "c"])[ytr]  # decoding must restore any label type
    model = NeuralNetClassifier(
        module__n_hidden_neurons_multiplier=0.25, max_epochs=2, random_state=0
    )
    return model.fit(Xtr, labels).compile(Xtr)


@pytest.fixture(scope="module")
def saved(classifier, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "bundle"
    save_bundle(classifier.compiled_model, path)
    return path


def test_estimator_predictions_are_the_compiled_models(classifier, wine):
    _, Xte, _, _ = wine
    compiled = classifier.compiled_model
    assert isinstance(compiled, CompiledModel)
    np.testing.assert_array_equal(compiled.predict(Xte), classifier.predict(Xte))
    np.testing.assert_allclose(compiled.predict_proba(Xte), classifier.predict_proba(Xte))
    assert compiled.report == classifier.fhe_report()
    assert set(compiled.predict(Xte)) <= {"a", "b", "c"}


def test_load_gives_the_same_model_without_torch_objects(classifier, saved, wine):
    _, Xte, _, _ = wine
    loaded = load_model(saved, digest=bundle_digest(saved))
    np.testing.assert_array_equal(loaded.predict(Xte), classifier.predict(Xte))
    np.testing.assert_array_equal(
        loaded.program.run(loaded.program.quantize(Xte)),
        classifier.compiled_model.program.run(classifier.compiled_model.program.quantize(Xte)),
    )
    assert loaded.report == classifier.fhe_report()
    # tables only: nothing of the training side survives the round trip
    assert all(layer.function is None for layer in loaded.program.layers)
    pickle.dumps(loaded.program)  # plain data


def test_loaded_circuit_simulates_like_the_clear_program(saved, wine):
    _, Xte, _, _ = wine
    loaded = load_model(saved)
    np.testing.assert_array_equal(
        loaded.predict(Xte[:8], fhe="simulate"), loaded.predict(Xte[:8], fhe="disable")
    )


def test_archive_round_trip_and_pinned_digest(classifier, saved, tmp_path, wine):
    _, Xte, _, _ = wine
    archive = save_archive(classifier.compiled_model, tmp_path / "m.zip", {"trial": 3})
    loaded = load_model_archive(archive)
    np.testing.assert_array_equal(loaded.predict(Xte), classifier.predict(Xte))
    with pytest.raises(BundleError, match="not the pinned"):
        load_model(saved, digest="0" * 64)


def test_a_loaded_program_keeps_its_rounding_and_says_how_to_change_it(saved):
    program = load_model(saved).program
    hidden = program.layers[0]
    assert hidden.has_lookup and hidden.with_rounding(hidden.lsbs_to_remove) is hidden
    with pytest.raises(CompilationError, match="compile the estimator again"):
        hidden.with_rounding(hidden.lsbs_to_remove + 1)


def test_regressor_decoding_restores_the_target_scale(diabetes):
    Xtr, Xte, ytr, _ = diabetes
    model = NeuralNetRegressor(
        module__n_hidden_neurons_multiplier=0.1, max_epochs=2, random_state=0
    ).fit(Xtr, ytr)
    compiled = model.compile(Xtr).compiled_model
    assert compiled.decoding.task == "regression"
    np.testing.assert_allclose(compiled.predict(Xte), model.predict(Xte))
    assert abs(compiled.predict(Xte).mean() - ytr.mean()) < 0.5 * ytr.std()
    with pytest.raises(ParameterError, match="regressor"):
        compiled.predict_proba(Xte)


@pytest.mark.parametrize(
    ("client", "n_outputs", "message"),
    [
        ({"task": "classification", "classes": "abc"}, None, "not a list of labels"),
        ({"task": "classification", "classes": []}, None, "at least 2 distinct labels"),
        ({"task": "classification", "classes": ["a", "a"]}, None, "at least 2 distinct"),
        ({"task": "classification", "classes": [[1], [2]]}, None, "not a list of labels"),
        ({"task": "classification", "classes": ["a", "b"]}, 3, "2 classes for a model of 3"),
        ({"task": "regression", "target": None}, 1, "target .* is missing"),
        ({"task": "regression", "target": {"mean": [0], "scale": [1e308], "ndim": 1}}, 1, "1e"),
        ({"task": "regression", "target": {"mean": [0], "scale": [0.0], "ndim": 1}}, 1, "0.0"),
        ({"task": "regression", "target": {"mean": [0], "scale": [1], "ndim": 1}}, 2, "1-d"),
        ({"task": "ranking"}, None, "is not 'classification' or 'regression'"),
    ],
)
def test_decoding_from_corrupt_client_json_is_a_bundle_error(client, n_outputs, message):
    with pytest.raises(BundleError, match=message):
        Decoding.from_json(client, n_outputs)
