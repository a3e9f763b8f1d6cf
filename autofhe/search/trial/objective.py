"""One trial: fit -> compile -> simulate -> latency -> constraints -> user attributes.

Objectives: the metric of the FHE-simulated predictions on the validation split (maximised)
and the predicted FHE latency per sample (minimised). With ``folds`` > 1 the validation metric
is cross-validated instead: k models, each trained on k-1 folds of the training + validation
rows, and the metric of their simulated predictions on all those rows (out of fold), which is
less noisy on small data than one validation split of a few dozen rows. A trial entering the
Pareto front is refit on training + validation rows (every row when cross-validated: its
fold models already give the honest test estimate); that model is the one measured, stored
and exported. Every configuration is priced before training (price/pricing.py) and trained with
rungs (fidelity.py).
A configuration that cannot become a usable circuit (impossible accumulator budget, compile
failure, latency or keys over the limits) ends COMPLETE with a violated constraint and the
reason in ``reason``, so the sampler learns from it; FAIL is for crashes only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from skorch.callbacks import Callback

from autofhe.errors import AutofheError, CompilationError
from autofhe.fhe.latency import CostModel
from autofhe.nn.estimators import NeuralNetClassifier, NeuralNetRegressor
from autofhe.search import record
from autofhe.search.plan.space import suggest_raw, to_estimator_params
from autofhe.search.price.feasibility import (
    CONSTRAINTS,
    limit_violations,
    price_cap,
    record_constraints,
)
from autofhe.search.price.pricing import Price, price
from autofhe.search.trial import quiet
from autofhe.search.trial.fidelity import RungStop, depth, peers_at
from autofhe.search.trial.rows import SIMULATED_ROWS, Rows

__all__ = ["SearchContext", "objective"]

#: A trial whose clear validation metric is this far below the best feasible one is pruned
#: before compilation (Optuna has no pruner for multi-objective studies).
PRUNE_MARGIN = 0.25


class QuietCheckpoint(Callback):
    """Each epoch's end is a checkpoint where a worker measuring latency may pause this one."""

    def on_epoch_end(self, net, **kwargs):
        quiet.checkpoint()


