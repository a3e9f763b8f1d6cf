"""What a person opening the study in optuna-dashboard reads first: the measured front.

After each Pareto snapshot the study's note (optuna-dashboard's notes) holds the front as a
Markdown table, and a plot of the front (metric against predicted and measured latency) is
stored as a plotly graph object, which the dashboard draws on the study's first page. Both are
plain study system attributes: nothing is rendered here and no plotting library is needed.

Each finished trial gets a note too: the dashboard shows it above the user attributes (a small
scroll box, alphabetical, where ``reason`` hides below the fold), so why a trial is infeasible
and its rounded key figures are read at a glance.

A measured latency also records the conditions it was measured under (load average, cores),
because the same model measures several times slower on a busy machine.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import textwrap
from collections.abc import Sequence
from typing import Any

from autofhe.search.record import TrialRecord

__all__ = [
    "FRONT_HEADING",
    "FRONT_PLOT_ID",
    "dominating",
    "front_figure",
    "front_note",
    "measurement_conditions",
    "metric_range",
    "publish_front",
    "publish_trial",
    "trial_note",
]

#: The note's autofhe section starts at this line; what a user wrote above it is kept.
FRONT_HEADING = "## Pareto front (written by autofhe after each snapshot)"
#: graph object id of the front plot (a fixed id: each snapshot replaces the previous plot)
FRONT_PLOT_ID = "autofhe-pareto-front"


def measurement_conditions() -> dict[str, float]:
    """This machine's load right now: 1-minute load average, cores, load per core."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load = float("nan")
    return {
        "measured_loadavg_1m": round(load, 2),
        "measured_cores": cores,
        "measured_load_per_core": round(load / cores, 2),
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _conditions(r: TrialRecord) -> str:
    load, cores = r.measured_loadavg_1m, r.measured_cores
    if load is None or cores is None:
        return "-"
    # None: stored before workers paused to measure
    alone = {True: ", machine quiet", False: ", beside other work"}.get(r.measured_quiet, "")
    if r.measured_when and r.measured_when != "during the search":
        alone += f", {r.measured_when}"
    return f"load {load:g} on {cores} cores{alone}"


def front_note(
    study_name: str, metric: str, front: Sequence, n_complete: int, empty_text: str = ""
) -> str:
    """The Markdown section of the note: one row per front trial (``empty_text``: what an
    empty front's note says, why and what to do)."""
    lines = [
        FRONT_HEADING,
        "",
        f"Study `{study_name}`: {len(front)} front models after {n_complete} complete trials. "
        f"{metric}: validation, FHE simulated. Latency: seconds per sample, predicted by the "
        "cost model and measured (encrypt + run + decrypt, keygen excluded).",
        "",
    ]
    if not front:
        lines.append(empty_text or "No feasible trial yet.")
        return "\n".join(lines) + "\n"
    lines += [
        f"| trial | {metric} | predicted s | measured s | measured under | layers "
        "| bits w/a | exportable |",
        "|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for t in front:
        r, p = TrialRecord.of(t), t.params
        lines.append(
            f"| {t.number} | {t.values[0]:.4f} | {_fmt(t.values[1])} "
            f"| {_fmt(r.measured_latency_s)} | {_conditions(r)} "
            f"| {p.get('module__n_layers', '-')} "
            f"| {p.get('n_w_bits', '-')}/{p.get('n_a_bits', '-')} "
            f"| {'yes' if r.exportable else 'no'} |"
        )
    lines += [
        "",
        f"Export one: `autofhe export --study {shlex.quote(study_name)} --trial N --out model/`",
    ]
    return "\n".join(lines) + "\n"


def dominating(trial: Any, front: Sequence) -> Any | None:
    """The front model that dominates ``trial`` (as accurate or more and as fast or faster):
    of those, the fastest."""
    metric, latency = trial.values
    better = [
        t
        for t in front
        if t.number != trial.number and t.values[0] >= metric and t.values[1] <= latency
    ]
    return min(better, key=lambda t: (t.values[1], -t.values[0]), default=None)


def trial_note(trial: Any, metric: str, front: Sequence | None = None) -> str:
    """Markdown for one finished trial: feasible or why not (``front`` given: a feasible
    trial off the front names the front model that dominates it), then its key figures."""
    r = TrialRecord.of(trial)
    state = trial.state.name
    if state == "COMPLETE" and r.reason:
        head = f"**Infeasible**: {r.reason}"
    elif state == "COMPLETE":
        head = "**Feasible**"
        better = None if front is None else dominating(trial, front)
        if front is not None and better is None:
            head += ", on the Pareto front"
        elif better is not None:
            head += (
                f", off the front: trial {better.number} is as good or better on both "
                f"({better.values[0]:.4f} at {_fmt(better.values[1])} s)"
            )
    else:
        why = r.reason.removeprefix(f"{state.lower()}: ")  # "pruned: ..."
        head = f"**{state.capitalize()}**" + (f": {why}" if why else "")
    facts = []
    if trial.values is not None:
        facts.append(f"{metric} {trial.values[0]:.4f} (validation, simulated)")
        latency = f"latency {_fmt(trial.values[1])} s predicted"
        if r.measured_latency_s is not None:
            latency += f", {_fmt(r.measured_latency_s)} s measured ({_conditions(r)})"
        facts.append(latency)
    if r.lookups_per_layer is not None:
        facts.append(f"lookups per layer {r.lookups_per_layer}")
    if r.max_bit_width is not None:
        facts.append(f"max bit width {r.max_bit_width}")
    if r.evaluation_keys_bytes is not None:
        keys = f"evaluation keys {r.evaluation_keys_bytes / 1e6:.1f} MB as uploaded"
        if r.keygen_s is not None:
            keys += f", generated in {r.keygen_s:.1f} s"
        facts.append(keys)
    return head + "\n\n" + "".join(f"- {fact}\n" for fact in facts)


def publish_trial(study: Any, trial: Any, front: Sequence | None = None) -> None:
    """Write :func:`trial_note` as the trial's note in optuna-dashboard."""
    import optuna
    from optuna_dashboard import save_note

    metric = (study.metric_names or ["metric"])[0]
    # save_note takes a live Trial; a finished one is addressed by its id
    save_note(optuna.Trial(study, trial._trial_id), trial_note(trial, metric, front))


def metric_range(ys: Sequence[float]) -> tuple[float, float]:
    """The metric axis of a front plot: its values padded by 15% of their spread, or by 2% of
    the value for one point (not the 0-2 range a plotting library frames one point with)."""
    pad = max((max(ys) - min(ys)) * 0.15, 0.02 * max(abs(max(ys)), 1e-3))
    return min(ys) - pad, max(ys) + pad


def front_figure(metric: str, front: Sequence, empty_text: str = "") -> dict:
    """A plotly figure (as a dict): the metric against latency per sample on a log axis (front
    models span decades), the feasible front as the staircase it attains (at a latency budget,
    the best metric of the models within it), measured latencies as separate markers. An
    empty front is sane axes and ``empty_text``; one point is framed around it."""
    by_latency = sorted((t for t in front if t.values[1] > 0), key=lambda t: t.values[1])
    measured = [(TrialRecord.of(t).measured_latency_s, t) for t in by_latency]
    measured = [(x, t) for x, t in measured if x]
    data = []
    if by_latency:
        xs = [t.values[1] for t in by_latency]
        ys = [t.values[0] for t in by_latency]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "line": {"shape": "hv"},
                "marker": {"size": 9},
                "name": "front (predicted latency)",
                # the last step runs on: a larger budget buys no better model
                "x": [*xs, xs[-1] * 3],
                "y": [*ys, ys[-1]],
                "text": [f"trial {t.number}" for t in by_latency] + [""],
                "hovertemplate": "%{text}: %{y:.4f} at %{x:.4g} s<extra></extra>",
            }
        )
    if measured:
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "marker": {"size": 9, "symbol": "diamond-open"},
                "name": "measured latency",
                "x": [x for x, _ in measured],
                "y": [t.values[0] for _, t in measured],
                "text": [f"trial {t.number}" for _, t in measured],
                "hovertemplate": "%{text}: measured %{x:.4g} s<extra></extra>",
            }
        )
    xaxis = {"title": {"text": "latency per sample (s, log scale)"}, "type": "log"}
    yaxis = {"title": {"text": metric}}
    layout = {
        "title": {"text": f"Pareto front: {metric} vs FHE latency per sample"},
        "xaxis": xaxis,
        "yaxis": yaxis,
        "legend": {"orientation": "h", "y": -0.25},
    }
    if by_latency:
        xs = [t.values[1] for t in by_latency] + [x for x, _ in measured]
        xaxis["range"] = [math.log10(min(xs)) - 0.5, math.log10(max(xs)) + 0.5]
        yaxis["range"] = list(metric_range([t.values[0] for t in by_latency]))
    else:
        xaxis["range"] = [-3, 1]  # 1 ms to 10 s
        yaxis["range"] = [0, 1]
        layout["annotations"] = [
            {
                # plotly does not wrap: lines of a width the plot holds
                "text": "<br>".join(textwrap.wrap(empty_text or "No feasible model yet.", 56)),
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "showarrow": False,
            }
        ]
    return {"data": data, "layout": layout}


