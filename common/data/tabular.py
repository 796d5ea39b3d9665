"""Tabular data schema: how every node turns its own CSV rows into the same feature vector (pure: no I/O).

Nodes never send rows. The schema (columns, their kind, normalisation statistics, category
vocabularies, class labels) is either declared in a JSON file or merged by the server from
per-node *statistics*: row counts, sums and sums of squares of numeric columns, value counts of
categorical columns and of the target. The server sends the schema with the model; a node whose
data does not fit it is refused with the name of the offending column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from common.data.disclosure import (
    DEFAULT_MAX_CATEGORIES,
    DisclosurePolicy,
    k_anonymous,
    normalise_category,
    withheld_reason,
)
from common.ml.tasks import BINARY, CLASSIFICATION, REGRESSION, TASKS, infer_task, pooled_mean_std, standardise

MAX_COLUMNS = 2_000
MAX_CATEGORIES = DEFAULT_MAX_CATEGORIES  # the most categories a column may have in a schema
MAX_NAME_CHARS = 128
NUMERIC = "numeric"
CATEGORICAL = "categorical"

# Bounds on what one node may report: the pooled mean squared and the sum of squares stay finite floats.
MAX_STAT_SUM = 1e150
MAX_STAT_SUM_SQ = 1e300
MAX_STAT_COUNT = 2**53


class SchemaError(ValueError):
    """Data or statistics that do not fit a schema; ``column`` names the offender when there is one."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # NUMERIC or CATEGORICAL
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == CATEGORICAL else 1


