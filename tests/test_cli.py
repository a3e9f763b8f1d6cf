"""The ``autofhe`` command as a user meets it: fast help, defaults, one-study databases,
machine-readable output, every trial listed, warnings about measured latencies."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from autofhe.cli import build_parser, main
from autofhe.cli.common import Formatter
from autofhe.cli.search import METRIC_NAMES

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
IntD = optuna.distributions.IntDistribution


def _run(args, cwd, **env):
    return subprocess.run(
        [AUTOFHE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def _trial(values, constraints=None, state="COMPLETE", **attrs):
    constraints = constraints or {}
    system = {f"constraints:{k}": v for k, v in constraints.items()}
    system["constraints"] = list(constraints.values())
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[state],
        values=values,
        params={"n_w_bits": 4, "n_a_bits": 3, "module__n_layers": 2},
        distributions={
            "n_w_bits": IntD(2, 8),
            "n_a_bits": IntD(2, 8),
            "module__n_layers": IntD(1, 3),
        },
        user_attrs=attrs,
        system_attrs=system,
    )


def _study(url: str, name: str = "s-accuracy") -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "fhe_latency_s"])
    study.set_user_attr("autofhe_fingerprint", "0" * 64)  # as autofhe marks its studies
    ok = {"latency": 0.0, "key_size": 0.0}
    study.add_trial(
        _trial(
            [0.95, 0.4],
            ok,
            measured_latency_s=0.9,
            measured_loadavg_1m=3.5,
            measured_cores=2,
            clear_test=0.93,
            reason="",
        )
    )
    study.add_trial(_trial([0.9, 0.1], ok, measured_latency_s=0.12, reason="", fidelity_epochs=20))
    study.add_trial(
        _trial([0.99, 0.05], {"latency": 0.0, "key_size": 1.5}, reason="key_size: 6 GB > 4 GB")
    )
    study.add_trial(_trial(None, state="FAIL"))
    return study


@pytest.fixture()
def one_study(tmp_path):
    url = f"sqlite:///{tmp_path}/autofhe.db"
    _study(url)
    return tmp_path, url


# -- help -------------------------------------------------------------------------------------


def test_help_and_studies_import_neither_torch_nor_sklearn(one_study):
    """What made `autofhe --help` take 6-11 s: torch (and scikit-learn) imported by every
    command."""
    _, url = one_study
    probe = (
        "import sys\n"
        "from autofhe.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'torch', 'sklearn', 'concrete'})\n"
        "print('HEAVY', heavy)\n"
    )
    for args in (["--help"], ["studies", "--storage", url], ["pareto", "--storage", url]):
        out = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120
        )
        assert "HEAVY []" in out.stdout, (args, out.stdout[-300:], out.stderr[-2000:])


def test_search_and_worker_supervisors_load_neither_torch_nor_concrete(tmp_path):
    """The `search` / `worker` process only opens the study and supervises its workers (child
    processes that train): it loaded torch (a dry run of the default space, ~4 s) and concrete
    (the cost model's key, ~1.5 s), for every search and every worker started."""
    probe = (
        "import sys\n"
        "import autofhe.cli.search as cli\n"
        "from autofhe.search.run.workers import Outcome\n"
        "cli.run = lambda *args: Outcome()  # the workers: children, not this process\n"
        "from autofhe.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print('CODE', code, 'HEAVY', sorted(loaded & {'torch', 'skorch', 'concrete'}))\n"
    )
    url = f"sqlite:///{tmp_path}/s.db"
    (tmp_path / "spec.toml").write_text("[fixed]\nmax_epochs = 3\n")
    search = ["search", "--data", "sklearn:iris", "--trials", "1", "--storage", url]
    for args, light in (
        ([*search, "--study", "s"], True),
        (["worker", "--storage", url, "--study", "s", "--trials", "1"], True),
        # a spec of the user's own: a dry run (torch) when the study is made, not on a resume
        ([*search, "--study", "t", "--spec", "spec.toml"], False),
        ([*search, "--study", "t", "--spec", "spec.toml"], True),
    ):
        out = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert "CODE 0 HEAVY " in out.stdout, (args, out.stdout[-300:], out.stderr[-2000:])
        assert ("CODE 0 HEAVY []" in out.stdout) == light, (args, out.stdout[-300:])


def test_import_autofhe_is_light_and_estimators_still_import():
    code = (
        "import sys, autofhe\n"
        "assert 'torch' not in sys.modules, 'torch imported by autofhe'\n"
        "from autofhe import NeuralNetClassifier, NeuralNetRegressor\n"
        "print(NeuralNetClassifier.__name__, NeuralNetRegressor.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["NeuralNetClassifier", "NeuralNetRegressor"]


def test_version(tmp_path):
    from autofhe import __version__

    out = _run(["--version"], tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"autofhe {__version__}"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_says_what_it_does_its_default_and_choices():
    for name, sub in _subparsers().items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            assert action.help, f"autofhe {name} {flag} has no help"
            shown = Formatter(name)._get_help_string(action)
            if action.default not in (None, False, argparse.SUPPRESS):  # SUPPRESS: none set
                assert "default" in shown, f"autofhe {name} {flag} hides its default"
            if action.choices:
                assert "{" + ",".join(action.choices) + "}" in text, (name, flag)


def test_metric_help_lists_what_the_search_accepts():
    from autofhe.search.trial.rows import METRICS

    assert METRIC_NAMES == tuple(METRICS)
    text = " ".join(_subparsers()["search"].format_help().split())
    assert all(m in text for m in METRIC_NAMES)


# -- one study, machine keys --------------------------------------------------------------------


def test_study_is_optional_when_the_database_holds_one(one_study):
    tmp, url = one_study
    out = _run(["pareto", "--storage", url, "--format", "json"], tmp)
    assert out.returncode == 0, out.stderr
    assert [r["trial"] for r in json.loads(out.stdout)] == [0, 1]


def test_study_is_required_when_there_are_several(one_study):
    tmp, url = one_study
    _study(url, "other")
    out = _run(["pareto", "--storage", url], tmp)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"autofhe: error: 2 studies in {url} (s-accuracy, other); choose one with --study NAME."
        if out.stderr.index("s-accuracy") < out.stderr.index("other")
        else f"autofhe: error: 2 studies in {url} (other, s-accuracy); choose one with "
        "--study NAME."
    ]


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path):
    out = _run(["trials", "--storage", f"sqlite:///{tmp_path}/nope.db"], tmp_path)
    assert out.returncode == 2 and "no database file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nope.db").exists()


