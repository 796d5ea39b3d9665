"""Model catalogue and (de)serialisation of architectures.

A model is a builder ``(input_shape, num_classes) -> keras.Model``. The server builds
it, sends ``model.to_json()``; nodes rebuild it from that JSON in Keras safe mode, so
they need no model code. Training settings travel as a small whitelisted compile spec.
"""

from __future__ import annotations

import json
from typing import Any

ALLOWED_OPTIMIZERS = ("adam", "sgd")
ALLOWED_LOSSES = ("sparse_categorical_crossentropy",)
ALLOWED_METRICS = ("accuracy",)


def parse_model_name(name: str) -> tuple[str, list[int]]:
    """``"mlp"``, ``"mlp:256,128"`` (hidden sizes) or ``"logreg"``."""
    kind, _, sizes = name.partition(":")
    if kind == "logreg":
        if sizes:
            raise ValueError("logreg takes no sizes")
        return kind, []
    if kind == "mlp":
        try:
            hidden = [int(s) for s in sizes.split(",")] if sizes else [64]
        except ValueError:
            raise ValueError(f"model {name!r}: sizes must be integers, e.g. mlp:128,64") from None
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"model {name!r}: sizes must be positive")
        return kind, hidden
    raise ValueError(f"unknown model {name!r}; choose logreg, mlp or mlp:H1,H2,...")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0) -> Any:
    """Build a catalogue model (uncompiled)."""
    import keras

    kind, hidden = parse_model_name(name)
    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input(shape=input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(layers, name=kind)


def compile_spec(optimizer: str, learning_rate: float) -> dict[str, Any]:
    return {
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
    }


def compile_model(model: Any, spec: dict[str, Any], learning_rate: float | None = None) -> None:
    """Compile with a whitelisted spec (it may come from the network)."""
    import keras

    optimizer = spec.get("optimizer")
    loss = spec.get("loss")
    metrics = spec.get("metrics", [])
    rate = float(learning_rate if learning_rate is not None else spec.get("learning_rate", 1e-3))
    if optimizer not in ALLOWED_OPTIMIZERS or loss not in ALLOWED_LOSSES:
        raise ValueError(f"unsupported compile spec {spec!r}")
    if not isinstance(metrics, list) or any(m not in ALLOWED_METRICS for m in metrics):
        raise ValueError(f"unsupported metrics {metrics!r}")
    opt = keras.optimizers.Adam(rate) if optimizer == "adam" else keras.optimizers.SGD(rate)
    model.compile(optimizer=opt, loss=loss, metrics=list(metrics))


def model_from_architecture(architecture: str) -> Any:
    """Rebuild a model from ``to_json()`` text in safe mode (no lambdas, no arbitrary code)."""
    import keras

    return keras.saving.deserialize_keras_object(json.loads(architecture), safe_mode=True)