@dataclass(frozen=True)
class Schema:
    """``classes`` for classification and binary tasks (binary: the second is the positive class); a
    regression target has none and is standardised with ``target_mean`` and ``target_std`` (pooled)."""

    target: str
    classes: tuple[str, ...]
    features: tuple[Column, ...] = field(default_factory=tuple)
    task: str = CLASSIFICATION
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def num_features(self) -> int:
        return sum(c.width for c in self.features)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_wire(self) -> dict[str, Any]:
        wire = self._features_wire()
        if self.task != CLASSIFICATION:  # a classification schema's wire form is what it was before tasks
            wire["task"] = self.task
        if self.task == REGRESSION:
            wire.update(target_mean=self.target_mean, target_std=self.target_std)
        return wire

    def _features_wire(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "classes": list(self.classes),
            "features": [
                {"name": c.name, "kind": c.kind, "mean": c.mean, "std": c.std}
                if c.kind == NUMERIC
                else {"name": c.name, "kind": c.kind, "categories": list(c.categories)}
                for c in self.features
            ],
        }

    @classmethod
    def from_wire(cls, obj: object) -> Schema:
        """Validate a schema from a file or the network."""
        if not isinstance(obj, dict):
            raise SchemaError("schema must be a JSON object with target, classes and features")
        target = _name(obj.get("target"), "target")
        task = obj.get("task", CLASSIFICATION)
        if task not in TASKS:
            raise SchemaError(f"schema task must be one of {', '.join(TASKS)}")
        classes = obj.get("classes", [] if task == REGRESSION else None)
        if task == REGRESSION:
            if classes != []:
                raise SchemaError("a regression schema has no classes")
        elif not isinstance(classes, list) or not 2 <= len(classes) <= 10_000:
            raise SchemaError("schema classes must be a list of at least two labels")
        elif task == BINARY and len(classes) != 2:
            raise SchemaError("a binary schema has exactly two classes (the second is the positive one)")
        features = obj.get("features")
        if not isinstance(features, list) or not 1 <= len(features) <= MAX_COLUMNS:
            raise SchemaError(f"schema features must be a list of 1 to {MAX_COLUMNS} columns")
        columns = []
        for item in features:
            if not isinstance(item, dict):
                raise SchemaError("each schema feature must be an object")
            name = _name(item.get("name"), "feature name")
            kind = item.get("kind", NUMERIC)
            if kind == NUMERIC:
                mean = _finite(item.get("mean", 0.0), name, MAX_STAT_SUM)
                std = _finite(item.get("std", 1.0), name, MAX_STAT_SUM)
                columns.append(Column(name, NUMERIC, mean, std if std > 0 else 1.0))
            elif kind == CATEGORICAL:
                categories = item.get("categories")
                if not isinstance(categories, list) or not 1 <= len(categories) <= MAX_CATEGORIES:
                    raise SchemaError(f"column {name!r}: categories must list 1 to {MAX_CATEGORIES} values", name)
                columns.append(Column(name, CATEGORICAL, categories=tuple(_label(v) for v in categories)))
            else:
                raise SchemaError(f"column {name!r}: kind must be numeric or categorical", name)
        if len({c.name for c in columns}) != len(columns) or target in {c.name for c in columns}:
            raise SchemaError("schema column names must be unique and differ from the target")
        target_mean = _finite(obj.get("target_mean", 0.0), target, MAX_STAT_SUM)
        target_std = _finite(obj.get("target_std", 1.0), target, MAX_STAT_SUM)
        return cls(target, tuple(_label(c) for c in classes), tuple(columns), task, target_mean,
                   target_std if target_std > 0 else 1.0)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise SchemaError(f"{what} must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    return value


def _label(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SchemaError(f"labels and categories must be strings or numbers, got {value!r:.40}")
    text = label_text(value)
    if len(text) > MAX_NAME_CHARS:
        raise SchemaError("label too long")
    return text


def _finite(value: object, column: str, limit: float) -> float:
    """A statistic from the network as a float within ``±limit`` (so merging cannot overflow to inf)."""
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.nan
    if not (math.isfinite(number) and abs(number) <= limit):
        raise SchemaError(f"column {column!r}: statistics must be finite numbers within ±{limit:g}", column)
    return number


def label_text(value: Any) -> str:
    """Canonical text of a label or category: 3, 3.0 and "3" are the same class."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# ------------------------------------------------------------------ checking and encoding


def check_frame(frame: pd.DataFrame, schema: Schema, *, need_target: bool = True) -> None:
    """Raise ``SchemaError`` naming the first column that is missing or of the wrong kind."""
    wanted = [c.name for c in schema.features] + ([schema.target] if need_target else [])
    for name in wanted:
        if name not in frame.columns:
            raise SchemaError(f"column {name!r} is missing (the federation's schema needs it)", name)
    for column in schema.features:
        if column.kind == NUMERIC and not _numeric_like(frame[column.name]):
            raise SchemaError(f"column {column.name!r} must be numeric, found values like "
                              f"{frame[column.name].dropna().astype(str).head(3).tolist()}", column.name)


def _numeric_like(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    converted = pd.to_numeric(series, errors="coerce")
    return bool(converted.notna().sum() == series.notna().sum())


def encode_features(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Standardised numeric columns (missing -> mean) and one-hot categories (missing/unknown -> zeros)."""
    parts: list[np.ndarray] = []
    for column in schema.features:
        values = frame[column.name]
        if column.kind == NUMERIC:
            numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            numeric = np.where(np.isnan(numeric), column.mean, numeric)
            parts.append(((numeric - column.mean) / column.std)[:, None])
        else:
            text = values.map(lambda v: None if pd.isna(v) else normalise_category(v))
            index = {normalise_category(category): i for i, category in enumerate(column.categories)}
            onehot = np.zeros((len(frame), len(column.categories)))
            rows = [(r, index[v]) for r, v in enumerate(text) if v in index]
            if rows:
                r_idx, c_idx = zip(*rows, strict=True)
                onehot[list(r_idx), list(c_idx)] = 1.0
            parts.append(onehot)
    return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(frame), 0), np.float32)


def encode_frame(frame: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray, int]:
    """Features, class indices (regression: the standardised target), and how many rows were dropped for a
    label outside the schema (regression: a missing or non-numeric target)."""
    check_frame(frame, schema)
    if schema.task == REGRESSION:
        values = pd.to_numeric(frame[schema.target], errors="coerce").to_numpy(dtype=np.float64)
        keep = np.isfinite(values)
        return (encode_features(frame[keep], schema), standardise(values[keep], schema.target_mean, schema.target_std),
                int((~keep).sum()))
    labels = frame[schema.target].map(lambda v: None if pd.isna(v) else label_text(v))
    index = {label: i for i, label in enumerate(schema.classes)}
    keep = labels.map(lambda v: v in index).to_numpy(dtype=bool)
    kept = frame[keep]
    y = np.array([index[v] for v in labels[keep]], dtype=np.int64)
    return encode_features(kept, schema), y, int((~keep).sum())


