"""Holdout evaluation and model saving on the server (Keras; call from a worker thread)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.ml.batch_eval import EVAL_BATCH_ROWS, evaluate_in_batches, predict_in_batches
from common.ml.tasks import BINARY, CLASSIFICATION, binary_metrics, original_units, regression_metrics


def task_metrics(task: str, keras_results: dict[str, float], y: np.ndarray, predicted: np.ndarray | None,
                 target_scale: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """The holdout metrics of a task from Keras' ``evaluate`` results and the model's predictions (pure)."""
    if task == CLASSIFICATION or predicted is None:
        return keras_results
    if task == BINARY:
        accuracy = {"accuracy": keras_results["binary_accuracy"]} if "binary_accuracy" in keras_results else {}
        return {"loss": keras_results["loss"], **accuracy, **binary_metrics(y, predicted)}
    mean, std = target_scale
    return {"loss": keras_results["loss"],
            **regression_metrics(original_units(y, mean, std), original_units(predicted, mean, std))}


class KerasHoldout:
    """``evaluate(round, weights) -> metrics`` on a fixed holdout set, by task (``common.ml.tasks``):
    classification ``loss, accuracy``; binary ``loss, accuracy, auc, precision, recall, f1``; regression
    ``loss`` (MSE of the standardised target) and ``mse, mae, rmse, r2`` in the target's original units. ``{}``
    when the holdout is empty (``fl-server --no-holdout``)."""

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray, *, batch_rows: int = EVAL_BATCH_ROWS,
                 task: str = CLASSIFICATION, target_mean: float = 0.0, target_std: float = 1.0) -> None:
        self._model = model
        self._x = x
        self._y = y
        self._batch_rows = batch_rows
        self._task = task
        self._target_scale = (target_mean, target_std)
        self._lock = threading.Lock()  # one Keras model, used from executor threads

    def __call__(self, server_round: int, weights: Sequence[np.ndarray]) -> dict[str, float]:
        if len(self._y) == 0:
            return {}
        with self._lock:
            self._model.set_weights(list(weights))
            results = evaluate_in_batches(self._model, self._x, self._y, self._batch_rows)
            predicted = (predict_in_batches(self._model, self._x, self._batch_rows)
                         if self._task != CLASSIFICATION else None)
        return task_metrics(self._task, {name: float(value) for name, value in results.items()}, self._y, predicted,
                            self._target_scale)

    def save(self, weights: Sequence[np.ndarray], path: Path) -> None:
        with self._lock:
            self._model.set_weights(list(weights))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._model.save(path)
