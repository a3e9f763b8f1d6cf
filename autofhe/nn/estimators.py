"""NeuralNetClassifier / NeuralNetRegressor: thin skorch subclasses with a scikit-learn API.

Training runs the quantization-aware :class:`~autofhe.nn.module.QuantMLP`. Prediction runs the
trained network's integer program (:mod:`autofhe.fhe.program`, built by :mod:`autofhe.nn.export`),
the same function the FHE circuit computes, so the clear accuracy a user sees is the accuracy
under encryption. ``compile`` makes a :class:`~autofhe.fhe.model.CompiledModel` (program,
circuit, output decoding), the torch-free value that bundles, latency and the search use.
"""

from __future__ import annotations

import copy

import numpy as np
import skorch
import torch
from sklearn.utils import check_random_state
from skorch.callbacks import LRScheduler
from torch import nn

from autofhe.data import check_X, check_Xy
from autofhe.errors import DataError, NotCompiledError, NotFittedError, ParameterError
from autofhe.fhe.model import CompiledModel, Decoding, check_mode, compile_model
from autofhe.fhe.program import IntegerProgram, softmax
from autofhe.nn.export import build_program
from autofhe.nn.module import QuantMLP, resolve_activation, validate_module_params
from autofhe.nn.training import (
    INIT_ROWS,
    KeepBestEpoch,
    LeanSteps,
    QuietPrintLog,
    TensorBatches,
)
from autofhe.params import PARAMS, check_param

__all__ = ["NeuralNetClassifier", "NeuralNetRegressor"]

#: The seed's documented module defaults (from :data:`autofhe.params.PARAMS`).
MODULE_DEFAULTS = {
    "module__n_layers": PARAMS["module__n_layers"].default,
    "module__activation_function": getattr(nn, PARAMS["module__activation_function"].default),
    "module__n_hidden_neurons_multiplier": PARAMS["module__n_hidden_neurons_multiplier"].default,
}
_INFERRED = ("module__input_dim", "module__n_outputs")


