"""The trial record: what a trial of an autofhe study stores, typed, and the only code that
reads or writes Optuna user attributes (trials' and studies').

Optuna keeps user attributes as a flat JSON mapping per trial. Every field of
:class:`TrialRecord` is one of them, with its type and unit in its name or its comment;
:func:`write` is how a trial records fields (unknown names are a bug, refused at once) and
:meth:`TrialRecord.of` is how every reader gets them (``pareto``, ``trials``, the notes, the
dashboard, export, benchmarks). :class:`StudyRecord` does the same for a study's attributes.
``RECORD_VERSION`` is stored with every trial that records anything; a reader of an older
record finds absent fields as None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "CIRCUIT_FIELDS",
    "RECORD_VERSION",
    "StudyRecord",
    "TrialRecord",
    "begin",
    "enqueue",
    "record_study",
    "write",
    "write_finished",
    "write_stored",
]

RECORD_VERSION = 1
#: the fields of the FHE report (``CompiledModel.fhe_report()``) a trial stores
CIRCUIT_FIELDS = (
    "pbs_count",
    "lookups_per_layer",
    "lookup_bits_per_layer",
    "max_lookup_bits",
    "max_bit_width",
    "complexity",
    "evaluation_keys_bytes",
    "bit_exact",
)
#: rung scores are stored under ``rung_<epoch>`` (one attribute per rung reached)
_RUNG = "rung_"


@dataclass(frozen=True)
class TrialRecord:
    """Everything a trial recorded (None: not recorded, e.g. a trial that stopped first)."""

    # -- the configuration and its price, before training ---------------------------------
    estimator_params: dict | None = None  # the resolved estimator parameters
    priced_latency_s: float | None = None  # the cost model on a stand-in circuit
    priced_key_bytes: int | None = None  # evaluation keys as uploaded (compressed)
    priced_pbs_count: int | None = None
    priced_lookup_bits: list | None = None
    rejected_before_training: bool = False
    # -- training --------------------------------------------------------------------------
    fidelity_epochs: int | None = None  # epochs the (first fold's) model trained
    rungs: dict = field(default_factory=dict)  # epoch -> clear validation metric at that rung
    folds: int | None = None
    train_s: float | None = None
    compile_s: float | None = None
    simulate_s: float | None = None
    # -- outcome ---------------------------------------------------------------------------
    feasible: bool | None = None
    compile_ok: bool | None = None
    reason: str = ""  # why infeasible, pruned, failed or interrupted ("" when none)
    error: str | None = None  # what crashed a FAIL trial
    # -- scores (validation: cross-validated when folds > 1) -------------------------------
    clear_valid: float | None = None
    simulated_valid: float | None = None
    simulated_valid_per_fold: list | None = None
    clear_test: float | None = None  # fold models on the test rows (never trained on them)
    metric_source: str | None = None
    latency_source: str | None = None
    # -- the circuit: the shipped one (the refit) for a trial that entered the front, else --
    # -- the slowest fold's ----------------------------------------------------------------
    accumulator_bits: list | None = None
    pbs_count: int | None = None
    lookups_per_layer: list | None = None
    lookup_bits_per_layer: list | None = None
    max_lookup_bits: int | None = None
    max_bit_width: int | None = None
    complexity: float | None = None
    evaluation_keys_bytes: int | None = None  # as uploaded (compressed)
    bit_exact: bool | None = None
    predicted_latency_s: float | None = None  # the latency objective
    fold_latency_s: float | None = None  # the slowest fold's, when the refit's replaced it
    price_error: float | None = None  # priced / predicted - 1
    # -- the front model (refit, measured, stored) -----------------------------------------
    refit_s: float | None = None
    refit_rows: int | None = None
    refit_weight_decay: float | None = None
    refit_error: str | None = None
    final_clear_test: float | None = None
    final_lookup_bits_per_layer: list | None = None
    valid_predictions_head: list | None = None
    measured_latency_s: float | None = None  # encrypt + run + decrypt, keygen excluded
    keygen_s: float | None = None
    measure_error: str | None = None
    measured_loadavg_1m: float | None = None
    measured_cores: int | None = None
    measured_load_per_core: float | None = None
    measured_quiet: bool | None = None  # other workers paused, other processes idle
    measured_others_busy: float | None = None  # CPU share other processes used meanwhile
    measured_under_load_s: float | None = None  # the first figure, when measured again
    measured_when: str | None = None  # front/remeasure.py: during or after the search
    artifact_id: str | None = None  # the stored bundle archive
    store_error: str | None = None
    # -- refinement ------------------------------------------------------------------------
    refines: int | None = None  # the front trial this one is a neighbour of
    refine_at: int | None = None  # finished trials when it was enqueued
    version: int | None = None  # RECORD_VERSION of the writer

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record of a FrozenTrial (or any object with ``user_attrs``)."""
        attrs = dict(trial.user_attrs)
        rungs = {
            int(k[len(_RUNG) :]): v
            for k, v in attrs.items()
            if k.startswith(_RUNG) and k[len(_RUNG) :].isdigit()
        }
        known = {f.name for f in fields(cls)} - {"rungs"}
        values = {k: v for k, v in attrs.items() if k in known and v is not None}
        return cls(rungs=rungs, **values)

    @property
    def exportable(self) -> bool:
        return bool(self.artifact_id)

    @property
    def test_metric(self) -> float | None:
        """The shipped model's test metric: the refit's, else the fold models'."""
        return self.final_clear_test if self.final_clear_test is not None else self.clear_test

    def latency(self, predicted: float) -> float:
        """Measured latency when there is one, else ``predicted`` (the trial's objective)."""
        return self.measured_latency_s if self.measured_latency_s else predicted


