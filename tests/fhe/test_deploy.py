"""Bundles: export from a study, predict in every mode, plain concrete-python, refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from autofhe import NeuralNetClassifier
from autofhe.data import load_dataset, split_dataset
from autofhe.fhe.bundle import BundleError, bundle_digest, load_program, read_manifest
from autofhe.fhe.deploy import FheClient, FheServer, measure_bundle, predict_bundle
from autofhe.search.plan.spec import load_spec
from autofhe.search.run.study import open_study
from autofhe.search.run.workers import run_workers

#: exports, key generation and encrypted runs through the CLI (make check leaves them out)
pytestmark = pytest.mark.slow

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
SPEC = """
[study]
folds = 1

[space]
n_w_bits = { low = 2, high = 3 }
n_a_bits = { low = 2, high = 3 }
n_accum_bits = [6]  # the smallest budget 3-bit weights and activations allow
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


#: Run a script with autofhe made unimportable: proof that it never needs autofhe.
NO_AUTOFHE = """
import runpy, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "autofhe":
            raise ImportError("autofhe is blocked in this process")

sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.execute
def test_server_part_runs_with_plain_concrete(study_dir, bundle, tmp_path):
    """examples/plain_concrete_server.py rebuilds the circuit from server/ (concrete-python,
    numpy and json only), checks its client specs and runs an encrypted row."""
    _, _, X_valid = study_dir
    x_int = FheClient(bundle).quantize(X_valid[:1])[0]
    _, program = load_program(bundle)
    expected = program.run(x_int[None, :])[0]
    script = Path(__file__).resolve().parents[2] / "examples" / "plain_concrete_server.py"
    server = tmp_path / "server"  # the server part alone, away from the rest of the bundle
    shutil.copytree(bundle / "server", server)
    result = subprocess.run(
        [sys.executable, "-c", NO_AUTOFHE, str(script), str(server), json.dumps(x_int.tolist())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected.tolist()
    # and the block is real: the same wrapper cannot import autofhe
    (tmp_path / "uses.py").write_text("import autofhe\n")
    blocked = subprocess.run(
        [sys.executable, "-c", NO_AUTOFHE, str(tmp_path / "uses.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert blocked.returncode != 0 and "autofhe is blocked" in blocked.stderr


@pytest.mark.execute
def test_measure_bundle_times_each_stage_of_the_exported_model(study_dir, bundle):
    _, _, X_valid = study_dir
    m = measure_bundle(bundle, X_valid, n=2)
    assert m["samples"] == 2
    assert m["keygen_s"] > 0 and m["run_s"] > 0 and m["encrypt_s"] > 0 and m["decrypt_s"] > 0
    # the per-sample total is the median of sums: at least the largest stage, at most all three
    assert max(m["encrypt_s"], m["run_s"]) <= m["latency_s"] * 1.5
    assert m["latency_s"] <= 2 * (m["encrypt_s"] + m["run_s"] + m["decrypt_s"])


def test_bundle_is_json_data_without_secret_key(bundle):
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == [
        "client/client.json",
        "client/client.specs.json",
        "model.json",
        "server/client.specs.json",
        "server/program.json",
    ]
    for name in files:  # data only: every file is plain JSON (no pickle, archive or library)
        json.loads((bundle / name).read_text())
    program = json.loads((bundle / "server" / "program.json").read_text())
    assert program["compile"].keys() == {"p_error", "global_p_error", "compress", "inputset"}
    assert program["compile"]["compress"] is True  # seeded keys and inputs by default
    keyset = json.loads((bundle / "client" / "client.specs.json").read_text())["keyset"]
    keys = keyset["lweBootstrapKeys"] + keyset["lweKeyswitchKeys"]
    assert keys and {key["compression"] for key in keys} == {"seed"}
    assert all(len(layer["table"]) == len(layer["weight"]) for layer in program["layers"][:-1])
    specs = json.loads((bundle / "client" / "client.specs.json").read_text())
    assert specs == json.loads((bundle / "server" / "client.specs.json").read_text())
    manifest = read_manifest(bundle)
    assert set(manifest["sha256"]) == set(files) - {"model.json"}


def test_tampered_file_is_refused(bundle, tmp_path):
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


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_export_prints_the_digest_and_force_replaces_a_bundle(study_dir, bundle):
    work, url, _ = study_dir
    for _ in range(2):  # the second export replaces the first bundle
        result = _cli(["export", "--study", "w", "--storage", url, "--out", "m5", "--force"], work)
        assert result.returncode == 0, result.stderr
    digest = bundle_digest(work / "m5")
    assert f"digest:   {digest}" in result.stdout
    assert f"server/ {bundle_digest(work / 'm5' / 'server')}" in result.stdout
    assert f"--digest {digest}" in result.stdout


def test_export_force_deletes_only_a_bundle(study_dir, tmp_path, monkeypatch, capsys):
    """Each refusal: one line, exit 2, nothing deleted (rmtree is also intercepted)."""
    from autofhe import cli

    work, url, _ = study_dir
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("keep me")
    db_folder = tmp_path / "db"
    shutil.copytree(work, db_folder, ignore=shutil.ignore_patterns("model", "m*"))
    db_url = f"sqlite:///{db_folder}/autofhe.db"
    inside_store = tmp_path / "db" / "autofhe.db.artifacts"
    (inside_store / "sub").mkdir(parents=True)  # a folder store of an older study
    (inside_store / "sub" / "model.json").write_text(json.dumps({"autofhe": "0", "format": 2}))
    not_a_bundle = tmp_path / "photos"
    not_a_bundle.mkdir()
    (not_a_bundle / "model.json").write_text(json.dumps({"autofhe": "0", "format": 2}))
    (not_a_bundle / "cat.jpg").write_bytes(b"\xff\xd8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "data.npy").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    deleted = []
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: deleted.append(path))
    cases = [
        ("/", url, "is a filesystem root"),
        (str(home), url, "is or holds $HOME"),
        (".", url, "is or holds the working directory"),
        (str(tmp_path), url, "is or holds the working directory"),  # a parent of it
        (str(db_folder), db_url, "is or holds the study database"),
        (str(inside_store), db_url, "is or holds the artifact store"),
        (str(inside_store / "sub"), db_url, "lies inside the artifact store"),
        (str(not_a_bundle), url, "is not an autofhe bundle"),
    ]
    before = {path: _tree(Path(path)) for path, _, _ in cases[1:]}
    for out, storage, message in cases:
        code = cli.main(["export", "--study", "w", "--storage", storage, "--out", out, "--force"])
        err = capsys.readouterr().err
        assert code == 2, (out, err)
        assert message in err and len(err.strip().splitlines()) == 1, (out, err)
    assert deleted == []
    assert {path: _tree(Path(path)) for path, _, _ in cases[1:]} == before
    monkeypatch.undo()
    # the installed entry point refuses the same way (the folder holding the database)
    result = _cli(
        ["export", "--study", "w", "--storage", db_url, "--out", str(db_folder), "--force"],
        tmp_path,
    )
    assert result.returncode == 2 and "the study database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and (db_folder / "autofhe.db").is_file()


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


def test_predict_bad_input_one_line_errors(bundle, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(bundle, incomplete)
    (incomplete / "server" / "program.json").unlink()
    listed = tmp_path / "listed"  # model.json holding a JSON list, not an object
    shutil.copytree(bundle, listed)
    (listed / "model.json").write_text("[1, 2]")
    np.save(tmp_path / "five.npy", np.zeros((2, 5)))
    nan = np.zeros((2, 13))
    nan[1, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ok.npy", np.zeros((2, 13)))
    cases = [
        (["--model", "missing", "--data", "ok.npy"], "neither a bundle"),
        (["--model", "incomplete", "--data", "ok.npy"], "server/program.json is missing"),
        (["--model", str(bundle), "--data", "five.npy"], "X has 5 features"),
        (["--model", str(bundle), "--data", "nan.npy"], "NaN"),
        (["--model", "listed", "--data", "ok.npy"], "model.json holds a JSON list, not the"),
        (
            ["--model", str(bundle), "--data", "ok.npy", "--out", "missing/p.npy"],
            "directory missing does not exist",
        ),
        (["--model", str(bundle), "--data", "ok.npy", "--out", "."], "--out . is a directory"),
    ]
    for args, message in cases:
        result = _cli(["predict", *args, "--fhe", "disable"], tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "missing").exists()


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


# -- progress of the deployment commands ---------------------------------------------------------


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory, wine):
    """A quantized linear model (no table lookup: no bootstrap key, key generation in
    milliseconds), so the deployment commands run end to end in a test."""
    Xtr, Xte, ytr, _ = wine
    work = tmp_path_factory.mktemp("linear")
    model = NeuralNetClassifier(module__n_layers=1, max_epochs=2, random_state=0).fit(Xtr, ytr)
    model.compile(Xtr).save(work / "model")
    np.save(work / "X.npy", Xte[:3])
    return work


@pytest.mark.execute
def test_predict_execute_reports_each_step_on_stderr(linear_bundle):
    work = linear_bundle
    args = ["predict", "--model", "model", "--data", "X.npy", "--fhe", "execute"]
    result = _cli(args, work)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    steps = [
        "compiling the circuit of model/server: done in",
        "generating keys (in memory): done in",
        "evaluation keys: ",
        "encrypted predictions: 3/3 samples (",
    ]
    assert all(step in err for step in steps), err
    assert [err.index(step) for step in steps] == sorted(err.index(step) for step in steps)
    # stdout holds the predictions only
    clear, _ = predict_bundle(work / "model", np.load(work / "X.npy"), fhe="disable")
    assert result.stdout.split() == [str(c) for c in clear]
    quiet = _cli([*args, "--quiet"], work)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == result.stdout


@pytest.mark.execute
def test_serve_and_remote_predict_report_keys_sizes_and_samples(linear_bundle):
    work = linear_bundle
    proc = subprocess.Popen(
        [AUTOFHE, "serve", "--model", "model", "--port", "0"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the server listens
        expected = FheClient(work / "model").evaluation_keys()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        assert f"each client uploads {len(expected)} bytes of evaluation keys once" in line
        url = f"http://127.0.0.1:{port}"
        args = ["remote-predict", "--url", url, "--model", "model/client", "--data", "X.npy"]
        result = _cli([*args, "--keys", "keys"], work)
        assert result.returncode == 0, result.stderr
        err = result.stderr
        assert "generating keys into keys/keys-" in err
        assert f"uploading {len(expected)} bytes of evaluation keys to {url}" in err
        size = f"{len(expected)} bytes"
        assert f"evaluation keys uploaded: {size} / {size} (" in err and "MB/s)" in err
        assert "encrypted predictions: 3/3 samples (" in err
        clear, _ = predict_bundle(work / "model", np.load(work / "X.npy"), fhe="disable")
        assert result.stdout.split() == [str(c) for c in clear]
        again = _cli([*args, "--keys", "keys", "--quiet"], work)
        assert again.returncode == 0 and again.stderr == "" and again.stdout == result.stdout
    finally:
        proc.terminate()
        _, serve_err = proc.communicate(timeout=10)
    for step in (
        "compiling the circuit of model/server: done in",
        "warming up: one throwaway key set and encrypted run: done in",
        f"registered ({len(expected)} bytes)",
    ):
        assert step in serve_err, serve_err


def test_export_uncompressed_opts_out_of_compression(study_dir, bundle):
    work, url, X_valid = study_dir
    result = _cli(
        ["export", "--study", "w", "--storage", url, "--out", "plain", "--uncompressed"], work
    )
    assert result.returncode == 0, result.stderr
    assert "of evaluation keys (uncompressed)" in result.stdout
    program = json.loads((work / "plain" / "server" / "program.json").read_text())
    assert program["compile"]["compress"] is False
    keyset = json.loads((work / "plain" / "client" / "client.specs.json").read_text())["keyset"]
    assert {key["compression"] for key in keyset["lweBootstrapKeys"]} == {"none"}
    manifest, plain = read_manifest(work / "plain"), read_manifest(bundle)
    assert manifest["trial"] == plain["trial"] and manifest["study"] == "w"  # provenance kept
    compressed = plain["fhe_report"]["evaluation_keys_bytes"]
    assert manifest["fhe_report"]["evaluation_keys_bytes"] > 2 * compressed
    ours, _ = predict_bundle(work / "plain", X_valid[:20], fhe="simulate", progress=False)
    theirs, _ = predict_bundle(bundle, X_valid[:20], fhe="disable", progress=False)
    np.testing.assert_array_equal(ours, theirs)