# ------------------------------------------------------------------ federated statistics


def local_statistics(frame: pd.DataFrame, target: str, categorical: Iterable[str] = (),
                     policy: DisclosurePolicy | None = None) -> dict[str, Any]:
    """What a node shares to build the schema: counts, sums, sums of squares, and the value counts that
    ``policy`` lets out (``common.data.disclosure``). No rows, no identifiers, no value held by fewer than k rows.

    ``withheld`` names the columns left out and why (column names are the schema's business; their
    values are not), so the server can say why a column is not in the schema."""
    policy = policy or DisclosurePolicy()
    if target not in frame.columns:
        raise SchemaError(f"column {target!r} (the target) is missing", target)
    forced = set(categorical)
    columns: dict[str, Any] = {}
    withheld: dict[str, str] = {}
    for name in (str(n) for n in frame.columns):
        if name == target:
            continue
        if name in policy.exclude:
            withheld[name] = "excluded (--exclude-columns)"
            continue
        series = frame[name]
        if name not in forced and _numeric_like(series):
            numeric = pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=np.float64)
            columns[name] = {"kind": NUMERIC, "count": int(numeric.size), "sum": float(numeric.sum()),
                             "sum_sq": float(np.square(numeric).sum())}
            continue
        text = series.dropna().map(normalise_category)
        reason = withheld_reason(int(text.nunique()), len(text), policy)
        if reason is not None:
            withheld[name] = reason
            continue
        counts = {str(k): int(v) for k, v in text.value_counts().items()}
        columns[name] = {"kind": CATEGORICAL, "counts": k_anonymous(counts, policy)}
    target_counts = {str(k): int(v) for k, v in frame[target].dropna().map(label_text).value_counts().items()}
    stats = {"num_rows": len(frame), "target": target, "target_counts": k_anonymous(target_counts, policy),
             "columns": columns, "withheld": withheld}
    if _numeric_like(frame[target]):  # like a numeric feature: count, sum, sum of squares (for regression)
        numeric = pd.to_numeric(frame[target], errors="coerce").dropna().to_numpy(dtype=np.float64)
        stats["target_numeric"] = {"count": int(numeric.size), "sum": float(numeric.sum()),
                                   "sum_sq": float(np.square(numeric).sum())}
    return stats


def merge_statistics(stats: Sequence[object], target: str, categorical: Iterable[str] = (),
                     task: str | None = None) -> Schema:
    """Build the schema from the nodes' statistics (validated here: they come from the network).

    A column enters the schema when more than half of the nodes have it; it is categorical when any node
    saw non-numeric values in it or it is listed in ``categorical``. ``task`` None: inferred from the
    target's statistics (``common.ml.tasks.infer_task``); a regression target is standardised with the
    mean and std pooled from the nodes' counts, sums and sums of squares.
    """
    parsed = [parse_statistics(s, target) for s in stats]
    if not parsed:
        raise SchemaError("no statistics to build a schema from")
    forced = set(categorical)
    names: dict[str, int] = {}
    for node in parsed:
        for name in node["columns"]:
            names[name] = names.get(name, 0) + 1
    columns = []
    for name in sorted(n for n, seen in names.items() if seen * 2 > len(parsed)):
        entries = [node["columns"][name] for node in parsed if name in node["columns"]]
        if name in forced or any(e["kind"] == CATEGORICAL for e in entries):
            totals: dict[str, int] = {}
            for e in entries:
                for value, count in e.get("counts", {}).items():
                    totals[value] = totals.get(value, 0) + count
            ordered = sorted(totals, key=lambda v: (-totals[v], v))[:MAX_CATEGORIES]
            if ordered:
                columns.append(Column(name, CATEGORICAL, categories=tuple(ordered)))
        else:
            count = sum(e["count"] for e in entries)
            if count == 0:
                continue
            mean = sum(e["sum"] for e in entries) / count
            variance = max(sum(e["sum_sq"] for e in entries) / count - mean * mean, 0.0)
            std = math.sqrt(variance)
            columns.append(Column(name, NUMERIC, mean, std if std > 1e-12 else 1.0))
    pooled: dict[str, int] = {}
    for node in parsed:
        for label, count in node["target_counts"].items():
            pooled[label] = pooled.get(label, 0) + count
    numeric = [node.get("target_numeric") for node in parsed]
    numeric_count = None if any(n is None for n in numeric) else sum(n["count"] for n in numeric if n)
    task = task or infer_task(pooled, numeric_count)
    if task == REGRESSION:
        if not numeric_count:
            raise SchemaError(f"regression needs a numeric target: some node's {target!r} is not numeric", target)
        mean, std = pooled_mean_std(numeric_count, sum(n["sum"] for n in numeric if n),
                                    sum(n["sum_sq"] for n in numeric if n))
        return Schema(target, (), tuple(columns), REGRESSION, mean, std)
    classes = sorted(pooled, key=_label_sort_key)
    if len(classes) < 2:
        raise SchemaError(f"the nodes' target column {target!r} holds fewer than two classes")
    if task == BINARY and len(classes) != 2:
        raise SchemaError(f"binary task: the nodes' target column {target!r} holds {len(classes)} classes", target)
    return Schema(target, tuple(classes), tuple(columns), task)


