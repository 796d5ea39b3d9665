"""Warm starts (``fl-server --initial-model``, ``--freeze-layers``): a saved ``.keras`` model as the session's
starting point, loaded in Keras safe mode, and layers frozen for federated fine-tuning."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_initial_model(path: Path, *, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The model saved at ``path`` (a ``.keras`` file: a previous session's ``history/<session>.keras`` or any
    Keras 3 model), loaded in safe mode (no Lambda layers, no custom code) and uncompiled; ``ValueError`` naming
    the problem if it cannot be loaded safely or does not fit the federation's inputs and classes."""
    if path.suffix != ".keras":
        raise ValueError(f"--initial-model {path}: must be a .keras file (the Keras 3 format, loaded in safe mode)")
    if not path.is_file():
        raise ValueError(f"--initial-model {path}: no such file")
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many kinds; each means "not loadable safely"
        raise ValueError(f"--initial-model {path}: cannot be loaded in Keras safe mode: {exc}"[:1000]) from exc
    if not isinstance(model, keras.Model):
        raise ValueError(f"--initial-model {path}: holds no Keras model")
    inputs = tuple(model.input_shape[1:])
    if inputs != tuple(input_shape):
        raise ValueError(f"--initial-model {path}: takes inputs of shape {inputs}; the federation's data has "
                         f"{tuple(input_shape)}")
    outputs = model.output_shape[-1]
    if outputs != num_classes:
        raise ValueError(f"--initial-model {path}: has {outputs} outputs; the federation has {num_classes} classes")
    logger.info("initial model %s (SHA-256 %s): %d parameters", path, file_sha256(path)[:16],
                int(model.count_params()))
    return model


def freeze_first_layers(model: Any, count: int) -> list[str]:
    """Make the first ``count`` of ``model.layers`` not trainable (the flag travels in the architecture JSON, so
    every node freezes them too); the frozen layers' names. Call before compiling."""
    layers = list(model.layers)
    if count < 0 or count >= len(layers):
        raise ValueError(f"--freeze-layers {count}: the model has {len(layers)} layers; at least the last one must "
                         "stay trainable")
    for layer in layers[:count]:
        layer.trainable = False
    return [layer.name for layer in layers[:count]]
