"""The front models of a study, from their stored artifacts (no retraining)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna

from autofhe.fhe.bundle import load_program, unpack_bundle
from autofhe.search.front.pareto import pareto_front
from autofhe.search.record import TrialRecord
from autofhe.search.store.locate import artifact_store


def front_bundles(url: str, study_name: str, trials, every: bool = False) -> Iterator[tuple]:
    """``(trial, manifest, program, bundle directory)`` per front trial with an artifact;
    ``every``: front trials without one too, as ``(trial, None, None, None)``."""
    store = artifact_store(url)
    for t in pareto_front(trials):
        artifact_id = TrialRecord.of(t).artifact_id
        if not artifact_id:
            if every:
                yield t, None, None, None
            continue
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.zip"
            optuna.artifacts.download_artifact(
                artifact_store=store,
                file_path=str(archive),
                artifact_id=artifact_id,
            )
            unpack_bundle(archive, Path(tmp) / "bundle")  # path-checked, then checksums
            manifest, program = load_program(Path(tmp) / "bundle")
            yield t, manifest, program, Path(tmp) / "bundle"
