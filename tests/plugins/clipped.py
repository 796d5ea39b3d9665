"""FedAvg of updates whose change from the global model is clipped to a maximum L2 norm.

A strategy from outside the package, as a user writes one: ``fl-server --strategy
tests.plugins.clipped:ClippedFedAvg --strategy-param max_norm=5`` (the README shows this file)."""

from collections.abc import Sequence

import numpy as np

from fl_server.strategies.base import Strategy, cast_to, check_num_samples


class ClippedFedAvg(Strategy):
    """Sample-weighted mean of ``w_global + clip(w_k - w_global, max_norm)``, streamed into one sum."""

    name = "clipped_fedavg"

    def __init__(self, *, max_norm: float = 1.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm
        self._global: list[np.ndarray] = []
        self._sums: list[np.ndarray] | None = None
        self._total_samples = 0
        self._clipped = 0

    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        self._global = [np.asarray(w) for w in global_weights]
        self._sums, self._total_samples, self._clipped = None, 0, 0

    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        check_num_samples(node_id, num_samples)
        deltas = [np.asarray(w, np.float64) - g for w, g in zip(weights, self._global, strict=True)]
        norm = float(np.sqrt(sum(np.sum(d * d) for d in deltas)))
        scale = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
        self._clipped += scale < 1.0
        if self._sums is None:
            self._sums = [np.zeros_like(d) for d in deltas]
        for acc, d in zip(self._sums, deltas, strict=True):
            acc += num_samples * scale * d
        self._total_samples += num_samples

    def aggregate(self) -> list[np.ndarray] | None:
        if self._sums is None:
            return None
        return [cast_to(g + acc / self._total_samples, g.dtype)
                for g, acc in zip(self._global, self._sums, strict=True)]

    def params(self) -> dict[str, float]:
        return {"max_norm": self.max_norm}

    def last_round_info(self) -> dict[str, int]:
        return {"clipped_updates": self._clipped}
