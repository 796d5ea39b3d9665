"""Holdout evaluation and model saving on the server (Keras; call from a worker thread)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class KerasHoldout:
    """``evaluate(round, weights) -> {"loss", "accuracy"}`` on a fixed holdout set; ``{}`` when the holdout is
    empty (``fl-server --no-holdout``)."""

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> None:
        self._model = model
        self._x = x
        self._y = y
        self._batch_size = batch_size
        self._lock = threading.Lock()  # one Keras model, used from executor threads

    def __call__(self, server_round: int, weights: Sequence[np.ndarray]) -> dict[str, float]:
        if len(self._y) == 0:
            return {}
        with self._lock:
            self._model.set_weights(list(weights))
            results = self._model.evaluate(self._x, self._y, batch_size=self._batch_size, verbose=0,
                                           return_dict=True)
        return {name: float(value) for name, value in results.items()}

    def save(self, weights: Sequence[np.ndarray], path: Path) -> None:
        with self._lock:
            self._model.set_weights(list(weights))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._model.save(path)
