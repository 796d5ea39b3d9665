"""Partitioning of row indices among nodes (pure: no I/O)."""

from __future__ import annotations

import numpy as np

from common.validation import require_in_interval


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
    require_in_interval("holdout_fraction", holdout_fraction, 0, 1, low_open=True, high_open=True)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    holdout: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(rows) * holdout_fraction)
        holdout.append(rows[:cut])
        train.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))


SCHEMES = ("iid", "dirichlet", "shards", "quantity")


def dirichlet_partition(
    labels: np.ndarray, num_partitions: int, *, alpha: float, seed: int, min_rows: int = 1, max_tries: int = 100
) -> list[np.ndarray]:
    """Label skew: each class is spread over nodes in proportions drawn from Dirichlet(alpha).

    Small alpha gives each node a few dominant classes; large alpha approaches iid. Draws again (same
    seed stream) until every node has at least ``min_rows`` rows.
    """
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for node, piece in enumerate(np.split(rows, cuts)):
                parts[node].append(piece)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_rows:
            return result
    raise ValueError(f"could not give every one of {num_partitions} nodes {min_rows} row(s); raise alpha")


def shard_partition(
    labels: np.ndarray, num_partitions: int, *, shards_per_node: int = 2, seed: int
) -> list[np.ndarray]:
    """Pathological label skew (McMahan et al.): sort by label, cut into shards, deal each node a few."""
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_partitions * shards_per_node)
    dealt = rng.permutation(len(shards))
    return [np.sort(np.concatenate([shards[s] for s in dealt[i::num_partitions]])) for i in range(num_partitions)]


def quantity_partition(num_rows: int, num_partitions: int, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Quantity skew: iid rows, but node sizes drawn from Dirichlet(alpha) (at least one row each)."""
    if num_rows < num_partitions:
        raise ValueError("fewer rows than nodes")
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(num_partitions, alpha))
    sizes = 1 + np.floor(shares * (num_rows - num_partitions)).astype(int)
    sizes[np.argmax(sizes)] += num_rows - sizes.sum()
    order = rng.permutation(num_rows)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def partition(
    labels: np.ndarray, num_partitions: int, *, scheme: str, seed: int, alpha: float = 0.5
) -> list[np.ndarray]:
    """Row indices per node under one of ``SCHEMES``."""
    if num_partitions < 1:
        raise ValueError("need at least one node")
    if scheme == "iid":
        return iid_partition(len(labels), num_partitions, seed=seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_partitions, alpha=alpha, seed=seed)
    if scheme == "shards":
        return shard_partition(labels, num_partitions, seed=seed)
    if scheme == "quantity":
        return quantity_partition(len(labels), num_partitions, alpha=alpha, seed=seed)
    raise ValueError(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")


def dominant_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over nodes of the share of each node's most frequent class (1/num_classes for perfect iid)."""
    shares = [np.bincount(np.unique(labels, return_inverse=True)[1][p]).max() / len(p) for p in parts if len(p)]
    return float(np.mean(shares))
