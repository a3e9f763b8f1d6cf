"""The training loop: its fast paths compute what skorch's would, and callbacks can stop it."""

from __future__ import annotations

import numpy as np
import pytest
import skorch
import torch
from sklearn.datasets import make_classification

from autofhe import NeuralNetClassifier
from autofhe.nn.training import LeanHistory, LeanSteps, TensorBatches


@pytest.fixture(scope="module")
def toy():
    X, y = make_classification(
        n_samples=150, n_features=4, n_informative=3, n_redundant=1, random_state=0
    )
    return X.astype(np.float32), y


class _Recorder(skorch.callbacks.Callback):
    """Per epoch: the history length and the inference-mode loss; logs train begins and ends."""

    def __init__(self, X, y, stop_at=None, runs=None):
        self.X, self.y, self.stop_at = torch.from_numpy(X), torch.from_numpy(y), stop_at
        self.runs = runs  # outlives initialize(), which every n_init start calls

    def initialize(self):
        self.epochs, self.losses = [], []
        return self

    def on_train_begin(self, net, **kwargs):
        self.runs.append("begin")

    @torch.no_grad()
    def on_epoch_end(self, net, **kwargs):
        self.epochs.append((len(net.history), net.history[-1, "train_loss"]))
        net.module_.eval()
        self.losses.append(float(net.criterion_(net.module_(self.X), self.y)))
        net.module_.train()
        if self.stop_at is not None and len(net.history) == self.stop_at:
            raise KeyboardInterrupt

    def on_train_end(self, net, **kwargs):
        self.runs.append("end")


@pytest.mark.parametrize("n_init", [1, 3])
def test_a_callback_stops_training_at_an_intermediate_epoch(toy, n_init):
    X, y = toy
    runs = []
    record = _Recorder(X, y.astype(np.int64), stop_at=4, runs=runs)
    # a high constant rate makes the loss jump around: the best epoch is often not the last
    model = NeuralNetClassifier(
        random_state=0, lr=0.2, max_epochs=30, batch_size=16, n_init=n_init, callbacks=[record]
    ).fit(X, y)
    # the history grows by one epoch before each on_epoch_end, with that epoch's train loss
    assert [e for e, _ in record.epochs] == [1, 2, 3, 4]
    assert all(np.isfinite(loss) for _, loss in record.epochs)
    assert len(model.history_) == 4
    # one run, ended cleanly: on_train_end ran, no further start began
    assert runs == ["begin", "end"]
    # ...and training ended on its best epoch among the four it ran
    with torch.no_grad():
        final = float(model.criterion_(model.module_(record.X), record.y))
    assert final == pytest.approx(min(record.losses), rel=1e-6)
    assert (model.predict(X) == y).mean() > 0.7


@pytest.mark.parametrize("params", [{}, {"n_accum_bits": 7}, {"module__lookup_bits": 4}], ids=str)
def test_training_and_inference_mode_compute_the_same_function(toy, params):
    """The fit loop never switches modes after data_init: that is only right if this holds."""
    X, y = toy
    model = NeuralNetClassifier(random_state=0, max_epochs=3, **params).fit(X, y)
    module, x = model.module_, torch.from_numpy(X)
    with torch.no_grad():
        module.train()
        trained = module(x)
        module.eval()
        inferred = module(x)
    assert torch.equal(trained, inferred)
    if "module__lookup_bits" not in params:  # else the program truncates only once compiled
        np.testing.assert_allclose(model.program.predict_raw(X), inferred.numpy(), atol=1e-5)


def test_tensor_batches_cover_every_row_once_per_epoch():
    X, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    batches = TensorBatches(X, y, batch_size=4, shuffle=True)
    assert len(batches) == 3
    orders = []
    for _ in range(2):
        parts = list(batches)
        assert [len(xb) for xb, _ in parts] == [4, 4, 2]
        rows = torch.cat([yb for _, yb in parts])
        assert torch.equal(torch.cat([xb for xb, _ in parts]).ravel(), rows.float())
        assert sorted(rows.tolist()) == list(range(10))
        orders.append(rows.tolist())
    assert orders[0] != orders[1]  # reshuffled every epoch (fixed torch seed of the session)
    in_order = TensorBatches(X, y, batch_size=4, shuffle=False)
    assert torch.cat([yb for _, yb in in_order]).tolist() == list(range(10))


