"""Study specs: a TOML file that overrides the defaults of a search.

[study]
metric = "accuracy"          # see autofhe.search.trial.rows.METRICS
max_latency = 0.5            # seconds per sample (a constraint)
max_key_size = "4GB"         # evaluation keys as a client uploads them (compressed; a constraint)
sampler = "tpe"              # or "nsga2"
folds = 5                    # cross-validated metric (default: 3 under 1,500 rows, else 1)

[space]                      # replaces entries of the default space (space.py)
n_w_bits = { low = 2, high = 4 }
module__activation_function = ["ReLU", "Tanh"]

[fixed]                      # estimator parameters set for every trial
batch_size = 64
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autofhe.errors import ParameterError
from autofhe.search.plan.space import DEFAULT_SPACE, validate_space
from autofhe.units import parse_duration, parse_size

__all__ = ["Spec", "check_folds", "load_spec", "parse_duration", "parse_size"]


@dataclass
class Spec:
    space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    metric: str | None = None
    max_latency: float | None = None
    max_key_size: float = 4e9
    sampler: str = "tpe"
    #: None: the study decides from its data (plan.py: 3 folds under 1,500 rows, else 1)
    folds: int | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    #: The limits (``max_latency``, ``max_key_size``) the user set, in the spec file or on the
    #: command line: a resume takes those and keeps the study's own for the others.
    given: set[str] = field(default_factory=set, compare=False)

    def to_json(self) -> dict:
        settings = asdict(self)
        del settings["given"]  # how the settings were chosen, not one of them
        return settings


_STUDY_KEYS = {"metric", "max_latency", "max_key_size", "sampler", "folds"}
MAX_FOLDS = 20


def check_folds(value) -> int:
    """The number of cross-validation folds: 1 (one validation split) to MAX_FOLDS."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FOLDS:
        raise ParameterError(
            f"folds {value!r}: pass an integer from 1 (one validation split) to {MAX_FOLDS}."
        )
    return value


def load_spec(path: str | Path | None) -> Spec:
    """Read a spec file (None: the defaults). Every problem is one ParameterError."""
    spec = Spec()
    if path is None:
        return spec
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ParameterError(
            f"spec file {path} does not exist; pass an existing TOML file."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError(f"spec file {path} cannot be read: {exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(f"spec file {path} is not valid TOML: {exc}.") from None
    unknown = set(data) - {"study", "space", "fixed"}
    if unknown:
        raise ParameterError(
            f"spec file {path}: unknown section(s) {sorted(unknown)}; use [study], [space], "
            "[fixed]."
        )
    for section in ("study", "space", "fixed"):
        if not isinstance(data.get(section, {}), dict):
            raise ParameterError(
                f"spec file {path}: {section} = {data[section]!r}; [{section}] must be a "
                "section of `name = value` lines."
            )
    study = data.get("study", {})
    if set(study) - _STUDY_KEYS:
        raise ParameterError(
            f"spec file {path}: unknown [study] key(s) {sorted(set(study) - _STUDY_KEYS)}; "
            f"known: {sorted(_STUDY_KEYS)}."
        )
    try:
        if "metric" in study:
            spec.metric = str(study["metric"])
        if "max_latency" in study:
            spec.max_latency = parse_duration(study["max_latency"])
            spec.given.add("max_latency")
        if "max_key_size" in study:
            spec.max_key_size = parse_size(study["max_key_size"])
            spec.given.add("max_key_size")
        if "sampler" in study:
            if study["sampler"] not in ("tpe", "nsga2"):
                raise ParameterError(f"sampler {study['sampler']!r}: use 'tpe' or 'nsga2'.")
            spec.sampler = study["sampler"]
        if "folds" in study:
            spec.folds = check_folds(study["folds"])
        space = dict(DEFAULT_SPACE)
        user = {**data.get("space", {}), **data.get("fixed", {})}
        if "n_accum_bits" in user:
            if "accum_slack" in user:
                raise ParameterError(
                    "n_accum_bits and accum_slack both set the accumulator budget; keep one."
                )
            space.pop("accum_slack")  # the user's own budget replaces the slack
        space.update(data.get("space", {}))
        spec.space = validate_space(space)
        spec.fixed = dict(data.get("fixed", {}))
        overlap = set(spec.fixed) & set(data.get("space", {}))
        if overlap:
            raise ParameterError(f"{sorted(overlap)} are both searched and fixed; pick one.")
        for name in spec.fixed:
            spec.space.pop(name, None)
    except ParameterError as exc:
        raise ParameterError(f"spec file {path}: {exc}") from None
    return spec
