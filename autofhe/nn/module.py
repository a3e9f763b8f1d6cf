"""The quantized MLP trained by the estimators (torch + brevitas).

Structure: input quantizer (signed, ``n_a_bits``) -> ``n_layers`` linear layers; between two
linear layers an activation followed by an activation quantizer (``n_a_bits``, unsigned when the
activation never goes below zero). Weights are quantized per output neuron (``n_w_bits``,
narrow signed range), biases in accumulator units (input scale x weight scale), so every linear
layer is an exact integer matmul-plus-bias followed by one per-neuron scale. That is what lets
:func:`autofhe.nn.export.build_program` turn the trained module into an integer program.

With ``n_accum_bits`` set, each forward pass prunes every neuron to its largest contributions
that fit the budget (:func:`autofhe.nn.pruning.neuron_keep_mask`), so the budget holds for the
weights the model ends with, not only for the ones it started with.

Training differentiates the whole network as one autograd node
(:class:`autofhe.nn.node.NetworkNode`: autograd's gradients bit for bit, without its graph).
The layer by layer path (:meth:`QuantMLP._last_input`, autograd through each operation) serves
everything else: calls without gradients (inference, the best-epoch loss), brevitas's
quantizers (calibration, configurations the fused quantizers do not cover), activations with
parameters, and callers who want the input's gradient. Both run the same :meth:`QuantMLP._layer`.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass

import brevitas.nn as qnn
import numpy as np
import torch
import torch.nn.functional as F
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Uint8ActPerTensorFloat,
)
from brevitas.quant.fixed_point import (
    Int8ActPerTensorFixedPoint,
    Int8WeightPerChannelFixedPoint,
    Uint8ActPerTensorFixedPoint,
)
from torch import nn

from autofhe.errors import ParameterError
from autofhe.nn.fused import (
    FusedSpec,
    act_quant,
    calibrated,
    spec_of,
    weight_quant,
    weight_values,
)
from autofhe.nn.node import NetworkNode, Route
from autofhe.nn.pruning import (
    budget_limit,
    check_budget,
    input_max_abs,
    neuron_keep_mask,
    signed_bits,
)
from autofhe.params import ACTIVATION_NAMES, PARAMS, SEED_ACTIVATIONS, check_param

__all__ = [
    "ACTIVATIONS",
    "SEED_ACTIVATIONS",
    "IntegerLayer",
    "QuantMLP",
    "hidden_width",
    "is_nonnegative",
    "resolve_activation",
    "solve_logistic",
]

#: Activations offered by name; any other torch activation class works when passed itself.
ACTIVATIONS = {name: getattr(nn, name) for name in ACTIVATION_NAMES}


def input_percentile(n_bits: int) -> float:
    """Percentile of each feature that sets its initial input range.

    With few levels, clipping the tails costs less than coarse steps everywhere (measured on
    breast_cancer / wine / digits at 3 bits: 85-94 beat 99.9 by 2-4 points of accuracy).
    """
    return {2: 90.0, 3: 92.0, 4: 96.0, 5: 98.5}.get(n_bits, 99.9)


def resolve_activation(activation) -> type[nn.Module]:
    """Turn a torch activation class (or its name, e.g. ``"ReLU"``) into the class."""
    if isinstance(activation, str):
        cls = ACTIVATIONS.get(activation.removeprefix("nn.").removeprefix("torch.nn."))
        if cls is not None:
            return cls
    elif inspect.isclass(activation) and issubclass(activation, nn.Module):
        return activation
    names = ", ".join(ACTIVATIONS)
    raise ParameterError(
        f"module__activation_function={activation!r} is not a torch activation: pass a class "
        f"such as torch.nn.ReLU or one of the names {names}."
    )


def hidden_width(input_dim: int, multiplier: float) -> int:
    """Hidden layer width: ``max(1, round(input_dim * multiplier))``."""
    return max(1, round(input_dim * multiplier))


def is_nonnegative(activation: nn.Module) -> bool:
    """Whether the activation never outputs a negative value (then its quantizer is unsigned)."""
    grid = torch.linspace(-100.0, 100.0, 20001)
    with torch.no_grad():
        return bool(activation(grid).min() >= 0)


def _tensor_quant(proxy: nn.Module) -> nn.Module:
    """The brevitas tensor quantizer of a weight or activation quant proxy."""
    # through ``_modules``: nn.Module's attribute lookup (an exception for a missing name)
    # costs more than the quantization of a small layer's weights
    quant = proxy._modules.get("fused_activation_quant_proxy")
    return (proxy if quant is None else quant)._modules["tensor_quant"]


def _quantize(proxy: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(quantized values, scale)`` of a brevitas weight or activation quant proxy.

    The fused computation of :mod:`autofhe.nn.fused` (brevitas's values bit for bit, a few
    times cheaper) when it applies, else the proxy's tensor quantizer itself (without the
    layer and proxy wrappers and the QuantTensor built around the result).
    """
    tensor_quant = _tensor_quant(proxy)
    spec = spec_of(tensor_quant)
    if spec is not None and calibrated(spec):
        return weight_quant(x, spec) if spec.kind == "weight" else act_quant(x, spec)
    out = tensor_quant(x)
    return out[0], out[1]


