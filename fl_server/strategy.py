"""Aggregation strategies: pure numpy math, no I/O.

A strategy sees one round at a time: ``begin_round`` with the current global weights,
``accumulate`` once per accepted node update (as it arrives), then ``aggregate`` for the
new global weights. FedAvg keeps a running weighted sum, so the server holds one
model-sized accumulator however many nodes take part.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Strategy(ABC):
    """One small interface per aggregation rule."""

    name: str = "strategy"

    @abstractmethod
    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        """Reset per-round state; called before the first update of a round."""

    @abstractmethod
    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        """Fold one validated node update into the round's state."""

    @abstractmethod
    def aggregate(self) -> list[np.ndarray] | None:
        """New global weights, or None when the round received no update."""


def weighted_average(updates: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """Reference FedAvg: sum_k n_k * w_k / sum_k n_k per layer, in float64, cast back to each layer's dtype."""
    if not updates:
        raise ValueError("no updates to average")
    total = sum(num_samples for _, num_samples in updates)
    if total <= 0:
        raise ValueError("updates must carry a positive number of samples")
    first = updates[0][0]
    return [
        _cast_like(sum(np.asarray(w[i], dtype=np.float64) * n for w, n in updates) / total, first[i])
        for i in range(len(first))
    ]


def _cast_like(values: np.ndarray | float, like: np.ndarray) -> np.ndarray:
    if np.issubdtype(like.dtype, np.integer) or like.dtype == np.bool_:
        values = np.rint(values)
    return np.asarray(values).astype(like.dtype)


class FedAvg(Strategy):
    """Sample-weighted federated averaging (McMahan et al., 2017), streamed."""

    name = "fedavg"

    def __init__(self) -> None:
        self._sums: list[np.ndarray] | None = None
        self._like: list[np.ndarray] = []
        self._total_samples = 0

    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        self._sums = None
        self._like = [np.asarray(w) for w in global_weights]
        self._total_samples = 0

    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError(f"node {node_id} reported {num_samples} samples; FedAvg needs a positive count")
        if self._sums is None:
            self._sums = [np.asarray(w, dtype=np.float64) * num_samples for w in weights]
        else:
            for acc, w in zip(self._sums, weights, strict=True):
                acc += np.asarray(w, dtype=np.float64) * num_samples
        self._total_samples += num_samples

    def aggregate(self) -> list[np.ndarray] | None:
        if self._sums is None:
            return None
        like = self._like or self._sums
        return [_cast_like(acc / self._total_samples, ref) for acc, ref in zip(self._sums, like, strict=True)]


STRATEGIES: dict[str, type[Strategy]] = {FedAvg.name: FedAvg}


def make_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}") from None
