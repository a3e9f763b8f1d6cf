"""The search service: objective, constraints, persistence, workers, CLI and dashboard."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest

from autofhe.data import load_dataset, split_dataset
from autofhe.errors import DataError, ParameterError
from autofhe.fhe.latency import CostModel
from autofhe.search.front.pareto import pareto_front
from autofhe.search.plan.space import SEED_CONFIG
from autofhe.search.plan.spec import load_spec
from autofhe.search.run.study import open_study
from autofhe.search.run.workers import run_workers
from autofhe.search.store.tables import ParetoStore
from autofhe.search.trial.objective import SearchContext, objective
from autofhe.search.trial.rows import Rows

from specs import fast_spec

#: real searches through the library and the CLI (make check leaves them out)
pytestmark = pytest.mark.slow

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
COST = CostModel(base=0.002, per_byte=1e-8, seconds_per_unit=1e-3, seconds_per_pbs=1e-3, cores=2)
FAST_SPEC = fast_spec(max_epochs=3)


@pytest.fixture(scope="module")
def wine_ds():
    return load_dataset("sklearn:wine")


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "fast.toml"
    path.write_text(FAST_SPEC)
    return path


def _context(ds, folds: int = 1, **kwargs):
    rows = Rows(ds.task, "accuracy", *split_dataset(ds, 0), folds=folds)
    return SearchContext(rows, space=load_spec(None).space, cost_model=COST, **kwargs)


def test_objective_through_fixed_trial(wine_ds):
    ctx = _context(wine_ds)
    params = {
        "module__n_layers": 2,
        "module__activation_function": "ReLU",
        "module__n_hidden_neurons_multiplier": 0.5,
        "n_w_bits": 3,
        "n_a_bits": 3,
        "accum_slack": 2,  # 3/3 bits, ReLU: n_accum_bits = 6 + 2
        "power_of_two_scaling": True,
        "lr": 0.003,
        "max_epochs": 20,
        "lr_schedule": "cosine",
        "optimizer__weight_decay": 1e-4,
        "module__lookup_bits": 5,
        "n_init": 1,
    }
    trial = optuna.trial.FixedTrial(params)
    metric, latency = objective(trial, ctx)
    assert 0.6 < metric <= 1.0
    assert latency == pytest.approx(trial.user_attrs["predicted_latency_s"])
    assert trial.user_attrs["feasible"] is True
    assert trial.user_attrs["simulated_valid"] == metric
    assert trial.user_attrs["lookups_per_layer"] == [6]
    assert trial.user_attrs["max_lookup_bits"] == 5  # module__lookup_bits: training + compile
    assert max(trial.user_attrs["accumulator_bits"]) <= 8
    assert trial.user_attrs["estimator_params"]["n_accum_bits"] == 8
    assert "accum_slack" not in trial.user_attrs["estimator_params"]
    # priced before training, within 25% of the prediction after compilation
    assert trial.user_attrs["priced_latency_s"] == pytest.approx(latency, rel=0.25)
    assert trial.user_attrs["metric_source"].startswith("simulated")
    assert trial.user_attrs["fidelity_epochs"] == 20
    assert all(v == 0 for v in trial.constraints.values())
    assert set(trial.constraints) == {"budget", "compile", "latency", "key_size"}


def test_front_model_is_refit_on_training_and_validation_rows(wine_ds):
    shipped = []
    ctx = _context(wine_ds, front_hook=lambda trial, model, X, lat: shipped.append(model))
    params = {**SEED_CONFIG, "module__n_layers": 1, "n_w_bits": 4, "n_a_bits": 4, "max_epochs": 5}
    trial = optuna.trial.FixedTrial({**params, "accum_slack": 4, "module__lookup_bits": 5})
    objective(trial, ctx)  # FixedTrial has no study: its point enters the (empty) front
    (model,) = shipped
    # the shipped model standardizes with the mean of every row it learned from
    seen = np.concatenate([ctx.rows.X_train, ctx.rows.X_valid])
    np.testing.assert_allclose(model.module_.input_offset.numpy(), seen.mean(axis=0), rtol=1e-4)
    assert model.fhe_report()["pbs_count"] == 0  # compiled, as the trial's own model
    test_acc = float(np.mean(model.predict(ctx.rows.X_test) == ctx.rows.y_test))
    assert trial.user_attrs["final_clear_test"] == pytest.approx(test_acc)


_HIDDEN = {
    **SEED_CONFIG,
    "module__n_layers": 2,
    "module__n_hidden_neurons_multiplier": 0.5,
    "n_w_bits": 3,
    "n_a_bits": 3,
    "accum_slack": 2,
    "module__lookup_bits": 5,
    "max_epochs": 8,
    "n_init": 1,
}


def test_a_front_trials_latency_objective_is_its_shipped_circuits(wine_ds):
    """Cross-validated, a front model is refit on every row: its accumulators (so its
    lookups) differ from the fold models', and the latency the front ranks is the refit's."""
    shipped = []
    ctx = _context(wine_ds, folds=3, front_hook=lambda *a: shipped.append(a))
    trial = optuna.trial.FixedTrial(_HIDDEN)
    _, latency = objective(trial, ctx)
    ((_, model, _, hooked),) = shipped
    assert latency == hooked == COST.predict(model.fhe_report())
    assert trial.user_attrs["predicted_latency_s"] == latency
    assert trial.user_attrs["fold_latency_s"] > 0
    assert trial.user_attrs["pbs_count"] == model.fhe_report()["pbs_count"]
    assert trial.user_attrs["latency_source"] == "predicted (the shipped circuit)"


def test_a_refit_over_the_latency_limit_does_not_ship(wine_ds, monkeypatch):
    """A refit whose circuit breaks the study's latency limit is not what ships: the
    trial's own model is, with its own latency."""
    shipped = []
    ctx = _context(wine_ds, folds=3, front_hook=lambda *a: shipped.append(a))
    trial = optuna.trial.FixedTrial(_HIDDEN)
    refit = ctx.refit

    def wide_refit(params):  # 39 hidden neurons, and a limit that 6 keep but 39 break
        ctx.max_latency = 1.5 * trial.user_attrs["predicted_latency_s"]
        return refit({**params, "module__n_hidden_neurons_multiplier": 3.0})

    monkeypatch.setattr(ctx, "refit", wide_refit)
    _, latency = objective(trial, ctx)
    ((_, model, _, hooked),) = shipped
    assert model.fhe_report()["lookups_per_layer"] == [6]  # the fold model, not 39 wide
    assert latency == hooked == trial.user_attrs["predicted_latency_s"] <= ctx.max_latency
    assert "broke a limit: latency" in trial.user_attrs["refit_error"]
    assert "fold_latency_s" not in trial.user_attrs


