"""One trial: fit -> compile -> simulate -> latency -> constraints -> user attributes.

Objectives: the metric of the FHE-simulated predictions on the validation split (maximised)
and the predicted FHE latency per sample (minimised). With ``folds`` > 1 the validation metric
is cross-validated instead: k models, each trained on k-1 folds of the training + validation
rows, and the metric of their simulated predictions on all those rows (out of fold), which is
less noisy on small data than one validation split of a few dozen rows. A trial entering the
Pareto front is refit on training + validation rows; that model is the one measured, stored
and exported.
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
from sklearn import metrics
from sklearn.model_selection import KFold, StratifiedKFold

from autofhe.errors import AutofheError, CompilationError, ParameterError
from autofhe.fhe.latency import CostModel
from autofhe.nn.estimators import NeuralNetClassifier, NeuralNetRegressor
from autofhe.nn.module import hidden_width, resolve_activation
from autofhe.nn.pruning import check_budget, input_max_abs
from autofhe.search.space import suggest, to_estimator_params

__all__ = ["METRICS", "SearchContext", "evaluate_metric", "objective"]

#: metric name -> (task, needs probabilities)
METRICS = {
    "accuracy": ("classification", False),
    "balanced_accuracy": ("classification", False),
    "f1": ("classification", False),
    "roc_auc": ("classification", True),
    "r2": ("regression", False),
    "neg_mean_squared_error": ("regression", False),
    "neg_mean_absolute_error": ("regression", False),
}

#: A trial whose clear validation metric is this far below the best feasible one is pruned
#: before compilation (Optuna has no pruner for multi-objective studies).
PRUNE_MARGIN = 0.25


def evaluate_metric(name: str, y_true, y_pred=None, proba=None, classes=None) -> float:
    if name == "accuracy":
        return float(metrics.accuracy_score(y_true, y_pred))
    if name == "balanced_accuracy":
        return float(metrics.balanced_accuracy_score(y_true, y_pred))
    if name == "f1":
        binary = len(classes) == 2
        return float(
            metrics.f1_score(
                y_true,
                y_pred,
                average="binary" if binary else "macro",
                pos_label=classes[-1] if binary else 1,
            )
        )
    if name == "roc_auc":
        if len(classes) == 2:
            return float(metrics.roc_auc_score(y_true == classes[-1], proba[:, 1]))
        return float(metrics.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes))
    if name == "r2":
        return float(metrics.r2_score(y_true, y_pred))
    if name == "neg_mean_squared_error":
        return -float(metrics.mean_squared_error(y_true, y_pred))
    if name == "neg_mean_absolute_error":
        return -float(metrics.mean_absolute_error(y_true, y_pred))
    raise ParameterError(f"unknown metric {name!r}; use one of {', '.join(METRICS)}.")


@dataclass
class SearchContext:
    """Everything a trial needs besides its parameters."""

    task: str
    metric: str
    X_train: np.ndarray
    X_valid: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_valid: np.ndarray
    y_test: np.ndarray
    space: dict[str, Any]
    cost_model: CostModel
    max_latency: float | None = None
    max_key_size: float = 4e9
    seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)
    #: 1: score on the validation split; k > 1: k-fold cross-validation over training +
    #: validation rows (folds drawn with a fixed seed, so every worker scores alike).
    folds: int = 1
    #: Called as ``front_hook(trial, model, X_valid, predicted_latency)`` for a trial entering
    #: the Pareto front, with the model refit on training + validation rows (the study
    #: measures its latency and stores it there).
    front_hook: Callable | None = None

    def estimator(self, params: dict[str, Any]):
        cls = NeuralNetClassifier if self.task == "classification" else NeuralNetRegressor
        merged = to_estimator_params({**self.fixed, **params})
        return cls(random_state=self.seed, **merged)

    def refit(self, params: dict[str, Any]):
        """The trial's configuration trained and compiled on training + validation rows.

        Selection used the validation rows; the model that ships learns from them too (the
        test rows stay unseen), which matters on small datasets.
        """
        X = np.concatenate([self.X_train, self.X_valid])
        y = np.concatenate([self.y_train, self.y_valid])
        model = self.estimator(params).fit(X, y)
        return model.compile(X)

    def fold_splits(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """``(X_fit, y_fit, X_val, y_val)`` per fold: the validation split when ``folds`` is 1,
        else k (stratified) folds over training + validation rows; the test rows stay out."""
        if self.folds <= 1:
            return [(self.X_train, self.y_train, self.X_valid, self.y_valid)]
        X = np.concatenate([self.X_train, self.X_valid])
        y = np.concatenate([self.y_train, self.y_valid])
        if self.task == "classification":
            # every class must be in every fold's training rows
            k = max(2, min(self.folds, int(np.unique(y, return_counts=True)[1].min())))
            splitter = StratifiedKFold(k, shuffle=True, random_state=0)
        else:
            splitter = KFold(min(self.folds, len(y)), shuffle=True, random_state=0)
        return [(X[fit], y[fit], X[val], y[val]) for fit, val in splitter.split(X, y)]

    def outputs(self, model, X, fhe: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and (classification) probabilities."""
        if self.task == "regression":
            return model.predict(X, fhe=fhe), None
        proba = model.predict_proba(X, fhe=fhe)
        return model.classes_[proba.argmax(axis=1)], proba

    def metric_of(self, y, outputs: list[tuple[np.ndarray, np.ndarray | None]], classes=None):
        """The metric of several models' outputs on the concatenated rows ``y``."""
        pred = np.concatenate([o[0] for o in outputs])
        proba = None if outputs[0][1] is None else np.concatenate([o[1] for o in outputs])
        return evaluate_metric(self.metric, y, pred, proba, classes)

    def score(self, model, X, y, fhe: str) -> float:
        return self.metric_of(y, [self.outputs(model, X, fhe)], getattr(model, "classes_", None))