def test_pareto_json_has_stable_machine_keys(one_study):
    tmp, url = one_study
    records = json.loads(_run(["pareto", "--storage", url, "--format", "json"], tmp).stdout)
    assert list(records[0]) == [
        "trial",
        "metric",
        "value",
        "test_clear",
        "predicted_latency_s",
        "measured_latency_s",
        "measured_loadavg_1m",
        "measured_cores",
        "measured_quiet",
        "measured_others_busy",
        "measured_when",
        "max_latency_s",
        "over_max_latency",
        "n_layers",
        "n_w_bits",
        "n_a_bits",
        "lookups_per_layer",
        "evaluation_keys_bytes",
        "keygen_s",
        "has_model",
    ]
    first = records[0]
    assert (first["metric"], first["value"], first["predicted_latency_s"]) == (
        "accuracy",
        0.95,
        0.4,
    )
    assert (first["measured_latency_s"], first["measured_loadavg_1m"]) == (0.9, 3.5)
    # the table keeps the display headers
    table = _run(["pareto", "--storage", url], tmp).stdout.splitlines()[0].split()
    assert table[:3] == ["trial", "accuracy", "test"]


def test_trials_lists_every_trial_with_state_values_epochs_and_reason(one_study):
    tmp, url = one_study
    out = _run(["trials", "--storage", url, "--format", "json"], tmp)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["trial"], r["state"], r["feasible"], r["on_front"]) for r in rows] == [
        (0, "COMPLETE", True, True),
        (1, "COMPLETE", True, True),
        (2, "COMPLETE", False, False),
        (3, "FAIL", False, False),
    ]
    assert (rows[2]["accuracy"], rows[2]["fhe_latency_s"]) == (0.99, 0.05)
    assert rows[2]["reason"] == "key_size: 6 GB > 4 GB"
    assert [r["measured_latency_s"] for r in rows] == [0.9, 0.12, None, None]
    assert (rows[0]["n_layers"], rows[0]["n_w_bits"], rows[0]["n_a_bits"]) == (2, 4, 3)
    # the epochs a trial trained, as the search stores them (``fidelity_epochs``)
    assert [r["epochs"] for r in rows] == [None, 20, None, None]
    table = _run(["trials", "--storage", url], tmp).stdout
    assert table.splitlines()[0].split() == [
        "trial",
        "state",
        "accuracy",
        "fhe_latency_s",
        "feasible",
        "on_front",
        "epochs",
        "measured_latency_s",
        "n_layers",
        "bits",
        "w/a",
        "reason",
    ]
    assert "key_size: 6 GB > 4 GB" in table
    csv_out = _run(["trials", "--storage", url, "--format", "csv"], tmp).stdout.splitlines()
    assert csv_out[0].split(",") == list(rows[0])
    assert len(csv_out) == 1 + len(rows)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_studies_has_machine_formats(one_study, fmt):
    tmp, url = one_study
    out = _run(["studies", "--storage", url, "--format", fmt], tmp)
    assert out.returncode == 0, out.stderr
    if fmt == "json":
        (row,) = json.loads(out.stdout)
    else:
        header, line = out.stdout.splitlines()
        row = dict(zip(header.split(","), line.split(",")))
    assert row["study"] == "s-accuracy" and int(row["trials"]) == 4


