"""Front models' latency under encryption: measured while the search runs, and measured
again once the machine is quiet when the first figure was taken under load.

:func:`measure_front_model` is the one measurement (``quiet.py`` pauses this machine's other
workers meanwhile). Processes that are not autofhe's cannot be paused:
beside them the figure is recorded with ``measured_quiet`` False and the share of the CPU they
used. When the search ends, :func:`remeasure_front` measures those models again if the
machine is quiet then; the figure measured under load stays as ``measured_under_load_s``, and
``measured_when`` says which figure ``measured_latency_s`` is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna

from autofhe.search import record
from autofhe.search.front.notes import measurement_conditions, publish_front, publish_trial
from autofhe.search.front.pareto import pareto_front
from autofhe.search.record import TrialRecord
from autofhe.search.store.engine import make_storage
from autofhe.search.store.locate import artifact_store
from autofhe.search.store.tables import ParetoStore
from autofhe.search.trial import quiet

__all__ = ["AFTER_SEARCH", "DURING_SEARCH", "loud_front", "measure_front_model", "remeasure_front"]

DURING_SEARCH = "during the search"
AFTER_SEARCH = "after the search, the machine quiet"
#: Models predicted slower than this are measured on one sample (keygen + 3 samples of a 20 s
#: model would hold the command for a minute per model).
MEASURE_ALL_S = 2.0


def measure_front_model(model, X, predicted: float) -> dict:
    """The latency of a compiled model under encryption, measured while this machine's other
    workers pause, as the record fields that hold it: the figure and key generation time, the
    machine's load, the CPU share other processes took meanwhile and whether that was quiet.

    A model predicted over :data:`MEASURE_ALL_S` is measured on one sample, else on three.
    """
    from autofhe.fhe.latency import measure_latency

    with quiet.measuring() as calm, quiet.watching() as seen:
        conditions = measurement_conditions()  # the load other processes put on us
        measured = measure_latency(model, X, n=3 if predicted <= MEASURE_ALL_S else 1)
    # quiet: the other workers paused and no other process took the CPU
    others = seen.get("others_busy")
    return {
        "measured_latency_s": measured["latency_s"],
        "keygen_s": measured["keygen_s"],
        **conditions,
        "measured_others_busy": others,
        "measured_quiet": calm and (others is None or others <= quiet.QUIET_BUSY),
    }


def loud_front(trials: list) -> list:
    """The front trials whose stored latency was measured under load (and can be measured
    again: their model is stored)."""
    records = ((t, TrialRecord.of(t)) for t in pareto_front(trials))
    return [t for t, r in records if r.measured_quiet is False and r.artifact_id]


def remeasure_front(url: str, name: str, say: Callable[[str], None] = print) -> int:
    """Measure again the front models of study ``name`` that were measured under load, if the
    machine is quiet now; returns how many were measured again."""
    from autofhe.fhe.bundle import load_model_archive

    storage = make_storage(url, create=False)
    study = optuna.load_study(study_name=name, storage=storage)
    loud = loud_front(study.get_trials(deepcopy=False))
    if not loud:
        return 0
    busy = quiet.others_busy_now()
    if busy is not None and busy > quiet.QUIET_BUSY:
        say(
            f"{len(loud)} front model(s) were measured under load and the machine is still "
            f"busy (other processes use {busy:.0%} of its CPU): their latency stays marked "
            "'beside other work' in `autofhe pareto`."
        )
        return 0
    say(f"measuring again {len(loud)} front model(s) measured under load ...")
    X, _ = ParetoStore.decode_data(ParetoStore(url).study_info(name))
    store = artifact_store(url)
    done = 0
    for t in loud:
        r = TrialRecord.of(t)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.zip"
            optuna.artifacts.download_artifact(
                artifact_store=store, file_path=str(archive), artifact_id=r.artifact_id
            )
            model = load_model_archive(archive)
        fields = measure_front_model(model, X, t.values[1])
        if not fields["measured_quiet"]:  # a neighbour started meanwhile: keep the first figure
            continue
        record.write_finished(
            storage,
            t._trial_id,
            **fields,
            measured_under_load_s=r.measured_latency_s,
            measured_when=AFTER_SEARCH,
        )
        say(
            f"trial {t.number}: {fields['measured_latency_s']:.4g} s per sample "
            f"(under load: {r.measured_latency_s:.4g} s)"
        )
        done += 1
    if done:  # the notes people read show the new figures (a fresh look: no cached trials)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        front = pareto_front(trials)
        publish_front(study, front)
        for t in front:
            publish_trial(study, t, front)
    return done
