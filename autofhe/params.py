"""Estimator parameters: one table of what each may be, its default and the seed's value.

The estimators validate against it (:func:`check_param`), the search space checks a study's
ranges against it and builds its seed configuration from it, and a spec's ``[space]`` is
checked through the search space. A search range may be narrower than the valid range (the
default space is), never wider. Torch-free: the CLI and the spec check import it for free.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from autofhe.errors import ParameterError

__all__ = [
    "ACTIVATION_NAMES",
    "LR_SCHEDULES",
    "PARAMS",
    "SEED_ACTIVATIONS",
    "Param",
    "check_param",
    "default",
    "seed_values",
    "value_of",
]

#: The activations the seed documents (and the search explores by default).
SEED_ACTIVATIONS = ("ReLU", "ReLU6", "Sigmoid", "Tanh", "GELU", "SELU", "CELU", "LeakyReLU")
#: Activations offered by name (torch.nn class names); any torch activation class also works.
ACTIVATION_NAMES = (
    *SEED_ACTIVATIONS,
    *("ELU", "Hardtanh", "Hardsigmoid", "Hardswish", "SiLU", "Mish", "Softplus"),
    *("Softsign", "Tanhshrink", "LogSigmoid", "PReLU", "RReLU"),
)
#: Learning-rate schedules offered by ``lr_schedule``.
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Param:
    """What one estimator parameter may be.

    ``kind``: "int", "float", "bool", "activation", "schedule", "accum" / "lookup" (an
    integer, or None: an unbounded accumulator / a lookup precision compile chooses), or
    "batch" (an integer, or -1: all rows in one batch).
    ``default``: the estimator's default, which is also the seed configuration's value.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    default: Any = None
    #: part of the seed configuration every study enqueues first
    seed: bool = True


PARAMS: dict[str, Param] = {
    "module__n_layers": Param("int", 1, 64, 2),
    "module__activation_function": Param("activation", default="ReLU"),
    "module__n_hidden_neurons_multiplier": Param("float", 1e-6, 1024.0, 4.0),
    "n_w_bits": Param("int", 2, 16, 3),
    "n_a_bits": Param("int", 2, 16, 3),
    "n_accum_bits": Param("accum", 2, 48, None),
    "power_of_two_scaling": Param("bool", default=True),
    "lr": Param("float", 1e-7, 10.0, 0.001),
    "max_epochs": Param("int", 1, 10_000, 10),
    "batch_size": Param("batch", 1, 1_000_000, 128, seed=False),
    "lr_schedule": Param("schedule", default="constant"),
    "optimizer__weight_decay": Param("float", 0.0, 1.0, 0.0),
    "module__lookup_bits": Param("lookup", 2, 16, None),
    "n_init": Param("int", 1, 100, 1),
}


def default(name: str) -> Any:
    """The estimator's default of parameter ``name``."""
    return PARAMS[name].default


def value_of(params: dict[str, Any], name: str) -> Any:
    """``params[name]``, or the estimator's default when ``params`` leaves it out."""
    return params.get(name, PARAMS[name].default)


def seed_values() -> dict[str, Any]:
    """The seed's documented configuration (estimator values; None where unbounded / auto)."""
    return {name: p.default for name, p in PARAMS.items() if p.seed}


def check_param(name: str, value: Any) -> Any:
    """Raise :class:`ParameterError` unless ``value`` is valid for estimator parameter ``name``
    (None is valid for "accum" / "lookup"); returns it (an int for integer kinds)."""
    p = PARAMS[name]
    if p.kind in ("accum", "lookup") and value is None:
        return None
    if p.kind == "batch" and not isinstance(value, bool) and value == -1:
        return -1
    if p.kind in ("int", "accum", "lookup", "batch"):
        also = ", or -1 for all rows at once" if p.kind == "batch" else ""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ParameterError(
                f"{name}={value!r} must be an integer from {p.low} to {p.high}{also}."
            )
        if not p.low <= value <= p.high:
            raise ParameterError(
                f"{name}={value} is out of range: use an integer from {p.low} to {p.high}{also}."
            )
        return int(value)
    if p.kind == "float":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ParameterError(f"{name}={value!r} must be a number from {p.low} to {p.high}.")
        if not (math.isfinite(value) and p.low <= value <= p.high):
            what = "a positive finite number" if p.low > 0 else "a finite number"
            raise ParameterError(f"{name}={value} must be {what} from {p.low} to {p.high}.")
        return value
    if p.kind == "bool" and not isinstance(value, bool):
        raise ParameterError(f"{name}={value!r} must be True or False.")
    if p.kind == "schedule" and value not in LR_SCHEDULES:
        raise ParameterError(
            f"{name}={value!r} is not a schedule; use one of {', '.join(map(repr, LR_SCHEDULES))}."
        )
    return value
