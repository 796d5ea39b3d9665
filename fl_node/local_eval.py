"""A node's local test split for federated evaluation (``fl-node --local-test-fraction``; pure: no I/O)."""

from __future__ import annotations

import math

import numpy as np


def split_local_test(x: np.ndarray, y: np.ndarray, fraction: float, *, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: ``floor(fraction * rows)`` rows (at least one when ``fraction`` > 0,
    at most all but one) drawn with ``seed``, held out from training; the same rows every round."""
    if not 0 <= fraction < 1:
        raise ValueError(f"local test fraction {fraction} must be in [0, 1)")
    rows = len(y)
    count = min(max(math.floor(fraction * rows), 1), rows - 1) if fraction > 0 and rows > 1 else 0
    order = np.random.default_rng(seed).permutation(rows)
    test, train = np.sort(order[:count]), np.sort(order[count:])
    return x[train], y[train], x[test], y[test]