def test_epoch_rows_draws_that_many_distinct_rows_afresh_every_epoch():
    X, y = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    for shuffle in (True, False):
        batches = TensorBatches(X, y, batch_size=8, shuffle=shuffle, epoch_rows=20)
        assert len(batches) == 3
        drawn = []
        for _ in range(2):
            rows = torch.cat([yb for _, yb in batches]).tolist()
            assert len(rows) == len(set(rows)) == 20  # no row twice in an epoch
            drawn.append(set(rows))
        assert drawn[0] != drawn[1]  # other rows next epoch
    assert len(TensorBatches(X, y, batch_size=8, shuffle=True, epoch_rows=500)) == 13


@pytest.mark.parametrize("loader", ["tensor slices", "skorch's loader"])
def test_an_estimators_epoch_trains_on_epoch_rows(toy, loader):
    X, y = toy
    extra = {} if loader == "tensor slices" else {"iterator_train__num_workers": 0}
    net = NeuralNetClassifier(
        random_state=0, max_epochs=2, batch_size=16, iterator_train__epoch_rows=40, **extra
    ).fit(X, y)
    sizes = [b["train_batch_size"] for b in net.history_[-1, "batches"]]
    assert sizes == [16, 16, 8]  # 40 of the 150 rows


def test_epoch_rows_must_be_a_positive_integer(toy):
    from autofhe.errors import ParameterError

    X, y = toy
    with pytest.raises(ParameterError, match="iterator_train__epoch_rows=0 must be a positive"):
        NeuralNetClassifier(iterator_train__epoch_rows=0).fit(X, y)


def test_iterator_options_beyond_batch_size_and_shuffle_use_skorchs_loader(toy):
    X, y = toy
    fast = NeuralNetClassifier(random_state=0, max_epochs=2, batch_size=64).fit(X, y)
    assert fast.history_[-1, "batches", -1, "train_batch_size"] == len(X) - 128
    dropped = NeuralNetClassifier(
        random_state=0, max_epochs=2, batch_size=64, iterator_train__drop_last=True
    ).fit(X, y)
    assert [b["train_batch_size"] for b in dropped.history_[-1, "batches"]] == [64, 64]
    full = NeuralNetClassifier(random_state=0, max_epochs=2, batch_size=-1).fit(X, y)
    assert full.history_[-1, "train_batch_count"] == 1


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return X.astype(np.float32), y


def test_a_network_without_hidden_layers_starts_from_the_solved_logistic_model():
    """Its readout is the minimiser of the loss it trains with (cross-entropy + the weight
    decay's penalty) on its quantized inputs, before any epoch: the same decisions as
    scikit-learn's logistic regression with C = 1 / (weight_decay * rows)."""
    from sklearn.linear_model import LogisticRegression

    from autofhe.nn.module import QuantMLP

    X, y = _breast_cancer()
    wd = 1e-3
    module = QuantMLP(X.shape[1], 2, n_layers=1, n_w_bits=8, n_a_bits=8)
    targets = torch.from_numpy(np.eye(2, dtype=np.float32)[y])
    module.data_init(torch.from_numpy(X), targets, weight_decay=wd, classification=True)
    with torch.no_grad():
        H = module._last_input(torch.from_numpy(X))[0].double().numpy()
        ours = module(torch.from_numpy(X)).argmax(dim=1).numpy()
    solved = LogisticRegression(C=1 / (wd * len(X)), max_iter=1000).fit(H, y)
    assert np.mean(ours == solved.predict(H)) >= 0.99  # 8-bit weights: the same decisions
    assert np.mean(ours == y) >= 0.97


class _Scramble(skorch.callbacks.Callback):
    """Negates the readout after every batch: each epoch ends far worse than it started."""

    @torch.no_grad()
    def on_batch_end(self, net, **kwargs):
        net.module_.linears[-1].weight.neg_()
        net.module_.linears[-1].bias.neg_()


def test_training_never_ends_worse_than_the_weights_it_started_from():
    """The starting weights count as epoch 0 of the best-epoch choice: a network started
    from the solved model ends no worse than it, quantized."""
    X, y = _breast_cancer()
    net = NeuralNetClassifier(
        module__n_layers=1,
        max_epochs=1,
        batch_size=len(X),  # one batch: the epoch ends scrambled
        optimizer__weight_decay=1e-3,
        callbacks=[("scramble", _Scramble())],
        random_state=0,
    ).fit(X, y)
    assert np.mean(net.predict(X) == y) >= 0.95  # was 0.03: the scrambled epoch


class _BatchHooks(skorch.callbacks.Callback):
    """Counts the batch hooks it receives."""

    def initialize(self):
        self.calls = {"on_batch_begin": 0, "on_batch_end": 0, "on_grad_computed": 0}
        return self

    def on_batch_begin(self, net, **kwargs):
        self.calls["on_batch_begin"] += 1

    def on_batch_end(self, net, **kwargs):
        self.calls["on_batch_end"] += 1


