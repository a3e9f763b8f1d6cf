"""A study as the ``pareto`` and ``trials`` commands report it.

Records carry stable machine keys (JSON and CSV output, scripts); :func:`display_rows` turns
front records into the table people read. Nothing here imports torch or scikit-learn.
"""

from __future__ import annotations

import math
import time
from typing import Any

from autofhe.errors import ParameterError
from autofhe.search.front.notes import metric_range
from autofhe.search.price.feasibility import is_feasible, price_cap
from autofhe.search.record import TrialRecord

__all__ = [
    "ProgressReport",
    "display_rows",
    "front_advice",
    "front_records",
    "latency_warnings",
    "no_front_advice",
    "plot_front",
    "rounded",
    "trial_records",
    "trial_rows",
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
                "measured_others_busy": r.measured_others_busy,
                "measured_when": r.measured_when,
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
            load += " beside other work"
        messages.append(
            f"trial {r['trial']} measured {r['measured_latency_s']:.4g} s per sample{load}, "
            f"over the study's --max-latency {r['max_latency_s']:g} s (predicted "
            f"{r['predicted_latency_s']:.4g} s); measure it again on an idle machine before "
            "relying on it."
        )
    return messages


def _round_up(value: float) -> float:
    """``value`` rounded up to two significant digits (a limit a person can type)."""
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale - 1e-9) * scale


def no_front_advice(trials: list, max_latency: float | None, max_key_size: float | None):
    """Why a study has no feasible model, and the limit to relax: ``(sentence, option,
    value)``; option and value are None when no limit is to blame (failures, compile errors,
    an empty study). The value relaxed to is twice the cheapest price over the limit."""
    finished = [t for t in trials if t.state.is_finished()]
    if not finished:
        return "no trial has finished yet: run more trials.", None, None
    kinds: dict[str, int] = {}
    over: dict[str, list] = {"latency": [], "key_size": []}  # (price, trial) over each limit
    for t in finished:
        r = TrialRecord.of(t)
        broke = {part.split(":", 1)[0] for part in r.reason.split("; ") if part}
        if t.state.name == "FAIL":
            broke.add("failed")
        for kind in broke:
            kinds[kind] = kinds.get(kind, 0) + 1
        latency = t.values[1] if t.values is not None else r.priced_latency_s
        keys = r.evaluation_keys_bytes or r.priced_key_bytes
        if "latency" in broke and latency:
            over["latency"].append((latency, t.number))
        if "key_size" in broke and keys:
            over["key_size"].append((keys, t.number))
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    tail = f" ({len(finished)} trials: {counts})" if counts else ""
    if max_latency is not None and over["latency"]:
        latency, number = min(over["latency"], key=lambda p: p[0])
        return (
            f"no feasible model: the cheapest configuration was priced at {latency:.4g} s per "
            f"sample (trial {number}), over --max-latency {max_latency:g} s{tail}.",
            "--max-latency",
            f"{max(_round_up(2 * latency), 2 * max_latency):g}",
        )
    if max_key_size is not None and over["key_size"]:
        keys, number = min(over["key_size"], key=lambda p: p[0])
        mb = max(_round_up(2 * keys / 1e6), 2 * max_key_size / 1e6)
        return (
            f"no feasible model: the smallest keys were {keys / 1e6:.1f} MB (trial {number}), "
            f"over --max-key-size {max_key_size / 1e6:g} MB{tail}.",
            "--max-key-size",
            f"{mb:g}MB",
        )
    return f"no feasible model yet{tail}: run more trials.", None, None


def front_advice(trials: list, max_latency: float | None, max_key_size: float) -> str:
    """What the study's note and plot say while no model is feasible: why, what to do."""
    sentence, option, value = no_front_advice(trials, price_cap(max_latency), max_key_size)
    return sentence + (f" Relax it: resume the search with {option} {value}." if option else "")


