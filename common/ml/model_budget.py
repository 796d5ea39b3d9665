"""How large an architecture is before it is built (pure: reads Keras JSON, builds nothing).

A node builds whatever architecture the server sends; ``Dense(6_000_000)`` would take gigabytes before
any check could run. ``estimate_parameters`` walks the Keras 3 JSON (layers, nested models, each
layer's ``build_config`` input shape) and counts the weights of the layers that hold most of them
(dense, convolution, embedding, normalisation). The node refuses an architecture over its
``--max-model-params`` before building it, and checks the built model's own count and the size of the
fetched weights against the same limit, so a config that lies about its shapes is still caught.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_MAX_MODEL_PARAMS = 50_000_000  # 200 MB of float32 weights; a node needs several copies while training


class ModelTooLarge(ValueError):
    """An architecture or model over the node's parameter budget."""


def estimate_parameters(config: Any) -> int:
    """Weights of the layers in a Keras JSON config (an estimate that errs on the large side)."""
    total = 0
    stack = [config]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > 100_000:
            raise ModelTooLarge("architecture has more than 100,000 layer entries")
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        layer_config = item.get("config")
        if isinstance(layer_config, dict):
            total += _layer_parameters(str(item.get("class_name", "")), layer_config, item.get("build_config"))
            stack.extend(v for v in layer_config.values() if isinstance(v, (dict, list)))
    return total


def _dims(value: Any) -> list[int]:
    return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []


def _input_dim(build_config: Any) -> int:
    shape = build_config.get("input_shape") if isinstance(build_config, dict) else None
    dims = _dims(shape)
    return max(dims[-1], 1) if dims else 1


def _layer_parameters(class_name: str, config: dict[str, Any], build_config: Any) -> int:
    inputs = _input_dim(build_config)
    units = config.get("units")
    filters = config.get("filters")
    if isinstance(units, int):
        return units * (inputs + 1)
    if isinstance(filters, int):
        kernel = math.prod(_dims(config.get("kernel_size")) or [1])
        return filters * (kernel * inputs + 1)
    if isinstance(config.get("input_dim"), int) and isinstance(config.get("output_dim"), int):
        return int(config["input_dim"]) * int(config["output_dim"])  # Embedding
    if "Normalization" in class_name:
        return 4 * inputs
    return 0


def check_parameter_budget(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise ModelTooLarge(f"{what} has about {count:,} parameters, over this node's --max-model-params "
                            f"{limit:,}; it was not built")
