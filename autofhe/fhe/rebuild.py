"""The circuit a server runs, rebuilt from ``server/program.json`` (never loaded from a file).

:func:`compile_server` compiles the integer program with the data-free inputs of
``compile.synthetic_inputset`` and the bundle's compilation settings (checked by
:func:`compile_settings`); :func:`check_specs` refuses a circuit whose client specs differ
from the bundle's (keys made for another circuit would abort it).
"""

from __future__ import annotations

import json
from pathlib import Path

from autofhe.errors import BundleError
from autofhe.fhe.codec import program_from_json
from autofhe.fhe.compile import compile_program, synthetic_inputset
from autofhe.fhe.runtime import concrete_fhe

__all__ = ["check_specs", "compile_server", "compile_settings"]


def compile_server(data: dict):
    """``server/program.json`` -> the ``concrete.fhe.Circuit`` the server runs."""
    fhe = concrete_fhe()
    program = program_from_json(data)
    settings = compile_settings(data)
    config = fhe.Configuration(
        dump_artifacts_on_unexpected_failures=False,
        p_error=settings.get("p_error"),
        global_p_error=settings.get("global_p_error"),
    )
    return compile_program(
        program, synthetic_inputset(program), configuration=config, compress=settings["compress"]
    )


def compile_settings(data: dict) -> dict:
    """``program.json``'s compilation settings, checked: ``p_error``, ``global_p_error``
    (probabilities or null) and ``compress`` (bundles written before compression was the
    default carry no flag: uncompressed)."""
    settings = data.get("compile") or {}
    if not isinstance(settings, dict):
        raise BundleError("program.json: compile is not an object; the bundle is corrupt.")
    for key in ("p_error", "global_p_error"):
        value = settings.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1
        ):
            raise BundleError(
                f"program.json: compile.{key}={value!r} is not a probability; the bundle is "
                "corrupt."
            )
    compress = settings.get("compress", False)
    if not isinstance(compress, bool):
        raise BundleError(
            f"program.json: compile.compress={compress!r} is not true or false; the bundle is "
            "corrupt."
        )
    return {**settings, "compress": compress}


def check_specs(circuit, expected: dict, where: Path) -> None:
    """Refuse a circuit whose client specs differ from the bundle's."""
    if json.loads(circuit.client.specs.serialize()) != expected:
        raise BundleError(
            f"the circuit compiled from {where / 'program.json'} does not match "
            f"{where / 'client.specs.json'} (its keys would differ); the bundle was modified or "
            "comes from another concrete-python: re-export it."
        )
