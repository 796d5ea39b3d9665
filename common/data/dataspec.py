"""What the model's inputs are, as the server tells the nodes: a tabular schema or an image shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.data.tabular import Schema, SchemaError

TABULAR = "tabular"
IMAGE = "image"


@dataclass(frozen=True)
class DataSpec:
    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    schema: Schema | None = None

    @classmethod
    def tabular(cls, schema: Schema) -> DataSpec:
        return cls(TABULAR, (schema.num_features,), schema.num_classes, schema)

    @classmethod
    def image(cls, input_shape: tuple[int, ...], num_classes: int) -> DataSpec:
        return cls(IMAGE, tuple(input_shape), num_classes)

    @property
    def task(self) -> str:
        """``classification`` for images; a table's schema says (``common.ml.tasks``)."""
        return self.schema.task if self.schema is not None else "classification"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"kind": self.kind, "input_shape": list(self.input_shape),
                                "num_classes": self.num_classes}
        if self.schema is not None:
            wire["schema"] = self.schema.to_wire()
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> DataSpec:
        if not isinstance(obj, dict):
            raise SchemaError("data spec must be an object")
        kind = obj.get("kind")
        if kind == TABULAR:
            return cls.tabular(Schema.from_wire(obj.get("schema")))
        if kind == IMAGE:
            shape, classes = obj.get("input_shape"), obj.get("num_classes")
            if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
                    or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 4096 for d in shape)):
                raise SchemaError("image input_shape must be a list of 1 to 4 positive ints")
            if not isinstance(classes, int) or isinstance(classes, bool) or not 2 <= classes <= 100_000:
                raise SchemaError("num_classes must be an int >= 2")
            return cls.image(tuple(shape), classes)
        raise SchemaError(f"unknown data kind {kind!r:.40}")
