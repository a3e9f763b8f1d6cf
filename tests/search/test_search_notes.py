"""A real (small) search leaves what optuna-dashboard needs: constraints in its format, a
note on every trial, the measured front in the study's note, and measurement conditions."""

from __future__ import annotations

import optuna
import pytest
from optuna_dashboard import get_note

from autofhe.data import load_dataset
from autofhe.fhe.latency import CostModel
from autofhe.search.front.notes import FRONT_HEADING
from autofhe.search.front.pareto import pareto_front
from autofhe.search.plan.spec import load_spec
from autofhe.search.price.feasibility import DASHBOARD_KEY, named_constraints
from autofhe.search.run.study import open_study
from autofhe.search.run.workers import run_workers
from autofhe.search.trial import quiet

COST = CostModel(base=0.002, per_byte=1e-8, seconds_per_unit=1e-3, seconds_per_pbs=1e-3, cores=2)
SPEC = """
[study]
max_key_size = "2GB"
max_latency = 1.0

[space]
n_w_bits = { low = 2, high = 4 }
n_a_bits = { low = 2, high = 4 }
n_accum_bits = ["none", 3, 8]

[fixed]
module__n_layers = 1
max_epochs = 3
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    (tmp / "spec.toml").write_text(SPEC)
    url = f"sqlite:///{tmp}/s.db"
    study, _, name = open_study(
        load_dataset("sklearn:wine"), load_spec(tmp / "spec.toml"), url, "w"
    )
    # The plan's seeds leave n_accum_bits to the sampler, seeded per worker process (seed +
    # pid): both could draw 3 (about 1 run in 9 failed so). So one trial that always fits,
    # then one that no network can fit in 3 bits.
    study.enqueue_trial({"n_accum_bits": "none", "n_w_bits": 3, "n_a_bits": 3})
    study.enqueue_trial({"n_accum_bits": 3, "n_w_bits": 4, "n_a_bits": 4})
    waiting = study.get_trials(states=[optuna.trial.TrialState.WAITING])
    run_workers(url, name, 1, len(waiting), None, 0, COST)
    return optuna.load_study(study_name=name, storage=url)


def test_every_trial_carries_the_dashboard_constraint_list(searched):
    for t in searched.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        named = named_constraints(t)
        assert set(named) == {"budget", "compile", "latency", "key_size"}
        assert t.system_attrs[DASHBOARD_KEY] == list(named.values())


def test_every_trial_has_a_note_saying_why_it_is_infeasible_or_off_the_front(searched):
    """Notes are current at the end: a trial another one pushed off the front names it."""
    front = {t.number: t for t in pareto_front(searched.get_trials())}
    for t in searched.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        head = get_note(optuna.Trial(searched, t._trial_id)).splitlines()[0]
        reason = t.user_attrs["reason"]
        if reason:
            assert head == f"**Infeasible**: {reason}"
        elif t.number in front:
            assert head == "**Feasible**, on the Pareto front"
        else:
            better = front[int(head.split("off the front: trial ")[1].split()[0])]
            assert better.values[0] >= t.values[0] and better.values[1] <= t.values[1]
        assert f"accuracy {t.values[0]:.4f}" in get_note(optuna.Trial(searched, t._trial_id))


def test_study_note_holds_the_front_with_measurement_conditions(searched):
    front = pareto_front(searched.get_trials())
    note = get_note(searched)
    assert FRONT_HEADING in note
    rows = [line for line in note.splitlines() if line.startswith("| ") and "---" not in line]
    assert [int(r.split("|")[1]) for r in rows[1:]] == [t.number for t in front]
    for t in front:
        if "measured_latency_s" in t.user_attrs:
            assert t.user_attrs["measured_cores"] >= 1
            assert t.user_attrs["measured_loadavg_1m"] >= 0
            assert f"load {t.user_attrs['measured_loadavg_1m']:g} on" in note
            # one worker in this search: nobody to pause; quiet unless other processes (a
            # parallel test run) took the CPU meanwhile, and the note says which
            busy = t.user_attrs["measured_others_busy"]
            assert t.user_attrs["measured_quiet"] is (busy <= quiet.QUIET_BUSY)
            assert t.user_attrs["measured_when"] == "during the search"
            assert ("machine quiet" if busy <= quiet.QUIET_BUSY else "beside other work") in note


def test_the_search_made_both_kinds_of_trial(searched):
    """The tests above see feasible and infeasible trials and a measured front model."""
    done = searched.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    rejected = searched.get_trials(states=[optuna.trial.TrialState.PRUNED])
    assert {bool(t.user_attrs["reason"]) for t in done + rejected} == {True, False}
    assert any(t.user_attrs.get("rejected_before_training") for t in rejected)
    assert any("measured_latency_s" in t.user_attrs for t in pareto_front(done))