CONSTRAINTS = ("budget", "compile", "latency", "key_size")


def _finish(trial, reason: str | None, violated: dict[str, float]) -> None:
    """Set every constraint on every path (a trial without one counts as feasible)."""
    from autofhe.search.feasibility import record_constraints  # also what the dashboard reads

    record_constraints(trial, {key: violated.get(key, 0.0) for key in CONSTRAINTS})
    trial.set_user_attr("feasible", reason is None)
    trial.set_user_attr("compile_ok", reason is None or "compile" not in violated)
    trial.set_user_attr("reason", reason or "")


def _precheck(params: dict[str, Any], n_features: int) -> str | None:
    """Cheap checks before training: an impossible budget, a lookup no circuit can hold."""
    try:
        activation = resolve_activation(params.get("module__activation_function", "ReLU"))()
        import torch

        grid = torch.linspace(-100, 100, 2001)
        signed = bool(activation(grid).min() < 0)
        n_a, n_layers = params.get("n_a_bits", 3), params.get("module__n_layers", 2)
        maxes = [input_max_abs(n_a, True)] + [input_max_abs(n_a, signed)] * (n_layers > 1)
        check_budget(params.get("n_accum_bits"), params.get("n_w_bits", 3), maxes)
    except AutofheError as exc:
        return str(exc)
    width = hidden_width(n_features, params.get("module__n_hidden_neurons_multiplier", 4))
    if params.get("module__n_layers", 2) > 1 and width > 1024:
        return f"hidden width {width} is over 1024 lookups per layer; lower the multiplier"
    return None


def objective(trial: optuna.Trial, ctx: SearchContext) -> tuple[float, float]:
    """Train, compile and score one configuration; returns (metric, predicted latency)."""
    params = suggest(trial, ctx.space)
    worst = (-1e9 if ctx.metric.startswith("neg_") else -1.0, 1e6)
    reason = _precheck({**ctx.fixed, **params}, ctx.X_train.shape[1])
    if reason:
        _finish(trial, f"budget: {reason}", {"budget": 1.0})
        return worst

    splits = ctx.fold_splits()
    folds = _fit_folds(trial, ctx, params, splits)
    if folds is None:
        return worst
    models, clear, simulated, latencies = folds
    splits = splits[: len(models)]  # an infeasible first fold stops the others
    y_val = np.concatenate([fold[3] for fold in splits])

    # The slowest fold's circuit stands for the configuration (latency, keys, report).
    model = models[int(np.argmax(latencies))]
    latency = max(latencies)
    classes = _classes(model)
    trial.set_user_attr("folds", len(splits))
    trial.set_user_attr("clear_valid", ctx.metric_of(y_val, clear, classes))
    trial.set_user_attr("accumulator_bits", model.accumulator_bits_)
    report = model.fhe_report()
    for key in (
        "pbs_count",
        "lookups_per_layer",
        "lookup_bits_per_layer",
        "max_lookup_bits",
        "max_bit_width",
        "complexity",
        "size_of_evaluation_keys",
        "bit_exact",
    ):
        trial.set_user_attr(key, report[key])
    simulated_metric = ctx.metric_of(y_val, simulated, classes)
    trial.set_user_attr("simulated_valid", simulated_metric)
    if len(splits) > 1:
        trial.set_user_attr(
            "simulated_valid_per_fold",
            [ctx.metric_of(fold[3], [out], classes) for fold, out in zip(splits, simulated)],
        )
    test = [ctx.score(m, ctx.X_test, ctx.y_test, "disable") for m in models]
    trial.set_user_attr("clear_test", float(np.mean(test)))
    trial.set_user_attr("predicted_latency_s", latency)

    violated, reasons = _limits(ctx, report, latency)
    _finish(trial, "; ".join(reasons) or None, violated)
    front = not violated and _enters_front(trial, simulated_metric, latency)
    if front and ctx.front_hook is not None:
        ctx.front_hook(trial, _final_model(trial, ctx, params, model), ctx.X_valid, latency)
    return simulated_metric, latency


