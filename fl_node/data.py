"""A node's local data and how it meets the federation's data spec (pure: no network)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from common.data.dataspec import IMAGE, DataSpec
from common.data.disclosure import DisclosurePolicy
from common.data.tabular import MAX_COLUMNS, SchemaError, encode_frame, local_statistics
from common.wire.safe_json import SOCKETIO_MAX_BYTES, dumps_standard

logger = logging.getLogger(__name__)
MAX_STATISTICS_BYTES = SOCKETIO_MAX_BYTES - 64 * 1024  # room for the Socket.IO framing of the reply


class LocalData:
    """Either a frame (tabular: encoded with the schema the server sends) or image arrays."""

    def __init__(self, *, frame: pd.DataFrame | None = None, target: str | None = None,
                 x: np.ndarray | None = None, y: np.ndarray | None = None,
                 policy: DisclosurePolicy | None = None) -> None:
        if (frame is None) == (x is None):
            raise ValueError("give either a frame or arrays")
        self.frame = frame.drop(columns=[c for c in frame.columns if str(c) in policy.exclude]) \
            if frame is not None and policy is not None else frame
        self.target = target
        self.policy = policy or DisclosurePolicy()
        self._arrays = (x, y) if x is not None else None
        self._cache: tuple[str, np.ndarray, np.ndarray] | None = None

    @property
    def num_rows(self) -> int:
        return len(self.frame) if self.frame is not None else len(self._arrays[1])  # type: ignore[index,arg-type]

    def statistics(self, target: str, categorical: list[str], *, min_category_count: int | None = None,
                   exclude: list[str] | None = None) -> dict[str, Any]:
        """Column statistics for the schema (counts, sums, value counts) under this node's disclosure policy,
        made stricter (never looser) by what the server asks; never rows. Withheld columns are logged."""
        if self.frame is None:
            raise SchemaError("this node holds image data; it has no column statistics")
        if len(self.frame.columns) > MAX_COLUMNS:
            raise SchemaError(f"this node's data has {len(self.frame.columns)} columns, more than the {MAX_COLUMNS} "
                              "statistics may describe: declare a schema (fl-server --schema) or exclude columns")
        policy = self.policy.stricter(min_category_count=min_category_count, exclude=exclude or ())
        stats = local_statistics(self.frame, target, categorical, policy)
        for name, reason in stats["withheld"].items():
            logger.warning("column %r is not shared in statistics: %s", name, reason)
        size = len(dumps_standard(stats))
        if size > MAX_STATISTICS_BYTES:
            raise SchemaError(f"this node's statistics are {size} bytes, more than the {MAX_STATISTICS_BYTES} a reply "
                              "may have: declare a schema (fl-server --schema) or exclude columns")
        return stats

    def prepare(self, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels under ``spec``; raises ``SchemaError`` naming what does not fit."""
        digest = hashlib.sha256(json.dumps(spec.to_wire(), sort_keys=True).encode()).hexdigest()
        if self._cache is not None and self._cache[0] == digest:
            return self._cache[1], self._cache[2]
        if spec.kind == IMAGE:
            if self._arrays is None:
                raise SchemaError("the federation trains on images; this node holds a table")
            x, y = self._arrays
            assert x is not None and y is not None
            if tuple(x.shape[1:]) != spec.input_shape:
                raise SchemaError(f"images of shape {x.shape[1:]} do not match the model's {spec.input_shape}")
        else:
            if self.frame is None or spec.schema is None:
                raise SchemaError("the federation trains on a table; this node holds images")
            x, y, dropped = encode_frame(self.frame, spec.schema)
            if dropped:
                logger.warning("%d local row(s) have a target the schema cannot encode (a class outside it, or "
                               "no number for a regression target) and are left out", dropped)
            if len(y) == 0:
                raise SchemaError("no local row has a target the schema can encode")
        self._cache = (digest, x, y)
        return x, y
