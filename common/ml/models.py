"""Model catalogue and (de)serialisation of architectures.

A model is a builder ``(input_shape, num_classes) -> keras.Model``. The server builds
it, sends ``model.to_json()``; nodes rebuild it from that JSON in Keras safe mode, so
they need no model code. Training settings travel as a small whitelisted compile spec.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.plugins import is_import_path, load_object
from common.wire.safe_json import MiB, loads_untrusted

ALLOWED_OPTIMIZERS = ("adam", "sgd")
ALLOWED_LOSSES = ("sparse_categorical_crossentropy",)
ALLOWED_METRICS = ("accuracy",)
MAX_ARCHITECTURE_BYTES = 4 * MiB  # a model's to_json() text; it arrives inside start_round


CATALOGUE = ("logreg", "mlp", "mlp:H1,H2,...", "cnn", "path/to/module.py:function")


def parse_model_name(name: str) -> tuple[str, list[int]]:
    """``"logreg"``, ``"mlp"``, ``"mlp:256,128"`` (hidden sizes) or ``"cnn"``; see ``build_model`` for files."""
    kind, _, sizes = name.partition(":")
    if kind in ("logreg", "cnn"):
        if sizes:
            raise ValueError(f"{kind} takes no sizes")
        return kind, []
    if kind == "mlp":
        try:
            hidden = [int(s) for s in sizes.split(",")] if sizes else [64]
        except ValueError:
            raise ValueError(f"model {name!r}: sizes must be integers, e.g. mlp:128,64") from None
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"model {name!r}: sizes must be positive")
        return kind, hidden
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(CATALOGUE)}")


def _user_builder(spec: str) -> Callable[..., Any]:
    """``path/to/module.py:function`` -> the function (a Keras builder taking input_shape and num_classes)."""
    path_text, _, function = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"model file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"fl_user_model_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    builder = getattr(module, function, None)
    if not callable(builder):
        raise ValueError(f"{path} has no function {function!r}")
    return builder


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0) -> Any:
    """Build a catalogue model, or call a user's builder ``file.py:function(input_shape, num_classes)``.

    A user's model travels to the nodes as architecture JSON; it must use built-in Keras layers (Keras
    safe mode on the nodes refuses custom code).
    """
    import keras

    keras.utils.set_random_seed(seed)
    if ".py:" in name or is_import_path(name):
        builder = load_object(name, "--model") if is_import_path(name) else _user_builder(name)
        model = builder(input_shape=tuple(input_shape), num_classes=num_classes)
        if not isinstance(model, keras.Model):
            raise ValueError(f"{name} did not return a keras.Model")
        return model
    kind, hidden = parse_model_name(name)
    layers: list[Any] = [keras.Input(shape=input_shape)]
    if kind == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (height, width, channels), got {input_shape}")
        layers += [
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
        ]
    elif len(input_shape) > 1:
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

    config = loads_untrusted(architecture, max_bytes=MAX_ARCHITECTURE_BYTES, what="model architecture")
    return keras.saving.deserialize_keras_object(config, safe_mode=True)
