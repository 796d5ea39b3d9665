"""Built-in datasets and local data loading.

A dataset is a loader function returning ``Dataset``: training rows (which nodes
partition among themselves) and a holdout split that only the server evaluates on.
The split is deterministic for a seed, so server and nodes agree without talking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.partition import holdout_split, iid_partition

logger = logging.getLogger(__name__)

DEFAULT_SEED = 42
DEFAULT_HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def _split(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, holdout_fraction: float) -> Dataset:
    train_rows, holdout_rows = holdout_split(y, holdout_fraction=holdout_fraction, seed=seed)
    return Dataset(name, x[train_rows], y[train_rows], x[holdout_rows], y[holdout_rows], num_classes)


def load_digits(*, seed: int = DEFAULT_SEED, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> Dataset:
    """scikit-learn's bundled UCI handwritten digits: 1,797 8x8 images, 10 classes (ships in the wheel)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixel values are 0..16 by construction, so a fixed scale needs no data statistics.
    x = (bunch.data / 16.0).astype(np.float32)
    return _split("digits", x, bunch.target.astype(np.int64), 10, seed, holdout_fraction)


def load_mnist(*, seed: int = DEFAULT_SEED, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> Dataset:
    """MNIST through ``keras.datasets`` (downloads on first use; needs internet), flattened to 784 features."""
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    x = np.concatenate([x_train, x_test]).reshape(-1, 28 * 28).astype(np.float32) / 255.0
    y = np.concatenate([y_train, y_test]).astype(np.int64)
    return _split("mnist", x, y, 10, seed, holdout_fraction)


BUILTIN_DATASETS: dict[str, Callable[..., Dataset]] = {"digits": load_digits, "mnist": load_mnist}


def load_builtin(name: str, *, seed: int = DEFAULT_SEED) -> Dataset:
    try:
        loader = BUILTIN_DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; built-in: {sorted(BUILTIN_DATASETS)}") from None
    return loader(seed=seed)


def node_share(dataset: Dataset, index: int, count: int, *, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Node ``index`` of ``count``: a disjoint, reproducible iid share of the training rows."""
    rows = iid_partition(len(dataset.y_train), count, seed=seed)[index]
    return dataset.x_train[rows], dataset.y_train[rows]


def load_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    """A node's own CSV: numeric feature columns and an integer class column ``target``."""
    import pandas as pd

    frame = pd.read_csv(path)
    if target not in frame.columns:
        raise ValueError(f"{path}: no column {target!r} (columns: {', '.join(map(str, frame.columns))})")
    features = frame.drop(columns=[target])
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise ValueError(f"{path}: non-numeric feature columns {non_numeric}")
    x = features.fillna(0.0).to_numpy(dtype=np.float32)
    y = frame[target].to_numpy()
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: target column {target!r} must hold integer class labels")
    logger.info("loaded %d rows x %d features from %s", x.shape[0], x.shape[1], path)
    return x, y.astype(np.int64)
