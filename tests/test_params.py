"""One table of estimator parameters: estimators, search space and seed read the same values."""

from __future__ import annotations

import pytest

from autofhe.errors import ParameterError
from autofhe.params import PARAMS, check_param, seed_values
from autofhe.search.plan.space import SEED_CONFIG, to_estimator_params, validate_space

#: Integer parameters the module validates, with their position in validate_module_params.
MODULE_INTS = ("module__n_layers", "n_w_bits", "n_a_bits", "n_accum_bits", "module__lookup_bits")


def _module_check(name: str, value) -> None:
    from autofhe.nn.module import validate_module_params

    args = {
        "n_layers": 2,
        "multiplier": 1.0,
        "n_w_bits": 3,
        "n_a_bits": 3,
        "n_accum_bits": None,
        "lookup_bits": None,
    }
    args[{"module__n_layers": "n_layers", "module__lookup_bits": "lookup_bits"}.get(name, name)] = (
        value
    )
    validate_module_params(*args.values())


@pytest.mark.parametrize("name", MODULE_INTS)
def test_estimator_and_search_space_accept_exactly_the_tables_range(name):
    low, high = PARAMS[name].low, PARAMS[name].high
    for value in (low, high):
        _module_check(name, value)
        validate_space({name: value})
    for value in (low - 1, high + 1):
        with pytest.raises(ParameterError, match=f"{name}={value} is out of range"):
            _module_check(name, value)
        with pytest.raises(ParameterError, match=f"{name} = {value}"):
            validate_space({name: value})


def test_n_layers_has_one_range_everywhere():
    """It was 1-64 for the estimator and 1-8 for a study's space: both take 12 now, and both
    refuse the table's high + 1."""
    high = PARAMS["module__n_layers"].high
    space = {"module__n_layers": {"low": 1, "high": 12}}
    assert validate_space(space) == space
    assert _module_check("module__n_layers", 12) is None
    with pytest.raises(ParameterError, match=f"{high + 1}"):
        validate_space({"module__n_layers": {"low": 1, "high": high + 1}})
    with pytest.raises(ParameterError, match=f"module__n_layers={high + 1} is out of range"):
        _module_check("module__n_layers", high + 1)


def test_seed_configuration_is_the_estimators_defaults():
    from autofhe import NeuralNetClassifier

    params = NeuralNetClassifier().get_params()
    seed = to_estimator_params(SEED_CONFIG)
    assert seed == seed_values()
    # left to the optimizer's and the module's own defaults, which the seed restates
    assert set(seed) - set(params) == {"optimizer__weight_decay", "module__lookup_bits"}
    assert seed["optimizer__weight_decay"] == 0.0 and seed["module__lookup_bits"] is None
    for name in set(seed) & set(params):
        got = params[name]
        assert getattr(got, "__name__", got) == seed[name], name
    validate_space(SEED_CONFIG)


def test_check_param_messages_say_the_range():
    with pytest.raises(ParameterError, match="must be a positive finite number from"):
        check_param("module__n_hidden_neurons_multiplier", float("nan"))
    with pytest.raises(ParameterError, match="must be an integer from 2 to 16"):
        check_param("n_w_bits", 2.5)
    assert check_param("n_accum_bits", None) is None


def test_module_signature_defaults_are_the_tables():
    import inspect

    from autofhe.nn.module import QuantMLP

    signature = inspect.signature(QuantMLP).parameters
    for name, param in PARAMS.items():
        short = name.removeprefix("module__")
        if short in signature:
            default = signature[short].default
            assert getattr(default, "__name__", default) == param.default, name
