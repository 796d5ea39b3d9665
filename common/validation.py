"""Named value checks: one home for each rule that flags, strategy constructors and wire types share (pure).

Every check returns the value it accepted (the float checks as ``float``) or raises ``ValueError``
worded ``"<name> must be <rule>, got <value>"``. With an empty ``name`` the message is only
``"must be <rule>"``: argparse types use that, since whoever reports the error (argparse, the
``FL_...`` environment reader, the config file reader) already names the setting.
"""

from __future__ import annotations

import math
from typing import NoReturn


def _refuse(name: str, rule: str, value: object) -> NoReturn:
    """Raise the one ``ValueError`` wording every check uses."""
    raise ValueError(f"{name} must be {rule}, got {value}" if name else f"must be {rule}")


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def require_positive_int(name: str, value: int) -> int:
    """An integer >= 1."""
    if value < 1:
        _refuse(name, "a positive integer", value)
    return value


def require_non_negative_int(name: str, value: int) -> int:
    """An integer >= 0."""
    if value < 0:
        _refuse(name, ">= 0", value)
    return value


def require_positive(name: str, value: float) -> float:
    """A number > 0; infinity passes (``--end-grace inf``: wait as long as it takes), NaN does not."""
    if not value > 0:
        _refuse(name, "positive", value)
    return float(value)


def require_positive_finite(name: str, value: float) -> float:
    """A finite number > 0 (a rate an optimizer multiplies by)."""
    if not (_is_finite(value) and value > 0):
        _refuse(name, "a finite number > 0", value)
    return float(value)


def require_non_negative_finite(name: str, value: float) -> float:
    """A finite number >= 0."""
    if not (_is_finite(value) and value >= 0):
        _refuse(name, "a finite number >= 0", value)
    return float(value)


def require_in_interval(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                        high_open: bool = False) -> float:
    """``low <= value <= high``, either end open; the rule is written as an interval, e.g. ``in [0, 1)``."""
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):  # NaN fails both
        _refuse(name, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}", value)
    return float(value)


def require_fraction(name: str, value: float) -> float:
    """A share in [0, 1]."""
    return require_in_interval(name, value, 0, 1)


def require_positive_fraction(name: str, value: float) -> float:
    """A share in (0, 1]: something, at most all."""
    return require_in_interval(name, value, 0, 1, low_open=True)


def require_decay_rate(name: str, value: float) -> float:
    """A decay (momentum, moment decay) in [0, 1)."""
    return require_in_interval(name, value, 0, 1, high_open=True)
