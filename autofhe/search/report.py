"""A study as the ``pareto`` and ``trials`` commands report it.

Records carry stable machine keys (JSON and CSV output, scripts); :func:`display_rows` turns
front records into the table people read. Nothing here imports torch or scikit-learn.
"""

from __future__ import annotations

import math
import time
from typing import Any

from autofhe.errors import ParameterError
from autofhe.search.price.feasibility import is_feasible
from autofhe.search.record import TrialRecord

__all__ = [
    "ProgressReport",
    "display_rows",
    "front_records",
    "latency_warnings",
    "plot_front",
    "rounded",
    "trial_records",
]


def _metric(study: Any) -> str:
    return (study.metric_names or ["metric"])[0]


def front_records(study: Any, front: list, max_latency: float | None = None) -> list[dict]:
    """One dict per front trial, machine keys in a fixed order.

    Parameters
    ----------
    study : optuna.Study
        The study (for its metric name).
    front : list of FrozenTrial
        :func:`autofhe.search.front.pareto.pareto_front` of its trials.
    max_latency : float, optional
        The study's latency limit: ``over_max_latency`` says whether a measured latency
        breaks it (None when either is unknown).
    """
    records = []
    for t in front:
        r = TrialRecord.of(t)
        measured = r.measured_latency_s
        records.append(
            {
                "trial": t.number,
                "metric": _metric(study),
                "value": t.values[0],
                # the shipped model's: refit on training + validation rows
                "test_clear": r.test_metric,
                "predicted_latency_s": t.values[1],
                "measured_latency_s": measured,
                "measured_loadavg_1m": r.measured_loadavg_1m,
                "measured_cores": r.measured_cores,
                "measured_quiet": r.measured_quiet,
                "max_latency_s": max_latency,
                "over_max_latency": (
                    None if measured is None or max_latency is None else measured > max_latency
                ),
                "n_layers": t.params.get("module__n_layers"),
                "n_w_bits": t.params.get("n_w_bits"),
                "n_a_bits": t.params.get("n_a_bits"),
                "lookups_per_layer": r.lookups_per_layer,
                # what a client uploads once (compressed) and waits for before its first row
                "evaluation_keys_bytes": r.evaluation_keys_bytes,
                "keygen_s": r.keygen_s,
                "has_model": r.exportable,
            }
        )
    return records


def display_rows(records: list[dict]) -> list[dict]:
    """The front table's columns (rounded, display headers, a flag column when needed)."""

    def r4(v):
        return None if v is None else round(v, 4)

    flagged = any(r["over_max_latency"] for r in records)
    rows = []
    for r in records:
        row = {
            "trial": r["trial"],
            r["metric"]: r4(r["value"]),
            "test (clear)": r4(r["test_clear"]),
            "predicted s": r4(r["predicted_latency_s"]),
            "measured s": r4(r["measured_latency_s"]),
            "layers": r["n_layers"],
            "bits w/a": f"{r['n_w_bits']}/{r['n_a_bits']}",
            "lookups": r["lookups_per_layer"],
            "keys MB": _mb(r["evaluation_keys_bytes"]),
            "keygen s": None if r["keygen_s"] is None else round(r["keygen_s"], 1),
            "artifact": r["has_model"],
        }
        if flagged:
            row["flag"] = "MEASURED > MAX" if r["over_max_latency"] else ""
        rows.append(row)
    return rows


def _mb(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 1e6, 1)


def latency_warnings(records: list[dict]) -> list[str]:
    """One message per front model whose measured latency breaks the study's limit."""
    messages = []
    for r in records:
        if not r["over_max_latency"]:
            continue
        load = (
            f" under load {r['measured_loadavg_1m']} on {r['measured_cores']} cores"
            if r["measured_loadavg_1m"] is not None
            else ""
        )
        if r.get("measured_quiet") is False:
            load += " beside another worker's training"
        messages.append(
            f"trial {r['trial']} measured {r['measured_latency_s']:.4g} s per sample{load}, "
            f"over the study's --max-latency {r['max_latency_s']:g} s (predicted "
            f"{r['predicted_latency_s']:.4g} s); measure it again on an idle machine before "
            "relying on it."
        )
    return messages


def trial_records(study: Any) -> list[dict]:
    """Every trial: number, state, one key per objective, feasibility, the epochs its (first)
    model trained, reason."""
    names = study.metric_names or ["metric", "latency_s"]
    records = []
    for t in study.get_trials(deepcopy=False):
        values = dict(zip(names, t.values)) if t.values is not None else {}
        r = TrialRecord.of(t)
        records.append(
            {
                "trial": t.number,
                "state": t.state.name,
                **{n: values.get(n) for n in names},
                "feasible": is_feasible(t) if t.state.name == "COMPLETE" else None,
                "epochs": r.fidelity_epochs,
                "reason": r.reason,
            }
        )
    return records