def test_cross_validated_metric_scores_every_training_and_validation_row_once(wine_ds):
    ctx = _context(wine_ds, folds=3)
    splits = ctx.rows.fold_splits()
    pool = np.concatenate([ctx.rows.X_train, ctx.rows.X_valid])
    held_out = np.concatenate([fold[2] for fold in splits])
    assert len(splits) == 3
    # each training/validation row is held out exactly once; test rows never take part
    assert sorted(map(tuple, held_out.tolist())) == sorted(map(tuple, pool.tolist()))
    for X_fit, _, X_val, _ in splits:
        assert len(X_fit) + len(X_val) == len(pool)
        assert not set(map(tuple, X_fit.tolist())) & set(map(tuple, X_val.tolist()))
    # folds are drawn with a fixed seed: another worker (other estimator seed) scores alike
    other = _context(wine_ds, folds=3, seed=7).rows.fold_splits()
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(splits, other))

    trial = optuna.trial.FixedTrial(_linear_params())
    built = []
    make = ctx.estimator
    ctx.estimator = lambda params, rungs=None: built.append(make(params, rungs)) or built[-1]
    metric, _ = objective(trial, ctx)
    assert trial.user_attrs["folds"] == 3
    per_fold = trial.user_attrs["simulated_valid_per_fold"]
    # pooled out-of-fold accuracy is the fold accuracies weighted by fold size
    sizes = [len(fold[3]) for fold in splits]
    assert metric == pytest.approx(np.average(per_fold, weights=sizes))
    assert 0.8 < metric <= 1.0
    # three models, each trained on its own fold (it standardizes with that fold's mean) ...
    assert len(built) == 3
    for model, (X_fit, _, _, _) in zip(built, splits):
        offset = model.module_.input_offset.numpy()
        np.testing.assert_allclose(offset, X_fit.mean(axis=0), rtol=1e-4, atol=1e-6)
    # ... and each scored on its own held-out rows: a count of right answers over that fold
    for score, size in zip(per_fold, sizes):
        assert score * size == pytest.approx(round(score * size))


