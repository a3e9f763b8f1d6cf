"""Save / load a compiled model as a directory of data: JSON only, no code, no secret key.

Layout (hand ``client/`` to the data owner, ``server/`` to the server)::

    model.json                 versions, task, classes, features, metrics, provenance,
                               sha256 of every other file
    client/client.json         quantization of inputs, de-quantization of outputs, classes
    client/client.specs.json   concrete client specs (what a client needs to generate keys)
    server/program.json        the integer program (integer weights, biases, rounding,
                               materialized lookup tables) and the compilation settings
    server/client.specs.json   the client specs the server's circuit must have

The server never loads a compiled circuit: it compiles ``server/program.json`` itself (with
the data-free inputs of ``compile.synthetic_inputset``) and refuses to run when the client specs
of its circuit differ from ``server/client.specs.json`` (keys of another circuit would abort
it). So loading a bundle decodes no pickle or jsonpickle and loads no shared library that
came with it. Checksums in ``model.json`` catch accidents; :func:`bundle_digest`, pinned by
the user, catches tampering. Archives (:func:`pack_bundle` / :func:`unpack_bundle`) hold
exactly these files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import tempfile
import zipfile
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np

from autofhe.errors import BundleError
from autofhe.fhe.codec import (
    check_client_matches,
    client_from_json,
    program_from_json,
    program_to_json,
)
from autofhe.fhe.compile import SYNTHETIC_ROWS, SYNTHETIC_SEED
from autofhe.fhe.model import CompiledModel, ServerSource
from autofhe.fhe.rebuild import check_specs, compile_server, compile_settings

__all__ = [
    "BundleError",
    "bundle_digest",
    "load_model",
    "load_model_archive",
    "load_program",
    "pack_bundle",
    "read_json",
    "read_manifest",
    "read_part",
    "save_archive",
    "save_bundle",
    "unpack_bundle",
]

FORMAT = 2
PARTS = {
    "client": ("client.json", "client.specs.json"),
    "server": ("program.json", "client.specs.json"),
}
FILES = tuple(f"{part}/{name}" for part, names in PARTS.items() for name in names)
#: A bundle file larger than this is refused unread (a 16-bit lookup table of 64 neurons is
#: about 40 MB of JSON).
MAX_FILE_BYTES = 256 * 1024**2


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listing(root: Path) -> list[str]:
    """Relative paths of every file under ``root``; a symbolic link is refused."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise BundleError(
                    f"{path} is a symbolic link; a bundle holds only regular files. Re-export it."
                )
        names += [(Path(dirpath) / name).relative_to(root).as_posix() for name in filenames]
    return sorted(names)


def bundle_digest(path: str | Path) -> str:
    """sha256 over the sorted listing of every file under ``path`` and its content.

    Pin it (``autofhe predict --digest``, ``FheServer(..., digest=...)``): any added, removed,
    renamed or modified file changes it. Works on a bundle and on its ``client/`` or
    ``server/`` part alone (each has its own digest).
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root} is not a directory; pass a bundle (the export folder).")
    h = hashlib.sha256()
    for name in _listing(root):
        h.update(f"{name}\0{_sha256(root / name)}\n".encode())
    return h.hexdigest()


def _check_digest(root: Path, digest: str | None) -> None:
    if digest is None:
        return
    expected = digest.strip().lower().removeprefix("sha256:")
    actual = bundle_digest(root)
    if actual != expected:
        raise BundleError(
            f"{root} has digest {actual}, not the pinned {expected}: it is not the bundle that "
            "was exported (modified or replaced); use the exported bundle or pin its digest."
        )


def read_json(path: Path) -> Any:
    """A bundle file as JSON, refusing huge files and non-standard numbers (NaN, Infinity)."""

    def refuse(constant):
        raise ValueError(f"{constant} is not a JSON number")

    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BundleError(f"{path} is over {MAX_FILE_BYTES} bytes; the bundle is corrupt.")
        return json.loads(path.read_bytes(), parse_constant=refuse)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not readable JSON ({exc}); re-export the bundle.") from None


def save_bundle(
    model: CompiledModel, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write a compiled model to ``directory`` (created; must not exist or be empty).

    The server part is compiled again the way a server will compile it, and the bundle is
    refused unless that gives the model's circuit. Everything is written to a temporary
    directory first and moved into place, so a failure never leaves a half-written bundle.
    """
    import autofhe

    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BundleError(f"{target} exists and is not an empty directory; choose another path.")
    program, circuit = model.program, model.circuit
    specs = json.loads(circuit.client.specs.serialize())
    config = circuit.configuration
    server = {
        **program_to_json(program),
        "compile": {
            "p_error": config.p_error,
            "global_p_error": config.global_p_error,
            # seeded evaluation keys and input ciphertexts (the client specs say so too)
            "compress": bool(config.compress_evaluation_keys),
            "inputset": {"seed": SYNTHETIC_SEED, "random_rows": SYNTHETIC_ROWS},
        },
    }
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
        work = Path(tmp) / "bundle"
        for part in PARTS:
            (work / part).mkdir(parents=True)
        (work / "server" / "program.json").write_text(json.dumps(server))
        check_specs(compile_server(server), specs, work / "server")
        for part in PARTS:
            (work / part / "client.specs.json").write_text(json.dumps(specs))
        task = model.decoding.task
        client = client_part(model)
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
            "params": {k: _jsonable(v) for k, v in model.params.items()},
            "fhe_report": model.report,
            "sha256": {},
            **(extra or {}),
        }
        manifest["sha256"] = {name: _sha256(work / name) for name in FILES}
        (work / "model.json").write_text(json.dumps(manifest, indent=2, default=_jsonable))
        if target.exists():
            target.rmdir()
        shutil.move(str(work), str(target))
    return target


