"""Partitioning of row indices among nodes (pure: no I/O)."""

from __future__ import annotations

import numpy as np


def parse_partition(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based node index i of n) into ``(i, n)``."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"partition must look like i/n (e.g. 0/3), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"partition {text!r}: need 0 <= i < n")
    return index, count


def iid_partition(num_rows: int, num_partitions: int, *, seed: int) -> list[np.ndarray]:
    """Shuffle rows with ``seed`` and cut them into ``num_partitions`` disjoint, near-equal shares."""
    if num_partitions < 1:
        raise ValueError("num_partitions must be at least 1")
    order = np.random.default_rng(seed).permutation(num_rows)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def holdout_split(labels: np.ndarray, *, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of row indices into (train, holdout); deterministic for a seed."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be in (0, 1)")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    holdout: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(rows) * holdout_fraction)
        holdout.append(rows[:cut])
        train.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))