@dataclass
class IntegerLayer:
    """One linear layer of a trained module, in integers (what the FHE program needs)."""

    weight: np.ndarray  # (n_out, n_in) int64, pruned
    bias: np.ndarray  # (n_out,) int64, in accumulator units
    acc_scale: np.ndarray  # (n_out,) float64: real value = acc * acc_scale
    input_max: int  # largest |x_int| the input quantizer can produce


class QuantMLP(nn.Module):
    """Quantization-aware MLP; see the module docstring for its structure."""

    def __init__(
        self,
        input_dim: int,
        n_outputs: int,
        n_layers: int = PARAMS["module__n_layers"].default,
        activation_function=nn.ReLU,  # PARAMS["module__activation_function"].default
        n_hidden_neurons_multiplier: float = PARAMS["module__n_hidden_neurons_multiplier"].default,
        n_w_bits: int = PARAMS["n_w_bits"].default,
        n_a_bits: int = PARAMS["n_a_bits"].default,
        n_accum_bits: int | None = PARAMS["n_accum_bits"].default,
        power_of_two_scaling: bool = PARAMS["power_of_two_scaling"].default,
        lookup_bits: int | None = PARAMS["module__lookup_bits"].default,
    ):
        super().__init__()
        self._init_kwargs = dict(
            input_dim=input_dim,
            n_outputs=n_outputs,
            n_layers=n_layers,
            activation_function=activation_function,
            n_hidden_neurons_multiplier=n_hidden_neurons_multiplier,
            n_w_bits=n_w_bits,
            n_a_bits=n_a_bits,
            n_accum_bits=n_accum_bits,
            power_of_two_scaling=power_of_two_scaling,
            lookup_bits=lookup_bits,
        )
        validate_module_params(
            n_layers, n_hidden_neurons_multiplier, n_w_bits, n_a_bits, n_accum_bits, lookup_bits
        )
        self.activation_cls = resolve_activation(activation_function)
        self.n_w_bits, self.n_a_bits = int(n_w_bits), int(n_a_bits)
        self.n_accum_bits = None if n_accum_bits is None else int(n_accum_bits)
        self.lookup_bits = None if lookup_bits is None else int(lookup_bits)
        self.activation = self.activation_cls()
        self.hidden_signed = not is_nonnegative(self.activation)
        self.input_max_abs = input_max_abs(self.n_a_bits, signed=True)
        self.hidden_max_abs = input_max_abs(self.n_a_bits, signed=self.hidden_signed)
        check_budget(
            self.n_accum_bits,
            self.n_w_bits,
            [self.input_max_abs] + ([self.hidden_max_abs] if n_layers > 1 else []),
        )

        po2 = bool(power_of_two_scaling)
        weight_quant = Int8WeightPerChannelFixedPoint if po2 else Int8WeightPerChannelFloat
        signed_act = Int8ActPerTensorFixedPoint if po2 else Int8ActPerTensorFloat
        unsigned_act = Uint8ActPerTensorFixedPoint if po2 else Uint8ActPerTensorFloat
        hidden_act = signed_act if self.hidden_signed else unsigned_act

        width = hidden_width(input_dim, n_hidden_neurons_multiplier)
        dims = [input_dim] + [width] * (n_layers - 1) + [n_outputs]
        # Per-feature standardization, set from the training data: the client applies it in
        # the clear with the quantization (free under FHE), so raw features need no scaler and
        # every feature trains at the same pace.
        self.register_buffer("input_offset", torch.zeros(input_dim))
        self.register_buffer("input_norm", torch.ones(input_dim))
        self.input_quant = self._act_quant(signed_act, per_feature=input_dim)
        self.linears = nn.ModuleList(
            qnn.QuantLinear(
                d_in, d_out, bias=True, weight_quant=weight_quant, weight_bit_width=self.n_w_bits
            )
            for d_in, d_out in itertools.pairwise(dims)
        )
        self.act_quants = nn.ModuleList(self._act_quant(hidden_act) for _ in dims[1:-1])
        self._input_maxes = (self.input_max_abs,) + (self.hidden_max_abs,) * (n_layers - 1)
        # per layer, the last integer weights seen and what they decided (pruning mask, lookup
        # shift): integer weights change in few training steps, so most steps reuse them
        self._decided: dict[tuple, tuple] = {}

    def _decide(self, what: tuple, key: tuple[torch.Tensor, ...], compute):
        """``compute()``, or its last result for ``what`` (a layer and the settings the result
        depends on) if the tensors of ``key`` are unchanged (values, device and dtype)."""
        last = self._decided.get(what)
        if last is not None and all(
            a.shape == b.shape and a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)
            for a, b in zip(last[0], key, strict=True)
        ):
            return last[1]
        result = compute()
        self._decided[what] = (key, result)
        return result

    def _act_quant(self, quant, per_feature: int | None = None) -> nn.Module:
        # A high percentile (not the max) sets the initial range: at 2-4 bits a few outliers
        # would otherwise waste most of the levels.
        extra = {"high_percentile_q": 99.9}
        if per_feature is not None:
            extra = dict(
                high_percentile_q=input_percentile(self.n_a_bits),
                scaling_per_output_channel=True,
                per_channel_broadcastable_shape=(1, per_feature),
                scaling_stats_permute_dims=(1, 0),
            )
        return qnn.QuantIdentity(
            act_quant=quant,
            bit_width=self.n_a_bits,
            return_quant_tensor=True,
            **extra,
        )

    # brevitas quantizers hold injector classes that pickle cannot reach: a module pickles as
    # its constructor arguments plus its state_dict, and is rebuilt from them.
    def __getstate__(self):
        return {"init": self._init_kwargs, "state": self.state_dict(), "training": self.training}

    def __setstate__(self, state):
        self.__init__(**state["init"])
        self.load_state_dict(state["state"])
        self.train(state["training"])

    def input_maxes(self) -> list[int]:
        """Largest |x_int| entering each linear layer."""
        return list(self._input_maxes)

    def _quantized_linear(self, index: int, x: torch.Tensor, x_scale: torch.Tensor):
        """Integer matmul + bias of layer ``index``, returned in real units."""
        return self._layer(index, x, x_scale, None)[0]

    def _layer(self, index: int, h: torch.Tensor, s: torch.Tensor, w_spec: FusedSpec | None):
        """``(z, tape)``: integer matmul + bias of layer ``index`` in real units, and what
        :func:`autofhe.nn.node.layer_grads` needs to differentiate it (``w_spec``: the weight
        quantizer computed by hand, for the network node; None: through :func:`_quantize`, for
        autograd).

        The layer sees integers ``x_int = h / s``; its *effective* weight ``w * s`` is
        quantized per output neuron. For the first layer ``s`` holds one scale per feature,
        which the client applies in the clear: per-feature input ranges at no cost under
        encryption.
        """
        layer = self.linears[index]
        W, b = layer.weight, layer.bias
        xs = s.reshape(1, -1)  # one view for both uses: the same gradient sums
        if w_spec is not None:
            Wq, w_scale, w_saved = weight_values(W * xs, w_spec)
            w_tape = (w_spec, w_saved)
        else:
            (Wq, w_scale), w_tape = _quantize(layer.weight_quant, W * xs), None
        acc = w_scale.reshape(-1)
        xb = b / acc
        b_int = xb + (torch.round(xb) - xb).detach()  # round, straight through
        hidden = index < len(self.linears) - 1
        x_int = h / xs
        mask = inside = None
        truncate = self.lookup_bits is not None and hidden
        if self.n_accum_bits is not None or truncate:
            x_max = self._input_maxes[index]
            with torch.no_grad():  # the integer weights only steer pruning and truncation
                v_int = torch.round(Wq / w_scale)
                if self.n_accum_bits is not None:
                    limit = budget_limit(self.n_accum_bits)
                    mask, room = self._decide(
                        ("prune", index, x_max, limit),
                        (v_int,),
                        lambda: neuron_keep_mask(v_int, x_max, limit),
                    )
                    v_int = v_int * mask
            if self.n_accum_bits is not None:
                Wq = Wq * mask
                if w_spec is not None:  # where the clamp below lets the gradient through
                    inside = (b_int >= -room).logical_and_(b_int <= room)
                b_int = torch.clamp(b_int, -room, room)
        z = F.linear(x_int, Wq, b_int * acc)
        if truncate:
            z = self._truncate_like_lookup(index, z, acc, v_int, b_int, x_max)
        return z, (W, b, xs, x_int, Wq, w_tape, acc, xb, b_int, mask, inside)

    def _truncate_like_lookup(
        self, index: int, z, acc_scale, v_int, b_int, x_max: int
    ) -> torch.Tensor:
        """What the lookup of a ``lookup_bits`` circuit sees of the accumulator ``z``.

        The compiled circuit drops the low ``k = acc_bits - lookup_bits`` bits of a hidden
        accumulator (``acc_bits``: the layer's worst case, as :func:`build_program` computes it)
        and reads the table at the centre of the ``2**k`` bucket. Training through the same
        bucketing (straight-through gradient) lets the network learn weights that survive it,
        instead of meeting it only at compile time.
        """
        b_int = b_int.detach()

        def shift() -> int:
            # worst_case_accumulator, in torch (float64 holds these integers exactly)
            worst = v_int.double().abs().sum(dim=1) * x_max + b_int.double().abs()
            return signed_bits(int(worst.max())) - self.lookup_bits

        k = self._decide(("lookup", index, x_max, self.lookup_bits), (v_int, b_int), shift)
        if k <= 0:
            return z
        step = float(2**k)
        with torch.no_grad():  # the shift to the bucket's centre carries no gradient
            acc = torch.round(z / acc_scale)
            centre = torch.floor(acc / step) * step + (step - 1) / 2
            shift_to_centre = (centre - acc) * acc_scale
        return z + shift_to_centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (not for the input's gradient, nor for batches of batches: the node's mm is 2-D)
        if torch.is_grad_enabled() and not x.requires_grad and x.dim() == 2:
            route = self._node_route()
            if route is not None:  # one autograd node for the whole network
                return NetworkNode.apply(route, x, *route.params)
        h, scale = self._last_input(x)
        return self._quantized_linear(len(self.linears) - 1, h, scale)

    def _node_route(self) -> Route | None:
        """What :class:`~autofhe.nn.node.NetworkNode` needs, or None when the network cannot
        be differentiated by hand: a quantizer brevitas must compute (not fusable, or still
        collecting statistics) or an activation with parameters."""
        if next(self.activation.parameters(), None) is not None:
            return None
        act_specs, weight_specs, params = [], [], []
        for proxy, layer in zip([self.input_quant, *self.act_quants], self.linears):
            spec = spec_of(_tensor_quant(proxy.act_quant))
            w_spec = spec_of(_tensor_quant(layer.weight_quant))
            if spec is None or not calibrated(spec) or w_spec is None:
                return None
            act_specs.append(spec)
            weight_specs.append(w_spec)
            params += [spec.scaling.value, layer.weight, layer.bias]
        return Route(
            tuple(act_specs),
            tuple(weight_specs),
            tuple(params),
            self._normalize,
            self._layer,
            self.activation,
        )

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_offset) / self.input_norm

    def _last_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last linear layer's quantized input (real values) and its scale, layer by
        layer (autograd through brevitas's quantizers or the fused ones)."""
        h, scale = _quantize(self.input_quant.act_quant, self._normalize(x))
        for i, act in enumerate(self.act_quants):
            z = self._quantized_linear(i, h, scale)
            h, scale = _quantize(act.act_quant, self.activation(z))
        return h, scale

    @torch.no_grad()
    def data_init(
        self,
        X: torch.Tensor,
        targets: torch.Tensor,
        ridge: float = 1e-2,
        weight_decay: float | None = None,
        classification: bool = False,
    ) -> None:
        """Initialise from the training data before quantization-aware training.

        0. Standardize each input feature with its training mean and deviation (client side,
           free under FHE).
        1. Calibrate every activation quantizer on ``X`` (a percentile of what it sees), then
           turn the statistics into the learned scale, so training starts from a sensible
           range instead of collecting statistics batch by batch.
        2. Solve the last layer by ridge regression of ``targets`` (one-hot classes or
           standardized values) on the quantized features it receives. Training then starts
           near a good model: ten epochs at the seed's learning rate are enough to converge.

        ``weight_decay`` given, a network without hidden layers starts from the *solved* float
        model of the loss training minimises (mean loss + ``weight_decay / 2 * |w|^2``) on its
        quantized inputs: multinomial logistic regression for a classifier (``targets``
        one-hot; :func:`solve_logistic`), ridge regression with that penalty otherwise.
        Training then only adapts it to quantized weights: on digits, one epoch from the
        logistic solution scores 0.958-0.967 where one epoch from the ridge readout scores
        0.889-0.902.
        """
        was_training = self.training
        self.input_offset.copy_(X.mean(dim=0))
        std = X.std(dim=0)
        self.input_norm.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        self.train()
        self(X)
        for m in self.modules():
            if isinstance(m, ParameterFromRuntimeStatsScaling):
                m.init_scale()
        self.eval()
        H = self._last_input(X)[0].double()
        last = self.linears[-1]
        solved = weight_decay is not None and len(self.linears) == 1
        if solved and classification:
            labels = targets.argmax(dim=1)
            weight, bias = solve_logistic(H, labels, targets.shape[1], weight_decay)
        else:
            if solved:
                ridge = max(weight_decay / 2, MIN_RIDGE)  # mean squared error + wd/2 |w|^2
            H1 = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype)], dim=1)
            gram = H1.T @ H1
            reg = ridge * len(H) * torch.eye(gram.shape[0], dtype=H.dtype)
            reg[-1, -1] = 0.0  # do not shrink the bias
            coef = torch.linalg.solve(gram + reg, H1.T @ targets.double())
            weight, bias = coef[:-1].T, coef[-1]
        last.weight.copy_(weight.to(last.weight.dtype))
        last.bias.copy_(bias.to(last.bias.dtype))
        self.train(was_training)

    @torch.no_grad()
    def integer_layers(
        self,
    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, list[IntegerLayer], list[float]]:
        """The trained network in integers.

        Returns
        -------
        (input_offset, input_norm) : per-feature standardization applied before quantization.
        input_scale : per-feature scales of the input quantizer (x_int = round(x / scale)).
        layers : one :class:`IntegerLayer` per linear layer, pruned exactly as in ``forward``.
        act_scales : scale of each hidden activation quantizer.
        """
        was_training = self.training
        self.eval()
        try:
            in_scale = self.input_quant.act_quant.scale().reshape(-1)
            scales = [in_scale] + [q.act_quant.scale().reshape(()) for q in self.act_quants]
            layers = []
            for i, layer in enumerate(self.linears):
                qv = layer.weight_quant(layer.weight * scales[i].reshape(1, -1))
                acc_scale = qv.scale.reshape(-1)
                v_int = torch.round(qv.value / qv.scale)
                b_int = torch.round(layer.bias / acc_scale)
                if self.n_accum_bits is not None:
                    w_mask, room = neuron_keep_mask(
                        v_int, self._input_maxes[i], budget_limit(self.n_accum_bits)
                    )
                    v_int, b_int = v_int * w_mask, torch.clamp(b_int, -room, room)
                layers.append(
                    IntegerLayer(
                        weight=v_int.numpy().astype(np.int64),
                        bias=b_int.numpy().astype(np.int64),
                        acc_scale=acc_scale.double().numpy(),
                        input_max=self._input_maxes[i],
                    )
                )
            return (
                (self.input_offset.double().numpy(), self.input_norm.double().numpy()),
                in_scale.double().numpy(),
                layers,
                [float(sc) for sc in scales[1:]],
            )
        finally:
            self.train(was_training)


