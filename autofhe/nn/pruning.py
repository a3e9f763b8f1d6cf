"""Per-neuron pruning masks that enforce an accumulator budget.

Pruning keeps, per neuron, the largest weights while their contributions ``|w_int| * x_max``
fit the budget, and clips the bias to the budget left over. The budget arithmetic itself is
integer-only and lives in :mod:`autofhe.fhe.bits` (the integer program checks it without
torch); it is re-exported here for the training side.
"""

from __future__ import annotations

import torch

from autofhe.fhe.bits import (
    budget_limit,
    check_budget,
    input_max_abs,
    min_feasible_accum_bits,
    signed_bits,
    weight_max_abs,
    worst_case_accumulator,
)

__all__ = [
    "budget_limit",
    "check_budget",
    "input_max_abs",
    "min_feasible_accum_bits",
    "neuron_keep_mask",
    "signed_bits",
    "weight_max_abs",
    "worst_case_accumulator",
]


@torch.no_grad()
def neuron_keep_mask(
    w_int: torch.Tensor, x_max: int, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron, keep the largest weights whose contributions fit ``limit``.

    Parameters
    ----------
    w_int : (n_out, n_in) tensor of integer-valued weights.
    x_max : largest |x_int| the layer's input quantizer produces.
    limit : largest accumulator magnitude allowed.

    Returns
    -------
    weight_mask : 0/1 tensor of the shape of ``w_int``.
    bias_room : (n_out,) budget left for the bias: clip ``b_int`` to ``[-room, room]``.
    """
    contrib = w_int.abs().double() * x_max
    order = torch.argsort(contrib, dim=1, descending=True, stable=True)
    running = torch.cumsum(torch.gather(contrib, 1, order), dim=1)
    keep_sorted = (running <= limit).double()
    keep = torch.zeros_like(contrib).scatter_(1, order, keep_sorted)
    room = limit - (contrib * keep).sum(dim=1)
    return keep.to(w_int.dtype), room.to(w_int.dtype)