def plot_front(study: Any, front: list, path: str, max_latency: float | None = None) -> None:
    """Draw the metric against predicted and measured latency into ``path`` (matplotlib).

    Raises
    ------
    ParameterError
        When matplotlib is not installed (or broken), or ``path`` cannot be written.
    """
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ParameterError(
            f"--plot {path}: matplotlib is not installed; pip install matplotlib (or read the "
            "front plot in `autofhe dashboard`)."
        )
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:  # installed without one of its own dependencies
        raise ParameterError(
            f"--plot {path}: matplotlib cannot be imported ({exc}); reinstall it with "
            "pip install --force-reinstall matplotlib."
        ) from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([t.values[1] for t in front], [t.values[0] for t in front], "o-", label="predicted")
    measured_s = {t.number: TrialRecord.of(t).measured_latency_s for t in front}
    measured = [t for t in front if measured_s[t.number] is not None]
    if measured:
        ax.plot(
            [measured_s[t.number] for t in measured],
            [t.values[0] for t in measured],
            "D--",
            label="measured",
        )
    for t in front:
        ax.annotate(str(t.number), (t.values[1], t.values[0]), fontsize=8)
    if max_latency is not None:
        ax.axvline(max_latency, color="grey", linestyle=":", label="--max-latency")
    latencies = [t.values[1] for t in front if t.values[1] > 0]
    if latencies and max(latencies) > 10 * min(latencies):
        ax.set_xscale("log")  # spans more than a decade
    ax.set_xlabel("FHE latency per sample (s)")
    ax.set_ylabel(_metric(study))
    ax.set_title(f"Pareto front of {study.study_name}")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        raise ParameterError(f"--plot {path}: cannot write it ({exc}).") from None
    finally:
        plt.close(fig)


def rounded(record: dict, digits: int = 4) -> dict:
    """``record`` with its floats rounded for a table (NaN kept)."""
    return {
        k: round(v, digits) if isinstance(v, float) and not math.isnan(v) else v
        for k, v in record.items()
    }


#: A trial still running is reported again every this many seconds.
RUNNING_REPORT_S = 30.0


class ProgressReport:
    """What ``search`` and ``worker`` print while their workers run: called with the study
    every few seconds, it says when a trial starts, every half minute while it runs (what it is
    doing), and when it ends (its values or why it stopped), with this run's count kept apart
    from the study's.

    Parameters
    ----------
    study : optuna.Study
        The study, as the run starts (trials finished by then are not this run's).
    total : int, optional
        Trials this run will finish (None: until a timeout).
    out : callable
        Where each line goes (``print`` by default).
    """

    def __init__(self, study: Any, total: int | None, out=print):
        self.start = time.monotonic()
        self.total, self.out = total, out
        trials = study.get_trials(deepcopy=False)
        self._finished = {t.number for t in trials if t.state.is_finished()}
        self._before = len(self._finished)
        self._started: dict[int, float] = {}  # running trial -> when it was last reported

    def _line(self, text: str) -> None:
        self.out(f"[{(time.monotonic() - self.start) / 60:5.1f} min] {text}", flush=True)

    def __call__(self, study: Any) -> None:
        from autofhe.search.front.pareto import study_front

        trials = study.get_trials(deepcopy=False)
        now = time.monotonic()
        ended = []
        for t in trials:
            if t.state.name == "RUNNING":
                seen = self._started.get(t.number)
                if seen is None:
                    self._started[t.number] = now
                    self._line(f"trial {t.number} started: {_summary(t.params)}")
                elif now - seen >= RUNNING_REPORT_S:
                    self._started[t.number] = now
                    phase = t.system_attrs.get("autofhe_phase", "running")
                    elapsed = (now - self.start) if t.datetime_start is None else _age(t)
                    self._line(f"trial {t.number}: {phase} ({elapsed:.0f} s so far)")
            elif t.state.is_finished() and t.number not in self._finished:
                self._finished.add(t.number)
                self._started.pop(t.number, None)
                ended.append(t)
        if not ended:
            return
        done = len(self._finished) - self._before
        goal = f"{done}/{self.total}" if self.total else str(done)
        finished = [t for t in trials if t.state.is_finished()]
        feasible = sum(t.state.name == "COMPLETE" and is_feasible(t) for t in finished)
        study_line = (
            f"this run {goal} | study: {len(finished)} finished, {feasible} feasible, "
            f"front {len(study_front(study, trials))}"
        )
        for t in ended:
            self._line(f"{_outcome(t)} | {study_line}")


def _age(trial: Any) -> float:
    from datetime import datetime

    return (datetime.now() - trial.datetime_start).total_seconds()


def _summary(params: dict) -> str:
    layers = params.get("module__n_layers", "?")
    bits = f"{params.get('n_w_bits', '?')}/{params.get('n_a_bits', '?')} bits"
    return f"{layers} layer{'s' if layers != 1 else ''}, {bits}"


def _outcome(trial: Any) -> str:
    """``trial 7: 0.9512, 0.0123 s`` or ``trial 8: pruned (why)``, the reason when there is one."""
    r = TrialRecord.of(trial)
    why = r.reason or r.error or ""
    if trial.state.name == "COMPLETE" and trial.values is not None:
        metric, latency = trial.values
        text = f"trial {trial.number}: {metric:.4f}, {latency:.4g} s"
    else:
        text = f"trial {trial.number}: {trial.state.name.lower()}"
    return text + (f" ({why})" if why else "")