class _GradHooks(_BatchHooks):
    """Listens to on_grad_computed too."""

    def on_grad_computed(self, net, named_parameters, **kwargs):
        self.calls["on_grad_computed"] += 1


def test_the_lean_step_trains_the_same_model_and_calls_every_hook_that_listens(toy):
    """Hooks go only to the callbacks that define them, and without an on_grad_computed
    listener the step skips skorch's optimizer closure: the same model, bit for bit."""
    X, y = toy  # 150 rows in batches of 16: 10 steps an epoch
    models, hooks = [], []
    for hook in (_BatchHooks(), _GradHooks()):
        params = {"random_state": 0, "max_epochs": 3, "batch_size": 16, "lr": 0.05}
        models.append(NeuralNetClassifier(callbacks=[("hooks", hook)], **params).fit(X, y))
        hooks.append(hook.calls)
    assert hooks[0] == {"on_batch_begin": 30, "on_batch_end": 30, "on_grad_computed": 0}
    assert hooks[1] == {"on_batch_begin": 30, "on_batch_end": 30, "on_grad_computed": 30}
    lean, closure = (m.module_.state_dict() for m in models)
    assert all(torch.equal(lean[key], closure[key]) for key in lean)
    assert len(models[0].history) == 3 and models[0].history[-1, "train_loss"] > 0


def test_adam_defaults_to_the_fused_kernel_unless_told_otherwise(toy):
    X, y = toy
    fused = NeuralNetClassifier(random_state=0, max_epochs=1).fit(X, y)
    assert fused.optimizer_.defaults["fused"] is True
    told = NeuralNetClassifier(random_state=0, max_epochs=1, optimizer__foreach=True).fit(X, y)
    assert not told.optimizer_.defaults["fused"] and told.optimizer_.defaults["foreach"]
    sgd = NeuralNetClassifier(random_state=0, max_epochs=1, optimizer=torch.optim.SGD).fit(X, y)
    assert not sgd.optimizer_.defaults.get("fused")


def test_validation_scorers_run_only_with_a_validation_split(toy):
    X, y = toy
    plain = NeuralNetClassifier(random_state=0, max_epochs=2).fit(X, y)
    assert not {"valid_loss", "valid_acc"} & set(dict(plain.callbacks_))
    # a classifier with a validation split trains (skorch's valid_acc raised NotFittedError:
    # it predicts through the integer program, which exists only after training)
    split = NeuralNetClassifier(
        random_state=0, max_epochs=2, train_split=skorch.dataset.ValidSplit(5)
    ).fit(X, y)
    assert "valid_loss" in dict(split.callbacks_)
    assert split.history[-1, "valid_loss"] > 0
    assert split.score(X, y) > 0.5


def test_the_lean_history_keeps_the_rows_skorchs_history_keeps(toy, monkeypatch):
    """The estimator's history records through list indexing: the same rows as a fit that
    records into skorch's own History (batches, their losses and sizes, the epoch's train loss
    and best flag; not the durations)."""
    X, y = toy
    histories = []
    for lean in (True, False):
        if not lean:
            monkeypatch.setattr(
                LeanSteps, "initialize_history", skorch.NeuralNet.initialize_history
            )
        net = NeuralNetClassifier(random_state=0, max_epochs=3, batch_size=64).fit(X, y)
        assert isinstance(net.history_, LeanHistory) == lean
        rows = [{k: v for k, v in row.items() if k != "dur"} for row in net.history]
        histories.append(rows)
    assert histories[0] == histories[1]
    assert [row["train_batch_count"] for row in histories[0]] == [3, 3, 3]  # 150 rows by 64
    assert histories[0][-1]["batches"][-1]["train_batch_size"] == 150 - 128
    with pytest.raises(ValueError, match="new_epoch"):
        LeanHistory().record("train_loss", 1.0)


def test_the_best_start_keeps_its_own_history(toy):
    """With n_init > 1 each start records into a history of its own: the one the estimator
    ends with is the best start's, not the last start's rows written over it."""

    class Runs(skorch.callbacks.Callback):
        def on_train_end(self, net, **kwargs):
            self.histories.append((net.history_, len(net.history_)))

    runs = Runs()
    runs.histories = []
    X, y = toy
    net = NeuralNetClassifier(
        random_state=0, max_epochs=2, n_init=3, callbacks=[("runs", runs)]
    ).fit(X, y)
    assert len({id(h) for h, _ in runs.histories}) == 3
    assert any(net.history_ is h for h, _ in runs.histories)  # one start's, whole
    assert all(epochs == 2 for _, epochs in runs.histories) and len(net.history) == 2