def test_the_refit_keeps_the_regularization_per_row_that_won(wine_ds):
    for folds in (3, 1):
        ctx = _context(wine_ds, folds=folds)
        fit_rows = len(ctx.rows.fold_splits()[0][1])  # 2/3 of the rows; or the training split
        all_rows = len(ctx.rows.refit_rows()[1])
        refit = ctx.refit_params(ctx.params(_linear_params(optimizer__weight_decay=3e-3)))
        assert refit["optimizer__weight_decay"] == pytest.approx(3e-3 * fit_rows / all_rows)
        assert 0.5 < fit_rows / all_rows < 0.8
        assert ctx.refit_params(ctx.params(_linear_params()))["optimizer__weight_decay"] == 0.0
    model = ctx.refit(ctx.params(_linear_params(optimizer__weight_decay=3e-3)))
    assert model.optimizer__weight_decay == pytest.approx(3e-3 * fit_rows / all_rows)


def test_cross_validated_front_models_learn_from_every_row(wine_ds):
    ctx, single = _context(wine_ds, folds=3), _context(wine_ds)
    _, y = ctx.rows.refit_rows()
    assert len(y) == len(wine_ds.y)  # the fold models' test score stays the honest estimate
    assert len(single.rows.refit_rows()[1]) == len(single.rows.y_train) + len(single.rows.y_valid)


def test_an_infeasible_first_fold_stops_the_others(wine_ds):
    from autofhe.search.price.pricing import Price

    ctx = _context(wine_ds, folds=3, max_latency=1e-6)
    ctx.price = lambda params: Price(None, latency_s=1e-7)  # priced under, compiled over
    trial = optuna.trial.FixedTrial(_linear_params())
    metric, latency = objective(trial, ctx)
    assert trial.constraints["latency"] > 0
    assert trial.user_attrs["reason"].startswith("latency: predicted")
    assert trial.user_attrs["folds"] == 1  # one model trained, not three
    assert 0 < metric <= 1 and latency > 1e-6  # real values, no sentinels


def _linear_params(**extra):
    return {
        **SEED_CONFIG,
        "module__n_layers": 1,
        "n_w_bits": 4,
        "n_a_bits": 4,
        "max_epochs": 5,
        "accum_slack": 4,
        "module__lookup_bits": 5,
        **extra,
    }


def test_impossible_budget_is_rejected_before_training(wine_ds):
    from autofhe.search.plan.space import validate_space

    space = validate_space({**load_spec(None).space, "n_accum_bits": [6, 8]})
    space.pop("accum_slack")
    ctx = _context(wine_ds)
    ctx.space = space
    params = {**SEED_CONFIG, "module__n_hidden_neurons_multiplier": 0.5, "max_epochs": 5}
    trial = optuna.trial.FixedTrial(
        {**params, "n_w_bits": 6, "n_a_bits": 6, "n_accum_bits": 6, "module__lookup_bits": 5}
    )
    with pytest.raises(optuna.TrialPruned, match="n_accum_bits=6 is too small"):
        objective(trial, ctx)
    assert trial.constraints["budget"] > 0
    assert trial.user_attrs["rejected_before_training"] is True
    assert "train_s" not in trial.user_attrs  # nothing was trained


def test_default_space_never_draws_an_impossible_budget(wine_ds):
    ctx = _context(wine_ds)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    from autofhe.search.plan.space import suggest_raw
    from autofhe.search.price.pricing import shape_of

    for _ in range(200):
        trial = study.ask()
        params = ctx.params(suggest_raw(trial, ctx.space))
        shape_of(params, 13, 3)  # raises for an impossible budget
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def test_latency_over_the_limit_is_never_trained(wine_ds):
    ctx = _context(wine_ds, max_latency=1e-6)
    trial = optuna.trial.FixedTrial(_linear_params())
    with pytest.raises(optuna.TrialPruned, match="latency: priced"):
        objective(trial, ctx)
    assert trial.constraints["latency"] > 0
    assert trial.user_attrs["priced_latency_s"] > 1e-6
    assert "train_s" not in trial.user_attrs


