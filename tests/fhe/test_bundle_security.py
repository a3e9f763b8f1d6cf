"""A bundle is data: what it carries is never executed, and a pinned digest refuses the rest.

The hostile bundles here carry live payloads (a jsonpickle document that creates a marker
file when decoded, a native library that creates one when loaded); the controls show the
payloads do fire when handed to concrete / the dynamic loader, and the tests show autofhe's
CLI and Python API refuse the bundles with the marker still absent.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from autofhe import NeuralNetClassifier
from autofhe.fhe import bundle as bundle_mod
from autofhe.fhe.bundle import (
    BundleError,
    bundle_digest,
    load_program,
    pack_bundle,
    read_manifest,
    unpack_bundle,
)
from autofhe.fhe.deploy import FheClient, FheServer, predict_bundle
from autofhe.fhe.remote import HttpClient
from autofhe.fhe.service import Service

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))


@pytest.fixture(scope="module")
def good(wine, tmp_path_factory):
    """A small compiled wine model, saved as a bundle."""
    Xtr, Xte, ytr, _ = wine
    model = NeuralNetClassifier(
        module__n_layers=2, module__n_hidden_neurons_multiplier=0.25, max_epochs=2, random_state=0
    )
    model.fit(Xtr, ytr).compile(Xtr)
    path = tmp_path_factory.mktemp("good") / "model"
    model.save(path)
    np.save(path.parent / "X.npy", Xte[:2])
    return path


def _jsonpickle_payload(marker: Path) -> str:
    """A jsonpickle document whose decoding calls open(marker, "w")."""
    call = {"py/reduce": [{"py/function": "builtins.open"}, {"py/tuple": [str(marker), "w"]}]}
    return json.dumps({"p_error": call})


def _server_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def _rehash(root: Path, extra: dict | None = None) -> None:
    """Rewrite model.json's checksums for every file, as an attacker would."""
    manifest = json.loads((root / "model.json").read_text())
    manifest.update(extra or {})
    manifest["sha256"] = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "model.json"
    }
    (root / "model.json").write_text(json.dumps(manifest))


def _hostile_bundles(good: Path, tmp: Path, marker: Path, library: Path | None) -> list[Path]:
    """Bundles whose server part carries the payloads, checksums rewritten to match."""
    zip_files = {
        "circuit.mlir": b"module {}",
        "is_simulated": b"0",
        "configuration.json": _jsonpickle_payload(marker).encode(),
    }
    bundles = []
    # 1. the format concrete's Server.load reads (format 1), exactly as the reported attack
    old = tmp / "format1"
    shutil.copytree(good, old)
    _server_zip(old / "server" / "server.zip", zip_files)
    _rehash(old, {"format": 1})
    bundles.append(old)
    # 2. today's format with a server.zip slipped in next to the program
    slipped = tmp / "slipped"
    shutil.copytree(good, slipped)
    _server_zip(slipped / "server" / "server.zip", zip_files)
    _rehash(slipped)
    bundles.append(slipped)
    if library is not None:  # 3. a swapped native library, in the archive and beside it
        native = tmp / "native"
        shutil.copytree(good, native)
        _server_zip(native / "server" / "server.zip", {"sharedlib.so": library.read_bytes()})
        shutil.copy(library, native / "server" / "sharedlib.so")
        _rehash(native, {"format": 1})
        bundles.append(native)
    return bundles


def _marker_library(tmp: Path, marker: Path) -> Path | None:
    """A shared library whose constructor creates ``marker`` (None without a C compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    source = tmp / "evil.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void run(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n'
        "}\n"
    )
    library = tmp / "sharedlib.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def test_payloads_are_live(tmp_path):
    """Controls: concrete's Server.load decodes the jsonpickle payload; dlopen runs the library."""
    from concrete import fhe

    marker = tmp_path / "marker"
    archive = tmp_path / "server.zip"
    _server_zip(
        archive,
        {
            "circuit.mlir": b"module {}",
            "is_simulated": b"0",
            "configuration.json": _jsonpickle_payload(marker).encode(),
        },
    )
    with pytest.raises(Exception):  # noqa: B017 -- the payload runs before concrete fails
        fhe.Server.load(archive)
    assert marker.exists()
    marker.unlink()
    library = _marker_library(tmp_path, marker)
    if library is None:
        pytest.skip("no C compiler for the native-library control")
    ctypes.CDLL(str(library))
    assert marker.exists()


def _api_calls(bad: Path, X) -> list:
    """Every Python entry point that opens a bundle or one of its parts."""
    return [
        lambda: FheServer(bad),
        lambda: FheServer(bad / "server"),  # the server part alone
        lambda: FheClient(bad),
        lambda: predict_bundle(bad, X, fhe="execute"),
        lambda: load_program(bad),
        lambda: Service(bad),
        lambda: HttpClient("http://127.0.0.1:9", bad),
    ]


