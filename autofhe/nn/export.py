"""A trained :class:`~autofhe.nn.module.QuantMLP` -> its integer program (the training side).

The program itself (:mod:`autofhe.fhe.program`) knows no torch: each hidden lookup receives
here a :class:`TorchLookup`, which computes the table values with the trained activation in
float32 as the training forward pass does, so rounding ties fall the same way in both.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from autofhe.fhe.bits import input_max_abs, signed_bits, worst_case_accumulator
from autofhe.fhe.program import IntegerProgram, ProgramLayer
from autofhe.nn.module import QuantMLP

__all__ = ["TorchLookup", "build_program"]


class TorchLookup:
    """``out_j(acc) = clip(round(f(acc * acc_scale_j) / out_scale))`` computed with torch.

    A plain picklable object (a fitted estimator pickles with its program). Its output is
    clipped to ``out_range``.
    """

    def __init__(
        self,
        activation: torch.nn.Module,
        acc_scale: np.ndarray,
        out_scale: float,
        out_range: tuple[int, int],
    ):
        self.activation, self.acc_scale = activation, np.asarray(acc_scale)
        self.out_scale, self.out_range = float(out_scale), out_range

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        # float32 like the training forward pass, so rounding ties fall the same way.
        real = torch.from_numpy(np.asarray(acc).astype(np.float32)) * torch.from_numpy(
            self.acc_scale.astype(np.float32)
        )
        with torch.no_grad():
            y = self.activation(real) / torch.tensor(self.out_scale, dtype=torch.float32)
        low, high = self.out_range
        return torch.clamp(torch.round(y), low, high).numpy().astype(np.int64)


def build_program(module: QuantMLP) -> IntegerProgram:
    """Extract the integer program of a trained :class:`QuantMLP`."""
    (input_offset, input_norm), input_scale, int_layers, act_scales = module.integer_layers()
    # The trained instance: some activations (PReLU) carry learned parameters.
    activation = copy.deepcopy(module.activation).eval()
    layers = []
    for i, il in enumerate(int_layers):
        worst = worst_case_accumulator(il.weight, il.bias, il.input_max)
        acc_bits = signed_bits(int(worst.max(initial=0)))
        if module.n_accum_bits is not None and acc_bits > module.n_accum_bits:
            raise AssertionError(
                f"layer {i}: accumulator needs {acc_bits} bits, over the budget "
                f"{module.n_accum_bits}; pruning failed to enforce it"
            )
        layer = ProgramLayer(weight=il.weight, bias=il.bias, acc_bits=acc_bits)
        if i < len(int_layers) - 1:
            layer.out_bits, layer.out_signed = module.n_a_bits, module.hidden_signed
            layer.function = TorchLookup(activation, il.acc_scale, act_scales[i], layer.out_range)
        layers.append(layer)
    assert input_max_abs(module.n_a_bits, signed=True) == int_layers[0].input_max
    return IntegerProgram(
        input_scale=input_scale,
        input_offset=input_offset,
        input_norm=input_norm,
        input_bits=module.n_a_bits,
        layers=layers,
        output_scale=int_layers[-1].acc_scale.astype(np.float64),
    )