def test_study_infeasible_trials_rejected_resume_and_front(tmp_path, wine_ds, spec_file):
    url = f"sqlite:///{tmp_path}/s.db"
    spec = load_spec(spec_file)
    spec.max_latency = 1e-6  # every trial is priced over it: none trained, none on the front
    _, _, name = open_study(wine_ds, spec, url, "w", seed=0)
    run_workers(url, name, 1, 3, None, 0, COST)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 3
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    assert all(t.values is None for t in trials)  # no sentinel values
    assert all(t.constraints["latency"] > 0 for t in trials)
    assert optuna.load_study(study_name=name, storage=url).best_trials == []
    # resuming with the same data and settings continues the same study ...
    _, _, name = open_study(wine_ds, spec, url, "w", seed=0)
    run_workers(url, name, 1, 2, None, 0, COST)
    assert len(optuna.load_study(study_name=name, storage=url).trials) == 5
    # ... other settings are refused instead of being silently ignored ...
    other = load_spec(spec_file)
    other.folds = 2
    with pytest.raises(ParameterError, match="created with other settings \\(folds differ"):
        open_study(wine_ds, other, url, "w", seed=0)
    # ... a limit left out keeps the study's own; a new one is taken and remembered
    open_study(wine_ds, load_spec(spec_file), url, "w", seed=0)
    assert ParetoStore(url).study_info("w")["spec"]["max_latency"] == 1e-6
    relaxed = load_spec(spec_file)
    relaxed.max_latency = 10.0
    relaxed.given.add("max_latency")
    said = []
    study, _, _ = open_study(wine_ds, relaxed, url, "w", seed=0, say=said.append)
    stored = ParetoStore(url).study_info("w")["spec"]
    assert stored["max_latency"] == 10.0
    assert stored["limits_history"] == [{"max_latency": 1e-6, "max_key_size": 2e9, "trials": 5}]
    assert "--max-latency 1e-06 s" in said[-1] and "-> --max-latency 10 s" in said[-1]
    # the configurations the old limit rejected are queued again, cheapest first
    assert [t.state.name for t in study.trials[5:]] == ["WAITING"] * 3


def test_tightened_limit_rejudges_complete_trials(tmp_path, wine_ds, spec_file):
    url = f"sqlite:///{tmp_path}/s.db"
    _, _, name = open_study(wine_ds, load_spec(spec_file), url, "w", seed=0)
    run_workers(url, name, 1, 2, None, 0, COST)
    study = optuna.load_study(study_name=name, storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete and all(t.constraints["latency"] <= 0 for t in complete)
    tight = load_spec(spec_file)
    tight.max_latency = min(t.values[1] for t in complete) / 2
    tight.given.add("max_latency")
    open_study(wine_ds, tight, url, "w", seed=0)
    study = optuna.load_study(study_name=name, storage=url)
    for t in (t for t in study.trials if t.state.name == "COMPLETE"):
        assert t.constraints["latency"] == pytest.approx(t.values[1] - tight.max_latency)
        assert t.user_attrs["feasible"] is False
        assert t.user_attrs["reason"].startswith("latency: predicted")
        assert t.system_attrs["constraints"][2] == t.constraints["latency"]  # the dashboard's
    assert study.best_trials == [] and pareto_front(study.trials) == []


def test_all_infeasible_search_names_the_cheapest_price_and_a_command_that_relaxes_it(
    tmp_path, spec_file
):
    args = ["search", "--data", "sklearn:wine", "--trials", "3", "--spec", str(spec_file)]
    args += ["--workers", "1"]  # the trials are priced, never trained: one process is enough
    first = _run([*args, "--max-latency", "0.0001"], tmp_path)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    # every pruned trial's progress line says why
    ended = [line for line in out.splitlines() if ": pruned" in line]
    assert len(ended) == 3 and all("(latency: priced" in line for line in ended), out
    url = f"sqlite:///{tmp_path}/autofhe.db"
    (name,) = optuna.get_all_study_names(url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    cheapest = min(t.user_attrs["priced_latency_s"] for t in trials)
    assert f"cheapest configuration was priced at {cheapest:.4g} s per sample" in out
    assert "export:" not in out  # nothing to export
    command = shlex.split(out.split("relax it: ", 1)[1].splitlines()[0])
    assert command[0] == "autofhe" and command[-4] == "--max-latency"
    assert 2 * cheapest <= float(command[-3]) <= 2.2 * cheapest
    second = _run([*command[1:], "--trials", "1"], tmp_path)  # the last --trials counts
    assert second.returncode == 0, second.stderr
    assert "limits: --max-latency 0.0001 s" in second.stdout
    assert "no feasible model" not in second.stdout and "export:" in second.stdout
    assert optuna.get_all_study_names(url) == [name]  # the same study, resumed
    study = optuna.load_study(study_name=name, storage=url)
    # the cheapest rejected configurations were queued again; the first ran, feasible now
    states = [t.state.name for t in study.trials[3:]]
    assert states[0] == "COMPLETE" and set(states[1:]) <= {"WAITING"}, states
    assert study.best_trials


def test_resume_with_other_data_is_refused_and_db_untouched(tmp_path, wine_ds, spec_file):
    url = f"sqlite:///{tmp_path}/s.db"
    open_study(wine_ds, load_spec(spec_file), url, "w", seed=0)
    before = len(optuna.load_study(study_name="w", storage=url).trials)
    other = load_dataset("sklearn:breast_cancer")
    with pytest.raises(DataError, match="study 'w' was created with different data"):
        open_study(other, load_spec(spec_file), url, "w", seed=0)
    assert len(optuna.load_study(study_name="w", storage=url).trials) == before
    assert ParetoStore(url).study_info("w")["fingerprint"] == wine_ds.fingerprint


def test_two_workers_share_one_sqlite_study(tmp_path, wine_ds, spec_file):
    url = f"sqlite:///{tmp_path}/s.db"
    _, store, name = open_study(wine_ds, load_spec(spec_file), url, "w", seed=0)
    run_workers(url, name, 2, 6, None, 0, None)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))  # none lost, none duplicated
    assert all(t.state.is_finished() for t in trials)
    front = pareto_front(trials)
    assert front and {p["trial_number"] for p in store.latest_front(name)} == {
        t.number for t in front
    }
    # every front model was measured under encryption and stored as an artifact
    for t in front:
        assert t.user_attrs["measured_latency_s"] > 0
        assert t.user_attrs["artifact_id"]


