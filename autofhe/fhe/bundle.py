"""Save / load a compiled model as a directory. No pickle anywhere; no secret key.

Layout (hand ``client/`` to the data owner, ``server/`` to the server)::

    model.json                 versions, task, classes, features, metrics, provenance,
                               sha256 of every other file
    client/client.json         quantization of inputs, de-quantization of outputs, classes
    client/client.specs.json   concrete client specs (what a client needs to generate keys)
    server/server.zip          the compiled circuit (``concrete.fhe.Server.load`` reads it)
    server/program.json        the integer program (weights, biases, rounding, lookup tables),
                               for clear and simulated runs next to the server

Loading checks every checksum and the concrete-python version before reading anything else.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np

from autofhe.errors import BundleError
from autofhe.fhe.program import IntegerProgram, ProgramLayer

__all__ = ["BundleError", "load_program", "read_manifest", "save_bundle"]

FORMAT = 1
FILES = (
    "client/client.json",
    "client/client.specs.json",
    "server/server.zip",
    "server/program.json",
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def program_to_json(program: IntegerProgram) -> dict:
    layers = []
    for layer in program.layers:
        entry = {
            "weight": layer.weight.tolist(),
            "bias": layer.bias.tolist(),
            "acc_bits": layer.acc_bits,
            "lsbs_to_remove": layer.lsbs_to_remove,
            "rounding": layer.rounding,
        }
        if layer.activation is not None:
            entry.update(
                table=layer.table.tolist(),
                out_bits=layer.out_bits,
                out_signed=layer.out_signed,
            )
        layers.append(entry)
    return {
        "input_scale": program.input_scale.tolist(),
        "input_offset": None if program.input_offset is None else program.input_offset.tolist(),
        "input_norm": None if program.input_norm is None else program.input_norm.tolist(),
        "input_bits": program.input_bits,
        "output_scale": program.output_scale.tolist(),
        "layers": layers,
    }


class _TableActivation:
    """Stand-in activation of a loaded layer: its table is the whole function."""


def program_from_json(data: dict) -> IntegerProgram:
    layers = []
    for entry in data["layers"]:
        layer = ProgramLayer(
            weight=np.asarray(entry["weight"], dtype=np.int64),
            bias=np.asarray(entry["bias"], dtype=np.int64),
            acc_bits=int(entry["acc_bits"]),
            lsbs_to_remove=int(entry["lsbs_to_remove"]),
            rounding=entry["rounding"],
        )
        if "table" in entry:
            layer.activation = _TableActivation()
            layer.out_bits, layer.out_signed = int(entry["out_bits"]), bool(entry["out_signed"])
            table = np.asarray(entry["table"], dtype=np.int64)
            if table.shape != (layer.weight.shape[0], 2**layer.acc_bits):
                raise BundleError(
                    f"program.json: a table has shape {table.shape}, expected "
                    f"{(layer.weight.shape[0], 2**layer.acc_bits)}; the bundle is corrupt."
                )
            layer._table = table
        layers.append(layer)
    return IntegerProgram(
        input_scale=np.asarray(data["input_scale"], dtype=np.float64),
        input_bits=int(data["input_bits"]),
        layers=layers,
        output_scale=np.asarray(data["output_scale"], dtype=np.float64),
        input_offset=None
        if data.get("input_offset") is None
        else np.asarray(data["input_offset"], dtype=np.float64),
        input_norm=None
        if data.get("input_norm") is None
        else np.asarray(data["input_norm"], dtype=np.float64),
    )


def save_bundle(model, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a compiled estimator to ``directory`` (created; must not exist or be empty).

    The bundle is written to a temporary directory first and moved into place, so a failure
    never leaves a half-written bundle behind.
    """
    import autofhe

    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BundleError(f"{target} exists and is not an empty directory; choose another path.")
    program = model.fhe_program_
    circuit = model.fhe_circuit
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
        work = Path(tmp) / "bundle"
        (work / "client").mkdir(parents=True)
        (work / "server").mkdir()
        (work / "server" / "program.json").write_text(json.dumps(program_to_json(program)))
        circuit.server.save(str(work / "server" / "server.zip"))
        specs = circuit.client.specs.serialize()
        (work / "client" / "client.specs.json").write_bytes(
            specs if isinstance(specs, bytes) else specs.encode()
        )
        task = "classification" if model._classification else "regression"
        client = client_part(model, task)
        (work / "client" / "client.json").write_text(json.dumps(client))
        manifest = {
            "format": FORMAT,
            "autofhe": autofhe.__version__,
            "concrete_python": dist_version("concrete-python"),
            "python": platform.python_version(),
            "task": task,
            "n_features": program.n_features,
            "classes": client["classes"],
            "target": client["target"],
            "params": {k: _jsonable(v) for k, v in model.get_params(deep=False).items()},
            "fhe_report": model.fhe_report(),
            "sha256": {},
            **(extra or {}),
        }
        manifest["sha256"] = {name: _sha256(work / name) for name in FILES}
        (work / "model.json").write_text(json.dumps(manifest, indent=2, default=_jsonable))
        if target.exists():
            target.rmdir()
        shutil.move(str(work), str(target))
    return target


def client_part(model, task: str) -> dict:
    """What a client needs besides keys: no weight, no table."""
    program = model.fhe_program_
    return {
        "task": task,
        "n_features": program.n_features,
        "input_offset": None if program.input_offset is None else program.input_offset.tolist(),
        "input_norm": None if program.input_norm is None else program.input_norm.tolist(),
        "input_scale": program.input_scale.tolist(),
        "input_bits": program.input_bits,
        "output_scale": program.output_scale.tolist(),
        "classes": model.classes_.tolist() if task == "classification" else None,
        "target": None
        if task == "classification"
        else {
            "mean": model.y_mean_.tolist(),
            "scale": model.y_scale_.tolist(),
            "ndim": model.y_ndim_,
        },
    }


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def read_manifest(directory: str | Path) -> dict:
    """``model.json`` after checking that every file is present and unmodified."""
    root = Path(directory)
    if not (root / "model.json").is_file():
        raise BundleError(f"{root} is not an autofhe bundle: model.json is missing.")
    try:
        manifest = json.loads((root / "model.json").read_text())
    except ValueError as exc:
        raise BundleError(f"{root / 'model.json'} is not valid JSON ({exc}).") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"bundle format {manifest.get('format')!r} is not supported (this autofhe reads "
            f"format {FORMAT}); re-export the model with this version."
        )
    for name in FILES:
        path = root / name
        if not path.is_file():
            raise BundleError(f"bundle {root} is incomplete: {name} is missing; re-export it.")
        if _sha256(path) != manifest["sha256"].get(name):
            raise BundleError(
                f"bundle {root}: {name} does not match its checksum in model.json (modified "
                "or corrupted); re-export the model."
            )
    installed = dist_version("concrete-python")
    if manifest["concrete_python"].split(".")[:2] != installed.split(".")[:2]:
        raise BundleError(
            f"bundle {root} was compiled with concrete-python {manifest['concrete_python']}, "
            f"this environment has {installed}; install concrete-python=="
            f"{manifest['concrete_python']} or re-export the model."
        )
    return manifest


def load_program(directory: str | Path) -> tuple[dict, IntegerProgram]:
    """The checked manifest and the integer program of a bundle."""
    manifest = read_manifest(directory)
    data = json.loads((Path(directory) / "server" / "program.json").read_text())
    return manifest, program_from_json(data)