#: The smallest penalty the solved readout of a network without hidden layers takes: with a
#: weight decay of 0, separable classes would send the float solution's weights to infinity.
MIN_DECAY = 1e-5
MIN_RIDGE = MIN_DECAY / 2


def solve_logistic(
    H: torch.Tensor, labels: torch.Tensor, n_classes: int, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimiser of mean cross-entropy + ``weight_decay / 2 * |w|^2`` (the loss the
    network trains with) of a softmax readout on features ``H``: multinomial logistic
    regression with ``C = 1 / (weight_decay * rows)``. Returns one weight row and bias per
    class (``classes x features``); two classes get ``-w/2, +w/2``, the same softmax."""
    from sklearn.linear_model import LogisticRegression

    weight = torch.zeros(n_classes, H.shape[1], dtype=torch.float64)
    bias = torch.zeros(n_classes, dtype=torch.float64)
    if len(torch.unique(labels)) < 2:  # one class in these rows: nothing to separate
        return weight, bias
    C = 1.0 / (max(weight_decay, MIN_DECAY) * len(H))
    model = LogisticRegression(C=C, max_iter=300).fit(H.numpy(), labels.numpy())
    coef, intercept = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
    seen = torch.from_numpy(model.classes_).long()
    if len(seen) == 2:  # one decision function: split it between the two logits
        coef = torch.cat([-coef / 2, coef / 2])
        intercept = torch.cat([-intercept / 2, intercept / 2])
    weight[seen], bias[seen] = coef, intercept  # a class absent from these rows: zero logit
    return weight, bias


def validate_module_params(
    n_layers, multiplier, n_w_bits, n_a_bits, n_accum_bits, lookup_bits=None
) -> None:
    """Range checks (from :data:`autofhe.params.PARAMS`) shared by the module and the
    estimators, run before any training."""
    check_param("module__n_layers", n_layers)
    check_param("module__n_hidden_neurons_multiplier", multiplier)
    check_param("n_w_bits", n_w_bits)
    check_param("n_a_bits", n_a_bits)
    check_param("n_accum_bits", n_accum_bits)
    check_param("module__lookup_bits", lookup_bits)
