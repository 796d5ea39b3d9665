"""The strategy interface and the small helpers every strategy shares (pure numpy, no I/O).

A strategy sees one round at a time: ``begin_round`` with the current global weights,
``accumulate`` once per accepted node update (as it arrives), then ``aggregate`` for the
new global weights. ``train_config`` lets a strategy add settings to the nodes' training
config (FedProx sends its ``proximal_mu``). A round the strategy cannot aggregate (too few
updates for Krum, say) raises ``AggregationError``: the coordinator records that round as
failed with the reason and the session goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np


class AggregationError(ValueError):
    """This round's updates cannot be aggregated by the strategy; the message says why."""


class Strategy(ABC):
    """One small interface per aggregation rule. Constructors take keyword-only hyperparameters."""

    name: ClassVar[str] = "strategy"
    # True when ``aggregate`` needs only sum_k n_k w_k and sum_k n_k: the strategy then takes partial sums
    # (``add_partial_sum``) from ``fl-aggregator`` workers. Strategies that need every update keep it False.
    partial_sums: ClassVar[bool] = False

    @abstractmethod
    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        """Reset per-round state; called before the first update of a round."""

    @abstractmethod
    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        """Fold one validated node update into the round's state."""

    @abstractmethod
    def aggregate(self) -> list[np.ndarray] | None:
        """New global weights, or None when the round received no update.

        Raises ``AggregationError`` when the round's updates cannot be aggregated."""

    def add_partial_sum(self, sums: Sequence[np.ndarray], total_weight: int) -> None:
        """Fold a partial ``sum_k n_k w_k`` (float64, per layer) of ``total_weight = sum_k n_k`` into the round."""
        raise AggregationError(f"strategy {self.name} needs every update; it cannot add partial sums")

    def train_config(self, server_round: int) -> dict[str, Any]:
        """Extra ``TrainConfig`` fields for this round's ``start_round`` (e.g. ``proximal_mu``)."""
        return {}

    def check_num_updates(self, num_updates: int) -> None:
        """Raise ``AggregationError`` if a round with ``num_updates`` updates cannot be aggregated."""
        if num_updates < 1:
            raise AggregationError("no update accepted")

    def params(self) -> dict[str, Any]:
        """The hyperparameters in effect (defaults resolved), for the session history."""
        return {}

    def state(self) -> dict[str, list[np.ndarray]]:
        """State carried across rounds (server optimizer moments), for checkpoints; empty if none."""
        return {}

    def load_state(self, state: dict[str, list[np.ndarray]]) -> None:
        """Restore what ``state`` returned (on ``fl-server --resume``)."""
        if state:
            raise ValueError(f"strategy {self.name} keeps no state across rounds, got {sorted(state)}")

    def last_round_info(self) -> dict[str, Any]:
        """What the last ``aggregate`` decided beyond the weights (e.g. Krum's selected nodes), for history."""
        return {}


def check_num_samples(node_id: str, num_samples: int) -> None:
    """Every strategy refuses an update that claims no samples (the wire protocol already does too)."""
    if num_samples <= 0:
        raise ValueError(f"node {node_id} reported {num_samples} samples; a positive count is needed")


def cast_to(values: np.ndarray | float, dtype: np.dtype[Any]) -> np.ndarray:
    """Cast float64 results back to a layer's dtype (integer layers are rounded, not truncated)."""
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        values = np.rint(values)
    return np.asarray(values).astype(dtype)


def weighted_average(updates: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """Reference FedAvg: sum_k n_k * w_k / sum_k n_k per layer, in float64, cast back to each layer's dtype."""
    if not updates:
        raise ValueError("no updates to average")
    total = sum(num_samples for _, num_samples in updates)
    if total <= 0:
        raise ValueError("updates must carry a positive number of samples")
    first = updates[0][0]
    return [
        cast_to(sum(np.asarray(w[i], dtype=np.float64) * n for w, n in updates) / total, np.asarray(first[i]).dtype)
        for i in range(len(first))
    ]