def _limits(ctx: SearchContext, report: dict, latency: float) -> tuple[dict, list[str]]:
    """Violated latency / key-size constraints (amount over) and their reasons."""
    violated, reasons = {}, []
    if ctx.max_latency is not None and latency > ctx.max_latency:
        violated["latency"] = latency - ctx.max_latency
        reasons.append(f"latency: predicted {latency:.3f} s > max {ctx.max_latency} s")
    keys = report["size_of_evaluation_keys"]
    if keys > ctx.max_key_size:
        violated["key_size"] = (keys - ctx.max_key_size) / 1e9
        reasons.append(f"key_size: {keys / 1e9:.1f} GB > max {ctx.max_key_size / 1e9:.1f} GB")
    return violated, reasons


def _fit_folds(trial, ctx: SearchContext, params: dict[str, Any], splits) -> tuple | None:
    """Train, compile and simulate one model per fold: (models, clear outputs, simulated
    outputs, predicted latencies), or None when a fold does not compile (trial finished)."""
    models, clear, simulated, latencies = [], [], [], []
    seconds = {"train_s": 0.0, "compile_s": 0.0, "simulate_s": 0.0}

    def spent(key: str, t0: float) -> None:  # phase times summed over folds
        seconds[key] += time.perf_counter() - t0
        trial.set_user_attr(key, round(seconds[key], 3))

    for i, (X_fit, y_fit, X_val, y_val) in enumerate(splits):
        t0 = time.perf_counter()
        model = ctx.estimator(params).fit(X_fit, y_fit)
        spent("train_s", t0)
        clear.append(ctx.outputs(model, X_val, "disable"))
        if i == 0:  # a hopeless configuration stops after its first model
            _maybe_prune(trial, ctx.metric_of(y_val, clear, _classes(model)), ctx.metric)
        t0 = time.perf_counter()
        try:
            model.compile(X_fit)
        except CompilationError as exc:
            _finish(trial, f"compile: {str(exc).splitlines()[0]}", {"compile": 1.0})
            return None
        spent("compile_s", t0)
        t0 = time.perf_counter()
        simulated.append(ctx.outputs(model, X_val, "simulate"))
        spent("simulate_s", t0)
        models.append(model)
        report = model.fhe_report()
        latencies.append(ctx.cost_model.predict(report))
        if _limits(ctx, report, latencies[-1])[0]:
            break  # infeasible whatever the other folds score
    return models, clear, simulated, latencies


def _classes(model):
    return getattr(model, "classes_", None)


def _final_model(trial, ctx: SearchContext, params: dict[str, Any], model):
    """The model a front trial ships: refit on training + validation rows when that compiles
    within the limits, else the one the trial scored."""
    t0 = time.perf_counter()
    try:
        final = ctx.refit(params)
    except AutofheError as exc:
        trial.set_user_attr("refit_error", str(exc).splitlines()[0])
        return model
    if final.fhe_report()["size_of_evaluation_keys"] > ctx.max_key_size:
        trial.set_user_attr("refit_error", "refit model's keys are over max_key_size")
        return model
    trial.set_user_attr("refit_s", round(time.perf_counter() - t0, 3))
    trial.set_user_attr("final_clear_test", ctx.score(final, ctx.X_test, ctx.y_test, "disable"))
    trial.set_user_attr("final_lookup_bits_per_layer", final.fhe_report()["lookup_bits_per_layer"])
    return final


def _front_values(trial) -> list[tuple[float, float]]:
    study = getattr(trial, "study", None)  # FixedTrial has none
    if study is None:
        return []
    from autofhe.search.pareto import pareto_front

    return [tuple(t.values) for t in pareto_front(study.get_trials(deepcopy=False))]


def _enters_front(trial, metric: float, latency: float) -> bool:
    """Strictly better than every front point somewhere (an equal point is already there)."""
    return not any(m >= metric and lat <= latency for m, lat in _front_values(trial))


def _maybe_prune(trial: optuna.Trial, clear: float, metric: str) -> None:
    if metric.startswith("neg_"):  # unbounded, in the target's units: no fixed margin fits
        return
    best = [m for m, _ in _front_values(trial)]
    if best and clear < max(best) - PRUNE_MARGIN:
        _finish(trial, f"pruned: clear validation metric {clear:.3f} far below the front", {})
        trial.set_user_attr("feasible", False)
        raise optuna.TrialPruned(f"clear metric {clear:.3f} < best {max(best):.3f} - margin")
