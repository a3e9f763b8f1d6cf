"""The data-aware start of a study: what this data needs, measured in seconds.

Before its first trial a study fits two float models on its own training rows and scores them
on its validation rows: a linear model (logistic / ridge regression) and a one-hidden-layer
MLP. Their gap says how much a nonlinear boundary is worth here, and the study acts on it:

- the first trials (enqueued seeds) are hidden-layer networks of a few widths when the MLP
  wins by more than :data:`NONLINEAR_GAIN`, quantized linear models first otherwise (the
  other family always gets one seed too: the front needs both ends);
- hidden widths are searched as widths (2 to 16-64 neurons, more for wider inputs), not as
  multiples of the input width, so a 2-feature problem can have 16 neurons;
- the batch size gives every epoch about 8 optimizer steps, whatever the number of rows;
- the float linear model's regularization is tuned (3-fold CV over a grid, a fraction of a
  second) and translated into the weight decay that gives a network's weights the same
  penalty (:func:`weight_decay_of`), since the right amount depends on the rows and the
  noise of each dataset, which a fixed list cannot know. That value joins the weight-decay
  choices of hidden-layer networks, and it *is* the weight decay of networks without hidden
  layers (``linear`` in the plan, not drawn): such a network is the probe's model (softmax
  or squared loss on the features, L2 prior), quantized, whose regularization a convex
  solver has just tuned. Drawn, it was left to the trials' validation scores, which cannot
  separate it (digits, 4 bit widths, tuned 0.0044 against 0.001: cross-validated accuracy
  within 0.002 either way, the refit's held-out accuracy 0.5 points higher on average), and
  the sampler settled on whichever won first (0.001 for 183 of 217 linear trials);
- small data is cross-validated (3 folds under 1,500 rows), where one validation split would
  be too noisy to rank configurations.

The plan is stored with the study (user attribute ``autofhe_plan``), so every worker applies
the same one, and a user reads the probe in optuna-dashboard or ``autofhe studies``.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np

from autofhe.search.plan.space import DEFAULT_SPACE

__all__ = [
    "NONLINEAR_GAIN",
    "make_plan",
    "probe",
    "seed_slack",
    "seed_trials",
    "weight_decay_of",
]

#: The float MLP must beat the float linear model by this much (metric units) for the study
#: to start from hidden-layer networks.
NONLINEAR_GAIN = 0.015
#: Cross-validate when the training + validation rows are fewer than this.
CV_ROWS = 1500
CV_FOLDS = 3
STEPS_PER_EPOCH = 8
#: Above this many training rows, an epoch trains on this many rows drawn afresh (the
#: estimator's ``iterator_train__epoch_rows``): a trial's training then costs the same at
#: 50,000 rows as at 4,096, and ``max_epochs`` and the rungs count the same work at any size.
#: A 50,000-row study's seed trials trained 150 s each with whole-data epochs.
EPOCH_ROWS = 4096
_EPOCH_ROWS = "iterator_train__epoch_rows"
#: The probe's grids: inverse regularization C of logistic regression, alpha of ridge.
LOGISTIC_CS = np.logspace(-3, 2, 11)
RIDGE_ALPHAS = np.logspace(-3, 3, 13)
#: The data's weight decay is clipped into this range: below it, it is no different from no
#: decay; above it, the probe's linear model was regularized towards a constant (a linear
#: model with nothing to learn), which is no advice for a network.
WEIGHT_DECAY_RANGE = (1e-4, 1e-2)


def weight_decay_of(task: str, strength: float, n_rows: int) -> float:
    """The optimizer weight decay ``wd`` with the same minimiser as the probe's tuned linear
    model on ``n_rows`` rows, clipped into :data:`WEIGHT_DECAY_RANGE` (2 significant digits).

    Training minimises the mean loss, and a weight decay ``wd`` adds ``wd * w`` to each
    gradient: the penalty ``wd / 2 * |w|^2``. Logistic regression minimises
    ``|w|^2 / 2 + C * sum(loss)``, the same minimiser as ``mean(loss) + |w|^2 / (2 C n)``, so
    ``wd = 1 / (C n)`` (``strength`` is C). Ridge minimises ``sum(err^2) + alpha |w|^2``,
    that is ``mean(err^2) + alpha / n |w|^2``, so ``wd = 2 alpha / n`` (``strength`` is alpha;
    the target's scale does not move the minimiser).
    """
    wd = 1.0 / (strength * n_rows) if task == "classification" else 2.0 * strength / n_rows
    low, high = WEIGHT_DECAY_RANGE
    return float(f"{min(max(wd, low), high):.2g}")


def probe(
    task: str, metric: str, X_fit, y_fit, X_val, y_val, fit_rows: int | None = None
) -> dict[str, float]:
    """Validation metric of a float linear model (its regularization tuned on the training
    rows) and a float MLP, and the weight decay the linear model's tuning implies for a model
    trained on ``fit_rows`` rows (default: the training rows; seconds of work)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from autofhe.search.trial.rows import evaluate_metric

    t0 = time.perf_counter()
    if task == "classification":
        # stratified folds need each class in every fold; too few rows: no tuning (C = 1)
        folds = min(3, int(np.unique(y_fit, return_counts=True)[1].min()))
        linear = (
            LogisticRegressionCV(Cs=LOGISTIC_CS, cv=folds, max_iter=2000)
            if folds >= 2
            else LogisticRegression(max_iter=2000)
        )
        mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=0)
    else:
        linear = RidgeCV(alphas=RIDGE_ALPHAS)
        mlp = MLPRegressor(hidden_layer_sizes=(32,), max_iter=1000, random_state=0)
    scores = {}
    for name, model in (("float_linear", linear), ("float_mlp", mlp)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = make_pipeline(StandardScaler(), model).fit(X_fit, y_fit)
        pred = pipe.predict(X_val)
        proba = pipe.predict_proba(X_val) if task == "classification" else None
        classes = pipe.classes_ if task == "classification" else None
        scores[name] = round(evaluate_metric(metric, y_val, pred, proba, classes), 6)
    scores["gain"] = round(scores["float_mlp"] - scores["float_linear"], 6)
    # make_pipeline fits the model in place; untuned (too few rows per class): C = 1
    strength = linear.alpha_ if task != "classification" else getattr(linear, "C_", [1.0])[0]
    scores["weight_decay"] = weight_decay_of(task, float(strength), fit_rows or len(y_fit))
    scores["probe_s"] = round(time.perf_counter() - t0, 3)
    return scores


def _width_range(n_features: int) -> tuple[int, int]:
    return 2, int(np.clip(2 * n_features, 16, 64))


def seed_slack(fan_in: int) -> int:
    """Accumulator bits above the one-term minimum for a first layer of ``fan_in`` inputs:
    half of ``log2(fan_in)``, rounded up (1 for 2 inputs, 3 for 64).

    The minimum budget holds one product of a largest weight and a largest input, and
    pruning keeps per neuron the largest products that fit. Trained low-bit weights are
    mostly small or zero, so a neuron needs far fewer bits than ``log2(fan_in)`` before the
    budget stops cutting into it; measured (3-bit weights, 12 hidden neurons, 60 epochs), the
    share of first-layer weights kept stops growing at slack 3 for 64 inputs (digits: 13%
    kept at 1, 53% at 3), 3 for 30 (breast_cancer: 26%, 73%) and 2 for 13 (wine: 57%, 84%),
    which this rule gives. At the former fixed seed slack of 1, the seed network scored 0.87
    on digits where slack 3 scored 0.97 (breast_cancer: 0.94 against 0.97).
    """
    return max(1, math.ceil(0.5 * math.log2(max(fan_in, 2))))


def seed_trials(
    nonlinear: bool, n_features: int, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """The study's first configurations (trial parameters), most promising family first;
    linear models take ``weight_decay`` (the data's, from :func:`probe`)."""
    common = {"power_of_two_scaling": True, "lr_schedule": "cosine", "optimizer__weight_decay": 0.0}
    linear = [
        {
            **common,
            "module__n_layers": 1,
            "n_w_bits": w,
            "n_a_bits": a,
            "accum_slack": 4,
            "lr": 0.02,
            "max_epochs": 100,
            "optimizer__weight_decay": weight_decay,
        }
        for w, a in ((6, 4), (4, 3))
    ]
    # Narrow accumulators and 5-bit lookups: the cheapest lookups that keep a small network's
    # decisions; long cosine schedules and two starts steady tiny networks, whose single runs
    # often stall.
    hidden = [
        {
            **common,
            "module__n_layers": 2,
            "module__activation_function": "ReLU",
            "module__n_hidden_neurons_multiplier": w / n_features,
            "n_w_bits": 3,
            "n_a_bits": 4,
            "accum_slack": seed_slack(n_features),
            "module__lookup_bits": 5,
            "lr": 0.02,
            "max_epochs": 300,
            "n_init": 2,
        }
        for w in (6, 12, 24)
    ]
    # the other family's seed: the middle width, which a 10-class output does not bottleneck
    return hidden + linear[:1] if nonlinear else linear + hidden[1:2]


def make_plan(
    task: str,
    metric: str,
    parts: tuple,
    space: dict[str, Any],
    fixed: dict[str, Any],
    folds: int | None,
) -> dict[str, Any]:
    """The plan of a new study from its split ``parts`` (X_train, X_valid, X_test, y_...)."""
    X_train, X_valid, _, y_train, y_valid, _ = parts
    n_features, n_rows = X_train.shape[1], len(X_train) + len(X_valid)
    if folds is None:
        folds = CV_FOLDS if n_rows < CV_ROWS else 1
    # the rows a trial's model trains on: its weight decay is expressed for that many
    fit_rows = n_rows * (folds - 1) // folds if folds > 1 else len(X_train)
    scores = probe(task, metric, X_train, y_train, X_valid, y_valid, fit_rows)
    nonlinear = scores["gain"] > NONLINEAR_GAIN
    overrides: dict[str, Any] = {}
    name = "module__n_hidden_neurons_multiplier"
    if space.get(name) == DEFAULT_SPACE[name]:  # the user did not choose widths
        low, high = _width_range(n_features)
        overrides[name] = {"low": low / n_features, "high": high / n_features, "log": True}
    name = "optimizer__weight_decay"
    linear = {}
    if space.get(name) == DEFAULT_SPACE[name]:  # the user did not choose weight decays
        overrides[name] = sorted({*DEFAULT_SPACE[name], scores["weight_decay"]})
        linear[name] = scores["weight_decay"]
    plan_fixed: dict[str, Any] = {}
    epoch_rows = len(X_train)
    if len(X_train) > EPOCH_ROWS and _EPOCH_ROWS not in fixed and _EPOCH_ROWS not in space:
        plan_fixed[_EPOCH_ROWS] = epoch_rows = EPOCH_ROWS
    if "batch_size" not in fixed and "batch_size" not in space:
        plan_fixed["batch_size"] = int(np.clip(epoch_rows // STEPS_PER_EPOCH, 16, 1024))
    return {
        "probe": scores,
        "nonlinear": bool(nonlinear),
        "space": overrides,
        "fixed": plan_fixed,
        "linear": linear,
        "folds": int(folds),
        "seeds": seed_trials(nonlinear, n_features, scores["weight_decay"]),
    }


def project(params: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The part of ``params`` a space can hold: a value in a range is clipped into it (the
    user narrowed it on purpose), a choice the list lacks is left to the sampler."""
    out = {}
    for key, value in params.items():
        entry = space.get(key)
        if isinstance(entry, dict) and not isinstance(value, (bool, str)):
            value = min(max(value, entry["low"]), entry["high"])
            if isinstance(entry["low"], int) and isinstance(entry["high"], int):
                value = round(value)
            out[key] = value
        elif isinstance(entry, list) and value in entry:
            out[key] = value
    return out
