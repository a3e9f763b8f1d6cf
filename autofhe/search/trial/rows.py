"""The study's rows as every trial sees them: one split per study (train, validation, test),
the folds when cross-validated, the rows a front model is refit on, and how outputs are
scored (the metrics a search may maximise)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics
from sklearn.model_selection import KFold, StratifiedKFold

from autofhe.errors import ParameterError

__all__ = ["METRICS", "SIMULATED_ROWS", "Rows", "evaluate_metric"]

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

#: Validation rows per model run through concrete's simulation (the rest: the clear program).
SIMULATED_ROWS = 128


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
class Rows:
    """One split of a study's data, the same in every worker (test rows never train)."""

    task: str
    metric: str
    X_train: np.ndarray
    X_valid: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_valid: np.ndarray
    y_test: np.ndarray
    #: 1: score on the validation split; k > 1: k-fold cross-validation over training +
    #: validation rows (folds drawn with a fixed seed, so every worker scores alike).
    folds: int = 1

    @property
    def n_outputs(self) -> int:
        if self.task == "classification":
            return len(np.unique(np.concatenate([self.y_train, self.y_valid])))
        return 1 if self.y_train.ndim == 1 else self.y_train.shape[1]

    def refit_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Training + validation rows; with cross-validation, every row.

        Selection used the validation rows; the model that ships learns from them too, which
        matters on small datasets. Cross-validated studies (small data) already have an
        honest test estimate from their fold models (``clear_test``, never trained on the
        test rows), so their shipped model learns from the test rows as well.
        """
        parts = [(self.X_train, self.y_train), (self.X_valid, self.y_valid)]
        if self.folds > 1:
            parts.append((self.X_test, self.y_test))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

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

    def clear_outputs(self, net, X) -> tuple[np.ndarray, np.ndarray | None]:
        """Outputs of a model still training (no integer program yet): its quantized module
        in inference mode, which computes what the integer program will."""
        from autofhe.search.trial.fidelity import clear_outputs  # torch: only where nets are

        return net.output_decoding().outputs(clear_outputs(net, X))

    def outputs(self, model, X, fhe: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and (classification) probabilities."""
        return model.output_decoding().outputs(model.predict_raw(X, fhe))

    def simulated_outputs(self, model, X, clear):
        """FHE-simulated outputs of at most :data:`SIMULATED_ROWS` rows (evenly spread), the
        clear integer program's elsewhere. The program is the circuit's function bit for bit;
        simulation adds what it cannot show, the rare PBS errors, at 10 ms a row, which on
        thousands of validation rows would cost more than the training."""
        rows = np.arange(len(X))
        if len(rows) > SIMULATED_ROWS:
            rows = np.linspace(0, len(X) - 1, SIMULATED_ROWS).astype(int)
        sim_pred, sim_proba = self.outputs(model, X[rows], "simulate")
        pred = np.array(clear[0], copy=True)
        pred[rows] = sim_pred
        proba = None
        if clear[1] is not None:
            proba = np.array(clear[1], copy=True)
            proba[rows] = sim_proba
        return pred, proba

    def metric_of(self, y, outputs: list[tuple[np.ndarray, np.ndarray | None]], classes=None):
        """The metric of several models' outputs on the concatenated rows ``y``."""
        pred = np.concatenate([o[0] for o in outputs])
        proba = None if outputs[0][1] is None else np.concatenate([o[1] for o in outputs])
        return evaluate_metric(self.metric, y, pred, proba, classes)

    def score(self, model, X, y, fhe: str) -> float:
        return self.metric_of(y, [self.outputs(model, X, fhe)], getattr(model, "classes_", None))