def test_hostile_bundles_are_refused_without_running(good, tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "lib").mkdir()
    library = _marker_library(tmp_path / "lib", marker)
    hostile = _hostile_bundles(good, tmp_path, marker, library)
    X = np.load(good.parent / "X.npy")
    for bad in hostile:
        for call in _api_calls(bad, X):
            with pytest.raises(BundleError, match="format|not part of an autofhe bundle"):
                call()
        data = str(good.parent / "X.npy")
        for command in (
            ["predict", "--model", str(bad), "--data", data, "--fhe", "execute"],
            ["serve", "--model", str(bad), "--port", "0"],
        ):
            result = subprocess.run(
                [AUTOFHE, *command],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=tmp_path,
            )
            assert result.returncode == 2, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            assert "format" in result.stderr or "not part of an autofhe bundle" in result.stderr
    assert not marker.exists()


def test_server_refuses_specs_that_its_circuit_does_not_have(good, tmp_path):
    bad = tmp_path / "specs"
    shutil.copytree(good, bad)
    specs = json.loads((bad / "server" / "client.specs.json").read_text())
    specs["keyset"]["lweSecretKeys"] = specs["keyset"]["lweSecretKeys"][:1]
    (bad / "server" / "client.specs.json").write_text(json.dumps(specs))
    _rehash(bad)
    with pytest.raises(BundleError, match="does not match .*client.specs.json"):
        FheServer(bad)


def test_corrupt_program_is_a_bundle_error(good, tmp_path):
    bad = tmp_path / "program"
    shutil.copytree(good, bad)
    program = json.loads((bad / "server" / "program.json").read_text())
    program["layers"][0]["table"] = program["layers"][0]["table"][:-1]
    (bad / "server" / "program.json").write_text(json.dumps(program))
    _rehash(bad)
    with pytest.raises(BundleError, match="program.json: a table has shape"):
        FheServer(bad)