class _QuantNet(LeanSteps):
    """What both estimators share: parameters, seeding, the module and the integer program."""

    def _init_quant(
        self,
        kwargs,
        n_w_bits,
        n_a_bits,
        n_accum_bits,
        power_of_two_scaling,
        lr_schedule,
        n_init,
        random_state,
    ):
        for key in _INFERRED:
            if key in kwargs:
                raise TypeError(
                    f"{key} is inferred from the data in fit; remove it from the parameters."
                )
        if "compile" in kwargs:
            raise TypeError(
                "compile is not a parameter here: model.compile(X) compiles the fitted model to "
                "a TFHE circuit (torch.compile does not apply to quantized modules)."
            )
        for key, value in MODULE_DEFAULTS.items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("iterator_train__shuffle", True)
        self.n_w_bits = n_w_bits
        self.n_a_bits = n_a_bits
        self.n_accum_bits = n_accum_bits
        self.power_of_two_scaling = power_of_two_scaling
        self.lr_schedule = lr_schedule
        self.n_init = n_init
        self.random_state = random_state
        return kwargs

    def get_default_callbacks(self):
        # Without a validation split the validation scorers only read an empty history (a
        # tenth of a millisecond per epoch each). skorch's valid_acc calls predict, which runs
        # the integer program, built after training: with a split, valid_loss scores it.
        idle = {"valid_loss", "valid_acc"} if self.train_split is None else {"valid_acc"}
        callbacks = [
            (name, QuietPrintLog() if name == "print_log" else cb)
            for name, cb in super().get_default_callbacks()
            if name not in idle
        ]
        callbacks.append(("best_epoch", KeepBestEpoch()))
        if self.lr_schedule == "cosine":
            scheduler = LRScheduler(
                policy=torch.optim.lr_scheduler.CosineAnnealingLR, T_max=self.max_epochs
            )
            callbacks.append(("lr_schedule", scheduler))
        return callbacks

    # -- skorch hooks -------------------------------------------------------------------------
    def initialize_module(self):
        kwargs = self.get_params_for("module")
        kwargs.update(
            input_dim=self.n_features_in_,
            n_outputs=self._n_module_outputs,
            n_w_bits=self.n_w_bits,
            n_a_bits=self.n_a_bits,
            n_accum_bits=self.n_accum_bits,
            power_of_two_scaling=self.power_of_two_scaling,
        )
        self.module_ = self.initialized_instance(self.module, kwargs)
        return self

    def torch_compile(self, module, name):
        return module

    # -- training -----------------------------------------------------------------------------
    def _check_params(self) -> None:
        """Fail before any training on out-of-range hyperparameters."""
        validate_module_params(
            self.module__n_layers,
            self.module__n_hidden_neurons_multiplier,
            self.n_w_bits,
            self.n_a_bits,
            self.n_accum_bits,
            getattr(self, "module__lookup_bits", None),
        )
        resolve_activation(self.module__activation_function)
        # the knobs the module does not check, against the same table as the search space
        for name in ("lr_schedule", "n_init", "batch_size", "lr", "max_epochs"):
            check_param(name, getattr(self, name))
        check_param("optimizer__weight_decay", getattr(self, "optimizer__weight_decay", 0.0))
        epoch_rows = self.get_params_for("iterator_train").get("epoch_rows")
        if epoch_rows is not None and (
            isinstance(epoch_rows, bool) or not isinstance(epoch_rows, int) or epoch_rows < 1
        ):
            raise ParameterError(
                f"iterator_train__epoch_rows={epoch_rows!r} must be a positive integer (rows "
                "drawn afresh for every epoch) or None for every row."
            )

    def _fit_quant(self, X, y_train, *, reinit: bool, **fit_params):
        self._check_params()
        random_state = check_random_state(self.random_state)
        seeds = [int(random_state.randint(np.iinfo(np.int32).max)) for _ in range(self.n_init)]
        rows = None
        best = None  # (training loss, module state, history)
        self._interrupted = False
        for seed in seeds if reinit or not self.initialized_ else seeds[:1]:
            # A private RNG stream: same seed + same data = the same model, and the caller's
            # global torch RNG is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if reinit or not self.initialized_:
                    self.initialize()
                    rows = torch.randperm(len(X))[:INIT_ROWS].numpy()
                    self.module_.data_init(
                        torch.from_numpy(X[rows]),
                        torch.from_numpy(self._init_targets(y_train[rows])),
                        weight_decay=getattr(self, "optimizer__weight_decay", 0.0) or 0.0,
                        classification=self._classification,
                    )
                skorch.NeuralNet.partial_fit(self, X, y_train, **fit_params)
            if len(seeds) > 1 and rows is not None:
                loss = self._quantized_loss(X[rows], y_train[rows])
                if best is None or loss < best[0]:
                    best = (loss, copy.deepcopy(self.module_.state_dict()), self.history_)
            if self._interrupted:  # a callback stopped training: start no other run
                break
        if best is not None:
            self.module_.load_state_dict(best[1])
            self.history_ = best[2]
        self.__dict__.pop("fhe_model_", None)
        self.program_ = build_program(self.module_)
        self.accumulator_bits_ = self.program_.accumulator_bits
        return self

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # skorch ends training quietly when a callback raises KeyboardInterrupt (on_train_end
        # still runs, so the best epoch is restored); remember it so n_init stops too.
        try:
            return super().fit_loop(X, y, epochs, **fit_params)
        except KeyboardInterrupt:
            self._interrupted = True
            raise

    @torch.no_grad()
    def _quantized_loss(self, X, y) -> float:
        """The criterion of the quantized network in inference mode (what predict runs).

        Once the quantizers are calibrated (``data_init``) the module computes the same
        function in training and inference mode, so this leaves its mode alone: switching a
        brevitas module's mode walks its ~160 submodules (a millisecond, twice per epoch).
        """
        loss = float(self.criterion_(self.module_(torch.as_tensor(X)), torch.as_tensor(y)))
        return loss if np.isfinite(loss) else np.inf

    def _set_training(self, training=True):
        # skorch sets the mode before every batch; only switch when it changes (see above).
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, nn.Module) and module.training != training:
                module.train(training)

    def get_iterator(self, dataset, training=False):
        """skorch's iterator, or for training on in-memory arrays, plain tensor slices.

        A ``DataLoader`` fetches and collates rows one by one: on small data that costs as
        much as the training step. Slices of the whole tensors give batches of the same kind
        (the rows shuffled from the torch RNG, the last batch short) at a fraction of the
        cost. Any other iterator option (``drop_last``, ``num_workers``, ...), another
        iterator or dataset, or a validation split: skorch's own loader.
        """
        kwargs = self.get_params_for("iterator_train") if training else {}
        epoch_rows = kwargs.pop("epoch_rows", None)
        batch_size = kwargs.pop("batch_size", self.batch_size)
        batch_size = len(dataset) if batch_size == -1 else int(batch_size)
        if (
            training
            and self.iterator_train is torch.utils.data.DataLoader
            and type(dataset) is skorch.dataset.Dataset
            and isinstance(dataset.X, np.ndarray)
            and isinstance(dataset.y, np.ndarray)
            and set(kwargs) <= {"shuffle"}
        ):
            return TensorBatches(
                torch.from_numpy(dataset.X),
                torch.from_numpy(dataset.y),
                batch_size,
                bool(kwargs.get("shuffle", False)),
                epoch_rows,
            )
        if training and epoch_rows is not None and epoch_rows < len(dataset):
            kwargs.pop("shuffle", None)  # the sampler draws the epoch's rows at random
            sampler = torch.utils.data.RandomSampler(dataset, num_samples=int(epoch_rows))
            return self.iterator_train(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        if training:
            return self.iterator_train(dataset, batch_size=batch_size, **kwargs)
        return super().get_iterator(dataset, training)

    def fit(self, X, y, **fit_params):
        """Train from scratch (or continue, with ``warm_start=True``); returns self."""
        return self._fit_first(X, y, None, reinit=not self.warm_start, **fit_params)

    def _fit_first(self, X, y, classes, *, reinit: bool, **fit_params):
        X, y = check_Xy(X, y, classification=self._classification)
        y_train = self._prepare_targets(y, first=True, classes=classes)
        self.n_features_in_ = X.shape[1]
        return self._fit_quant(X, y_train, reinit=reinit, **fit_params)

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train ``max_epochs`` more epochs on (X, y) without re-initialising; returns self.

        The first call on an unfitted estimator behaves like ``fit``; ``classes`` (classifier)
        may list every class that later calls will bring.
        """
        if not hasattr(self, "program_"):
            return self._fit_first(X, y, classes, reinit=True, **fit_params)
        X, y = check_Xy(
            X,
            y,
            classification=self._classification,
            n_features=self.n_features_in_,
            estimator=type(self).__name__,
        )
        y_train = self._prepare_targets(y, first=False)
        return self._fit_quant(X, y_train, reinit=False, **fit_params)

    # -- prediction ---------------------------------------------------------------------------
    @property
    def program(self) -> IntegerProgram:
        """The integer program of the fitted model."""
        if not hasattr(self, "program_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(X, y) before using it."
            )
        return self.program_

    # -- FHE ----------------------------------------------------------------------------------
    def compile(
        self,
        X,
        *,
        p_error: float | None = None,
        configuration=None,
        rounding: str = "auto",
        lookup_bits: int | None = None,
        compress: bool = True,
    ):
        """Compile the fitted model to a TFHE circuit; returns self.

        Parameters
        ----------
        X : array-like, representative inputs (the training set is a good choice).
        p_error : per-lookup error probability (default: concrete-python's).
        configuration : a ``concrete.fhe.Configuration`` (e.g. with a key cache for tests).
        rounding : "auto" (truncate wide accumulators where the outputs on ``X`` barely
            change; bit-exact), "none" (lookups on whole accumulators), or "approximate"
            (concrete's approximate rounding: one PBS per neuron, but on wider parameters,
            so rarely faster; not bit-exact, judge it by ``fhe="simulate"``).
        lookup_bits : force every table lookup to at most this many bits. Default: the
            ``module__lookup_bits`` the model was trained for, if any (then training already
            saw the truncation this compiles).
        compress : serialize evaluation keys and encrypted inputs compressed (seeded), as a
            client uploads them: 3-7x smaller keys, inputs ~80x smaller. False opts out.

        After compiling, ``predict(X, fhe="disable")`` runs the compiled integer program (the
        same function the circuit computes, rounding included).
        """
        program = self.program
        X = check_X(X, n_features=program.n_features, estimator=type(self).__name__)
        if lookup_bits is None and rounding != "none":
            lookup_bits = self.module_.lookup_bits
        self.fhe_model_ = compile_model(
            program,
            X,
            self.output_decoding(),
            p_error=p_error,
            configuration=configuration,
            rounding=rounding,
            lookup_bits=lookup_bits,
            params=self.get_params(deep=False),
            compress=compress,
        )
        return self

    @property
    def compiled_model(self) -> CompiledModel:
        """The compiled model: integer program, circuit and output decoding (torch-free)."""
        self._check_compiled("compiled_model")
        return self.fhe_model_

    @property
    def fhe_circuit(self):
        """The compiled ``concrete.fhe.Circuit``."""
        self._check_compiled("fhe_circuit")
        return self.fhe_model_.circuit

    def fhe_report(self) -> dict:
        """PBS count, lookup precisions, bit widths, complexity, key sizes, p_error."""
        self._check_compiled("fhe_report")
        return dict(self.fhe_model_.report)

    def save(self, directory) -> None:
        """Write the compiled model as a deployable bundle (see :mod:`autofhe.fhe.bundle`)."""
        from autofhe.fhe.bundle import save_bundle

        self._check_compiled("save")
        save_bundle(self.fhe_model_, directory)

    def _check_compiled(self, what: str) -> None:
        self.program  # noqa: B018 -- not-fitted comes first
        if not hasattr(self, "fhe_model_"):
            raise NotCompiledError(
                f"{what} needs a compiled model; call model.compile(X_train) first."
            )

    def predict_raw(self, X, fhe: str = "disable") -> np.ndarray:
        """Real-valued outputs of the integer program (logits, or standardized targets) in
        the clear, simulated or encrypted; :meth:`output_decoding` turns them into
        predictions."""
        program = self.program
        X = check_X(X, n_features=program.n_features, estimator=type(self).__name__)
        check_mode(fhe)
        if fhe == "disable":
            compiled = self.__dict__.get("fhe_model_")
            return (program if compiled is None else compiled.program).predict_raw(X)
        self._check_compiled(f'predict(..., fhe="{fhe}")')
        return self.fhe_model_.predict_raw(X, fhe)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        return tags


def _quant_init(default_criterion):
    """The estimators' ``__init__``: they differ only in their default criterion. Defaults of
    the quantization parameters come from :data:`autofhe.params.PARAMS`."""

    def __init__(
        self,
        module=QuantMLP,
        *,
        criterion=default_criterion,
        optimizer=torch.optim.Adam,
        lr=PARAMS["lr"].default,
        max_epochs=PARAMS["max_epochs"].default,
        train_split=None,
        verbose=False,
        n_w_bits=PARAMS["n_w_bits"].default,
        n_a_bits=PARAMS["n_a_bits"].default,
        n_accum_bits=PARAMS["n_accum_bits"].default,
        power_of_two_scaling=PARAMS["power_of_two_scaling"].default,
        lr_schedule=PARAMS["lr_schedule"].default,
        n_init=PARAMS["n_init"].default,
        random_state=None,
        **kwargs,
    ):
        kwargs = self._init_quant(
            kwargs,
            n_w_bits=n_w_bits,
            n_a_bits=n_a_bits,
            n_accum_bits=n_accum_bits,
            power_of_two_scaling=power_of_two_scaling,
            lr_schedule=lr_schedule,
            n_init=n_init,
            random_state=random_state,
        )
        # the skorch class after _QuantNet in the estimator's MRO
        super(_QuantNet, self).__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            train_split=train_split,
            verbose=verbose,
            **kwargs,
        )
        del self.compile  # skorch's torch.compile flag; ``compile`` is the FHE method here

    return __init__


class NeuralNetClassifier(_QuantNet, skorch.NeuralNetClassifier):
    """Quantization-aware MLP classifier that compiles to a TFHE circuit.

    Parameters
    ----------
    n_w_bits, n_a_bits : int, default 3
        Bit widths of the weights and of the inputs / activations (2 to 16).
    n_accum_bits : int or None, default None
        Guaranteed accumulator budget in signed bits for every neuron (None: unbounded).
    power_of_two_scaling : bool, default True
        Restrict quantization scales to powers of two.
    lr_schedule : "constant" or "cosine", default "constant"
        Learning rate over the epochs: constant, or cosine-annealed from ``lr`` to 0 (steadier
        for small networks trained many epochs). Either way, training ends on the weights of
        its best epoch (lowest training loss of the quantized network), not its last.
    n_init : int, default 1
        Train this many networks from different initialisations and keep the one with the
        lowest training loss (quantized network, inference mode). Tiny networks depend a lot
        on their start: on circles, 6 hidden neurons reach 0.84-0.91 test accuracy from one
        seed to the next.
    module__n_layers : int, default 2
        Number of linear layers (1 = a quantized linear model).
    module__activation_function : torch activation class, default torch.nn.ReLU
    module__n_hidden_neurons_multiplier : float, default 4
        Hidden width = max(1, round(n_features * multiplier)).
    module__lookup_bits : int or None, default None
        Train for hidden table lookups of this precision: the circuit drops the low bits of
        wider accumulators before each lookup, and training sees the same truncation.
        ``compile`` then uses it as its ``lookup_bits``.
    criterion__weight : array-like, optional
        Class weights, in the order of ``classes_``.
    random_state : int, RandomState or None
        Seeds initialisation and batch shuffling.

    iterator_train__epoch_rows : int or None, default None
        Train every epoch on this many rows, drawn afresh at random (None: every row). On
        large data an epoch then costs the same as on small data, and ``max_epochs`` counts
        passes over that many rows (the search sets it above 4,096 training rows).

    Every other skorch option (``batch_size``, ``optimizer``, ``callbacks``, ``train_split``,
    ``iterator_train__shuffle``, ...) works as in skorch. A callback that raises
    ``KeyboardInterrupt`` in ``on_epoch_end`` ends training there, as in skorch
    (``on_train_end`` runs and the best epoch so far is kept); with ``n_init > 1`` no further
    start begins.
    """

    _classification = True

    __init__ = _quant_init(nn.CrossEntropyLoss)

    @property
    def _n_module_outputs(self) -> int:
        return len(self.classes_)

    def _init_targets(self, y_encoded: np.ndarray) -> np.ndarray:
        return np.eye(len(self.classes_), dtype=np.float32)[y_encoded]

    @property
    def classes_(self):
        if not hasattr(self, "_fitted_classes"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(X, y) before using it."
            )
        return self._fitted_classes

    def check_data(self, X, y):
        # Labels are validated and encoded by fit; skorch's own inference is not needed.
        return None

    def output_decoding(self) -> Decoding:
        """Real-valued outputs -> predictions (the fitted classes)."""
        return Decoding("classification", classes=self.classes_)

    def _prepare_targets(self, y: np.ndarray, first: bool, classes=None) -> np.ndarray:
        if first:
            declared = np.asarray([] if classes is None else classes, dtype=y.dtype)
            self._fitted_classes = np.unique(np.concatenate([declared, y]))
        unknown = np.setdiff1d(np.unique(y), self._fitted_classes)
        if len(unknown):
            raise DataError(
                f"y has classes {unknown.tolist()} unseen in the first fit (classes_ = "
                f"{self._fitted_classes.tolist()}); refit from scratch with fit(X, y)."
            )
        return np.searchsorted(self._fitted_classes, y).astype(np.int64)

    def predict_proba(self, X, fhe: str = "disable") -> np.ndarray:
        return softmax(self.predict_raw(X, fhe))

    def predict(self, X, fhe: str = "disable") -> np.ndarray:
        raw = self.predict_raw(X, fhe)  # not fitted: says so before the decoding is read
        return self.output_decoding().predict(raw)


class NeuralNetRegressor(_QuantNet, skorch.NeuralNetRegressor):
    """Quantization-aware MLP regressor that compiles to a TFHE circuit.

    Same parameters as :class:`NeuralNetClassifier` (``criterion`` defaults to MSE). Targets
    are standardized for training and restored in the clear after the circuit, so their scale
    costs no precision.
    """

    _classification = False

    __init__ = _quant_init(nn.MSELoss)

    @property
    def _n_module_outputs(self) -> int:
        return self.n_outputs_

    def _init_targets(self, y_scaled: np.ndarray) -> np.ndarray:
        return y_scaled

    def _prepare_targets(self, y: np.ndarray, first: bool, classes=None) -> np.ndarray:
        y2 = y.reshape(len(y), -1).astype(np.float64)
        if first:
            self.y_ndim_ = y.ndim
            self.y_mean_ = y2.mean(axis=0)
            std = y2.std(axis=0)
            self.y_scale_ = np.where(std > 0, std, 1.0)
            self.n_outputs_ = y2.shape[1]
        elif y2.shape[1] != self.n_outputs_:
            raise DataError(
                f"y has {y2.shape[1]} targets but the model was fitted with {self.n_outputs_}; "
                "pass the same targets or refit with fit(X, y)."
            )
        return ((y2 - self.y_mean_) / self.y_scale_).astype(np.float32)

    def output_decoding(self) -> Decoding:
        """Real-valued outputs -> predictions (the fitted target's mean and scale)."""
        return Decoding(
            "regression",
            target_mean=self.y_mean_,
            target_scale=self.y_scale_,
            target_ndim=self.y_ndim_,
        )

    @property
    def predict_proba(self):
        raise AttributeError("a regressor has no predict_proba; use predict")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X, fhe: str = "disable") -> np.ndarray:
        raw = self.predict_raw(X, fhe)  # not fitted: says so before the decoding is read
        return self.output_decoding().predict(raw)