def trial_records(study: Any) -> list[dict]:
    """Every trial, one flat record each (stable machine keys, JSON and CSV as they are).

    ``trial``, ``state``, one key per objective (the metric, then the predicted latency
    ``fhe_latency_s``; None for a trial without values), ``feasible`` (False with its
    ``reason`` for a trial that broke a limit, was rejected, stopped early or failed),
    ``on_front``, ``epochs`` (trained by its first model; 0: rejected before training),
    ``priced_latency_s`` (before training), ``measured_latency_s`` (front models, under
    encryption), ``keys_mb`` (evaluation keys a client uploads), ``n_layers``, ``n_w_bits``,
    ``n_a_bits``, ``lookups`` (per layer), ``lookup_bits`` (per layer), ``reason``.
    """
    from autofhe.search.front.pareto import pareto_front

    names = study.metric_names or ["metric", "latency_s"][: len(study.directions)]
    trials = study.get_trials(deepcopy=False)
    # the accuracy / latency front of an autofhe study (another study may have one objective)
    front = {t.number for t in pareto_front(trials)} if len(study.directions) == 2 else set()
    records = []
    for t in trials:
        values = dict(zip(names, t.values)) if t.values is not None else {}
        r = TrialRecord.of(t)
        if not t.state.is_finished():
            feasible = None
        elif t.state.name == "COMPLETE":
            feasible = is_feasible(t) if r.feasible is None else r.feasible
        else:
            feasible = False
        keys = r.evaluation_keys_bytes or r.priced_key_bytes
        records.append(
            {
                "trial": t.number,
                "state": t.state.name,
                **{n: values.get(n) for n in names},
                "feasible": feasible,
                "on_front": t.number in front,
                "epochs": r.fidelity_epochs,
                "priced_latency_s": r.priced_latency_s,
                "measured_latency_s": r.measured_latency_s,
                "keys_mb": _mb(keys),
                "n_layers": t.params.get("module__n_layers"),
                "n_w_bits": t.params.get("n_w_bits"),
                "n_a_bits": t.params.get("n_a_bits"),
                "lookups": _joined(r.lookups_per_layer),
                "lookup_bits": _joined(r.lookup_bits_per_layer or r.priced_lookup_bits),
                "reason": r.reason or r.error or "",
            }
        )
    return records


def trial_rows(records: list[dict]) -> list[dict]:
    """The ``trials`` table: :func:`trial_records` rounded, bit widths as ``w/a``, the front
    marked, and the columns no trial fills left out (any Optuna study is listed)."""
    rows = []
    for r in records:
        row = rounded({k: v for k, v in r.items() if k not in ("n_w_bits", "n_a_bits")})
        row["on_front"] = "*" if r["on_front"] else ""
        bits = (r["n_w_bits"], r["n_a_bits"])
        row["bits w/a"] = None if bits == (None, None) else f"{bits[0]}/{bits[1]}"
        row["reason"] = row.pop("reason")  # last: the only long cell
        rows.append(row)
    empty = {k for k in rows[0] if all(row[k] in (None, "") for row in rows)} if rows else set()
    return [{k: v for k, v in row.items() if k not in empty} for row in rows]


def _joined(values: list | None) -> str | None:
    """Per-layer figures as one cell (``5/5/0``): the same in a table, JSON and CSV."""
    return None if values is None else "/".join(str(v) for v in values)


def plot_front(
    study: Any,
    front: list,
    path: str,
    max_latency: float | None = None,
    empty_text: str | None = None,
) -> None:
    """Draw the front into ``path`` (matplotlib): the metric against predicted latency as the
    staircase the front attains, measured latencies beside, on a log latency axis; an empty
    front is sane axes and ``empty_text`` (why, what to do).

    Raises
    ------
    ParameterError
        When matplotlib is not installed (or broken), or ``path`` cannot be written.
    """
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ParameterError(
            f"--plot {path}: matplotlib is not installed; pip install 'autofhe[plot]' (or read "
            "the front plot in `autofhe dashboard`)."
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
    ax.set_xscale("log")  # front models span decades: 0.004 s beside 3 s
    points = sorted((t.values[1], t.values[0], t.number) for t in front if t.values[1] > 0)
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        # what the front attains: at a latency budget x, the best metric of models <= x
        ax.step([*xs, xs[-1] * 3], [*ys, ys[-1]], where="post", color="C0", alpha=0.5)
        ax.plot(xs, ys, "o", color="C0", label="front (predicted latency)")
        for x, y, number in points:
            ax.annotate(
                str(number), (x, y), xytext=(4, -10), textcoords="offset points", fontsize=8
            )
        measured = [(TrialRecord.of(t).measured_latency_s, t.values[0]) for t in front]
        measured = [(x, y) for x, y in measured if x]
        if measured:
            ax.plot(*zip(*measured), "D", mfc="none", color="C1", label="measured latency")
        low, high = min(xs + [x for x, _ in measured]), max(xs + [x for x, _ in measured])
        ax.set_xlim(low / 3, high * 3)
        ax.set_ylim(*metric_range(ys))
    else:
        ax.set_xlim(1e-3, 10)
        ax.set_ylim(0, 1)
        ax.text(
            0.5,
            0.5,
            empty_text or "no feasible model yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            wrap=True,
        )
    if max_latency is not None:
        ax.axvline(max_latency, color="grey", linestyle=":", label="--max-latency")
    ax.set_xlabel("FHE latency per sample (s, log scale)")
    ax.set_ylabel(_metric(study))
    ax.set_title(f"Pareto front of {study.study_name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
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
