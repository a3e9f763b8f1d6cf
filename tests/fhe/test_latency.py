"""Latency measurement and the cost model (no calibration run: it takes a minute)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autofhe import NeuralNetClassifier
from autofhe.fhe import latency
from autofhe.fhe.latency import CostModel, measure_latency, predict_latency

PARAM = {"polynomial_size": 1024, "glwe_dimension": 2, "input_lwe_dimension": 800, "level": 1}


def _report(lookups, count, io=(4000, 2000)):
    return {
        "lookups_per_layer": lookups,
        "pbs_params": [{**PARAM, "count": count}],
        "size_of_inputs": io[0],
        "size_of_outputs": io[1],
    }


MODEL = CostModel(base=0.003, per_byte=1e-7, seconds_per_unit=0.5, seconds_per_pbs=0.002, cores=2)


def test_pbs_work_follows_the_crypto_parameters():
    one = 800 * 1 * 3 * 1024 * (10 + 3) / 1e9
    assert latency.pbs_work(_report([1], 1)) == pytest.approx(one)
    assert latency.pbs_work(_report([16], 16)) == pytest.approx(16 * one)
    bigger = {**PARAM, "polynomial_size": 2048, "count": 1}
    assert latency.pbs_work({"pbs_params": [bigger]}) > 2 * one
    assert latency.pbs_work({"pbs_params": []}) == 0.0


def test_parallelism_counts_rounds_of_cores():
    assert latency.parallelism([16], cores=2) == 2.0
    assert latency.parallelism([1], cores=2) == 1.0
    assert latency.parallelism([3], cores=2) == 1.5  # 2 rounds for 3 lookups
    assert latency.parallelism([16, 1], cores=2) == pytest.approx(17 / 9)
    assert latency.parallelism([], cores=2) == 1.0


def test_prediction_and_json_roundtrip():
    linear = {"lookups_per_layer": [], "pbs_params": [], "size_of_inputs": 30_000}
    linear["size_of_outputs"] = 2000
    assert MODEL.predict(linear) == pytest.approx(0.003 + 32_000 * 1e-7)
    work16 = latency.pbs_work(_report([16], 16))
    lookups = (0.5 * work16 + 0.002 * 16) / 2  # 16 lookups, 2 at a time
    assert MODEL.predict(_report([16], 16)) == pytest.approx(0.003 + 6000 * 1e-7 + lookups)
    assert MODEL.predict(_report([16], 16)) > MODEL.predict(_report([8], 8))
    assert MODEL.predict(_report([8], 8, io=(8000, 2000))) > MODEL.predict(_report([8], 8))
    back = CostModel.from_json(json.loads(json.dumps(MODEL.to_json())))
    assert back.predict(_report([16], 16)) == MODEL.predict(_report([16], 16))


def test_costs_are_fit_on_relative_error_and_never_negative():
    work = np.array([0.1, 0.4, 1.0, 2.0, 0.05, 0.3])
    n_pbs = np.array([8.0, 8.0, 2.0, 16.0, 1.0, 4.0])
    bsk = np.array([1e8, 5e8, 1e9, 2e8, 1e8, 3e8])
    seconds = 5e-10 * bsk + 0.3 * work + 0.004 * n_pbs
    columns = np.stack([bsk, np.zeros(6), work, n_pbs], axis=1)
    assert latency.fit_costs(columns, seconds) == pytest.approx([5e-10, 0, 0.3, 0.004], rel=1e-6)
    # timings that the work alone explains, with noise: no term goes negative
    noisy = 0.3 * work * (1 + 0.05 * np.sin(n_pbs))
    coef = latency.fit_costs(columns, noisy)
    assert (coef >= 0).all() and coef[2] == pytest.approx(0.3, rel=0.2)


def test_every_run_pays_for_its_keys_once():
    """The term that was missing: a circuit with 2 lookups on big parameters costs far more
    than 2/24 of one with 24 lookups on the same parameters."""
    model = CostModel(0.003, 1e-8, 0.2, 0.005, 2, per_bsk_byte=5e-10, per_ksk_byte=1e-10)
    big = {"polynomial_size": 8192, "glwe_dimension": 1, "input_lwe_dimension": 850, "level": 2}
    report = {
        "lookups_per_layer": [2],
        "pbs_params": [{**big, "count": 2}],
        "size_of_inputs": 4000,
        "size_of_outputs": 2000,
        "size_of_keyswitch_keys": 1e8,
    }
    bsk = 850 * 2 * 4 * 8192 * 8
    assert latency.key_bytes(report) == (bsk, 1e8)
    work, n_pbs = latency.lookup_terms(report, 2)
    expected = 0.003 + 6000e-8 + 5e-10 * bsk + 1e-10 * 1e8 + 0.2 * work + 0.005 * n_pbs
    assert model.predict(report) == pytest.approx(expected)
    many = {**report, "lookups_per_layer": [24], "pbs_params": [{**big, "count": 24}]}
    assert model.predict(many) < 12 * model.predict(report) * 0.5
    linear = {"lookups_per_layer": [], "pbs_params": [], "size_of_inputs": 10, "size_of_outputs": 0}
    assert latency.key_bytes(linear) == (0.0, 0.0)
    back = CostModel.from_json(json.loads(json.dumps(model.to_json())))
    assert back.predict(report) == model.predict(report)


def test_cache_is_keyed_by_concrete_version_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(latency, "CACHE_DIR", tmp_path)
    key = latency._machine_key()
    path = tmp_path / f"latency-{key}.json"
    path.write_text(json.dumps(CostModel(1, 2, 3, 4, 2).to_json()))
    assert latency.load_cost_model(calibrate_if_missing=False).base == 1
    import importlib.metadata

    installed = importlib.metadata.version
    other = {"concrete-python": "0.0.0-other"}
    monkeypatch.setattr(importlib.metadata, "version", lambda d: other.get(d) or installed(d))
    assert latency._machine_key() != key
    assert latency.load_cost_model(calibrate_if_missing=False) is None
    monkeypatch.undo()
    monkeypatch.setattr(latency, "CACHE_DIR", tmp_path)
    path.write_text("not json")  # a corrupt cache is dropped, never trusted
    assert latency.load_cost_model(calibrate_if_missing=False) is None
    assert not path.exists()


@pytest.mark.execute
def test_measure_latency_excludes_keygen(toy, key_cache_config):
    X, y = toy
    model = NeuralNetClassifier(
        max_epochs=2,
        module__n_hidden_neurons_multiplier=0.5,
        n_w_bits=2,
        n_a_bits=2,
        n_accum_bits=5,
        random_state=0,
    ).fit(X, y)
    model.compile(X, configuration=key_cache_config)
    result = measure_latency(model.compiled_model, X, n=2)
    assert result["samples"] == 2
    for key in ("keygen_s", "encrypt_s", "run_s", "decrypt_s", "latency_s"):
        assert result[key] > 0
    parts = result["encrypt_s"] + result["run_s"] + result["decrypt_s"]
    assert result["latency_s"] == pytest.approx(parts, rel=0.5)
    predicted = predict_latency(model.compiled_model, MODEL)
    assert np.isfinite(predicted) and predicted > 0
