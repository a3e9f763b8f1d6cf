"""Fuzzing the spec parser: whatever a spec file holds, the only error is a ParameterError."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofhe.errors import ParameterError
from autofhe.search.plan.spec import load_spec

NAMES = [
    "module__n_layers",
    "module__activation_function",
    "n_w_bits",
    "n_a_bits",
    "n_accum_bits",
    "max_epochs",
    "lr",
    "batch_size",
    "unknown_thing",
]
STUDY_KEYS = ["metric", "max_latency", "max_key_size", "sampler", "folds", "nonsense"]

scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
    st.booleans(),
)
entries = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(["low", "high", "step", "log", "x"]), scalars, max_size=4),
)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"


def _toml(sections: dict) -> str:
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


specs = st.fixed_dictionaries(
    {},
    optional={
        "study": st.dictionaries(st.sampled_from(STUDY_KEYS), scalars, max_size=3),
        "space": st.dictionaries(st.sampled_from(NAMES), entries, max_size=3),
        "fixed": st.dictionaries(st.sampled_from(NAMES), scalars, max_size=2),
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sections=specs)
def test_structured_specs_parse_or_raise_parameter_error(tmp_path, sections):
    path = tmp_path / "spec.toml"
    path.write_text(_toml(sections))
    try:
        load_spec(path)
    except ParameterError as exc:
        assert str(exc).startswith(f"spec file {path}")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=120))
def test_arbitrary_text_parses_or_raises_parameter_error(tmp_path, text):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    try:
        load_spec(path)
    except ParameterError:
        pass


def test_the_fuzzer_reaches_both_outcomes(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(_toml({"space": {"n_w_bits": {"low": 2, "high": 4}}}))
    assert load_spec(path).space["n_w_bits"] == {"low": 2, "high": 4}
    path.write_text(_toml({"space": {"n_w_bits": {"low": 2}}}))
    with pytest.raises(ParameterError, match="needs 'low' and 'high'"):
        load_spec(path)
