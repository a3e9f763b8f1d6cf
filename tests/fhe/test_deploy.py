"""Bundles: export from a study, predict in every mode, plain concrete-python, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest

from autofhe import NeuralNetClassifier
from autofhe.data import load_dataset, split_dataset
from autofhe.fhe.bundle import BundleError, read_manifest
from autofhe.fhe.deploy import FheClient, FheServer, measure_bundle, predict_bundle
from autofhe.search.spec import load_spec
from autofhe.search.study import open_study, run_workers

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
SPEC = """
[space]
n_w_bits = { low = 2, high = 3 }
n_a_bits = { low = 2, high = 3 }
n_accum_bits = [5, 6]
module__activation_function = ["ReLU"]
module__n_hidden_neurons_multiplier = { low = 0.1, high = 0.25 }

[fixed]
module__n_layers = 2
max_epochs = 5
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A small wine study with a front whose models are stored as artifacts."""
    work = tmp_path_factory.mktemp("study")
    (work / "spec.toml").write_text(SPEC)
    ds = load_dataset("sklearn:wine")
    url = f"sqlite:///{work}/autofhe.db"
    _, _, name = open_study(ds, load_spec(work / "spec.toml"), url, "w", seed=0)
    run_workers(url, name, 1, 3, None, 0, None)
    X_valid = split_dataset(ds, 0)[1]
    np.save(work / "X.npy", X_valid[:3])
    return work, url, X_valid


def _cli(args, cwd):
    return subprocess.run([AUTOFHE, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundle(study_dir):
    work, url, _ = study_dir
    result = _cli(["export", "--study", "w", "--storage", url, "--out", "model"], work)
    assert result.returncode == 0, result.stderr
    assert "exported trial" in result.stdout
    return work / "model"


@pytest.mark.execute
def test_export_then_predict_execute_equals_disable_equals_recorded(study_dir, bundle):
    work, url, _ = study_dir
    trial_number = int(json.loads((bundle / "model.json").read_text())["trial"])
    trial = optuna.load_study(study_name="w", storage=url).trials[trial_number]
    recorded = trial.user_attrs["valid_predictions_head"][:3]
    outs = {}
    for mode in ("execute", "disable", "simulate"):
        result = _cli(
            [
                "predict",
                "--model",
                "model",
                "--data",
                "X.npy",
                "--fhe",
                mode,
                "--out",
                f"{mode}.npy",
                "--quiet",
            ],
            work,
        )
        assert result.returncode == 0, result.stderr
        outs[mode] = np.load(work / f"{mode}.npy", allow_pickle=False)
    np.testing.assert_array_equal(outs["execute"], outs["disable"])
    np.testing.assert_array_equal(outs["simulate"], outs["disable"])
    np.testing.assert_array_equal(outs["disable"], np.asarray(recorded))


@pytest.mark.execute
def test_server_part_runs_with_plain_concrete(study_dir, bundle, tmp_path):
    _, _, X_valid = study_dir
    client = FheClient(bundle)
    x_int = client.quantize(X_valid[:1])[0]
    _, program = __import__("autofhe.fhe.bundle", fromlist=["x"]).load_program(bundle)
    expected = program.run(x_int[None, :])[0]
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from concrete import fhe
        assert "autofhe" not in sys.modules
        server = fhe.Server.load("{bundle}/server/server.zip")
        specs = fhe.ClientSpecs.deserialize(open("{bundle}/client/client.specs.json", "rb").read())
        client = fhe.Client(specs)
        client.keygen()
        x = np.array({x_int.tolist()})
        out = server.run(client.encrypt(x), evaluation_keys=client.evaluation_keys)
        print(list(client.decrypt(out)))
        assert "autofhe" not in sys.modules
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout.strip()) == list(expected)


@pytest.mark.execute
def test_measure_bundle_times_each_stage_of_the_exported_model(study_dir, bundle):
    _, _, X_valid = study_dir
    m = measure_bundle(bundle, X_valid, n=2)
    assert m["samples"] == 2
    assert m["keygen_s"] > 0 and m["run_s"] > 0 and m["encrypt_s"] > 0 and m["decrypt_s"] > 0
    # the per-sample total is the median of sums: at least the largest stage, at most all three
    assert max(m["encrypt_s"], m["run_s"]) <= m["latency_s"] * 1.5
    assert m["latency_s"] <= 2 * (m["encrypt_s"] + m["run_s"] + m["decrypt_s"])


def test_bundle_has_no_secret_key_and_no_pickle(bundle):
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == [
        "client/client.json",
        "client/client.specs.json",
        "model.json",
        "server/program.json",
        "server/server.zip",
    ]
    for path in bundle.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
    import zipfile

    with zipfile.ZipFile(bundle / "server" / "server.zip") as z:
        assert not [n for n in z.namelist() if "key" in n.lower()]
    manifest = read_manifest(bundle)
    assert set(manifest["sha256"]) == set(files) - {"model.json"}


def test_tampered_file_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    info = json.loads((copy / "client" / "client.json").read_text())
    info["input_bits"] += 1
    (copy / "client" / "client.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="client/client.json does not match its checksum"):
        FheClient(copy)
    result = _cli(
        ["predict", "--model", str(copy), "--data", "X.npy", "--fhe", "disable"], bundle.parent
    )
    assert result.returncode == 2 and "checksum" in result.stderr


def test_version_mismatch_names_both_versions(bundle, tmp_path):
    import shutil
    from importlib.metadata import version

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["concrete_python"] = "1.0.0"
    (copy / "model.json").write_text(json.dumps(manifest))
    installed = version("concrete-python")
    with pytest.raises(BundleError, match=rf"concrete-python 1\.0\.0.*has {installed}"):
        FheServer(copy)


def test_export_refusals(study_dir, bundle):
    work, url, _ = study_dir
    (work / "afile").write_text("x")
    cases = [
        (["--out", "afile"], "is a file"),
        (["--out", "model"], "is not empty; pass --force"),
        (["--out", "m2", "--trial", "999"], "has no trial 999"),
        (["--out", "m3", "--min-accuracy", "1.1"], "no front model meets"),
    ]
    for extra, message in cases:
        result = _cli(["export", "--study", "w", "--storage", url, *extra], work)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (work / "m2").exists() and not (work / "m3").exists()
    bad = _cli(["export", "--study", "nope", "--storage", url, "--out", "m4"], work)
    assert bad.returncode == 2 and "no study 'nope'" in bad.stderr


def test_model_save_and_local_predict(wine, tmp_path):
    Xtr, Xte, ytr, _ = wine
    model = NeuralNetClassifier(module__n_layers=1, random_state=0).fit(Xtr, ytr)
    model.compile(Xtr)
    model.save(tmp_path / "b")
    pred, proba = predict_bundle(tmp_path / "b", Xte, fhe="disable")
    np.testing.assert_array_equal(pred, model.predict(Xte))
    np.testing.assert_allclose(proba, model.predict_proba(Xte))
    with pytest.raises(BundleError, match="not an empty directory"):
        model.save(tmp_path / "b")
    assert os.listdir(tmp_path) == ["b"]  # nothing half-written left behind


def _post(url, body, headers=None):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.execute
def test_serve_over_loopback_two_processes(study_dir, bundle):
    import socket
    import time
    import urllib.request

    from autofhe.fhe.serve import HttpClient

    work, _, X_valid = study_dir
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [AUTOFHE, "serve", "--model", str(bundle), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url + "/openapi.json", timeout=5) as r:
                    spec = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.3)
        assert "/predict/{key_id}" in spec["paths"]
        # malformed payloads get 4xx, and the server keeps serving
        assert _post(url + "/keys", b"not keys")[0] == 400
        assert _post(url + "/predict/deadbeef", b"x")[0] == 404
        assert _post(url + "/nowhere", b"x")[0] == 404
        # keys of another model are refused, not run (concrete would abort the server)
        other = NeuralNetClassifier(module__n_layers=1, max_epochs=1, random_state=0)
        other.fit(X_valid, np.arange(len(X_valid)) % 3).compile(X_valid)
        other.save(work / "other")
        status, body = _post(url + "/keys", FheClient(work / "other").evaluation_keys())
        assert status == 400 and b"do not belong to this model" in body
        client = HttpClient(url, bundle / "client")  # the data owner needs only client/
        key_id = client.register()
        assert _post(url + f"/predict/{key_id}", b"garbage")[0] == 400
        status, body = _post(url + f"/predict/{key_id}", b"x" * 10, {"Content-Length": str(10**12)})
        assert status in (413, 400) or body is not None
        encrypted = client.predict(X_valid[:3])
        clear, _ = predict_bundle(bundle, X_valid[:3], fhe="disable")
        np.testing.assert_array_equal(encrypted, clear)
        assert proc.poll() is None  # still serving after all of the above
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_predict_bad_input_one_line_errors(bundle, tmp_path):
    import shutil

    incomplete = tmp_path / "incomplete"
    shutil.copytree(bundle, incomplete)
    (incomplete / "server" / "server.zip").unlink()
    np.save(tmp_path / "five.npy", np.zeros((2, 5)))
    nan = np.zeros((2, 13))
    nan[1, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ok.npy", np.zeros((2, 13)))
    cases = [
        (["--model", "missing", "--data", "ok.npy"], "neither a bundle"),
        (["--model", "incomplete", "--data", "ok.npy"], "server/server.zip is missing"),
        (["--model", str(bundle), "--data", "five.npy"], "X has 5 features"),
        (["--model", str(bundle), "--data", "nan.npy"], "NaN"),
    ]
    for args, message in cases:
        result = _cli(["predict", *args, "--fhe", "disable"], tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_key_files_are_private_and_per_model(bundle, tmp_path):
    keys = tmp_path / "keys"
    client = FheClient(bundle, keys)
    client.keygen()
    files = list(keys.iterdir())
    assert len(files) == 1 and files[0].name.startswith("keys-")
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    FheClient(bundle, keys).keygen()  # the same model reuses its keys
    assert list(keys.iterdir()) == files


def test_predict_reads_features_only_csv(bundle, study_dir, tmp_path):
    _, _, X_valid = study_dir
    header = ",".join(f"f{i}" for i in range(X_valid.shape[1]))
    rows = "\n".join(",".join(str(v) for v in row) for row in X_valid[:3])
    (tmp_path / "x.csv").write_text(header + "\n" + rows + "\n")
    result = _cli(
        [
            "predict",
            "--model",
            str(bundle),
            "--data",
            "x.csv",
            "--fhe",
            "disable",
            "--out",
            "p.npy",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    clear, _ = predict_bundle(bundle, X_valid[:3], fhe="disable")
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), clear)