#: model.json entries save_bundle writes itself; the others are the caller's (provenance...).
MANIFEST_KEYS = (
    "format",
    "autofhe",
    "concrete_python",
    "python",
    "task",
    "n_features",
    "classes",
    "target",
    "params",
    "fhe_report",
    "sha256",
)


def manifest_extras(manifest: dict) -> dict:
    """What a caller added to ``model.json`` (``extra`` of :func:`save_bundle`)."""
    return {k: v for k, v in manifest.items() if k not in MANIFEST_KEYS}


def client_part(model: CompiledModel) -> dict:
    """What a client needs besides keys: no weight, no table."""
    program = model.program
    return {
        "task": model.decoding.task,
        "n_features": program.n_features,
        "input_offset": None if program.input_offset is None else program.input_offset.tolist(),
        "input_norm": None if program.input_norm is None else program.input_norm.tolist(),
        "input_scale": program.input_scale.tolist(),
        "input_bits": program.input_bits,
        "output_scale": program.output_scale.tolist(),
        **model.decoding.to_json(),
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


def _check_listing(root: Path, expected: list[str]) -> None:
    """Exactly the expected files: anything else (a server.zip, a library) is refused."""
    found = _listing(root)
    extra = sorted(set(found) - set(expected))
    if extra:
        raise BundleError(
            f"{root} holds {extra[0]!r}, which is not part of an autofhe bundle (format "
            f"{FORMAT}: {', '.join(expected)}); remove it or re-export the model."
        )
    for name in expected:
        if name not in found:
            raise BundleError(f"bundle {root} is incomplete: {name} is missing; re-export it.")


def read_manifest(directory: str | Path, digest: str | None = None) -> dict:
    """``model.json`` after checking the pinned digest, the file listing, every checksum and
    the concrete-python version, in that order, before anything else is read."""
    root = Path(directory)
    if not (root / "model.json").is_file():
        raise BundleError(f"{root} is not an autofhe bundle: model.json is missing.")
    _check_digest(root, digest)
    manifest = read_json(root / "model.json")
    if not isinstance(manifest, dict):
        raise BundleError(
            f"bundle {root}: model.json holds a JSON {type(manifest).__name__}, not the "
            "object autofhe writes (modified or not a bundle); re-export the model."
        )
    if manifest.get("format") != FORMAT:
        found = manifest.get("format")
        raise BundleError(
            f"bundle format {found!r} is not supported (this autofhe reads format {FORMAT}, "
            "which carries no compiled code); re-export the model with this version."
        )
    _check_listing(root, ["model.json", *FILES])
    checksums = manifest.get("sha256") if isinstance(manifest.get("sha256"), dict) else {}
    for name in FILES:
        if _sha256(root / name) != checksums.get(name):
            raise BundleError(
                f"bundle {root}: {name} does not match its checksum in model.json (modified "
                "or corrupted); re-export the model."
            )
    installed = dist_version("concrete-python")
    shipped = str(manifest.get("concrete_python"))
    if shipped.split(".")[:2] != installed.split(".")[:2]:
        raise BundleError(
            f"bundle {root} was compiled with concrete-python {shipped}, this environment has "
            f"{installed}; install concrete-python=={shipped} or re-export the model."
        )
    return manifest


def read_part(path: str | Path, part: str, digest: str | None = None) -> Path:
    """``path`` is a bundle (checked with :func:`read_manifest`) or its ``part`` alone
    (checked against ``digest`` and for its files); returns the part's directory."""
    root = Path(path)
    if (root / "model.json").is_file():
        read_manifest(root, digest)
        return root / part
    if root.is_dir():
        _check_digest(root, digest)
        _check_listing(root, list(PARTS[part]))
        return root
    raise BundleError(f"{root} is neither a bundle nor its {part}/ part; pass the export folder.")


def load_program(directory: str | Path, digest: str | None = None) -> tuple[dict, Any]:
    """The checked manifest and the integer program of a bundle."""
    manifest = read_manifest(directory, digest)
    data = read_json(Path(directory) / "server" / "program.json")
    program = program_from_json(data)
    compile_settings(data)  # checked on load, though only compiling reads them
    return manifest, program


# -- archives (how a study stores its front models) ---------------------------------------------


def pack_bundle(directory: str | Path, archive: str | Path) -> Path:
    """Zip a checked bundle: exactly its files, fixed order and timestamps."""
    root = Path(directory)
    read_manifest(root)
    archive = Path(archive)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ["model.json", *FILES]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            z.writestr(info, (root / name).read_bytes(), zipfile.ZIP_DEFLATED)
    return archive


def save_archive(
    model: CompiledModel, archive: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """A compiled model as a bundle archive (:func:`save_bundle` + :func:`pack_bundle`)."""
    with tempfile.TemporaryDirectory() as tmp:
        return pack_bundle(save_bundle(model, Path(tmp) / "bundle", extra), archive)


def unpack_bundle(archive: str | Path, target: str | Path) -> dict:
    """Extract a bundle archive into ``target`` (must not exist) and check it; the manifest.

    Only the bundle's own file names are accepted (no absolute path, no ``..``, no symbolic
    link, no other file), each at most :data:`MAX_FILE_BYTES` however its header lies.
    Nothing reaches ``target`` unless the whole bundle checks out.
    """
    target = Path(target)
    if target.exists():
        raise BundleError(f"{target} already exists; unpack into a new directory.")
    allowed = {"model.json", *FILES}
    try:
        z = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{archive} is not a bundle archive ({exc}).") from None
    with z, tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as t:
        staged = Path(t) / "bundle"
        for member in z.infolist():
            if member.is_dir() and member.filename.rstrip("/") in PARTS:
                continue
            if member.filename not in allowed:
                raise BundleError(
                    f"archive member {member.filename!r} is not a file of an autofhe bundle "
                    f"(format {FORMAT}); re-export the model with this version."
                )
            if stat.S_ISLNK(member.external_attr >> 16):
                raise BundleError(f"archive member {member.filename!r} is a symbolic link.")
            dest = staged / member.filename
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(member) as src, open(dest, "wb") as out:
                data = src.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    raise BundleError(
                        f"archive member {member.filename!r} is over {MAX_FILE_BYTES} bytes."
                    )
                out.write(data)
        manifest = read_manifest(staged)
        shutil.move(str(staged), str(target))
    return manifest


# -- what `export --force` may delete ------------------------------------------------------------


def is_bundle(directory: str | Path) -> bool:
    """True when ``directory`` holds an autofhe ``model.json`` and only bundle files (of this
    format or the previous one): what ``export --force`` may replace."""
    root = Path(directory)
    if root.is_symlink() or not (root / "model.json").is_file():
        return False
    try:
        files = _listing(root)
        manifest = read_json(root / "model.json")
    except BundleError:
        return False
    allowed = {"model.json", *FILES, "server/server.zip"}  # format 1 had a server.zip
    return (
        isinstance(manifest, dict)
        and "autofhe" in manifest
        and "format" in manifest
        and set(files) <= allowed
    )


# -- loading a model --------------------------------------------------------------------------


def load_model(directory: str | Path, digest: str | None = None) -> CompiledModel:
    """The compiled model of a bundle directory, checked (pinned ``digest``, listing,
    checksums, versions, client part against program); its circuit is compiled from
    ``server/program.json`` on first use and checked against the bundle's client specs."""
    root = Path(directory)
    manifest, program = load_program(root, digest)
    specs = read_json(root / "client" / "client.specs.json")
    client = client_from_json(read_json(root / "client" / "client.json"), specs)
    check_client_matches(client, program)
    report = manifest.get("fhe_report")
    params = manifest.get("params")
    return CompiledModel(
        program,
        client.decoding,
        dict(report) if isinstance(report, dict) else {},
        dict(params) if isinstance(params, dict) else {},
        source=ServerSource(
            read_json(root / "server" / "program.json"),
            read_json(root / "server" / "client.specs.json"),
            root / "server",
        ),
    )


def load_model_archive(archive: str | Path, digest: str | None = None) -> CompiledModel:
    """The compiled model of a bundle archive, path-checked on unpack (:func:`unpack_bundle`);
    ``digest`` pins the unpacked bundle's :func:`bundle_digest`."""
    with tempfile.TemporaryDirectory() as tmp:
        unpack_bundle(archive, Path(tmp) / "bundle")
        model = load_model(Path(tmp) / "bundle", digest)
    # the JSON is in memory already: the temporary files may go
    model.source = ServerSource(model.source.program, model.source.specs, Path(archive))
    return model
