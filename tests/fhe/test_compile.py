"""Compilation to TFHE: bit-exact modes, the promised construction, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from autofhe import NeuralNetClassifier, NeuralNetRegressor
from autofhe.errors import (
    BundleError,
    CompilationError,
    NotCompiledError,
    ParameterError,
    ResourceError,
)
from autofhe.fhe.compile import (
    MAX_AUTO_LOOKUP_BITS,
    MAX_LOOKUP_BITS,
    MIN_AGREEMENT,
    check_key_memory,
    choose_lsbs,
)


def _compiled(split, **params):
    Xtr, Xte, ytr, yte = split
    model = NeuralNetClassifier(random_state=0, **params).fit(Xtr, ytr)
    return model.compile(Xtr), Xte, yte


@pytest.fixture(scope="module")
def bc_model(breast_cancer):
    return _compiled(breast_cancer, module__n_hidden_neurons_multiplier=0.25, n_accum_bits=8)


@pytest.fixture(scope="module")
def wine_model(wine):
    return _compiled(wine, module__n_hidden_neurons_multiplier=0.5)


@pytest.fixture(scope="module")
def digits_model(digits):
    return _compiled(digits, module__n_hidden_neurons_multiplier=0.25)


@pytest.mark.parametrize("name", ["bc_model", "wine_model", "digits_model"])
def test_simulate_equals_disable_on_every_test_row(name, request):
    model, Xte, yte = request.getfixturevalue(name)
    clear = model.predict_proba(Xte, fhe="disable")
    simulated = model.predict_proba(Xte, fhe="simulate")
    np.testing.assert_array_equal(simulated, clear)
    assert model.score(Xte, yte) > 0.7


@pytest.mark.parametrize("name", ["bc_model", "wine_model", "digits_model"])
def test_construction_is_what_the_report_promises(name, request):
    model, _, _ = request.getfixturevalue(name)
    report = model.fhe_report()
    program = model.compiled_model.program
    hidden = [layer for layer in program.layers if layer.has_lookup]
    # one lookup per hidden neuron, none for the input or the output layer ...
    assert report["lookups_per_layer"] == [layer.weight.shape[0] for layer in hidden]
    # ... each truncated bit costs one more PBS per neuron (concrete's exact truncation)
    expected = sum(layer.weight.shape[0] * (1 + layer.lsbs_to_remove) for layer in hidden)
    assert report["pbs_count"] == expected
    assert report["lookup_bits_per_layer"] == [
        layer.acc_bits - layer.lsbs_to_remove for layer in hidden
    ]
    assert report["max_lookup_bits"] <= 7  # "auto" never leaves wider lookups
    assert report["bit_exact"] is True
    # the circuit's integers are exactly as wide as the guaranteed accumulators
    assert report["max_bit_width"] == max(program.accumulator_bits)
    for key in ("complexity", "size_of_evaluation_keys", "evaluation_keys_bytes", "p_error"):
        assert report[key] > 0


def test_circuit_respects_accumulator_budget(breast_cancer):
    model, _, _ = _compiled(breast_cancer, module__n_hidden_neurons_multiplier=0.25, n_accum_bits=7)
    assert max(model.accumulator_bits_) <= 7
    assert model.fhe_report()["max_bit_width"] <= 7
    widths = [
        node.output.dtype.bit_width
        for node in model.fhe_circuit.graph.query_nodes()
        if hasattr(node.output.dtype, "bit_width") and node.output.is_encrypted
    ]
    assert max(widths) <= 7


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU])
def test_activations_compile_bit_exact(wine, activation):
    model, Xte, _ = _compiled(
        wine,
        module__activation_function=activation,
        module__n_hidden_neurons_multiplier=0.25,
        n_accum_bits=7,
        max_epochs=3,
    )
    np.testing.assert_array_equal(model.predict(Xte, fhe="simulate"), model.predict(Xte))
    assert model.fhe_report()["pbs_count"] >= 3


def test_truncation_keeps_outputs_and_shrinks_keys(wine):
    Xtr, Xte, ytr, _ = wine
    model = NeuralNetClassifier(module__n_hidden_neurons_multiplier=0.5, random_state=0)
    model.fit(Xtr, ytr)
    wide = model.compile(Xtr, rounding="none").fhe_report()
    narrow = model.compile(Xtr, lookup_bits=5).fhe_report()
    assert narrow["max_lookup_bits"] == 5 < wide["max_lookup_bits"]
    assert narrow["size_of_evaluation_keys"] < wide["size_of_evaluation_keys"]
    assert narrow["complexity"] < wide["complexity"]
    np.testing.assert_array_equal(model.predict(Xte, fhe="simulate"), model.predict(Xte))


def test_auto_rounding_keeps_decisions(breast_cancer):
    Xtr, _, ytr, _ = breast_cancer
    model = NeuralNetClassifier(random_state=0, module__n_hidden_neurons_multiplier=0.5)
    model.fit(Xtr, ytr)
    x_int = model.program.quantize(Xtr)
    lsbs = choose_lsbs(model.program, x_int)
    assert lsbs[0] > 0 and lsbs[-1] == 0

    def agreement(k: int) -> float:
        rounded = model.program.with_rounding([k, *lsbs[1:]])
        return np.mean(model.program.run(x_int).argmax(1) == rounded.run(x_int).argmax(1))

    # decisions kept, at the narrowest precision that keeps them (one bit less does not)
    assert agreement(lsbs[0]) >= MIN_AGREEMENT
    assert agreement(lsbs[0] + 1) < MIN_AGREEMENT
    # when no precision keeps them, the widest lookup "auto" allows
    capped = choose_lsbs(model.program, x_int, min_agreement=1.01)
    acc_bits = model.program.layers[0].acc_bits
    assert acc_bits - capped[0] == MAX_AUTO_LOOKUP_BITS


def test_approximate_rounding_is_opt_in_and_flagged(wine):
    Xtr, Xte, ytr, _ = wine
    model = NeuralNetClassifier(random_state=0, module__n_hidden_neurons_multiplier=0.25)
    model.fit(Xtr, ytr).compile(Xtr, rounding="approximate", lookup_bits=4)
    report = model.fhe_report()
    assert report["bit_exact"] is False
    assert report["max_lookup_bits"] == 4
    assert model.predict(Xte, fhe="simulate").shape == (len(Xte),)


def test_approximate_rounding_simulates_close_to_its_clear_program(digits):
    """concrete's default logical clipping broke per-neuron tables after approximate rounding:
    a 64-16-10 digits network simulated at 0.48 accuracy where its clear program scored 0.90
    (and exact rounding 0.96). Approximate rounding errs by one rounding step now and then,
    so simulation may differ from the clear program on some rows, never on most."""
    model, Xte, yte = _compiled(
        digits,
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=0.25,
        n_w_bits=3,
        n_a_bits=4,
        n_accum_bits=10,
        module__lookup_bits=5,
        max_epochs=60,
        lr=0.02,
        lr_schedule="cosine",
        batch_size=128,
    )
    rows = slice(0, 150)
    exact = model.fhe_report()["pbs_count"]
    model.compile(digits[0], rounding="approximate", lookup_bits=6)
    assert model.fhe_report()["pbs_count"] == 16  # one lookup per neuron, no rounding PBS
    assert exact >= 4 * 16
    clear = model.predict(Xte[rows])
    simulated = model.predict(Xte[rows], fhe="simulate")
    assert np.mean(simulated == clear) >= 0.9
    assert np.mean(simulated == yte[rows]) >= np.mean(clear == yte[rows]) - 0.04


def test_regressor_compiles(diabetes):
    Xtr, Xte, ytr, _ = diabetes
    model = NeuralNetRegressor(random_state=0, module__n_hidden_neurons_multiplier=0.25)
    model.fit(Xtr, ytr).compile(Xtr)
    np.testing.assert_array_equal(model.predict(Xte, fhe="simulate"), model.predict(Xte))


@pytest.mark.execute
def test_execute_equals_disable_on_three_rows(wine, key_cache_config):
    Xtr, Xte, ytr, _ = wine
    model = NeuralNetClassifier(
        random_state=0,
        module__n_hidden_neurons_multiplier=0.25,
        n_accum_bits=6,
        n_w_bits=2,
        n_a_bits=2,
    )
    model.fit(Xtr, ytr).compile(Xtr, configuration=key_cache_config)
    rows = Xte[:3]
    executed = model.predict_proba(rows, fhe="execute")
    np.testing.assert_array_equal(executed, model.predict_proba(rows, fhe="disable"))
    np.testing.assert_array_equal(executed, model.predict_proba(rows, fhe="simulate"))


# -- errors ---------------------------------------------------------------------------------


def test_fhe_modes_need_compile(toy):
    X, y = toy
    model = NeuralNetClassifier(max_epochs=1).fit(X, y)
    with pytest.raises(NotCompiledError, match=r"call model.compile\(X_train\) first"):
        model.predict(X, fhe="simulate")
    with pytest.raises(NotCompiledError):
        model.fhe_report()
    with pytest.raises(ParameterError, match="fhe='encrypted' is not a mode"):
        model.predict(X, fhe="encrypted")


def test_lookup_over_16_bits_is_a_clear_compilation_error(breast_cancer):
    Xtr, _, ytr, _ = breast_cancer
    model = NeuralNetClassifier(n_w_bits=8, n_a_bits=8, max_epochs=1, random_state=0)
    model.fit(Xtr, ytr)
    assert model.accumulator_bits_[0] > MAX_LOOKUP_BITS
    with pytest.raises(
        CompilationError, match=r"layer 0 needs table lookups on \d\d-bit.*n_accum_bits"
    ):
        model.compile(Xtr, rounding="none")


def test_bad_rounding_mode(toy):
    X, y = toy
    model = NeuralNetClassifier(max_epochs=1).fit(X, y)
    with pytest.raises(CompilationError, match="rounding='round' is not a rounding mode"):
        model.compile(X, rounding="round")


def test_key_generation_refused_when_keys_cannot_fit():
    report = {"size_of_evaluation_keys": 10**15, "size_of_secret_keys": 0}
    with pytest.raises(ResourceError, match=r"needs 1000000.0 GB of evaluation keys"):
        check_key_memory(report)
    check_key_memory({"size_of_evaluation_keys": 10**6, "size_of_secret_keys": 0})


def test_refit_drops_stale_circuit(toy):
    X, y = toy
    model = NeuralNetClassifier(max_epochs=1, module__n_hidden_neurons_multiplier=0.5)
    model.fit(X, y).compile(X)
    model.fit(X, y)
    with pytest.raises(NotCompiledError):
        model.predict(X, fhe="simulate")


def test_wide_accumulator_before_truncation_is_a_clear_error(breast_cancer):
    Xtr, _, ytr, _ = breast_cancer
    model = NeuralNetClassifier(n_w_bits=8, n_a_bits=8, max_epochs=1, random_state=0)
    model.fit(Xtr, ytr)
    with pytest.raises(
        CompilationError, match=r"layer 0 has \d\d-bit accumulators; rounding"
    ) as err:
        model.compile(Xtr)  # "auto" narrows the lookup, but truncation itself is a PBS
    assert "\n" not in str(err.value)


def test_server_compile_keeps_the_widths_that_training_rows_reached(tmp_path):
    # One neuron with alternating +7/-7 weights on 16 inputs: the data-free rows a server
    # compiles with (uniform rows, all-lowest, all-highest) keep its accumulator within about
    # +-450, while the training row (7, -8, 7, -8, ...) reaches 840. Concrete measures the width
    # of the truncated accumulator on the compile's rows, so without a hint the server
    # compiled a narrower lookup than the model's: the bundle failed its own check (and a
    # search trial with it).
    from autofhe.fhe.bundle import save_bundle
    from autofhe.fhe.codec import program_from_json, program_to_json
    from autofhe.fhe.model import Decoding, compile_model
    from autofhe.fhe.program import IntegerProgram, ProgramLayer
    from autofhe.fhe.rebuild import check_specs, compile_server

    n = 16
    hidden = ProgramLayer(
        weight=np.array([[7, -7] * (n // 2)], dtype=np.int64),
        bias=np.zeros(1, dtype=np.int64),
        acc_bits=11,  # worst case 7 * 8 * 16 = 896
        function=lambda acc: np.clip(np.round(acc / 128), 0, 7),
        out_bits=3,
        out_signed=False,
    )
    output = ProgramLayer(
        weight=np.array([[1], [-1]], dtype=np.int64), bias=np.zeros(2, np.int64), acc_bits=5
    )
    program = IntegerProgram(
        input_scale=np.ones(n), input_bits=4, layers=[hidden, output], output_scale=np.ones(2)
    )
    X = np.array([[7, -8] * (n // 2), [0] * n], dtype=np.float64)
    decoding = Decoding("classification", classes=np.array([0, 1]))
    model = compile_model(program, X, decoding, rounding="auto", lookup_bits=4)

    compiled = model.program
    assert [layer.lsbs_to_remove for layer in compiled.layers] == [7, 0]
    assert compiled.layers[0].reduced_bits == 11  # what row 0 reached, not the data-free 10
    specs = json.loads(model.circuit.client.specs.serialize())
    compressed = {"compile": {"compress": True}}  # as save_bundle writes it
    check_specs(compile_server({**program_to_json(compiled), **compressed}), specs, tmp_path)
    # the width travels through the bundle's JSON, and a bundle saves (it checked itself)
    assert program_from_json(program_to_json(compiled)).layers[0].reduced_bits == 11
    save_bundle(model, tmp_path / "bundle")
    # the hint is what made the difference: the same program without it compiles narrower
    bare = compiled.with_rounding([0, 0]).with_rounding([7, 0])
    with pytest.raises(BundleError, match="does not match"):
        check_specs(compile_server({**program_to_json(bare), **compressed}), specs, tmp_path)


@pytest.mark.execute
@pytest.mark.parametrize("compress", [True, False])
def test_key_sizes_are_known_before_keygen_and_compression_shrinks_what_travels(compress):
    """The client specs give the evaluation keys' serialized size to within a kilobyte (the
    search prices and limits it before any key exists); compressed (the default), keys travel
    several times smaller and an encrypted input about 50x smaller."""
    from sklearn.datasets import make_circles

    X, y = make_circles(200, noise=0.2, factor=0.5, random_state=0)
    X = X.astype(np.float32)
    model = NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=2,
        n_w_bits=2,
        n_a_bits=2,
        module__lookup_bits=4,
        max_epochs=3,
        random_state=0,
    ).fit(X, y)
    report = model.compile(X, compress=compress).fhe_report()
    circuit = model.fhe_circuit
    circuit.keygen()
    sent = len(circuit.client.evaluation_keys.serialize())
    one_input = len(
        circuit.client.encrypt(model.compiled_model.program.quantize(X[:1])[0]).serialize()
    )
    assert abs(report["evaluation_keys_bytes"] - sent) < 1024, (report, sent)
    assert report["compress_evaluation_keys"] is compress
    if compress:
        assert report["evaluation_keys_memory_bytes"] > 4 * sent
        assert one_input < 1000
    else:
        assert report["evaluation_keys_memory_bytes"] == report["evaluation_keys_bytes"]
        assert one_input > 10_000
        # what encryption works through, compressed or not: concrete's uncompressed sizes
        assert report["ciphertext_bytes"] == report["size_of_inputs"] + report["size_of_outputs"]


def test_compiled_circuits_leave_nothing_in_the_temporary_directory(wine, tmp_path, monkeypatch):
    """concrete compiles each circuit (and its simulation twin) into a temporary directory it
    never removes: 40,000 of them had piled up in /tmp after a day of test runs and searches."""
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    Xtr, Xte, ytr, _ = wine
    model = NeuralNetClassifier(
        module__n_layers=1, n_w_bits=2, n_a_bits=2, max_epochs=2, random_state=0
    ).fit(Xtr, ytr)
    model.compile(Xtr)
    model.predict(Xte[:2], fhe="simulate")  # the simulation library
    assert model.compiled_model.circuit.server is not None  # the execution library
    made = sorted(p.name for p in tmp_path.iterdir())
    assert len(made) >= 2, made  # concrete wrote its libraries here
    del model
    gc.collect()
    assert list(tmp_path.iterdir()) == []
