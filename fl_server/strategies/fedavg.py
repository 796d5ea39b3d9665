"""FedAvg and FedProx: sample-weighted averaging, streamed into one running sum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.validation import require_non_negative_finite
from fl_server.strategies.base import Strategy, cast_to, check_num_samples

# Layers are processed in blocks of this many elements, so float64 temporaries stay at 512 KiB
# instead of twice the largest layer.
BLOCK_ELEMENTS = 1 << 16


def add_scaled(acc: np.ndarray, weights: np.ndarray, factor: float) -> None:
    """``acc += factor * weights`` in float64, in place, block by block."""
    flat_acc, flat_weights = acc.reshape(-1), np.asarray(weights).reshape(-1)
    for start in range(0, flat_acc.size, BLOCK_ELEMENTS):
        block = slice(start, start + BLOCK_ELEMENTS)
        flat_acc[block] += np.multiply(flat_weights[block], factor, dtype=np.float64)


def divided(acc: np.ndarray, divisor: float, dtype: np.dtype[Any]) -> np.ndarray:
    """``acc / divisor`` cast to ``dtype``, block by block."""
    out = np.empty(acc.shape, dtype=dtype)
    flat_out, flat_acc = out.reshape(-1), acc.reshape(-1)
    for start in range(0, flat_acc.size, BLOCK_ELEMENTS):
        block = slice(start, start + BLOCK_ELEMENTS)
        flat_out[block] = cast_to(flat_acc[block] / divisor, dtype)
    return out


class FedAvg(Strategy):
    """Sample-weighted federated averaging (McMahan et al., 2017), streamed.

    Each update is folded into a float64 running sum ``sum_k n_k * w_k`` as it arrives and
    then dropped, so the state is one model-sized accumulator however many nodes take part.
    """

    name = "fedavg"
    partial_sums = True

    def __init__(self) -> None:
        self._sums: list[np.ndarray] | None = None
        self._dtypes: list[np.dtype[Any]] = []
        self._total_samples = 0

    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        self._sums = None
        self._dtypes = [np.asarray(w).dtype for w in global_weights]
        self._total_samples = 0

    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        check_num_samples(node_id, num_samples)
        if self._sums is None:
            self._sums = [np.zeros(np.shape(w), dtype=np.float64) for w in weights]
            if not self._dtypes:
                self._dtypes = [np.asarray(w).dtype for w in weights]
        for acc, w in zip(self._sums, weights, strict=True):
            add_scaled(acc, w, float(num_samples))
        self._total_samples += num_samples

    def add_partial_sum(self, sums: Sequence[np.ndarray], total_weight: int) -> None:
        if total_weight <= 0:
            raise ValueError(f"a partial sum needs a positive weight, got {total_weight}")
        if self._sums is None:
            self._sums = [np.zeros(np.shape(s), dtype=np.float64) for s in sums]
        for acc, partial in zip(self._sums, sums, strict=True):
            acc += np.asarray(partial, dtype=np.float64)
        self._total_samples += total_weight

    def average(self) -> list[np.ndarray] | None:
        """The round's weighted mean in float64 (None without updates); ``aggregate`` casts it back."""
        if self._sums is None:
            return None
        return [acc / self._total_samples for acc in self._sums]

    def aggregate(self) -> list[np.ndarray] | None:
        if self._sums is None:
            return None
        return [divided(acc, self._total_samples, dtype) for acc, dtype in zip(self._sums, self._dtypes, strict=True)]

    @property
    def state_nbytes(self) -> int:
        """Bytes held for the current round (the accumulator), for tests and benchmarks."""
        return sum(acc.nbytes for acc in self._sums or [])


class FedProx(FedAvg):
    """FedProx (Li et al., 2020): FedAvg on the server; each node minimises its loss plus
    ``proximal_mu / 2 * ||w - w_global||^2``, which keeps heterogeneous nodes near the global model.

    The server only tells the nodes ``proximal_mu`` through ``start_round``'s config.
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01) -> None:
        super().__init__()
        self.proximal_mu = require_non_negative_finite("proximal_mu", proximal_mu)

    def train_config(self, server_round: int) -> dict[str, Any]:
        return {"proximal_mu": self.proximal_mu}

    def params(self) -> dict[str, Any]:
        return {"proximal_mu": self.proximal_mu}