@dataclass
class SearchContext:
    """What a trial needs besides its parameters: the study's rows, its space, its limits."""

    rows: Rows
    space: dict[str, Any]
    cost_model: CostModel
    max_latency: float | None = None
    max_key_size: float = 4e9
    seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)
    #: Parameters a network without hidden layers takes as they are, not drawn (the plan's
    #: ``linear``: the weight decay the probe tuned for exactly that model, plan/probe.py).
    linear: dict[str, Any] = field(default_factory=dict)
    #: Called as ``front_hook(trial, model, X_valid, predicted_latency)`` for a trial entering
    #: the Pareto front, with the model refit on training + validation rows (the study
    #: measures its latency and stores it there).
    front_hook: Callable | None = None

    def params(self, trial_params: dict[str, Any]) -> dict[str, Any]:
        """Estimator parameters of a trial: fixed ones, then the drawn ones, resolved; a
        network without hidden layers takes :attr:`linear`'s values for what it did not draw."""
        params = {**self.fixed, **trial_params}
        if depth(params) == 1:
            params = {**self.linear, **params}
        return to_estimator_params(params)

    def estimator(self, params: dict[str, Any], rungs=None):
        """An unfitted estimator of (resolved) ``params``; ``rungs``: a RungStop callback."""
        cls = NeuralNetClassifier if self.rows.task == "classification" else NeuralNetRegressor
        callbacks = [("quiet", QuietCheckpoint())]
        if rungs is not None:
            callbacks.append(("rungs", rungs))
        return cls(random_state=self.seed, callbacks=callbacks, **params)

    def price(self, params: dict[str, Any]) -> Price:
        """The configuration's price before training (price/pricing.py), with this study's
        limits (:func:`price_cap`)."""
        cap = price_cap(self.max_latency)
        rows = self.rows
        return price(
            params, rows.X_train.shape[1], rows.n_outputs, self.cost_model, cap, self.max_key_size
        )

    def refit(self, params: dict[str, Any]):
        """The trial's configuration trained and compiled on the rows the shipped model learns
        from (:meth:`Rows.refit_rows`), its weight decay scaled by :meth:`refit_params`."""
        X, y = self.rows.refit_rows()
        model = self.estimator(self.refit_params(params)).fit(X, y)
        return model.compile(X)

    def refit_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` for the refit: the weight decay times (rows a trial's model trains on) /
        (refit rows), so that the regularization per row that won the selection holds.

        Training minimises the *mean* loss plus ``wd / 2 * |w|^2``; the same prior over more
        rows weighs less per row (what scikit-learn does when it refits a tuned C on all rows).
        Cross-validated with 3 folds, a trial's models train on 2/3 of the training +
        validation rows (53% of all rows) and the refit on every row: 0.53x the weight decay.
        """
        wd = params.get("optimizer__weight_decay") or 0.0
        if not wd:
            return params
        fit_rows = len(self.rows.fold_splits()[0][1])
        refit_rows = len(self.rows.refit_rows()[1])
        return {**params, "optimizer__weight_decay": wd * fit_rows / refit_rows}


def _finish(trial, reason: str | None, violated: dict[str, float]) -> None:
    """Set every constraint on every path (a trial without one counts as feasible)."""
    record_constraints(trial, {key: violated.get(key, 0.0) for key in CONSTRAINTS})
    record.write(trial, feasible=reason is None)
    record.write(trial, compile_ok=reason is None or "compile" not in violated)
    record.write(trial, reason=reason or "")


def set_phase(trial, what: str) -> None:
    """What the trial is doing now (system attribute ``autofhe_phase``), for the progress lines
    of ``search`` while it runs; a FixedTrial (tests) is never stored and has none."""
    if isinstance(trial, optuna.Trial):
        trial.storage.set_trial_system_attr(trial._trial_id, "autofhe_phase", what)


def _reject(trial, quote: Price) -> None:
    """A configuration that is never trained: its violated limit is recorded as a constraint
    (so the sampler learns to avoid the region) and the trial ends PRUNED, without values."""
    kind = quote.reason.split(":", 1)[0]
    amount = 1.0
    if kind == "latency" and np.isfinite(quote.latency_s):
        amount = float(quote.latency_s)  # further over the cap: further from feasible
    violated = {kind if kind in CONSTRAINTS else "compile": amount}
    _finish(trial, quote.reason, violated)
    record.write(trial, fidelity_epochs=0)
    record.write(trial, rejected_before_training=True)
    raise optuna.TrialPruned(quote.reason)


def objective(trial: optuna.Trial, ctx: SearchContext) -> tuple[float, float]:
    """Price, train (with rungs), compile and score one configuration; returns (metric,
    latency). Every returned value is real: the simulated metric (the clear one when the
    circuit does not compile) and the latency predicted from the compiled circuit (the price
    when it does not compile); ``metric_source`` / ``latency_source`` say which."""
    # Trials train tiny networks: one thread is as fast, and two threads on a busy 2-core
    # machine made a fit 20x slower (53 s against 2.7 s, measured): one thread per worker.
    torch.set_num_threads(1)
    params = ctx.params(suggest_raw(trial, ctx.space, ctx.linear))
    record.begin(trial, _jsonable(params))
    quote = ctx.price(params)
    record.write(trial, **quote.attrs())
    if quote.reason:
        _reject(trial, quote)

    splits = ctx.rows.fold_splits()
    folds = _fit_folds(trial, ctx, params, splits, quote.latency_s)
    if folds.uncompiled_metric is not None:  # real clear metric, priced latency
        return folds.uncompiled_metric, quote.latency_s
    models, clear, simulated, latencies = (
        folds.models,
        folds.clear,
        folds.simulated,
        folds.latencies,
    )
    splits = splits[: len(models)]  # an infeasible first fold stops the others
    y_val = np.concatenate([fold[3] for fold in splits])

    # The slowest fold's circuit stands for the configuration (latency, keys, report).
    model = models[int(np.argmax(latencies))]
    latency = max(latencies)
    classes = _classes(model)
    record.write(trial, folds=len(splits))
    record.write(trial, clear_valid=ctx.rows.metric_of(y_val, clear, classes))
    record.write(trial, accumulator_bits=model.accumulator_bits_)
    report = model.fhe_report()
    record.write(trial, **{key: report[key] for key in record.CIRCUIT_FIELDS})
    simulated_metric = ctx.rows.metric_of(y_val, simulated, classes)
    record.write(trial, simulated_valid=simulated_metric)
    if len(splits) > 1:
        per_fold = [
            ctx.rows.metric_of(fold[3], [out], classes) for fold, out in zip(splits, simulated)
        ]
        record.write(trial, simulated_valid_per_fold=per_fold)
    test = [ctx.rows.score(m, ctx.rows.X_test, ctx.rows.y_test, "disable") for m in models]
    record.write(trial, clear_test=float(np.mean(test)))
    record.write(trial, predicted_latency_s=latency)
    record.write(
        trial,
        metric_source=f"simulated (at most {SIMULATED_ROWS} rows per model; the bit-exact "
        "clear program on the rest)",
    )
    record.write(trial, latency_source="predicted")
    if latency > 0:
        record.write(trial, price_error=round(quote.latency_s / latency - 1, 4))

    violated, reasons = _limits(ctx, report, latency)
    _finish(trial, "; ".join(reasons) or None, violated)
    front = not violated and _enters_front(trial, simulated_metric, latency)
    if front and ctx.front_hook is not None:
        final, latency = _final_model(trial, ctx, params, model, latency)
        ctx.front_hook(trial, final, ctx.rows.X_valid, latency)
    return simulated_metric, latency


def _limits(ctx: SearchContext, report: dict, latency: float) -> tuple[dict, list[str]]:
    """Violated latency / key-size constraints (amount over) and their reasons."""
    keys = report["evaluation_keys_bytes"]  # as a client uploads them (compressed)
    return limit_violations(latency, keys, ctx.max_latency, ctx.max_key_size)


@dataclass
class Folds:
    """One model per fold, trained, compiled and simulated: clear and simulated validation
    outputs, predicted latencies; or, when a fold's circuit did not compile, that fold's clear
    metric (``uncompiled_metric``), the trial finished with the compile constraint violated."""

    models: list = field(default_factory=list)
    clear: list = field(default_factory=list)
    simulated: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    uncompiled_metric: float | None = None


def _fit_folds(trial, ctx: SearchContext, params: dict[str, Any], splits, price: float) -> Folds:
    """Train, compile and simulate one model per fold (:class:`Folds`). The first fold trains
    with rungs (fidelity.py): a trial its peers beat stops there, PRUNED."""
    models, clear, simulated, latencies = [], [], [], []
    seconds = {"train_s": 0.0, "compile_s": 0.0, "simulate_s": 0.0}

    def spent(key: str, t0: float) -> None:  # phase times summed over folds
        seconds[key] += time.perf_counter() - t0
        record.write(trial, **{key: round(seconds[key], 3)})

    for i, (X_fit, y_fit, X_val, y_val) in enumerate(splits):
        fold = f" (fold {i + 1} of {len(splits)})" if len(splits) > 1 else ""
        set_phase(trial, f"training{fold}")
        t0 = time.perf_counter()
        rungs = None
        if i == 0:
            rungs = RungStop(
                trial,
                price,
                score_fn=lambda net, X=X_val, y=y_val: ctx.rows.metric_of(
                    y, [ctx.rows.clear_outputs(net, X)], _classes(net)
                ),
                peers_fn=lambda epoch: _peers(trial, epoch, depth(params)),
            )
        model = ctx.estimator(params, rungs).fit(X_fit, y_fit)
        spent("train_s", t0)
        if i == 0:
            record.write(trial, fidelity_epochs=len(model.history_))
        if rungs is not None and rungs.stopped:
            _finish(trial, rungs.stopped, {})
            record.write(trial, feasible=False)
            raise optuna.TrialPruned(rungs.stopped)
        clear.append(ctx.rows.outputs(model, X_val, "disable"))
        if i == 0:  # a hopeless configuration stops after its first model
            _maybe_prune(trial, ctx.rows.metric_of(y_val, clear, _classes(model)), ctx.rows.metric)
        quiet.checkpoint()
        set_phase(trial, f"compiling{fold}")
        t0 = time.perf_counter()
        try:
            model.compile(X_fit)
        except CompilationError as exc:
            _finish(trial, f"compile: {str(exc).splitlines()[0]}", {"compile": 1.0})
            value = ctx.rows.metric_of(y_val, clear[-1:], _classes(model))
            record.write(trial, metric_source="clear")
            record.write(trial, latency_source="priced")
            return Folds(uncompiled_metric=value)
        spent("compile_s", t0)
        quiet.checkpoint()
        set_phase(trial, f"simulating{fold}")
        t0 = time.perf_counter()
        simulated.append(ctx.rows.simulated_outputs(model, X_val, clear[-1]))
        spent("simulate_s", t0)
        models.append(model)
        report = model.fhe_report()
        latencies.append(ctx.cost_model.predict(report))
        if _limits(ctx, report, latencies[-1])[0]:
            break  # infeasible whatever the other folds score
    return Folds(models, clear, simulated, latencies)


def _peers(trial, epoch: int, layers: int) -> list[tuple[float, float]]:
    study = getattr(trial, "study", None)  # FixedTrial has none
    return [] if study is None else peers_at(study, trial.number, epoch, layers)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v))
        for k, v in params.items()
    }


def _classes(model):
    return getattr(model, "classes_", None)


def _final_model(trial, ctx: SearchContext, params: dict[str, Any], model, latency: float):
    """The model a front trial ships and its latency objective: the refit
    (:meth:`SearchContext.refit_rows`) when that compiles within the study's limits (latency
    and keys), else ``model``, the one the trial scored, at its own ``latency``.

    The refit's accumulators, hence its lookups, differ from the fold models' (0.57-2.3x their
    latency, measured on real data): its circuit becomes the trial's record and its predicted
    latency the objective; the slowest fold's stays as ``fold_latency_s``.
    """
    set_phase(trial, "refitting the front model")
    t0 = time.perf_counter()
    try:
        final = ctx.refit(params)
    except AutofheError as exc:
        record.write(trial, refit_error=str(exc).splitlines()[0])
        return model, latency
    report = final.fhe_report()
    shipped = ctx.cost_model.predict(report)
    violated, reasons = _limits(ctx, report, shipped)
    if violated:  # the shipped model must keep the study's limits: the trial's model ships
        record.write(trial, refit_error=f"the refit model broke a limit: {'; '.join(reasons)}")
        return model, latency
    record.write(trial, fold_latency_s=latency)
    record.write(trial, **{key: report[key] for key in record.CIRCUIT_FIELDS})
    record.write(trial, accumulator_bits=final.accumulator_bits_)
    record.write(trial, predicted_latency_s=shipped)
    record.write(trial, latency_source="predicted (the shipped circuit)")
    record.write(trial, refit_s=round(time.perf_counter() - t0, 3))
    record.write(trial, refit_rows=len(ctx.rows.refit_rows()[1]))
    # what the refit trained with (refit_params scaled it): read back, not computed again
    record.write(trial, refit_weight_decay=final.get_params().get("optimizer__weight_decay", 0.0))
    if ctx.rows.folds <= 1:  # else the test rows are among the refit's: clear_test stands
        record.write(
            trial,
            final_clear_test=ctx.rows.score(final, ctx.rows.X_test, ctx.rows.y_test, "disable"),
        )
    record.write(trial, final_lookup_bits_per_layer=report["lookup_bits_per_layer"])
    return final, shipped


def _front_values(trial) -> list[tuple[float, float]]:
    study = getattr(trial, "study", None)  # FixedTrial has none
    if study is None:
        return []
    from autofhe.search.front.pareto import study_front

    return [tuple(t.values) for t in study_front(study)]


def _enters_front(trial, metric: float, latency: float) -> bool:
    """Strictly better than every front point somewhere (an equal point is already there)."""
    return not any(m >= metric and lat <= latency for m, lat in _front_values(trial))


def _maybe_prune(trial: optuna.Trial, clear: float, metric: str) -> None:
    if metric.startswith("neg_"):  # unbounded, in the target's units: no fixed margin fits
        return
    best = [m for m, _ in _front_values(trial)]
    if best and clear < max(best) - PRUNE_MARGIN:
        _finish(trial, f"pruned: clear validation metric {clear:.3f} far below the front", {})
        record.write(trial, feasible=False)
        raise optuna.TrialPruned(f"clear metric {clear:.3f} < best {max(best):.3f} - margin")
