"""Metrics as text, written one way everywhere: ``loss=0.1234 accuracy=0.9000`` in logs, ``-`` for a gap in tables."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

METRIC_DIGITS = 4


def format_number(value: object, digits: int = METRIC_DIGITS) -> str:
    """``value`` with ``digits`` decimals; ``-`` when it is not a number (None: not measured, or not finite
    where it was measured and sent as null). numpy scalars count as numbers, booleans do not."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "-"


def format_metrics(metrics: Mapping[str, object], digits: int = METRIC_DIGITS) -> str:
    """One line of ``name=value`` pairs in the mapping's order, e.g. ``loss=0.1234 accuracy=0.9000``."""
    return " ".join(f"{name}={format_number(value, digits)}" for name, value in metrics.items())