def pooled_class_counts(stats: Sequence[object], target: str, schema: Schema) -> tuple[int, ...]:
    """The nodes' target counts summed per class of ``schema`` (k-anonymous counts: a class a node held in
    fewer than k rows counts 0 there); empty for regression."""
    totals = dict.fromkeys(schema.classes, 0)
    for node in (parse_statistics(s, target) for s in stats):
        for label, count in node["target_counts"].items():
            if label in totals:
                totals[label] += count
    return tuple(totals[c] for c in schema.classes)


def _label_sort_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def parse_statistics(obj: object, target: str) -> dict[str, Any]:
    """One node's statistics, validated (they come from the network); raises ``SchemaError``."""
    if not isinstance(obj, dict) or obj.get("target") != target:
        raise SchemaError(f"statistics must be an object for target {target!r}")
    columns = obj.get("columns")
    target_counts = obj.get("target_counts")
    if not isinstance(columns, dict) or len(columns) > MAX_COLUMNS or not isinstance(target_counts, dict):
        raise SchemaError("statistics need columns and target_counts objects")
    clean: dict[str, Any] = {}
    for name, entry in columns.items():
        _name(name, "column name")
        if not isinstance(entry, dict):
            raise SchemaError(f"column {name!r}: statistics must be an object", name)
        if entry.get("kind") == NUMERIC:
            count = entry.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_STAT_COUNT:
                raise SchemaError(f"column {name!r}: count must be an integer in [0, 2**53]", name)
            clean[name] = {"kind": NUMERIC, "count": count, "sum": _finite(entry.get("sum"), name, MAX_STAT_SUM),
                           "sum_sq": _finite(entry.get("sum_sq"), name, MAX_STAT_SUM_SQ)}
        elif entry.get("kind") == CATEGORICAL:
            clean[name] = {"kind": CATEGORICAL, "counts": _counts(entry.get("counts"), name)}
        else:
            raise SchemaError(f"column {name!r}: unknown statistics kind", name)
    parsed: dict[str, Any] = {"columns": clean, "target_counts": _counts(target_counts, target)}
    numeric = obj.get("target_numeric")
    if numeric is not None:
        count = numeric.get("count") if isinstance(numeric, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_STAT_COUNT:
            raise SchemaError(f"target {target!r}: count must be an integer in [0, 2**53]", target)
        assert isinstance(numeric, dict)
        parsed["target_numeric"] = {"count": count, "sum": _finite(numeric.get("sum"), target, MAX_STAT_SUM),
                                    "sum_sq": _finite(numeric.get("sum_sq"), target, MAX_STAT_SUM_SQ)}
    return parsed


def _counts(obj: object, column: str) -> dict[str, int]:
    if not isinstance(obj, dict) or len(obj) > 10_000:
        raise SchemaError(f"column {column!r}: value counts must be an object", column)
    out: dict[str, int] = {}
    for value, count in obj.items():
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_STAT_COUNT:
            raise SchemaError(f"column {column!r}: counts must be integers in [0, 2**53]", column)
        out[_label(value)] = count
    return out