def test_pinned_digest(good, tmp_path):
    digest = bundle_digest(good)
    assert len(digest) == 64 and digest == bundle_digest(good)  # stable
    X = np.load(good.parent / "X.npy")
    pred, _ = predict_bundle(good, X, fhe="disable", digest=digest)
    FheClient(good / "client", digest=bundle_digest(good / "client"))
    copy = tmp_path / "copy"
    shutil.copytree(good, copy)
    (copy / "server" / "notes.txt").write_text("hello")  # any added file changes it
    assert bundle_digest(copy) != digest
    wrong = "0" * 64
    with pytest.raises(BundleError, match=f"not the pinned {wrong}"):
        FheServer(good, digest=wrong)
    with pytest.raises(BundleError, match="not the pinned"):
        FheClient(
            good, digest=bundle_digest(good / "client")
        )  # the part's digest is not the bundle's
    with pytest.raises(BundleError, match="not the pinned"):
        Service(good, digest=wrong)
    for command in (
        ["predict", "--data", str(good.parent / "X.npy"), "--fhe", "disable"],
        ["serve"],
    ):
        result = subprocess.run(
            [AUTOFHE, *command, "--model", str(good), "--digest", wrong],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert result.returncode == 2 and "not the pinned" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    ok = subprocess.run(
        [
            AUTOFHE,
            "predict",
            "--model",
            str(good),
            "--data",
            str(good.parent / "X.npy"),
            "--fhe",
            "disable",
            "--digest",
            f"sha256:{digest}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert [line for line in ok.stdout.splitlines()] == [str(p) for p in pred]


def test_archive_round_trip_keeps_the_digest(good, tmp_path):
    archive = pack_bundle(good, tmp_path / "a.zip")
    manifest = unpack_bundle(archive, tmp_path / "back")
    assert manifest == read_manifest(good)
    assert bundle_digest(tmp_path / "back") == bundle_digest(good)
    with pytest.raises(BundleError, match="already exists"):
        unpack_bundle(archive, tmp_path / "back")


def _archive_with(good: Path, path: Path, name: str, data: bytes, link: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for member in ["model.json", *bundle_mod.FILES]:
            if member != name:
                z.writestr(member, (good / member).read_bytes())
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = 0o120777 << 16
        z.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "name, link, message",
    [
        ("../escape.json", False, "not a file of an autofhe bundle"),
        ("/etc/escape.json", False, "not a file of an autofhe bundle"),
        ("server/server.zip", False, "not a file of an autofhe bundle"),
        ("client/client.json", True, "symbolic link"),
    ],
)
def test_unpack_refuses_hostile_members(good, tmp_path, name, link, message):
    archive = _archive_with(good, tmp_path / "a.zip", name, b"/etc/passwd", link)
    with pytest.raises(BundleError, match=message):
        unpack_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_unpack_bounds_member_size(good, tmp_path, monkeypatch):
    archive = pack_bundle(good, tmp_path / "a.zip")
    monkeypatch.setattr(bundle_mod, "MAX_FILE_BYTES", 100)
    with pytest.raises(BundleError, match="is over 100 bytes"):
        unpack_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_symlink_in_bundle_is_refused(good, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(good, copy)
    (copy / "client" / "client.json").unlink()
    (copy / "client" / "client.json").symlink_to(good / "client" / "client.json")
    with pytest.raises(BundleError, match="symbolic link"):
        read_manifest(copy)


@pytest.mark.parametrize(
    "dataset, params, compile_args",
    [
        ("wine", {"module__n_layers": 3, "n_w_bits": 3, "n_a_bits": 2}, {"lookup_bits": 5}),
        ("breast_cancer", {"module__n_layers": 2, "n_a_bits": 3}, {"rounding": "approximate"}),
        ("diabetes", {"module__n_layers": 2, "n_w_bits": 2, "n_a_bits": 2}, {}),
    ],
)
def test_server_compiles_the_models_own_circuit(dataset, params, compile_args, request, tmp_path):
    """Truncated, approximate and regression circuits: the server, which has no data, gets
    the very circuit the model was compiled to (same client specs) and the same outputs."""
    from autofhe import NeuralNetRegressor

    Xtr, Xte, ytr, _ = request.getfixturevalue(dataset)
    cls = NeuralNetRegressor if dataset == "diabetes" else NeuralNetClassifier
    model = cls(
        random_state=1, module__n_hidden_neurons_multiplier=0.15, max_epochs=3, **params
    ).fit(Xtr, ytr)
    model.compile(Xtr, **compile_args)
    model.save(tmp_path / "b")  # raises unless the server's circuit has the model's specs
    server = FheServer(tmp_path / "b")
    assert server.client_specs.serialize() == model.fhe_circuit.client.specs.serialize()
    pred, _ = predict_bundle(tmp_path / "b", Xte[:20], fhe="simulate")
    np.testing.assert_array_equal(pred, model.predict(Xte[:20], fhe="simulate"))


def _edited(good: Path, tmp_path: Path, part: str, edit) -> Path:
    """A copy of ``good`` whose ``part`` JSON went through ``edit``, checksums recomputed (as
    anyone who builds a bundle by hand can)."""
    copy = tmp_path / "edited"
    shutil.copytree(good, copy)
    data = json.loads((copy / part).read_text())
    edit(data)
    (copy / part).write_text(json.dumps(data))
    _rehash(copy)
    return copy


def _set(key, value):
    return lambda data: data.__setitem__(key, value)


def _weight(value=None, delta=0):
    def edit(program):
        layer = program["layers"][0]
        layer["weight"][0][0] = value if value is not None else layer["weight"][0][0] + delta

    return edit


@pytest.mark.parametrize(
    ("part", "edit", "message"),
    [
        ("client/client.json", _set("input_offset", None), "input_offset differs"),
        ("client/client.json", _set("classes", []), "at least 2 distinct labels"),
        ("client/client.json", _set("classes", ["a", "b"]), "2 classes for a model of 3"),
        ("client/client.json", _set("classes", ["a", "b", {}]), "not a list of labels"),
        ("client/client.json", _set("input_scale", []), "must be a list of 13 numbers"),
        ("client/client.json", _set("input_scale", [1e308] * 13), "must be positive"),
        ("client/client.json", _set("output_scale", [1e-300] * 3), "must be positive"),
        ("client/client.json", _set("input_bits", 99), "input_bits=99"),
        ("server/program.json", _weight(2**62), "beyond 2\\*\\*32"),
        ("server/program.json", _weight(delta=2**12), "reach accumulators of"),
        ("server/program.json", _set("output_scale", [1.0]), "output_scale must be a list of 3"),
        ("server/program.json", _set("compile", [1]), "compile is not an object"),
    ],
)
def test_edited_bundle_fields_are_refused_on_load(good, tmp_path, part, edit, message):
    """Before: a null offset predicted wrongly with exit 0, ``classes: []`` raised IndexError,
    ``["a"]`` printed a class for a 3-output model, 1e308 scales and a 2**62 weight (int64
    overflow in the clear program, refused by the simulation) all loaded."""
    bad = _edited(good, tmp_path, part, edit)
    X_path = good.parent / "X.npy"
    X = np.load(X_path)
    for mode in ("disable", "simulate", "execute"):
        with pytest.raises(BundleError, match=message):
            predict_bundle(bad, X, fhe=mode, progress=False)
    result = subprocess.run(
        [AUTOFHE, "predict", "--model", str(bad), "--data", str(X_path), "--fhe", "disable"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "corrupt" in result.stderr or "modified" in result.stderr, result.stderr


def test_an_edited_bundle_that_loads_predicts_alike_in_every_mode(good, tmp_path):
    """A smaller weight keeps every accumulator within its width: such a bundle loads, and
    the clear program and the simulated circuit give the same outputs."""
    program = json.loads((good / "server" / "program.json").read_text())
    w = program["layers"][0]["weight"][0][0]
    bad = _edited(good, tmp_path, "server/program.json", _weight(delta=-1 if w > 0 else 1))
    X = np.load(good.parent / "X.npy")
    clear, p_clear = predict_bundle(bad, X, fhe="disable", progress=False)
    simulated, p_sim = predict_bundle(bad, X, fhe="simulate", progress=False)
    np.testing.assert_array_equal(clear, simulated)
    np.testing.assert_array_equal(p_clear, p_sim)
