"""The training loop's parts that skorch does not provide, or provides too slowly.

* :class:`KeepBestEpoch`: training ends on the weights of its best epoch.
* ``TensorBatches``: mini-batches as slices of in-memory tensors (a ``DataLoader`` collates
  row by row, which on small data costs as much as the quantization-aware step itself).
* ``QuietPrintLog``: skorch's PrintLog without formatting a table nobody sees.
* :class:`LeanSteps`: skorch's training step without the closure and hook calls nothing
  uses, Adam on torch's fused kernel, and a history whose per-batch records skip its query
  parser (:class:`LeanHistory`).

Profile and figures: ``benchmarks/qat_speed.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from skorch.callbacks import Callback, PrintLog
from skorch.history import History

__all__ = [
    "INIT_ROWS",
    "KeepBestEpoch",
    "LeanHistory",
    "LeanSteps",
    "QuietPrintLog",
    "TensorBatches",
]

#: Rows used to calibrate quantizers, solve the initial readout and pick the best epoch.
INIT_ROWS = 4096
#: Optimizers whose ``step()`` needs no closure (LBFGS and unknown ones get skorch's step).
_CLOSURE_FREE = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.SGD,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
)


class KeepBestEpoch(Callback):
    """Restore, at the end of training, the weights of the epoch with the lowest training loss
    (the weights training started from count as epoch 0).

    The loss is the criterion on (up to ``INIT_ROWS`` rows of) the training set, computed with
    the quantized network: exactly what ``predict`` will run (once calibrated, the module
    computes the same function in training and inference mode, so no switch). Quantization
    makes the last epoch a poor choice: a power-of-two scale that sits near a rounding boundary
    can flip between two values from one step to the next, halving a layer's range, and the
    weights at the end are then those of a much worse network (measured on circles: 0.54 test
    accuracy at the last epoch of a run whose best epoch reaches 0.86).

    Cost: one forward pass without gradients per epoch, 5-10% of an epoch (measured with
    ``benchmarks/qat_speed.py``). The losses of the epoch's own batches would be free, but
    they are taken at weights that change from batch to batch, not at the weights this
    callback would restore, so they cannot say which epoch ended best.
    """

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        rows = torch.randperm(len(X))[:INIT_ROWS].numpy()
        self._X = torch.as_tensor(np.asarray(X)[rows])
        self._y = torch.as_tensor(np.asarray(y)[rows])
        # The state's tensors keep their identity while training (the optimizer and the
        # quantizers update them in place): list them once, copy their values per new best.
        self._state = net.module_.state_dict(keep_vars=True)
        # The starting weights are a candidate too: a network that starts from a solved
        # model (QuantMLP.data_init) never ends worse than that model, quantized.
        self._best = (net._quantized_loss(self._X, self._y), self._copy())

    def _copy(self) -> list:
        return [t.detach().clone() for t in self._state.values()]

    def on_epoch_end(self, net, **kwargs):
        loss = net._quantized_loss(self._X, self._y)
        if loss < self._best[0]:
            self._best = (loss, self._copy())

    def on_train_end(self, net, **kwargs):
        if self._best[1] is not None:
            net.module_.load_state_dict(dict(zip(self._state, self._best[1])))
        self._X = self._y = self._state = None
        self._best = (np.inf, None)


class QuietPrintLog(PrintLog):
    """skorch's PrintLog, which skips formatting its table when it would print nothing.

    PrintLog tabulates every epoch, even with ``verbose=False``: a millisecond per epoch.
    """

    def on_epoch_end(self, net, **kwargs):
        if self.sink is print and not net.verbose:
            return
        super().on_epoch_end(net, **kwargs)


class TensorBatches:
    """Mini-batches ``(X[rows], y[rows])`` of two tensors, reshuffled at every pass.

    ``epoch_rows`` smaller than the data: every pass (epoch) draws that many rows afresh, at
    random and without repeats, so an epoch costs the same however many rows there are.
    """

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        epoch_rows: int | None = None,
    ):
        self.X, self.y, self.batch_size, self.shuffle = X, y, batch_size, shuffle
        self.rows = len(X) if epoch_rows is None else min(len(X), int(epoch_rows))

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self):
        n, size = len(self.X), self.batch_size
        if not self.shuffle and self.rows == n:
            for start in range(0, n, size):
                yield self.X[start : start + size], self.y[start : start + size]
            return
        order = torch.randperm(n)[: self.rows]
        for start in range(0, self.rows, size):
            rows = order[start : start + size]  # index_select: X[rows] without its checks
            yield self.X.index_select(0, rows), self.y.index_select(0, rows)


class LeanHistory(History):
    """skorch's History, whose records go straight to the last row, as a list's ``[-1]``.

    History's ``[-1]`` parses a column query (a few microseconds); skorch records three times
    per batch and five per epoch, about 4% of a small network's epoch. Same rows, same API.
    """

    def new_batch(self):
        list.__getitem__(self, -1)["batches"].append({})

    def record(self, attr, value):
        if not self:
            raise ValueError("Call new_epoch before recording for the first time.")
        list.__getitem__(self, -1)[attr] = value

    def record_batch(self, attr, value):
        list.__getitem__(self, -1)["batches"][-1][attr] = value


class LeanSteps:
    """skorch ``NeuralNet`` methods, overridden for speed (a mixin placed before the skorch
    class); same updates, same hooks for the callbacks that define them."""

    def get_params_for_optimizer(self, prefix, named_parameters):
        """skorch's optimizer arguments; Adam and AdamW default to torch's fused kernel (one
        call updates every parameter: 0.10 ms against 0.22 ms per step on a 2-8-2 network),
        unless ``optimizer__fused`` or ``optimizer__foreach`` is given."""
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        optimizer = getattr(self, prefix, None)
        if optimizer in (torch.optim.Adam, torch.optim.AdamW) and not {"fused", "foreach"} & set(
            kwargs
        ):
            kwargs["fused"] = True
        return args, kwargs

    def initialize_history(self):
        """A new :class:`LeanHistory` (skorch clears the old one in place, which also cleared
        the history of the best start that ``n_init`` had put aside)."""
        self.history_ = LeanHistory()
        return self

    def notify(self, method_name, **cb_kwargs):
        """skorch's notify, without the callbacks whose hook is :class:`Callback`'s no-op.

        skorch calls three hooks per training step on every callback (eight by default),
        each with its keyword arguments: on a small network that is a tenth of the step.
        """
        getattr(self, method_name)(self, **cb_kwargs)
        for hook in self._listeners(method_name):
            hook(self, **cb_kwargs)

    def _listeners(self, method_name: str) -> list:
        """The bound ``method_name`` of each callback that overrides it, in callback order
        (kept until skorch builds its callbacks again)."""
        # a name ending in "_": skorch leaves it out of get_params (and clone)
        key, table = self.__dict__.get("_callback_hooks_", (None, {}))
        if key is not self.callbacks_:
            table = {}
            self.__dict__["_callback_hooks_"] = (self.callbacks_, table)
        if method_name not in table:
            base = getattr(Callback, method_name, None)
            table[method_name] = [
                getattr(cb, method_name)
                for _, cb in self.callbacks_
                if getattr(type(cb), method_name, None) is not base
            ]
        return table[method_name]

    def train_step(self, batch, **fit_params):
        """skorch's step, without its optimizer closure when no optimizer needs one and no
        callback listens to ``on_grad_computed`` (the same updates: an optimizer runs its
        closure once, before its update)."""
        optimizers = [getattr(self, name + "_") for name in self._optimizers]
        if self._listeners("on_grad_computed") or not all(
            type(opt) in _CLOSURE_FREE for opt in optimizers
        ):
            return super().train_step(batch, **fit_params)
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        for optimizer in optimizers:
            optimizer.step()
        return step
