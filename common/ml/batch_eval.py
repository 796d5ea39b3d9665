"""Evaluation of a compiled Keras model without ``Model.evaluate``'s per-call set-up.

``Model.evaluate`` and ``Model.predict`` build a data adapter, an epoch iterator and a callback list on every
call: about 50 ms for a digits MLP whose actual evaluation takes 2 ms. The server evaluates every round, on a
worker thread beside the nodes' training (on a small machine, the same cores), and a node evaluates every round
with ``--federated-eval``; so both call the model's traced test and predict functions batch by batch instead.

The losses and metrics a federation can compile (``common.ml.models.LOSS_METRICS``) are all means over rows, and
Keras averages a batch's loss and metrics over its rows, so the row-weighted mean of the batches' results is the
whole set's (what ``evaluate`` returns, up to float rounding)."""

from __future__ import annotations

from typing import Any

import numpy as np

EVAL_BATCH_ROWS = 2048  # rows per call: few calls (each has a fixed cost), bounded memory


def evaluate_in_batches(model: Any, x: np.ndarray, y: np.ndarray,
                        batch_rows: int = EVAL_BATCH_ROWS) -> dict[str, float]:
    """Loss and compiled metrics of ``model`` on ``(x, y)``, as ``evaluate(..., return_dict=True)`` gives them."""
    rows = len(y)
    if rows == 0:
        raise ValueError("nothing to evaluate: no rows")
    totals: dict[str, float] = {}
    for start in range(0, rows, batch_rows):
        stop = min(start + batch_rows, rows)
        logs = model.test_on_batch(x[start:stop], y[start:stop], return_dict=True)
        for name, value in logs.items():
            totals[name] = totals.get(name, 0.0) + float(value) * (stop - start)
    return {name: total / rows for name, total in totals.items()}


def predict_in_batches(model: Any, x: np.ndarray, batch_rows: int = EVAL_BATCH_ROWS) -> np.ndarray:
    """The model's outputs for every row of ``x``, as ``predict`` gives them."""
    if len(x) == 0:
        raise ValueError("nothing to predict: no rows")
    return np.concatenate([np.asarray(model.predict_on_batch(x[start:start + batch_rows]))
                           for start in range(0, len(x), batch_rows)])
