"""Trial feasibility, written so that Optuna 5 and optuna-dashboard 0.21 both read it.

Optuna 5 stores one system attribute per constraint (``constraints:<name>``); optuna-dashboard
0.21 reads only the older ``constraints`` list. With the named form alone the dashboard sees no
constraint and draws every trial as feasible, so :func:`record_constraints` writes both.

Optuna reads both forms into ``trial.constraints`` (the list under the names "0", "1", ...
next to the named ones): the same values twice, so "feasible" (every value <= 0) is unchanged.
:func:`named_constraints` gives the named ones alone.

optuna-dashboard computes its "best trials" as the Pareto front of every COMPLETE trial,
whatever the constraints; :func:`patch_dashboard` makes the server of ``autofhe dashboard``
take the front of the feasible trials instead, as ``optuna best-trials`` and ``autofhe pareto``
do, and show the named constraints of trials stored before the list was written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna

from autofhe.search.record import TrialRecord

__all__ = [
    "CONSTRAINTS",
    "DASHBOARD_KEY",
    "DEFAULT_PRICE_CAP_S",
    "LIMITED",
    "constraint_attrs",
    "is_feasible",
    "limit_violations",
    "named_constraints",
    "patch_dashboard",
    "price_cap",
    "record_constraints",
    "relimit",
]

#: Every trial stores these constraints, in this order (<= 0: satisfied; > 0: how far over).
#: ``latency`` and ``key_size`` follow the study's limits, which a resume may change
#: (:func:`relimit`); ``budget`` and ``compile`` are facts of the configuration.
CONSTRAINTS = ("budget", "compile", "latency", "key_size")
#: the constraints set by the study's limits (``--max-latency``, ``--max-key-size``)
LIMITED = ("latency", "key_size")
#: Without --max-latency, configurations priced over this many seconds per sample are not
#: trained (Concrete ML's hand-tuned networks run at 1-11 s; --max-latency raises the cap).
DEFAULT_PRICE_CAP_S = 5.0


def price_cap(max_latency: float | None) -> float:
    """The latency a configuration may be priced at and still be trained: the study's
    ``--max-latency``, else :data:`DEFAULT_PRICE_CAP_S`."""
    return DEFAULT_PRICE_CAP_S if max_latency is None else max_latency


#: The system attribute optuna-dashboard 0.21 reads: a list of floats, feasible when all <= 0.
DASHBOARD_KEY = "constraints"
_NAMED_PREFIX = DASHBOARD_KEY + ":"


def constraint_attrs(constraints: Mapping[str, float]) -> dict[str, Any]:
    """The system attributes that hold ``constraints``: each under its name, and the list."""
    values = [float(v) for v in constraints.values()]
    return {
        **{_NAMED_PREFIX + name: value for name, value in zip(constraints, values)},
        DASHBOARD_KEY: values,
    }


def limit_violations(
    latency_s: float, key_bytes: int | None, max_latency: float | None, max_key_size: float | None
) -> tuple[dict[str, float], list[str]]:
    """The study limits a circuit breaks: constraint -> amount over, and one reason each.

    ``latency_s`` the circuit's predicted latency per sample; ``key_bytes`` its evaluation
    keys as a client uploads them (compressed; None: unknown, never over).
    """
    violated, reasons = {}, []
    if max_latency is not None and latency_s > max_latency:
        violated["latency"] = latency_s - max_latency
        reasons.append(f"latency: predicted {latency_s:.3f} s > max {max_latency} s")
    if max_key_size is not None and key_bytes is not None and key_bytes > max_key_size:
        violated["key_size"] = (key_bytes - max_key_size) / 1e9
        reasons.append(
            f"key_size: {key_bytes / 1e6:.1f} MB of keys to upload > max "
            f"{max_key_size / 1e6:.1f} MB"
        )
    return violated, reasons


def relimit(
    trial: Any, max_latency: float | None, max_key_size: float | None
) -> tuple[dict[str, float], str]:
    """A COMPLETE trial's constraints and reason under new study limits, from what it stored
    (its latency objective and key size): the limits are re-judged, the facts of its
    configuration (``budget``, ``compile``) kept."""
    r = TrialRecord.of(trial)
    stored = named_constraints(trial)
    keys = r.evaluation_keys_bytes if r.evaluation_keys_bytes is not None else r.priced_key_bytes
    violated, reasons = limit_violations(trial.values[1], keys, max_latency, max_key_size)
    constraints = {
        name: float(violated.get(name, 0.0) if name in LIMITED else stored.get(name, 0.0))
        for name in CONSTRAINTS
    }
    facts = [part for part in r.reason.split("; ") if part and part.split(":", 1)[0] not in LIMITED]
    if all(constraints[name] <= 0 for name in CONSTRAINTS if name not in LIMITED):
        facts = []
    return constraints, "; ".join(facts + reasons)


def record_constraints(trial: Any, constraints: Mapping[str, float]) -> None:
    """Set every constraint of ``trial`` in both formats (named and the dashboard's list).

    Parameters
    ----------
    trial : optuna.Trial or optuna.trial.FixedTrial
        The running trial. A FixedTrial (tests, a trial rebuilt by hand) is never stored, so
        no dashboard reads it: it gets the named constraints only.
    constraints : mapping of str to float
        Constraint name -> value; a value <= 0 is satisfied, > 0 is the amount of violation.
        The list keeps this mapping's order.
    """
    for name, value in constraints.items():
        trial.set_constraint(name, float(value))
    if isinstance(trial, optuna.Trial):
        # Optuna 5 has no public setter for a trial system attribute besides set_constraint.
        values = [float(v) for v in constraints.values()]
        trial.storage.set_trial_system_attr(trial._trial_id, DASHBOARD_KEY, values)


def named_constraints(trial: Any) -> dict[str, float]:
    """The ``constraints:<name>`` values of a trial (the dashboard's list left out)."""
    attrs = getattr(trial, "system_attrs", None)
    if attrs is None:  # FixedTrial keeps them privately
        attrs = getattr(trial, "_system_attrs", {})
    return {k[len(_NAMED_PREFIX) :]: v for k, v in attrs.items() if k.startswith(_NAMED_PREFIX)}


def is_feasible(trial: Any) -> bool:
    """Every constraint satisfied (a trial without constraints counts as feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def _feasible_only(front_of: Callable) -> Callable:
    def front(trials: Sequence, directions: Sequence) -> list:
        return front_of([t for t in trials if is_feasible(t)], directions)

    front.autofhe_feasible_only = True  # type: ignore[attr-defined]
    front.__wrapped_front__ = front_of  # type: ignore[attr-defined]
    return front


def _named_when_no_list(serialize: Callable) -> Callable:
    def serialize_trial(study_id: int, trial: Any, study_system_attrs: dict) -> dict:
        out = serialize(study_id, trial, study_system_attrs)
        if not out.get(DASHBOARD_KEY):  # a trial stored before record_constraints wrote both
            out[DASHBOARD_KEY] = list(named_constraints(trial).values())
        return out

    serialize_trial.autofhe_feasible_only = True  # type: ignore[attr-defined]
    serialize_trial.__wrapped_front__ = serialize  # type: ignore[attr-defined]
    return serialize_trial


def patch_dashboard() -> None:
    """Make optuna-dashboard's server show feasibility as Optuna does (idempotent).

    The server (``optuna_dashboard._app``) calls ``get_pareto_front_trials`` for the best
    trials of a multi-objective study: it is wrapped to drop infeasible trials first. Its
    serializer (``optuna_dashboard._serializer.serialize_frozen_trial``) reads only the
    ``constraints`` list: it falls back to the named constraints.
    """
    import optuna_dashboard._app as app
    import optuna_dashboard._serializer as serializer

    for module, name, wrap in (
        (app, "get_pareto_front_trials", _feasible_only),
        (serializer, "serialize_frozen_trial", _named_when_no_list),
    ):
        current = getattr(module, name, None)
        if current is None:  # another optuna-dashboard than the 0.20-0.21 this is written for
            raise ImportError(
                f"{module.__name__}.{name} is gone; this optuna-dashboard version is not "
                "supported (pip install 'optuna-dashboard>=0.20,<0.22')."
            )
        if not getattr(current, "autofhe_feasible_only", False):
            setattr(module, name, wrap(current))