def _proc(pid: int) -> str:
    """What Linux says of process ``pid`` (state, signals pending, blocked, caught)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return f"process {pid} is gone"
    keep = ("State", "PPid", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    return f"process {pid}: " + ", ".join(line for line in status if line.startswith(keep))


@pytest.mark.parametrize("victim", ["worker", "command"])
def test_kill_9_ends_the_trial_with_a_reason_and_queues_it_again(
    tmp_path, wine_ds, spec_file, victim
):
    """With no other run started. Before: the trial stayed RUNNING until a later run began
    over 30 s after the kill, then became FAIL with an empty reason. ``worker``: the process
    that trains (its heartbeat helper ends the trial); ``command``: `autofhe worker` itself
    (the process that trains is told to stop, as by SIGTERM)."""
    url = f"sqlite:///{tmp_path}/s.db"
    spec = load_spec(spec_file)
    spec.fixed["max_epochs"] = 5000  # a trial long enough to be killed in the middle
    spec.fixed["batch_size"] = 8
    open_study(wine_ds, spec, url, "w", seed=0)
    grace = 5  # the other test process may load the machine: a trial ends within 2x this
    env = {**os.environ, "AUTOFHE_HEARTBEAT_S": "1", "AUTOFHE_GRACE_S": str(grace)}
    command = subprocess.Popen(
        [AUTOFHE, "worker", "--storage", url, "--study", "w", "--trials", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    study = optuna.load_study(study_name="w", storage=url)
    running = optuna.trial.TrialState.RUNNING
    deadline, trial = time.time() + 120, None
    while trial is None and time.time() < deadline:
        for t in study.get_trials(states=(running,)):
            if "autofhe_worker" in t.system_attrs:
                trial = t
        time.sleep(0.2)
    assert trial is not None, "no trial started"
    before = len(study.get_trials())
    pid = int(trial.system_attrs["autofhe_worker"].rsplit(":", 1)[1])
    os.kill(pid if victim == "worker" else command.pid, signal.SIGKILL)
    killed_at = time.time()
    while study.get_trials()[trial.number].state == running:
        if time.time() - killed_at > 2 * grace:
            state = _proc(pid)
            _, err = command.communicate(timeout=30)
            raise AssertionError(f"the trial was not ended in time; {state}; stderr: {err}")
        time.sleep(0.2)
    trials = study.get_trials()
    ended = trials[trial.number]
    assert ended.state == optuna.trial.TrialState.FAIL
    reason = ended.user_attrs["reason"]
    assert reason.startswith("interrupted") and reason.endswith("queued again"), reason
    if victim == "worker":
        assert f"its worker {trial.system_attrs['autofhe_worker']} ended in the middle" in reason
    else:
        # the worker ends it on the SIGTERM its supervisor's death sends; on a loaded machine
        # it may die before it can, and its heartbeat helper ends it (seen 1 in 3 full runs)
        helper = f"its worker {trial.system_attrs['autofhe_worker']} ended in the middle"
        assert "(SIGTERM)" in reason or helper in reason, reason
    # the retry is queued right after the trial is ended (another write): wait for it
    deadline = time.time() + 10
    while not [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]:
        if time.time() > deadline:
            command.kill()
            _, err = command.communicate(timeout=30)
            raise AssertionError(f"the trial was not queued again; stderr: {err}")
        time.sleep(0.2)
        trials = study.get_trials()
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retries) == 1
    assert retries[0].state == optuna.trial.TrialState.WAITING  # the next worker runs it
    assert retries[0].params == ended.params
    assert len(trials) == before + 1  # nothing lost, nothing duplicated
    command.wait(timeout=60)
    if victim == "worker":  # the command says which worker died, and how
        assert f"(pid {pid}) was killed by SIGKILL" in command.stderr.read()


# -- the command line ---------------------------------------------------------------------------


def _run(args, cwd, **env):
    return subprocess.run(
        [AUTOFHE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


def _fails_cleanly(result, pattern):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0]


@pytest.mark.parametrize(
    ("setup", "args", "pattern"),
    [
        (None, ["--data", "missing.npy"], "missing.npy"),
        ("pickled", ["--data", "X.npy"], "pickle"),
        ("nan", ["--data", "X.npy"], "NaN"),
        ("nolabels", ["--data", "X.npy"], "--labels"),
        (None, ["--data", "sklearn:wine", "--metric", "accuracy2"], "unknown metric"),
        (None, ["--data", "sklearn:wine", "--metric", "r2"], "is for regression"),
        ("badspec", ["--data", "sklearn:wine", "--spec", "bad.toml"], "not valid TOML"),
        (None, ["--data", "sklearn:wine", "--storage", "redis://x"], "unknown scheme"),
        (None, ["--data", "sklearn:wine", "--trials", "0"], "--trials 0"),
        (None, ["--data", "sklearn:wine", "--folds", "0"], "folds 0"),
        ("badfolds", ["--data", "sklearn:wine", "--spec", "bad.toml"], "folds 'five'"),
        ("mismatch", ["--data", "X.npy"], "X has 40 rows but y has 39"),
        ("oneclass", ["--data", "X.npy"], "single class"),
        ("fewrows", ["--data", "X.npy"], "too few rows"),
    ],
)
def test_cli_bad_input_one_line_and_db_untouched(tmp_path, setup, args, pattern):
    X = np.random.default_rng(0).normal(size=(40, 3))
    if setup == "pickled":
        np.save(tmp_path / "X.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
        np.save(tmp_path / "y.npy", np.arange(3))
    elif setup == "nan":
        X[2, 1] = np.nan
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", np.arange(40) % 2)
    elif setup == "nolabels":
        np.save(tmp_path / "X.npy", X)
    elif setup in ("mismatch", "oneclass", "fewrows"):
        y = {"mismatch": np.arange(39) % 2, "oneclass": np.zeros(40), "fewrows": np.arange(40) % 10}
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y[setup])
    elif setup == "badspec":
        (tmp_path / "bad.toml").write_text("[study\nmetric=")
    elif setup == "badfolds":
        (tmp_path / "bad.toml").write_text('[study]\nfolds = "five"\n')
    result = _run(["search", *args], tmp_path)
    _fails_cleanly(result, pattern)
    assert not (tmp_path / "autofhe.db").exists()


def test_cli_search_resume_pareto_matches_optuna(tmp_path, spec_file):
    X, y = load_dataset("sklearn:wine").X, load_dataset("sklearn:wine").y
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    scratch = tmp_path / "scratch"  # the search's temporary directory
    scratch.mkdir()
    first = _run(
        ["search", "--data", "X.npy", "--trials", "2", "--spec", str(spec_file), "--workers", "1"],
        tmp_path,
        TMPDIR=str(scratch),
    )
    assert first.returncode == 0, first.stderr
    assert "labels:" in first.stdout and "y.npy" in first.stdout
    assert "Pareto front of" in first.stdout
    # concrete's compiled libraries (tmp*) went with their trials and at exit, the worker's
    # (os._exit) and the search's (measured its front again) alike; the measurement lock
    # files are shared by design
    assert [p.name for p in scratch.iterdir() if p.name.startswith("tmp")] == []
    second = _run(
        ["search", "--data", "X.npy", "--trials", "1", "--spec", str(spec_file)], tmp_path
    )
    assert second.returncode == 0, second.stderr
    studies = _run(["studies"], tmp_path).stdout
    name = studies.splitlines()[1].split()[0]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/autofhe.db")
    assert len(study.trials) == 3
    ours = json.loads(_run(["pareto", "--study", name, "--format", "json"], tmp_path).stdout)
    # Optuna lists every trial of a tied point; we list each point once, by the first to
    # complete (one worker here: the lowest number)
    points = {tuple(t.values): t.number for t in sorted(study.best_trials, key=lambda t: -t.number)}
    assert {r["trial"] for r in ours} == set(points.values())
    # Optuna's own command line reads the same database and lists the same front
    optuna_cli = subprocess.run(
        [
            str(Path(sys.executable).with_name("optuna")),
            "best-trials",
            "--storage",
            f"sqlite:///{tmp_path}/autofhe.db",
            "--study-name",
            name,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert optuna_cli.returncode == 0, optuna_cli.stderr
    listed = json.loads(optuna_cli.stdout)
    assert {t["number"] for t in listed} == {t.number for t in study.best_trials}
    assert {r["trial"] for r in ours} <= {t["number"] for t in listed}
    # every trial of a real study, as CSV: the columns a person scans, no empty fidelity
    out = _run(["trials", "--study", name, "--format", "csv"], tmp_path)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 3
    assert {
        "state",
        "epochs",
        "feasible",
        "on_front",
        "accuracy",
        "fhe_latency_s",
        "measured_latency_s",
        "keys_mb",
        "n_w_bits",
        "n_a_bits",
        "lookups",
        "reason",
    } <= set(rows[0])
    assert all(r["epochs"] not in ("", None) for r in rows), rows
    assert {r["trial"] for r in rows if r["on_front"] == "True"} == {str(r["trial"]) for r in ours}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_trials_objectives_and_attributes(tmp_path, wine_ds, spec_file):
    url = f"sqlite:///{tmp_path}/autofhe.db"
    _, _, name = open_study(wine_ds, load_spec(spec_file), url, "w", seed=0)
    run_workers(url, name, 1, 2, None, 0, COST)
    port = _free_port()
    proc = subprocess.Popen(
        [AUTOFHE, "dashboard", "--storage", url, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,  # its access log: never a pipe nobody reads
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "dashboard did not answer"
        study_id = next(s["study_id"] for s in body["study_summaries"] if s["study_name"] == "w")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}") as r:
            detail = json.loads(r.read())
        assert detail["objective_names"] == ["accuracy", "fhe_latency_s"]
        finished = [t for t in detail["trials"] if t["state"] != "Waiting"]  # plan seeds wait
        assert len(finished) == 2
        attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
        assert {"feasible", "reason", "pbs_count", "predicted_latency_s"} <= attrs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_seed_config_is_projected_into_the_space():
    from autofhe.search.run.study import seed_params

    space = {
        "n_accum_bits": [5, 6],  # the seed's "none" is not a choice: left to the sampler
        "module__n_hidden_neurons_multiplier": {"low": 0.1, "high": 0.25},  # clipped into it
        "module__activation_function": ["ReLU", "Tanh"],
    }
    assert seed_params(space) == {
        "module__n_hidden_neurons_multiplier": 0.25,
        "module__activation_function": "ReLU",
    }


def test_front_keeps_one_trial_per_point():
    make = optuna.trial.create_trial
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    trials = [
        make(values=[0.9, 0.1], params={"x": 0.1}, distributions=dist),
        make(values=[0.9, 0.1], params={"x": 0.2}, distributions=dist),  # tie with the first
        make(values=[0.95, 0.5], params={"x": 0.3}, distributions=dist),
        make(values=[0.8, 0.5], params={"x": 0.4}, distributions=dist),  # dominated
    ]
    for number, t in enumerate(trials):
        t.number = number
    front = pareto_front(trials)
    assert [t.number for t in front] == [2, 0]
    # With several workers a later trial can finish first: the first to complete stands for
    # the point (it is the one that was measured and stored when it entered the front).
    trials[1].datetime_complete = trials[0].datetime_complete - datetime.timedelta(seconds=5)
    assert [t.number for t in pareto_front(trials)] == [2, 1]


def test_every_worker_uses_the_study_split(tmp_path, wine_ds, spec_file):
    from autofhe.search.run.study import SearchSession

    url = f"sqlite:///{tmp_path}/s.db"
    _, store, name = open_study(wine_ds, load_spec(spec_file), url, "w", seed=3)
    a = SearchSession(url, name, seed=3).context(store, COST)
    b = SearchSession(url, name, seed=11).context(store, COST)  # another worker's seed
    np.testing.assert_array_equal(a.rows.X_test, b.rows.X_test)
    np.testing.assert_array_equal(a.rows.X_test, split_dataset(wine_ds, 3)[2])


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"module__lookup_bits": ["auto", "fast"]}, "'fast' must be \"auto\" or an integer"),
        ({"module__lookup_bits": [5, 40]}, "40 must be within \\[2, 16\\]"),
        ({"lr_schedule": ["cosine", "step"]}, "'step' must be one of constant, cosine"),
    ],
)
def test_space_values_are_checked(space, message):
    from autofhe.search.plan.space import validate_space

    with pytest.raises(ParameterError, match=message):
        validate_space(space)


def test_a_front_model_that_cannot_be_stored_does_not_fail_its_trial(
    tmp_path, wine_ds, spec_file, monkeypatch
):
    # A bundle that failed its own check (BundleError) while a front model was stored made
    # the live trial FAIL, throwing away its values; it now completes without a model.
    from autofhe.errors import BundleError
    from autofhe.fhe import bundle
    from autofhe.search.front.select import choose

    def refuse(model, path, provenance=None):
        raise BundleError("the circuit compiled from program.json does not match")

    monkeypatch.setattr(bundle, "save_archive", refuse)
    url = f"sqlite:///{tmp_path}/s.db"
    _, _, name = open_study(wine_ds, load_spec(spec_file), url, "w", seed=0)
    run_workers(url, name, 1, 2, None, 0, COST)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    trials = [t for t in trials if t.state.is_finished()]  # seeds not run stay WAITING
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    stored = [t for t in trials if "store_error" in t.user_attrs]
    assert stored and all("does not match" in t.user_attrs["store_error"] for t in stored)
    assert not any(t.user_attrs.get("artifact_id") for t in trials)
    with pytest.raises(ParameterError, match="storing it failed: the circuit compiled"):
        choose(trials, trials, number=stored[0].number)


def test_front_models_measured_under_load_are_measured_again_once_quiet(
    tmp_path, wine_ds, spec_file, monkeypatch
):
    from optuna_dashboard import get_note

    from autofhe.search import record
    from autofhe.search.front.remeasure import AFTER_SEARCH, remeasure_front
    from autofhe.search.store.engine import make_storage
    from autofhe.search.trial import quiet

    url = f"sqlite:///{tmp_path}/s.db"
    _, _, name = open_study(wine_ds, load_spec(spec_file), url, "w", seed=0)
    run_workers(url, name, 1, 2, None, 0, COST)
    front = [t for t in pareto_front(optuna.load_study(study_name=name, storage=url).trials)]
    assert front and all(t.user_attrs.get("artifact_id") for t in front)
    storage = make_storage(url)
    for t in front:  # as a measurement beside a busy process leaves it
        record.write_finished(storage, t._trial_id, measured_quiet=False, measured_latency_s=99.0)
    said = []
    # still busy: nothing measured, the figures stand and the user is told
    monkeypatch.setattr(quiet, "others_busy_now", lambda seconds=1.0: 0.9)
    assert remeasure_front(url, name, say=said.append) == 0
    assert "still busy (other processes use 90% of its CPU)" in said[-1]
    # quiet (a parallel test run must not count as load here): measured again, both kept
    monkeypatch.setattr(quiet, "others_busy_now", lambda seconds=1.0: 0.0)
    monkeypatch.setattr(quiet, "QUIET_BUSY", 1.0)
    assert remeasure_front(url, name, say=said.append) == len(front)
    study = optuna.load_study(study_name=name, storage=url)
    for t in study.trials:
        if t.number in {f.number for f in front}:
            attrs = t.user_attrs
            assert (attrs["measured_quiet"], attrs["measured_when"]) == (True, AFTER_SEARCH)
            assert attrs["measured_under_load_s"] == 99.0 and attrs["measured_latency_s"] < 99.0
    assert f", {AFTER_SEARCH}" in get_note(study)  # the note people read shows the new figure
