"""Accumulator-budget arithmetic on integers (no torch): what the training side prunes to and
the integer program checks.

A neuron's accumulator is ``sum_i w_int[i] * x_int[i] + b_int``. Over every representable
quantized input its worst case is ``sum_i |w_int[i]| * x_max + |b_int|``, where ``x_max`` is the
largest magnitude the input quantizer can produce. A budget of ``B`` signed bits holds every
value of magnitude up to ``2**(B - 1) - 1``.
"""

from __future__ import annotations

import numpy as np

from autofhe.errors import AccumulatorBudgetError

__all__ = [
    "budget_limit",
    "check_budget",
    "input_max_abs",
    "min_feasible_accum_bits",
    "signed_bits",
    "weight_max_abs",
    "worst_case_accumulator",
]


def signed_bits(max_abs: int) -> int:
    """Smallest signed bit width ``B`` such that ``max_abs <= 2**(B - 1) - 1``."""
    return int(max_abs).bit_length() + 1


def budget_limit(n_accum_bits: int) -> int:
    """Largest accumulator magnitude a budget of ``n_accum_bits`` signed bits allows."""
    return 2 ** (n_accum_bits - 1) - 1


def weight_max_abs(n_w_bits: int) -> int:
    """Largest |w_int| of the narrow-range signed weight quantizer."""
    return 2 ** (n_w_bits - 1) - 1


def input_max_abs(n_bits: int, signed: bool) -> int:
    """Largest |x_int| of a full-range activation quantizer."""
    return 2 ** (n_bits - 1) if signed else 2**n_bits - 1


def min_feasible_accum_bits(n_w_bits: int, input_maxes: list[int]) -> int:
    """Smallest budget at which every neuron can keep at least one full-magnitude weight."""
    return max(signed_bits(weight_max_abs(n_w_bits) * x_max) for x_max in input_maxes)


def check_budget(n_accum_bits: int | None, n_w_bits: int, input_maxes: list[int]) -> None:
    """Raise :class:`AccumulatorBudgetError` when no network can meet ``n_accum_bits``."""
    if n_accum_bits is None:
        return
    needed = min_feasible_accum_bits(n_w_bits, input_maxes)
    if n_accum_bits < needed:
        raise AccumulatorBudgetError(
            f"n_accum_bits={n_accum_bits} is too small: with n_w_bits={n_w_bits} a single "
            f"full-range weight times the largest quantized input already needs {needed} "
            f"signed bits. Use n_accum_bits >= {needed}, or lower n_w_bits / n_a_bits."
        )


def worst_case_accumulator(w_int: np.ndarray, b_int: np.ndarray, x_max: int) -> np.ndarray:
    """Per-neuron worst-case |accumulator| over all representable inputs (exact integers)."""
    w = np.abs(np.asarray(w_int, dtype=np.int64))
    return w.sum(axis=1) * int(x_max) + np.abs(np.asarray(b_int, dtype=np.int64))
