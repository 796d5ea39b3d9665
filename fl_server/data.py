"""The server's side of the data: its holdout set and the data spec it sends to the nodes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.datasets import ImageData, load_builtin, read_csv
from common.data.dataspec import DataSpec
from common.data.tabular import (
    Schema,
    SchemaError,
    encode_frame,
    merge_statistics,
    parse_statistics,
    pooled_class_counts,
)
from common.ml.tasks import CLASSIFICATION
from common.wire.errors import ProtocolError
from common.wire.safe_json import MiB, read_json_file

logger = logging.getLogger(__name__)

GatherFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ServerData:
    spec: DataSpec
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    source: str
    class_counts: tuple[int, ...] = ()  # pooled target counts per schema class (merged statistics only)


def load_schema(path: Path) -> Schema:
    try:
        return Schema.from_wire(read_json_file(path, max_bytes=16 * MiB))
    except (OSError, ProtocolError) as exc:
        raise ValueError(f"{path}: cannot read schema ({exc})") from exc
    except SchemaError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def without_columns(stats: dict[str, Any], excluded: set[str]) -> dict[str, Any]:
    """A node's statistics less the columns the server excludes (in case a node ignored the request)."""
    columns = {k: v for k, v in stats["columns"].items() if k not in excluded}
    return {**stats, "columns": columns}


def log_withheld(node_id: str, stats: dict[str, Any]) -> None:
    """Say which columns a node did not describe, and why (its reasons: identifiers, exclusions)."""
    withheld = stats.get("withheld")
    if isinstance(withheld, dict):
        for name, reason in list(withheld.items())[:50]:
            logger.info("node %s withheld column %.128r from its statistics: %.200s", node_id, name, reason)


async def resolve_server_data(
    *,
    dataset: str,
    holdout_csv: Path | None,
    target: str | None,
    schema_file: Path | None,
    categorical: list[str],
    seed: int,
    gather_statistics: GatherFn,
    declared: DataSpec | None = None,
    exclude: list[str] | None = None,
    min_category_count: int | None = None,
    task: str | None = None,
    no_holdout: bool = False,
) -> ServerData:
    """Holdout and data spec: image datasets have a fixed spec; tabular data gets a declared schema
    (``declared``, e.g. from a checkpoint, or ``schema_file``) or one merged from the nodes' statistics
    (``gather_statistics`` asks every connected node). ``task`` None: the schema's, or inferred from the
    nodes' target statistics (``common.ml.tasks``). ``no_holdout``: the server keeps no rows at all (the
    holdout arrays are empty; progress is measured by federated evaluation); ``target`` names the nodes' target
    column, or the built-in tabular dataset's is used."""
    holdout: Any = None
    if no_holdout:
        if target:
            source = "none"
        else:
            builtin = load_builtin(dataset, seed=seed)
            if isinstance(builtin, ImageData):
                spec = DataSpec.image(builtin.input_shape, builtin.num_classes)
                return ServerData(spec, builtin.x_holdout[:0], builtin.y_holdout[:0], "none")
            target, source = builtin.target, "none"
    elif holdout_csv is not None:
        if not target:
            raise ValueError("--holdout needs --target (the class column)")
        holdout, source = read_csv(holdout_csv), str(holdout_csv)
    else:
        builtin = load_builtin(dataset, seed=seed)
        if isinstance(builtin, ImageData):
            if task not in (None, CLASSIFICATION):
                raise ValueError(f"{dataset} is an image dataset: its task is classification, not {task}")
            spec = DataSpec.image(builtin.input_shape, builtin.num_classes)
            return ServerData(spec, builtin.x_holdout, builtin.y_holdout, f"builtin:{dataset}")
        holdout, target, source = builtin.holdout, builtin.target, f"builtin:{dataset}"
    assert target is not None
    counts: tuple[int, ...] = ()
    if declared is not None and declared.schema is not None:
        schema = declared.schema
    elif schema_file is not None:
        schema = load_schema(schema_file)
        logger.info("schema from %s: %d feature columns, %d classes", schema_file, len(schema.features),
                    schema.num_classes)
    else:
        schema, counts = await schema_from_statistics(gather_statistics, target=target, categorical=categorical,
                                                      exclude=list(exclude or []),
                                                      min_category_count=min_category_count, task=task)
    if task is not None and schema.task != task:
        raise ValueError(f"--task {task}, but the declared schema's task is {schema.task}")
    if holdout is None:
        empty_y = np.zeros((0,), dtype=np.float32 if schema.task == "regression" else np.int64)
        return ServerData(DataSpec.tabular(schema), np.zeros((0, schema.num_features), dtype=np.float32), empty_y,
                          source, counts)
    try:
        x, y, dropped = encode_frame(holdout, schema)
    except SchemaError as exc:
        raise ValueError(f"holdout {source}: {exc}") from exc
    if dropped:
        logger.warning("holdout: %d row(s) with a class the schema does not know were left out", dropped)
    return ServerData(DataSpec.tabular(schema), x, y, source, counts)


async def schema_from_statistics(gather_statistics: GatherFn, *, target: str, categorical: list[str],
                                 exclude: list[str], min_category_count: int | None,
                                 task: str | None = None) -> tuple[Schema, tuple[int, ...]]:
    """The schema merged from the connected nodes' column statistics (a node's unusable answer is skipped),
    and the pooled target count of each of its classes (for class weights)."""
    request: dict[str, Any] = {"target": target, "categorical": categorical, "exclude": exclude}
    if min_category_count is not None:
        request["min_category_count"] = min_category_count
    stats = await gather_statistics(request)
    usable = []
    for node_id, node_stats in stats.items():
        try:
            parse_statistics(node_stats, target)
            usable.append(without_columns(node_stats, set(exclude)))
            log_withheld(node_id, node_stats)
        except SchemaError as exc:  # one node's bad answer must not sink the federation
            logger.warning("statistics of node %s ignored: %s", node_id, exc)
    try:
        schema = merge_statistics(usable, target, categorical, task)
    except SchemaError as exc:
        raise ValueError(f"cannot build a schema from the nodes' statistics: {exc}") from exc
    logger.info("schema merged from %d node(s)' statistics: %s task, %d feature columns (%d encoded), %d classes",
                len(stats), schema.task, len(schema.features), schema.num_features, schema.num_classes)
    return schema, pooled_class_counts(usable, target, schema)
