"""The search space: names are estimator parameters (``"none"`` / ``"auto"`` stand for None:
``n_accum_bits="none"`` is an unbounded accumulator, ``module__lookup_bits="auto"`` lets
compile choose the lookup precision), with one exception that keeps every draw feasible:
``accum_slack``, the accumulator budget in bits *above the smallest one the drawn bit widths
allow* (``n_accum_bits = min + accum_slack``), so an impossible budget is never sampled.
:func:`to_estimator_params` turns a trial's parameters into estimator parameters (a trial
records them as ``estimator_params`` in its record, so
``est.set_params(**TrialRecord.of(trial).estimator_params)`` rebuilds it).

A space maps a parameter to one of
- ``{"low": a, "high": b}`` (int when both are ints), optional ``"log": true`` / ``"step"``;
- a list of choices (``n_accum_bits`` may list ``"none"`` for an unbounded accumulator);
- a single value (fixed, not searched).
"""

from __future__ import annotations

from typing import Any

from autofhe.errors import ParameterError
from autofhe.params import (
    ACTIVATION_NAMES,
    LR_SCHEDULES,
    PARAMS,
    SEED_ACTIVATIONS,
    seed_values,
    value_of,
)

__all__ = [
    "DEFAULT_SPACE",
    "HIDDEN_ONLY",
    "SEED_CONFIG",
    "suggest",
    "suggest_raw",
    "to_estimator_params",
    "validate_space",
]

DEFAULT_SPACE: dict[str, Any] = {
    "module__n_layers": {"low": 1, "high": 3},
    "module__activation_function": list(SEED_ACTIVATIONS),
    # replaced per study by a range of hidden *widths* (2 to 16-64 neurons, see plan.py), so
    # a 2-feature input is not capped at 8 neurons nor a 64-feature one forced to 6+
    "module__n_hidden_neurons_multiplier": {"low": 0.1, "high": 4.0, "log": True},
    "n_w_bits": {"low": 2, "high": 8},
    "n_a_bits": {"low": 2, "high": 7},
    "accum_slack": {"low": 0, "high": 8},
    # always explicit, so the price before training is the price after compilation
    "module__lookup_bits": {"low": 4, "high": 7},
    "power_of_two_scaling": [True, False],
    "lr": {"low": 1e-3, "high": 1e-1, "log": True},
    # the fidelity: trials stop early at rungs (fidelity.py) when their peers are better
    "max_epochs": {"low": 20, "high": 300, "log": True},
    "lr_schedule": ["constant", "cosine"],
    "optimizer__weight_decay": [0.0, 1e-4, 1e-3],
    # starts trained per configuration, the best kept: tiny networks often stall
    "n_init": [1, 2, 3],
}

#: What only hidden layers use: a network without them (``module__n_layers`` of 1) has no
#: activation, lookup or width, so it does not draw them and the sampler sees a conditional
#: space (their values in such a trial would be noise the sampler models as signal).
HIDDEN_ONLY = frozenset(
    {"module__activation_function", "module__lookup_bits", "module__n_hidden_neurons_multiplier"}
)

#: Parameters a space may search, and what each must be: every estimator parameter of
#: :data:`autofhe.params.PARAMS`, with its valid range, plus the search's own ``accum_slack``.
_KNOWN = {name: (p.kind, p.low, p.high) for name, p in PARAMS.items()}
_KNOWN["accum_slack"] = ("slack", 0, 24)
#: Integer kinds that also take one word, which the estimator receives as None.
_WORDS = {"accum": "none", "lookup": "auto", "slack": "none"}

#: The seed's documented configuration, enqueued as every study's first trial.
SEED_CONFIG: dict[str, Any] = {
    name: _WORDS[PARAMS[name].kind] if value is None else value
    for name, value in seed_values().items()
}
_WORD_PARAMS = {name: _WORDS[kind] for name, (kind, _, _) in _KNOWN.items() if kind in _WORDS}