class _Figure:
    """The one method optuna-dashboard's ``save_plotly_graph_object`` uses (no plotly)."""

    def __init__(self, figure: dict):
        self._json = json.dumps(figure)

    def to_json(self) -> str:
        return self._json


def publish_front(
    study: Any, front: Sequence, n_complete: int | None = None, empty_text: str = ""
) -> None:
    """Write the front into the study's note and plot (both replace the previous snapshot's).

    Parameters
    ----------
    study : optuna.Study
        The study (its storage receives the note and the plot).
    front : sequence of FrozenTrial
        The Pareto front, as :func:`autofhe.search.front.pareto.pareto_front` returns it.
    n_complete : int, optional
        Complete trials so far (counted from the study when not given).
    empty_text : str
        For an empty front: why, and what to do (the note and the plot say it).
    """
    from optuna_dashboard import get_note, save_note, save_plotly_graph_object

    if n_complete is None:
        import optuna

        n_complete = len(
            study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        )
    metric = (study.metric_names or ["metric"])[0]
    previous = get_note(study)
    kept = previous.split(FRONT_HEADING, 1)[0].rstrip()
    body = front_note(study.study_name, metric, front, n_complete, empty_text)
    save_note(study, f"{kept}\n\n{body}" if kept else body)
    figure = front_figure(metric, front, empty_text)
    save_plotly_graph_object(study, _Figure(figure), graph_object_id=FRONT_PLOT_ID)
