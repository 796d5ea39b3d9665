"""Built-in datasets and local data loading.

Tabular datasets are pandas frames with a target column; they go through the federation's schema
(``common.data.tabular``) like any user's CSV. Image datasets are arrays with a fixed scale. Every
built-in has a deterministic stratified holdout split that only the server evaluates on; nodes share
out the remaining training rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.partition import holdout_split, partition
from common.ml.tasks import CLASSIFICATION, REGRESSION, strata

logger = logging.getLogger(__name__)

DEFAULT_SEED = 42
DEFAULT_DATASET = "digits"
DEFAULT_HOLDOUT_FRACTION = 0.2
TARGET = "target"
REGRESSION_DATASETS = ("diabetes",)  # built-ins with a numeric target (split and partitioned on quantile bins)


@dataclass(frozen=True)
class TabularData:
    name: str
    train: pd.DataFrame
    holdout: pd.DataFrame
    target: str = TARGET


@dataclass(frozen=True)
class ImageData:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


Dataset = TabularData | ImageData


def _sklearn_frame(loader: Callable[..., object], name: str, seed: int, holdout_fraction: float) -> TabularData:
    bunch = loader(as_frame=True)
    frame: pd.DataFrame = bunch.frame  # type: ignore[attr-defined]
    frame = frame.rename(columns={frame.columns[-1]: TARGET}) if TARGET not in frame.columns else frame
    task = REGRESSION if name in REGRESSION_DATASETS else CLASSIFICATION
    train_rows, holdout_rows = holdout_split(strata(frame[TARGET].to_numpy(), task),
                                             holdout_fraction=holdout_fraction, seed=seed)
    return TabularData(name, frame.iloc[train_rows].reset_index(drop=True),
                       frame.iloc[holdout_rows].reset_index(drop=True))


def _sklearn(name: str) -> Callable[..., TabularData]:
    def load(*, seed: int = DEFAULT_SEED, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> TabularData:
        import sklearn.datasets

        return _sklearn_frame(getattr(sklearn.datasets, f"load_{name}"), name, seed, holdout_fraction)

    load.__doc__ = f"scikit-learn's bundled {name} dataset (ships inside the wheel; no download)."
    return load


def _keras_images(name: str, scale: float) -> Callable[..., ImageData]:
    def load(*, seed: int = DEFAULT_SEED, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> ImageData:
        import keras

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
        x = np.concatenate([x_train, x_test]).astype(np.float32) / scale
        if x.ndim == 3:
            x = x[..., None]
        y = np.concatenate([y_train, y_test]).reshape(-1).astype(np.int64)
        train_rows, holdout_rows = holdout_split(y, holdout_fraction=holdout_fraction, seed=seed)
        return ImageData(name, x[train_rows], y[train_rows], x[holdout_rows], y[holdout_rows], int(y.max()) + 1)

    load.__doc__ = f"{name} through keras.datasets (downloads on first use: needs internet)."
    return load


BUILTIN_DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _sklearn("digits"),
    "breast_cancer": _sklearn("breast_cancer"),
    "wine": _sklearn("wine"),
    "iris": _sklearn("iris"),
    "diabetes": _sklearn("diabetes"),  # regression: disease progression after one year (25 to 346)
    "mnist": _keras_images("mnist", 255.0),
    "fashion_mnist": _keras_images("fashion_mnist", 255.0),
    "cifar10": _keras_images("cifar10", 255.0),
}


def load_builtin(name: str, *, seed: int = DEFAULT_SEED) -> Dataset:
    try:
        loader = BUILTIN_DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; built-in: {', '.join(sorted(BUILTIN_DATASETS))}") from None
    return loader(seed=seed)


def labels_of(dataset: Dataset) -> np.ndarray:
    """What a partition stratifies on: the classes, or quantile bins of a regression target."""
    if isinstance(dataset, ImageData):
        return dataset.y_train
    task = REGRESSION if dataset.name in REGRESSION_DATASETS else CLASSIFICATION
    return strata(dataset.train[dataset.target].to_numpy(), task)


def node_rows(dataset: Dataset, index: int, count: int, *, scheme: str = "iid", alpha: float = 0.5,
              seed: int = DEFAULT_SEED) -> np.ndarray:
    """Row indices of node ``index`` of ``count`` under a partition scheme (disjoint, reproducible)."""
    return partition(labels_of(dataset), count, scheme=scheme, seed=seed, alpha=alpha)[index]


MAX_CLASSES = 1000  # a target column with more distinct values is an identifier or a measurement, not classes


def check_class_column(labels: pd.Series, name: str) -> None:
    """Refuse, at once, a class column that holds more than ``MAX_CLASSES`` distinct values."""
    distinct = labels.nunique(dropna=True)
    if distinct > MAX_CLASSES:
        raise ValueError(f"column {name!r} has {distinct} distinct values, more than the {MAX_CLASSES} classes a "
                         "target may have: is it the class column?")


def read_csv(path: Path) -> pd.DataFrame:
    """A site's own CSV file (any mix of numeric and text columns; empty cells are missing values)."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read CSV ({exc})") from exc
    except MemoryError:
        raise ValueError(f"{path}: too large to load into this machine's memory") from None
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    logger.info("loaded %d rows x %d columns from %s", len(frame), frame.shape[1], path)
    return frame
