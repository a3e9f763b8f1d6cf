"""Sizes and durations as people write and read them: ``"4GB"``, ``"30m"``, ``312.4 MB``."""

from __future__ import annotations

import math
import re

from autofhe.errors import ParameterError

__all__ = ["megabytes", "parse_duration", "parse_size"]

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*$")


def _positive_number(value) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def parse_size(value) -> float:
    """``"4GB"`` / ``"500MB"`` / a number of bytes -> bytes."""
    if _positive_number(value):
        return float(value)
    match = _SIZE.match(str(value))
    if not match or float(match.group(1)) <= 0:
        raise ParameterError(f"size {value!r} is not understood; write e.g. 4GB or 500MB.")
    unit = match.group(2).upper() if match.group(2) else None
    return float(match.group(1)) * _UNITS[unit]


def parse_duration(value) -> float:
    """``"30m"`` / ``"2h"`` / ``"90s"`` / a number of seconds -> seconds."""
    if _positive_number(value):
        return float(value)
    match = _DURATION.match(str(value))
    if not match or float(match.group(1)) <= 0:
        raise ParameterError(f"duration {value!r} is not understood; write e.g. 90s, 30m or 2h.")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def megabytes(n_bytes: int) -> str:
    """``n_bytes`` in MB (10^6 bytes) with one decimal, e.g. ``'312.4 MB'``; under 0.1 MB in
    kB or bytes, so that a small size never reads ``0.0 MB``."""
    if n_bytes >= 100_000:
        return f"{n_bytes / 1e6:.1f} MB"
    if n_bytes >= 1000:
        return f"{n_bytes / 1e3:.1f} kB"
    return f"{n_bytes} bytes"