def test_pareto_plot(one_study):
    tmp, url = one_study
    out = _run(["pareto", "--storage", url, "--plot", str(tmp / "front.png")], tmp)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [
            f"autofhe: error: --plot {tmp / 'front.png'}: matplotlib is not installed; pip "
            "install 'autofhe[plot]' (or read the front plot in `autofhe dashboard`)."
        ]
        return
    assert out.returncode == 0, out.stderr
    assert (tmp / "front.png").read_bytes()[:4] == b"\x89PNG"


# -- measured latency against --max-latency ----------------------------------------------------


def test_pareto_flags_a_measured_latency_over_max_latency(one_study):
    from autofhe.data import Dataset
    from autofhe.search.store.tables import ParetoStore

    tmp, url = one_study
    ds = Dataset(
        X=np.zeros((3, 2)),
        y=np.arange(3),
        name="s",
        task="classification",
        fingerprint="f",
        source="test",
    )
    ParetoStore(url, create=True).register_study("s-accuracy", ds, "accuracy", {"max_latency": 0.5})
    out = _run(["pareto", "--storage", url], tmp)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[-1] == "flag"
    assert lines[1].split()[0] == "0" and lines[1].rstrip().endswith("MEASURED > MAX")
    assert not lines[2].rstrip().endswith("MAX")
    assert out.stderr.strip().splitlines() == [
        "autofhe: warning: trial 0 measured 0.9 s per sample under load 3.5 on 2 cores, over "
        "the study's --max-latency 0.5 s (predicted 0.4 s); measure it again on an idle "
        "machine before relying on it."
    ]
    records = json.loads(_run(["pareto", "--storage", url, "--format", "json"], tmp).stdout)
    assert [r["over_max_latency"] for r in records] == [True, False]


# -- search progress ------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [True, False])
def test_calibration_message_only_when_calibrating(tmp_path, monkeypatch, capsys, cached):
    from autofhe.fhe import latency

    fixed = latency.load_cost_model(calibrate_if_missing=False)
    assert fixed is not None  # the session's cached model (conftest)
    if not cached:
        monkeypatch.setattr(latency, "CACHE_DIR", tmp_path / "empty-cache")
        monkeypatch.setattr(latency, "calibrate", lambda *a, **k: fixed)
    # a database URL that cannot be opened stops the search right after the cost model
    storage = "postgresql://u@127.0.0.1:notaport/db"
    code = main(["search", "--data", "sklearn:wine", "--storage", storage, "--trials", "1"])
    assert code == 2
    said = "calibrat" in capsys.readouterr().out
    assert said is not cached


# -- advice when no model is feasible ----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["search", "--data", "my data.npy", "--max-latency", "0.001"],
            "autofhe search --data 'my data.npy' --max-latency 0.008 --study s",
        ),
        (
            ["--debug", "search", "--data=x.npy", "--max-latency=0.001", "--study", "s"],
            "autofhe --debug search --data=x.npy --study s --max-latency 0.008",
        ),
        (
            ["search", "--data", "x.npy"],
            "autofhe search --data x.npy --max-latency 0.008 --study s",
        ),
    ],
)
def test_the_relaxing_command_is_the_same_command_with_the_limit_replaced(argv, expected):
    from autofhe.cli.common import with_option

    assert with_option(argv, "--max-latency", "0.008", "s") == expected


def _priced(number: int, latency: float, reason: str):
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED,
        user_attrs={"priced_latency_s": latency, "reason": reason, "priced_key_bytes": 10**7},
    )
    trial.number = number
    return trial


def test_advice_names_the_cheapest_price_over_the_limit_and_relaxes_it():
    from autofhe.search.report import no_front_advice

    trials = [
        _priced(0, 0.0031, "latency: priced 0.003 s > max 0.001 s"),
        _priced(1, 0.0005, "compile: no crypto parameters"),  # cheap, but not over the limit
        _priced(2, 0.02, "latency: priced 0.020 s > max 0.001 s"),
    ]
    sentence, option, value = no_front_advice(trials, 0.001, 4e9)
    assert sentence.startswith(
        "no feasible model: the cheapest configuration was priced at 0.0031 s per sample "
        "(trial 0), over --max-latency 0.001 s (3 trials: 2 latency, 1 compile)"
    )
    assert (option, value) == ("--max-latency", "0.0062")
    # nothing over a limit: no limit to relax
    sentence, option, _ = no_front_advice(trials[1:2], 0.001, 4e9)
    assert option is None and sentence.endswith("run more trials.")


def test_debug_is_taken_anywhere_on_the_line():
    parser = build_parser()
    assert parser.parse_args(["studies"]).debug is False
    assert parser.parse_args(["--debug", "studies"]).debug is True
    assert parser.parse_args(["studies", "--debug"]).debug is True
