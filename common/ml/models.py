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

from common.ml.tasks import BINARY, CLASSIFICATION, REGRESSION, check_task
from common.plugins import is_import_path, load_object
from common.wire.safe_json import MiB, loads_untrusted

ALLOWED_OPTIMIZERS = ("adam", "sgd")
# Per task (``common.ml.tasks``): the loss, and the training metrics that loss may come with. The server's
# holdout metrics (AUC, F1, R², ...) are computed from predictions, not by Keras.
TASK_LOSSES = {CLASSIFICATION: "sparse_categorical_crossentropy", BINARY: "binary_crossentropy",
               REGRESSION: "mean_squared_error"}
LOSS_METRICS = {"sparse_categorical_crossentropy": ("accuracy",), "binary_crossentropy": ("binary_accuracy",),
                "mean_squared_error": ("mean_absolute_error",)}
ALLOWED_LOSSES = tuple(LOSS_METRICS)
ALLOWED_METRICS = tuple(m for metrics in LOSS_METRICS.values() for m in metrics)
MAX_CLASS_WEIGHT = 1e6
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


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0,
                task: str = CLASSIFICATION) -> Any:
    """Build a catalogue model, or call a user's builder ``file.py:function(input_shape, num_classes)``.

    A catalogue model ends in a softmax over ``num_classes`` (classification), one sigmoid unit (binary) or
    one linear unit (regression). A user's builder gets ``num_classes=1`` for binary and regression and must
    end in that one unit itself. A user's model travels to the nodes as architecture JSON; it must use
    built-in Keras layers (Keras safe mode on the nodes refuses custom code).
    """
    check_task(task)
    if task != CLASSIFICATION:
        num_classes = 1
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
    activation = {CLASSIFICATION: "softmax", BINARY: "sigmoid", REGRESSION: None}[task]
    layers.append(keras.layers.Dense(num_classes, activation=activation))
    return keras.Sequential(layers, name=kind)


def compile_spec(optimizer: str, learning_rate: float, task: str = CLASSIFICATION,
                 class_weight: list[float] | None = None) -> dict[str, Any]:
    """What the nodes compile with; ``class_weight`` (per class index) weights the loss of each class."""
    loss = TASK_LOSSES[check_task(task)]
    spec: dict[str, Any] = {"optimizer": optimizer, "learning_rate": learning_rate, "loss": loss,
                            "metrics": list(LOSS_METRICS[loss])}
    if class_weight is not None:
        spec["class_weight"] = [float(w) for w in class_weight]
    return spec


def class_weight_of(spec: dict[str, Any]) -> dict[int, float] | None:
    """The spec's class weights as Keras' ``fit(class_weight=...)`` takes them; validated (it may come from the
    network): a list of at most 100,000 finite weights in (0, 1e6], and not with a regression loss."""
    weights = spec.get("class_weight")
    if weights is None:
        return None
    if (not isinstance(weights, list) or not 2 <= len(weights) <= 100_000 or spec.get("loss") == TASK_LOSSES[REGRESSION]
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w <= MAX_CLASS_WEIGHT
                       for w in weights)):
        raise ValueError("class_weight must list 2 to 100000 weights in (0, 1e6], and only for classes")
    return {i: float(w) for i, w in enumerate(weights)}


def compile_model(model: Any, spec: dict[str, Any], learning_rate: float | None = None) -> None:
    """Compile with a whitelisted spec (it may come from the network)."""
    import keras

    optimizer = spec.get("optimizer")
    loss = spec.get("loss")
    metrics = spec.get("metrics", [])
    rate = float(learning_rate if learning_rate is not None else spec.get("learning_rate", 1e-3))
    if optimizer not in ALLOWED_OPTIMIZERS or loss not in ALLOWED_LOSSES:
        raise ValueError(f"unsupported compile spec {spec!r:.300}")
    if not isinstance(metrics, list) or any(m not in LOSS_METRICS[loss] for m in metrics):
        raise ValueError(f"unsupported metrics {metrics!r:.200} for loss {loss}")
    class_weight_of(spec)
    if set(spec) - {"optimizer", "learning_rate", "loss", "metrics", "class_weight"}:
        raise ValueError(f"unsupported compile settings {sorted(set(spec))!r:.200}")
    opt = keras.optimizers.Adam(rate) if optimizer == "adam" else keras.optimizers.SGD(rate)
    model.compile(optimizer=opt, loss=loss, metrics=list(metrics))


def model_from_architecture(architecture: str) -> Any:
    """Rebuild a model from ``to_json()`` text in safe mode (no lambdas, no arbitrary code)."""
    import keras

    config = loads_untrusted(architecture, max_bytes=MAX_ARCHITECTURE_BYTES, what="model architecture")
    return keras.saving.deserialize_keras_object(config, safe_mode=True)
