"""Byzantine-robust aggregation: coordinate-wise median, trimmed mean, Krum and Multi-Krum.

These rules compare updates with each other, so they need every update of a round at once:
each keeps the round's updates as rows of one 2-D array (one flattened vector per update,
float32 unless the model has float64 layers), grown by doubling. Memory is therefore one model
per update, unlike the FedAvg family. ``num_samples`` is ignored by design: it is self-reported,
so weighting by it would let one node claim a huge count and dominate (see the README).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.validation import require_in_interval, require_non_negative_int, require_positive_int
from fl_server.strategies.base import AggregationError, Strategy, cast_to, check_num_samples


def require_trim_fraction(name: str, value: float) -> float:
    """A trimmed mean drops ``floor(fraction * n)`` values per side, so the fraction is in [0, 0.5)."""
    return require_in_interval(name, value, 0, 0.5, high_open=True)


class UpdateStack:
    """A round's updates as rows of one preallocated, growing 2-D array."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtype: np.dtype[Any], initial_rows: int = 4) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self._data = np.empty((initial_rows, sum(self.sizes)), dtype=dtype)
        self.node_ids: list[str] = []

    def __len__(self) -> int:
        return len(self.node_ids)

    @property
    def rows(self) -> np.ndarray:
        """View of the filled rows, shape ``(num_updates, num_parameters)``."""
        return self._data[: len(self)]

    def append(self, node_id: str, weights: Sequence[np.ndarray]) -> None:
        if len(weights) != len(self.shapes):
            raise ValueError(f"node {node_id}: {len(weights)} layers, expected {len(self.shapes)}")
        if len(self) == self._data.shape[0]:
            grown = np.empty((2 * self._data.shape[0], self._data.shape[1]), dtype=self._data.dtype)
            grown[: len(self)] = self._data
            self._data = grown
        row = self._data[len(self)]
        offset = 0
        for layer, shape, size in zip(weights, self.shapes, self.sizes, strict=True):
            if tuple(np.shape(layer)) != shape:
                raise ValueError(f"node {node_id}: layer of shape {np.shape(layer)}, expected {shape}")
            row[offset : offset + size] = np.ravel(layer)
            offset += size
        self.node_ids.append(node_id)

    def unflatten(self, vector: np.ndarray, dtypes: Sequence[np.dtype[Any]]) -> list[np.ndarray]:
        layers, offset = [], 0
        for shape, size, dtype in zip(self.shapes, self.sizes, dtypes, strict=True):
            layers.append(cast_to(vector[offset : offset + size].reshape(shape), dtype))
            offset += size
        return layers

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)


class RobustStrategy(Strategy):
    """Collects the round's updates into an ``UpdateStack`` and combines them in ``_combine``."""

    def __init__(self) -> None:
        self._stack: UpdateStack | None = None
        self._dtypes: list[np.dtype[Any]] = []
        self._info: dict[str, Any] = {}

    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        arrays = [np.asarray(w) for w in global_weights]
        self._dtypes = [a.dtype for a in arrays]
        dtype = np.dtype(np.float64 if any(d == np.float64 for d in self._dtypes) else np.float32)
        self._stack = UpdateStack([a.shape for a in arrays], dtype)
        self._info = {}

    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        check_num_samples(node_id, num_samples)
        if self._stack is None:
            raise RuntimeError("begin_round must be called before accumulate")
        self._stack.append(node_id, weights)

    def aggregate(self) -> list[np.ndarray] | None:
        if self._stack is None or len(self._stack) == 0:
            return None
        self.check_num_updates(len(self._stack))
        vector = self._combine(self._stack)
        return self._stack.unflatten(vector, self._dtypes)

    def last_round_info(self) -> dict[str, Any]:
        return dict(self._info)

    @abstractmethod
    def _combine(self, stack: UpdateStack) -> np.ndarray:
        """One flattened vector from the stacked updates (may reorder ``stack.rows`` in place)."""


class Median(RobustStrategy):
    """Coordinate-wise median (Yin et al., 2018). Needs all updates of a round."""

    name = "median"

    def _combine(self, stack: UpdateStack) -> np.ndarray:
        # overwrite_input: partially sorts each column in place instead of copying the whole stack.
        return np.asarray(np.median(stack.rows, axis=0, overwrite_input=True))


