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

__all__ = [
    "DASHBOARD_KEY",
    "is_feasible",
    "named_constraints",
    "patch_dashboard",
    "record_constraints",
]

#: The system attribute optuna-dashboard 0.21 reads: a list of floats, feasible when all <= 0.
DASHBOARD_KEY = "constraints"
_NAMED_PREFIX = DASHBOARD_KEY + ":"


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
    values = [float(v) for v in constraints.values()]
    for name, value in zip(constraints, values):
        trial.set_constraint(name, value)
    if isinstance(trial, optuna.Trial):
        # Optuna 5 has no public setter for a trial system attribute besides set_constraint.
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
