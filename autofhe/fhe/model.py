"""The compiled model: one torch-free value that every layer passes around.

A :class:`CompiledModel` is the integer program (rounding chosen), its circuit and the output
decoding (classes, or the regression target's mean and scale). :func:`compile_model` makes
one from a program; estimators keep one after ``compile``. :mod:`autofhe.fhe.bundle` writes it
as a bundle (JSON only) and reads it back, the circuit then compiled on first use from the
bundle's program (never loaded from the bundle: :mod:`autofhe.fhe.rebuild`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autofhe.errors import ParameterError
from autofhe.fhe.codec import Decoding
from autofhe.fhe.compile import (
    argmax_agreement,
    choose_lsbs,
    circuit_report,
    compile_program,
    inputset,
    r2_agreement,
    reduced_widths,
    run_circuit,
)
from autofhe.fhe.program import IntegerProgram, softmax

__all__ = ["FHE_MODES", "CompiledModel", "Decoding", "ServerSource", "check_mode", "compile_model"]

FHE_MODES = ("disable", "simulate", "execute")


def check_mode(fhe: str) -> None:
    """Refuse an ``fhe=`` that is not one of :data:`FHE_MODES` (one message everywhere)."""
    if fhe not in FHE_MODES:
        raise ParameterError(f"fhe={fhe!r} is not a mode; use 'disable', 'simulate' or 'execute'.")


@dataclass(frozen=True)
class ServerSource:
    """A bundle's server part: ``program.json`` data, the client specs its circuit must have,
    and where it was read (for error messages)."""

    program: dict
    specs: dict
    where: Path


@dataclass
class CompiledModel:
    """Integer program + circuit + output decoding (+ the circuit's report, estimator params).

    ``circuit`` of a loaded model is compiled from its program on first use and checked
    against the bundle's client specs.
    """

    program: IntegerProgram
    decoding: Decoding
    report: dict
    params: dict[str, Any] = field(default_factory=dict)
    _circuit: Any = field(default=None, repr=False)
    #: what a model loaded from a bundle compiles its circuit from
    source: ServerSource | None = field(default=None, repr=False)

    @property
    def circuit(self):
        """The ``concrete.fhe.Circuit`` (compiled on first use for a loaded model)."""
        if self._circuit is None and self.source is not None:
            from autofhe.fhe.rebuild import check_specs, compile_server

            circuit = compile_server(self.source.program)
            check_specs(circuit, self.source.specs, self.source.where)
            self._circuit = circuit
        return self._circuit

    def predict_raw(self, X: np.ndarray, fhe: str = "disable") -> np.ndarray:
        """Real-valued outputs (logits or standardized targets) of checked rows ``X``."""
        check_mode(fhe)
        if fhe == "disable":
            return self.program.predict_raw(X)
        x_int = self.program.quantize(X)
        return self.program.dequantize(run_circuit(self.circuit, x_int, fhe))

    def predict(self, X: np.ndarray, fhe: str = "disable") -> np.ndarray:
        return self.decoding.predict(self.predict_raw(X, fhe))

    def predict_proba(self, X: np.ndarray, fhe: str = "disable") -> np.ndarray:
        if not self.decoding.classification:
            raise ParameterError("predict_proba is for classifiers; this model is a regressor.")
        return softmax(self.predict_raw(X, fhe))

    def recompiled(self, compress: bool) -> CompiledModel:
        """The same program compiled as a server compiles it (data-free inputs), with
        evaluation keys and inputs compressed or not: what ``export --uncompressed`` ships."""
        from autofhe.fhe.compile import synthetic_inputset

        circuit = compile_program(
            self.program,
            synthetic_inputset(self.program),
            configuration=self.circuit.configuration,
            compress=compress,
        )
        report = circuit_report(circuit, self.program)
        return CompiledModel(self.program, self.decoding, report, dict(self.params), circuit)


def compile_model(
    program: IntegerProgram,
    X: np.ndarray,
    decoding: Decoding,
    *,
    p_error: float | None = None,
    configuration=None,
    rounding: str = "auto",
    lookup_bits: int | None = None,
    params: dict[str, Any] | None = None,
    compress: bool = True,
) -> CompiledModel:
    """Choose the rounding of ``program`` on rows ``X``, compile it; the compiled model.

    ``program`` must carry its lookup functions (the training side builds it) unless it is
    compiled with the rounding it already has. ``rounding`` / ``lookup_bits``: see
    :func:`~autofhe.fhe.compile.choose_lsbs`; outputs must keep their class (classifiers) or
    99% of their variance (regressors) on ``X``. ``compress``: see
    :func:`~autofhe.fhe.compile.compile_program`.
    """
    agreement = argmax_agreement if decoding.classification else r2_agreement
    lsbs = choose_lsbs(program, program.quantize(X), rounding, lookup_bits, agreement=agreement)
    mode = "approximate" if rounding == "approximate" else "exact"
    fhe_program = program.with_rounding(lsbs, mode)
    circuit = compile_program(
        fhe_program,
        inputset(fhe_program, X),
        p_error=p_error,
        configuration=configuration,
        compress=compress,
    )
    # the rows X widened some reduced accumulators: a server compiles with data-free rows only
    fhe_program = fhe_program.with_reduced_bits(reduced_widths(circuit))
    report = circuit_report(circuit, fhe_program)
    return CompiledModel(fhe_program, decoding, report, dict(params or {}), _circuit=circuit)
