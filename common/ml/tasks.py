"""Learning tasks: multi-class classification, binary classification, regression (pure: no I/O, no Keras).

The task decides the model's output layer (softmax over classes, one sigmoid unit, one linear unit), its
loss (``common.ml.models.compile_spec``), how the target is encoded (class index, or a number
standardised with the federation's pooled mean and std) and which holdout metrics the server reports.
When ``--task`` is not given it is inferred from the target's federated statistics (``infer_task``):
never from rows.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence

import numpy as np

CLASSIFICATION = "classification"
BINARY = "binary"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, BINARY, REGRESSION)

# A numeric target is classes when its shared value counts (k-anonymous: a value held by fewer than k rows
# at a node is left out) cover this share of its rows, with at most MAX_INFERRED_CLASSES distinct values.
CLASS_COVERAGE = 0.95
MAX_INFERRED_CLASSES = 50
REGRESSION_STRATA = 10  # quantile bins that stand in for classes when splitting a numeric target


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return task


def infer_task(target_counts: Mapping[str, int], numeric_count: int | None) -> str:
    """The task a target's pooled statistics suggest.

    ``target_counts``: pooled value counts of the target (k-anonymous); ``numeric_count``: how many rows
    have a numeric target (None when some node saw a non-numeric target). A non-numeric target, or a
    numeric one made of few repeated values, is classes (``binary`` with two); otherwise ``regression``.
    """
    covered = sum(target_counts.values())
    distinct = len(target_counts)
    if numeric_count is not None and numeric_count > 0 and (
            distinct > MAX_INFERRED_CLASSES or covered < CLASS_COVERAGE * numeric_count):
        return REGRESSION
    return BINARY if distinct == 2 else CLASSIFICATION


def pooled_mean_std(count: int, total: float, total_sq: float) -> tuple[float, float]:
    """Mean and (population) std from a pooled count, sum and sum of squares; a constant gets std 1."""
    if count <= 0:
        raise ValueError("no numeric values to standardise")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return mean, std if std > 1e-12 else 1.0


def standardise(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((np.asarray(values, dtype=np.float64) - mean) / std).astype(np.float32)


def original_units(standardised: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Predictions of a model trained on the standardised target, back in the target's units."""
    return np.asarray(standardised, dtype=np.float64).reshape(-1) * std + mean


def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """``n / (k * n_c)`` per class (scikit-learn's "balanced"); a class nobody reported gets weight 1."""
    total, k = sum(counts), len(counts)
    if total <= 0 or k == 0:
        raise ValueError("class weights need target counts")
    return [total / (k * c) if c > 0 else 1.0 for c in counts]


def strata(values: np.ndarray, task: str, bins: int = REGRESSION_STRATA) -> np.ndarray:
    """Labels to stratify a split or a partition on: the classes, or quantile bins of a numeric target."""
    if task != REGRESSION:
        return np.asarray(values)
    numeric = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(numeric, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, numeric, side="right")


def binary_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC (left out when the holdout holds one class), precision, recall and F1 of the positive class (index 1)."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(y_true).reshape(-1).astype(int)
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    predicted = (p >= threshold).astype(int)
    scores = {"auc": float(roc_auc_score(y, p))} if len(np.unique(y)) == 2 else {}
    return {**scores,
            "precision": float(precision_score(y, predicted, zero_division=0)),
            "recall": float(recall_score(y, predicted, zero_division=0)),
            "f1": float(f1_score(y, predicted, zero_division=0))}


def regression_metrics(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MSE, MAE, RMSE (in the units of the values given) and R² (left out for a constant holdout)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    mse = float(mean_squared_error(y, p))
    scores = {"mse": mse, "mae": float(mean_absolute_error(y, p)), "rmse": math.sqrt(mse)}
    if np.ptp(y) > 0:
        scores["r2"] = float(r2_score(y, p))
    return scores


def add_task_options(parser: argparse.ArgumentParser) -> None:
    """``--task`` and ``--class-weights``, the same for fl-server and fl-baseline."""
    from common.config import add_flag, add_option

    add_option(parser, "--task", default=None, choices=list(TASKS),
               help="classification, binary or regression (default: inferred from the target's statistics)")
    add_flag(parser, "--class-weights",
             help="weight each class's loss by n / (k * n_class) from the nodes' pooled target counts (imbalance)")