def _check_value(name: str, kind: str, low, high, value) -> None:
    bad = None
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        bad = "an integer"
    elif kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        bad = "a number"
    elif kind == "bool" and not isinstance(value, bool):
        bad = "true or false"
    elif kind == "activation" and value not in ACTIVATION_NAMES:
        bad = f"one of {', '.join(ACTIVATION_NAMES)}"
    elif kind == "schedule" and value not in LR_SCHEDULES:
        bad = f"one of {', '.join(LR_SCHEDULES)}"
    elif kind in _WORDS and value != _WORDS[kind]:
        if isinstance(value, bool) or not isinstance(value, int):
            bad = f'"{_WORDS[kind]}" or an integer'
    if bad is None and kind in ("int", "float", *_WORDS) and value != _WORDS.get(kind):
        if not low <= value <= high:
            bad = f"within [{low}, {high}]"
    if bad:
        raise ParameterError(f"search space: {name} = {value!r} must be {bad}.")


def validate_space(space: dict[str, Any]) -> dict[str, Any]:
    """Check every entry of a space; returns it unchanged or raises ParameterError."""
    for name, entry in space.items():
        if name not in _KNOWN:
            raise ParameterError(
                f"search space: unknown parameter {name!r}; searchable parameters are "
                f"{', '.join(_KNOWN)}."
            )
        kind, low, high = _KNOWN[name]
        if isinstance(entry, dict):
            if set(entry) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(entry):
                raise ParameterError(
                    f"search space: {name} = {entry!r}; a range needs 'low' and 'high' (and "
                    "optionally 'log' or 'step')."
                )
            if kind not in ("int", "float", *_WORDS):
                raise ParameterError(f"search space: {name} takes a list of choices, not a range.")
            for bound in (entry["low"], entry["high"]):
                _check_value(name, kind, low, high, bound)
            if entry["low"] > entry["high"]:
                raise ParameterError(
                    f"search space: {name} has low={entry['low']} > high={entry['high']}."
                )
        elif isinstance(entry, list):
            if not entry:
                raise ParameterError(f"search space: {name} has an empty list of choices.")
            for value in entry:
                _check_value(name, kind, low, high, value)
        else:
            _check_value(name, kind, low, high, entry)
    return space


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one configuration; returns estimator parameters (``"none"`` becomes None)."""
    return to_estimator_params(suggest_raw(trial, space))


def suggest_raw(
    trial, space: dict[str, Any], linear: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Draw one configuration; returns the trial's parameters as drawn.

    The depth is drawn first, so the rest can depend on it: a configuration without hidden
    layers (``module__n_layers`` of 1) draws none of :data:`HIDDEN_ONLY`, nor the names of
    ``linear``, whose values it takes from elsewhere (the study's plan, through
    :meth:`SearchContext.params <autofhe.search.trial.objective.SearchContext.params>`).
    """
    params: dict[str, Any] = {}
    for name in sorted(space, key=lambda name: name != "module__n_layers"):
        entry = space[name]
        if params.get("module__n_layers") == 1 and (
            name in HIDDEN_ONLY or (linear and name in linear)
        ):
            continue
        if isinstance(entry, dict):
            integer = isinstance(entry["low"], int) and isinstance(entry["high"], int)
            suggest_fn = trial.suggest_int if integer else trial.suggest_float
            kwargs = {"log": bool(entry.get("log", False))}
            if "step" in entry:
                kwargs["step"] = entry["step"]
            value = suggest_fn(name, entry["low"], entry["high"], **kwargs)
        elif isinstance(entry, list):
            value = trial.suggest_categorical(name, entry) if len(entry) > 1 else entry[0]
        else:
            value = entry
        params[name] = value
    return params


def to_estimator_params(params: dict[str, Any]) -> dict[str, Any]:
    """Trial parameters -> estimator parameters (``"none"`` / ``"auto"`` become None, and
    ``accum_slack`` becomes ``n_accum_bits``: the smallest budget the bit widths, depth and
    activation allow, plus the slack)."""
    out = dict(params)
    for name, word in _WORD_PARAMS.items():
        if out.get(name) == word:
            out[name] = None
    if "accum_slack" in out:
        slack = out.pop("accum_slack")
        if slack is None:
            out["n_accum_bits"] = None
        else:
            from autofhe.search.price.pricing import hidden_signed, min_accum_bits

            out["n_accum_bits"] = int(slack) + min_accum_bits(
                int(value_of(out, "n_w_bits")),
                int(value_of(out, "n_a_bits")),
                int(value_of(out, "module__n_layers")),
                hidden_signed(value_of(out, "module__activation_function")),
            )
    return out