class TrimmedMean(RobustStrategy):
    """Coordinate-wise trimmed mean (Yin et al., 2018): per coordinate, drop the ``k = floor(trim_fraction * n)``
    largest and ``k`` smallest values and average the rest. Needs all updates of a round."""

    name = "trimmed_mean"

    def __init__(self, *, trim_fraction: float = 0.2) -> None:
        super().__init__()
        self.trim_fraction = require_trim_fraction("trim_fraction", trim_fraction)

    def _combine(self, stack: UpdateStack) -> np.ndarray:
        n = len(stack)
        k = math.floor(self.trim_fraction * n)
        self._info = {"trimmed_per_side": k}
        rows = stack.rows
        if k > 0:
            rows.sort(axis=0)  # in place: sorting each column keeps every coordinate's multiset
            rows = rows[k : n - k]
        return np.asarray(rows.mean(axis=0, dtype=np.float64))

    def params(self) -> dict[str, Any]:
        return {"trim_fraction": self.trim_fraction}


class MultiKrum(RobustStrategy):
    """Multi-Krum (Blanchard et al., 2017): score each update by the sum of squared distances to its
    ``n - f - 2`` closest other updates, keep the ``num_selected`` lowest scores and average them with
    equal weights (as in the paper; sample counts are self-reported). Needs ``n > 2f + 2`` updates,
    and all updates of a round. ``num_selected`` defaults to ``n - f`` and is capped at ``n - f``.
    """

    name = "multi_krum"

    def __init__(self, *, num_byzantine: int = 1, num_selected: int | None = None) -> None:
        super().__init__()
        self.num_byzantine = int(require_non_negative_int("num_byzantine", num_byzantine))
        self.num_selected = None if num_selected is None else require_positive_int("num_selected", num_selected)

    def check_num_updates(self, num_updates: int) -> None:
        super().check_num_updates(num_updates)
        f = self.num_byzantine
        if num_updates <= 2 * f + 2:
            raise AggregationError(
                f"{self.name} with {f} Byzantine node(s) needs more than 2f + 2 = {2 * f + 2} updates, "
                f"got {num_updates}"
            )

    def _selection_size(self, num_updates: int) -> int:
        limit = num_updates - self.num_byzantine
        return limit if self.num_selected is None else min(self.num_selected, limit)

    def _combine(self, stack: UpdateStack) -> np.ndarray:
        scores = krum_scores(stack.rows, self.num_byzantine)
        chosen = np.argsort(scores, kind="stable")[: self._selection_size(len(stack))]
        self._info = {
            "selected": [stack.node_ids[i] for i in chosen],
            "scores": {node: float(s) for node, s in zip(stack.node_ids, scores, strict=True)},
        }
        return np.asarray(stack.rows[np.sort(chosen)].mean(axis=0, dtype=np.float64))

    def params(self) -> dict[str, Any]:
        return {"num_byzantine": self.num_byzantine, "num_selected": self.num_selected}


class Krum(MultiKrum):
    """Krum (Blanchard et al., 2017): the single update with the lowest Krum score becomes the global model."""

    name = "krum"

    def __init__(self, *, num_byzantine: int = 1) -> None:
        super().__init__(num_byzantine=num_byzantine, num_selected=1)

    def params(self) -> dict[str, Any]:
        return {"num_byzantine": self.num_byzantine}


def pairwise_squared_distances(rows: np.ndarray) -> np.ndarray:
    """``(n, n)`` float64 matrix of ``||x_i - x_j||^2``, one reused float64 buffer (no n-by-d temporaries)."""
    n = rows.shape[0]
    distances = np.zeros((n, n), dtype=np.float64)
    buffer = np.empty(rows.shape[1], dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            np.subtract(rows[i], rows[j], out=buffer)
            distances[i, j] = distances[j, i] = float(np.dot(buffer, buffer))
    return distances


def krum_scores(rows: np.ndarray, num_byzantine: int) -> np.ndarray:
    """Per row: the sum of squared distances to its ``n - f - 2`` nearest other rows."""
    n = rows.shape[0]
    closest = n - num_byzantine - 2
    if closest < 1:
        raise AggregationError(f"Krum needs n > 2f + 2; got n={n}, f={num_byzantine}")
    distances = pairwise_squared_distances(rows)
    np.fill_diagonal(distances, np.inf)  # a row is not its own neighbour
    return np.sort(distances, axis=1)[:, :closest].sum(axis=1)