_NAMES = {f.name for f in fields(TrialRecord)} - {"rungs", "version"}


def _plain(value: Any) -> Any:
    """JSON values for Optuna (numpy scalars and arrays, tuples, NaN as None)."""
    if type(value).__module__ == "numpy":  # a numpy scalar or array (numpy not imported)
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def begin(trial: Any, estimator_params: dict) -> None:
    """The first record of a trial: the writer's version and the resolved estimator
    parameters (what rebuilds its model)."""
    trial.set_user_attr("version", RECORD_VERSION)
    write(trial, estimator_params=estimator_params)


def enqueue(study: Any, params: dict, **values: Any) -> None:
    """Queue a trial of ``params`` that starts with record fields ``values`` already set."""
    _check(values)
    study.enqueue_trial(params, user_attrs={k: _plain(v) for k, v in values.items()})


def _check(values: dict) -> None:
    unknown = set(values) - _NAMES
    if unknown:
        raise KeyError(f"not fields of the trial record: {sorted(unknown)}")


def write_stored(storage: Any, trial_id: int, **values: Any) -> None:
    """:func:`write` for a trial addressed in an Optuna storage (another process's trial)."""
    _check(values)
    for name, value in values.items():
        storage.set_trial_user_attr(trial_id, name, _plain(value))


def write_finished(
    storage: Any, trial_id: int, system: dict[str, Any] | None = None, **values: Any
) -> None:
    """Correct fields of a finished trial (Optuna refuses; the storage layer does it), as a
    resume that changes the study's limits re-judges feasibility; ``system``: Optuna system
    attributes rewritten in the same transaction (the re-judged constraints)."""
    from autofhe.search.store.engine import rewrite_finished_trial

    _check(values)
    user = {k: _plain(v) for k, v in values.items()}
    rewrite_finished_trial(storage, trial_id, system=system, user=user)


def write(trial: Any, **values: Any) -> None:
    """Record fields of :class:`TrialRecord` on a running trial (Trial or FixedTrial);
    ``rung=(epoch, score)`` records one rung. An unknown name is a bug: refused at once."""
    rung = values.pop("rung", None)
    _check(values)
    if rung is not None:
        epoch, score = rung
        trial.set_user_attr(f"{_RUNG}{int(epoch)}", round(float(score), 6))
    for name, value in values.items():
        trial.set_user_attr(name, _plain(value))


@dataclass(frozen=True)
class StudyRecord:
    """What a study of autofhe records (Optuna study user attributes)."""

    autofhe_fingerprint: str | None = None  # of its dataset; the mark of an autofhe study
    autofhe_task: str | None = None
    autofhe_source: str | None = None
    autofhe_plan: dict | None = None  # plan.py's plan for its data

    @classmethod
    def of(cls, study: Any) -> StudyRecord:
        attrs = study.user_attrs
        return cls(**{f.name: attrs.get(f.name) for f in fields(cls)})

    @property
    def is_autofhe(self) -> bool:
        return self.autofhe_fingerprint is not None


def record_study(study: Any, record: StudyRecord) -> None:
    """Store ``record`` as the study's user attributes."""
    for name, value in asdict(record).items():
        if value is not None:
            study.set_user_attr(name, _plain(value))
