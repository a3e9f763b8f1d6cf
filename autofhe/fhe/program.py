"""A trained module as an integer program: the single source of truth of every FHE mode.

The server computes, per linear layer, ``acc = h @ W.T + b`` on encrypted integers with clear
integer weights, then (hidden layers only) one table lookup per neuron that fuses activation
and re-quantization: ``h' = T_j[acc_j]``. The client quantizes inputs and de-quantizes the last
accumulator in the clear. :meth:`IntegerProgram.run` is that computation; it runs on numpy
integers for ``fhe="disable"`` and is traced by concrete-python for ``simulate`` / ``execute``,
so the three modes compute the same function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autofhe.errors import CompilationError
from autofhe.fhe.runtime import concrete_fhe

__all__ = [
    "IntegerProgram",
    "LookupFunction",
    "ProgramLayer",
    "quantize_inputs",
    "real_lookup",
    "softmax",
]

#: A hidden layer's lookup: accumulator values (float64, possibly half-integers when they stand
#: for a truncated bucket; last axis = neurons) -> its integer outputs.
LookupFunction = Callable[[np.ndarray], np.ndarray]


#: Widest accumulator whose lookup table is materialized (concrete's TLU limit is 16 bits).
MAX_TABLE_BITS = 16


@dataclass
class ProgramLayer:
    """One layer of the integer program.

    Hidden layers carry the function of their lookup (``function``, typically ``out_j(acc) =
    clip(round(f(acc * acc_scale_j) / out_scale))``) and/or its table. The table is built
    from :meth:`lookup_values` once and then used by every mode, so clear and encrypted lookups
    read the very same integers.
    """

    weight: np.ndarray  # (n_out, n_in) int64
    bias: np.ndarray  # (n_out,) int64
    acc_bits: int  # signed width that holds the worst-case accumulator of every neuron
    #: None with no table: the output layer (no lookup). Never serialized.
    function: LookupFunction | None = field(default=None, repr=False)
    out_bits: int = 0
    out_signed: bool = True
    #: Low accumulator bits dropped before the lookup (0: lookup on the whole accumulator).
    lsbs_to_remove: int = 0
    #: "exact": truncate_bit_pattern (bit-exact in every mode); "approximate": concrete's
    #: one-PBS approximate rounding (cheaper, not bit-exact: judge it by simulation).
    rounding: str = "exact"
    #: Width concrete measured for the reduced accumulator (the lookup's input) when the model
    #: was compiled, hinted on every later compile. Concrete measures that width on the compile's
    #: rows, and the model's training rows can reach values that a server's data-free rows do
    #: not: without the hint the server compiled another circuit (a bundle that failed its own
    #: check, and a search trial that failed with it). None: measured, as at a first compile.
    reduced_bits: int | None = None
    _table: np.ndarray | None = field(default=None, repr=False)

    def with_rounding(self, lsbs_to_remove: int, rounding: str = "exact") -> ProgramLayer:
        """A copy that drops ``lsbs_to_remove`` bits before its lookup (hidden layers only).

        Approximate rounding may carry into one more bit, so its accumulator gets one more.
        A layer without its function (loaded from JSON) keeps only the rounding it has.
        """
        if not self.has_lookup:
            return self
        if (int(lsbs_to_remove), rounding if lsbs_to_remove else "exact") == (
            self.lsbs_to_remove,
            self.rounding,
        ):
            return self
        if self.function is None:
            raise CompilationError(
                "this program was loaded with its lookup tables only, rounded to drop "
                f"{self.lsbs_to_remove} bits; dropping {lsbs_to_remove} needs the trained "
                "model: compile the estimator again (model.compile(X, lookup_bits=...))."
            )
        if lsbs_to_remove == 0:
            return dataclasses.replace(
                self, lsbs_to_remove=0, rounding="exact", reduced_bits=None, _table=None
            )
        extra = 1 if rounding == "approximate" else 0
        return dataclasses.replace(
            self,
            lsbs_to_remove=int(lsbs_to_remove),
            rounding=rounding,
            acc_bits=self.acc_bits + extra,
            reduced_bits=None,
            _table=None,
        )

    @property
    def has_lookup(self) -> bool:
        """Whether the layer ends in a table lookup (every layer but the output layer)."""
        return self.function is not None or self._table is not None

    @property
    def lookup_bits(self) -> int:
        """Precision of the table lookup input (accumulator bits left after rounding)."""
        return self.acc_bits - self.lsbs_to_remove

    def reduce(self, acc):
        """Drop ``lsbs_to_remove`` low bits of ``acc`` before the lookup."""
        k = self.lsbs_to_remove
        if k == 0:
            return acc
        if _is_numpy(acc):
            acc = np.asarray(acc, dtype=np.int64)
            if self.rounding == "approximate":  # the clear reference: round half up
                return ((acc + (1 << (k - 1))) >> k) << k
            return (acc >> k) << k  # arithmetic shift: floor, as truncate_bit_pattern
        fhe = concrete_fhe()

        if self.rounding == "approximate":
            return fhe.round_bit_pattern(acc, lsbs_to_remove=k, exactness=fhe.Exactness.APPROXIMATE)
        return fhe.truncate_bit_pattern(acc, lsbs_to_remove=k)

    def _representative(self, acc: np.ndarray) -> np.ndarray:
        """Accumulator value the lookup of a reduced ``acc`` stands for.

        After truncation, bucket ``[m * 2**k, (m + 1) * 2**k)`` reads the table at its floor;
        its entry is the function at the bucket's centre, so truncation acts as rounding.
        """
        k = self.lsbs_to_remove
        if k == 0 or self.rounding == "approximate":
            return acc.astype(np.float64)
        return acc.astype(np.float64) + ((1 << k) - 1) / 2

    @property
    def n_lookups(self) -> int:
        return int(self.weight.shape[0]) if self.has_lookup else 0

    @property
    def out_range(self) -> tuple[int, int]:
        if self.out_signed:
            return -(2 ** (self.out_bits - 1)), 2 ** (self.out_bits - 1) - 1
        return 0, 2**self.out_bits - 1

    def lookup_values(self, acc: np.ndarray) -> np.ndarray:
        """The lookup function on (reduced) integer accumulators (last axis = neurons)."""
        if self.function is None:
            raise CompilationError(
                "this layer was loaded with its lookup table only; its function is the table."
            )
        values = self.function(self._representative(np.asarray(acc, dtype=np.int64)))
        low, high = self.out_range
        return np.clip(np.asarray(values, dtype=np.int64), low, high)

    @property
    def table(self) -> np.ndarray:
        """(n_out, 2**acc_bits) table, entry ``[j, a mod 2**acc_bits]`` for accumulator a."""
        if self._table is None:
            size = 2**self.acc_bits
            acc = np.arange(-(size // 2), size // 2, dtype=np.int64)
            values = self.lookup_values(np.broadcast_to(acc[:, None], (size, self.weight.shape[0])))
            self._table = np.empty((self.weight.shape[0], size), dtype=np.int64)
            self._table[:, acc % size] = values.T
        return self._table

    def lookup(self, acc):
        """Apply the lookup to ``acc`` (numpy integers or a concrete tracer)."""
        if not _is_numpy(acc):
            fhe = concrete_fhe()

            return fhe.LookupTable([fhe.LookupTable(row) for row in self.table])[acc]
        acc = np.asarray(acc)
        if self.acc_bits > MAX_TABLE_BITS:  # cannot compile anyway; spare the memory
            return self.lookup_values(acc)
        return self.table[np.arange(self.weight.shape[0]), acc % 2**self.acc_bits]


@dataclass
class IntegerProgram:
    """Client-side quantization + server-side integer forward + client-side de-quantization."""

    input_scale: np.ndarray  # (n_features,) client-side quantization scale per feature
    input_bits: int
    layers: list[ProgramLayer]
    output_scale: np.ndarray  # (n_outputs,) float64
    input_offset: np.ndarray | None = None  # (n_features,) subtracted before quantization
    input_norm: np.ndarray | None = None  # (n_features,) then divided by, before quantization
    meta: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def accumulator_bits(self) -> list[int]:
        return [layer.acc_bits for layer in self.layers]

    def with_rounding(self, lsbs: list[int], rounding: str = "exact") -> IntegerProgram:
        """A copy whose hidden layer ``i`` drops ``lsbs[i]`` accumulator bits before its lookup."""
        layers = [layer.with_rounding(k, rounding) for layer, k in zip(self.layers, lsbs)]
        return dataclasses.replace(self, layers=layers)

    def with_reduced_bits(self, widths: list[int]) -> IntegerProgram:
        """A copy whose layers that reduce their accumulator hint ``widths`` (in layer order)
        for the reduced value: the widths a compile measured (:func:`~autofhe.fhe.compile.
        reduced_widths`), so every later compile gives the same circuit."""
        reducing = [i for i, layer in enumerate(self.layers) if layer.lsbs_to_remove]
        if len(widths) != len(reducing):
            raise CompilationError(
                f"{len(widths)} reduced widths for {len(reducing)} layers that reduce"
            )
        layers = list(self.layers)
        for i, width in zip(reducing, widths):
            layers[i] = dataclasses.replace(layers[i], reduced_bits=int(width))
        return dataclasses.replace(self, layers=layers)

    def hidden_outputs(self, x_int: np.ndarray) -> list[np.ndarray]:
        """Outputs of every hidden lookup in the clear (for choosing the rounding)."""
        outs, h = [], x_int
        for layer in self.layers[:-1]:
            h = layer.lookup(layer.reduce(h @ layer.weight.T + layer.bias))
            outs.append(h)
        return outs

    def quantize(self, X: np.ndarray) -> np.ndarray:
        """Client side: float features -> signed ``input_bits`` integers."""
        return quantize_inputs(
            X, self.input_offset, self.input_norm, self.input_scale, self.input_bits
        )

    def run(self, x):
        """Server side, the integer forward pass (numpy integers or a concrete tracer)."""
        h = _hint(x, self.input_bits)
        for layer in self.layers:
            acc = _hint(h @ layer.weight.T + layer.bias, layer.acc_bits)
            if not layer.has_lookup:
                return acc
            reduced = layer.reduce(acc)
            if layer.reduced_bits is not None:
                reduced = _hint(reduced, layer.reduced_bits)
            h = layer.lookup(reduced)
        raise AssertionError("the last layer of a program has no table")

    def dequantize(self, acc: np.ndarray) -> np.ndarray:
        """Client side: last accumulator -> real-valued outputs (logits or regression values)."""
        return np.asarray(acc, dtype=np.float64) * self.output_scale

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """The whole computation in the clear, vectorized over rows."""
        return self.dequantize(self.run(self.quantize(X)))


def quantize_inputs(X, offset, norm, scale, bits: int) -> np.ndarray:
    """``round((x - offset) / norm / scale)`` clipped to signed ``bits``, in float32 and in the
    training forward pass's order so rounding ties fall the same way (client side)."""
    X = np.asarray(X, dtype=np.float32)
    if offset is not None:
        X = X - np.asarray(offset, dtype=np.float32)
    if norm is not None:
        X = X / np.asarray(norm, dtype=np.float32)
    q = np.round(X / np.asarray(scale, dtype=np.float32))
    return np.clip(q, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (client side post-processing of classifier outputs)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _is_numpy(value) -> bool:
    return isinstance(value, (np.ndarray, np.integer, int))


def _hint(value, bit_width: int):
    if _is_numpy(value):
        return value
    fhe = concrete_fhe()

    return fhe.hint(value, bit_width=bit_width)


def real_lookup(
    activation: Callable[[np.ndarray], np.ndarray],
    acc_scale: np.ndarray,
    out_scale: float,
    out_range: tuple[int, int],
) -> LookupFunction:
    """``clip(round(activation(acc * acc_scale) / out_scale))`` with a numpy ``activation``,
    in float32: the lookup of stand-in programs (pricing, latency calibration)."""
    scale, low, high = np.asarray(acc_scale, dtype=np.float32), *out_range

    def function(acc: np.ndarray) -> np.ndarray:
        y = activation(acc.astype(np.float32) * scale) / np.float32(out_scale)
        return np.clip(np.round(y), low, high).astype(np.int64)

    return function
