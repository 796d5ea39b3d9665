"""Local training with Keras (blocking: call from the node's worker thread)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.models import compile_model, model_from_architecture
from common.protocol import TrainConfig
from fl_node.proximal import fit_proximal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    weights: list[np.ndarray]
    metrics: dict[str, float]
    train_s: float


class LocalTrainer:
    """Holds the node's data and a model rebuilt from the server's architecture (cached across rounds)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, node_id: str) -> None:
        self.x = x
        self.y = y
        self.node_id = node_id
        self._model: Any = None
        self._architecture_digest: str | None = None

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """Train on these (already encoded) local examples from now on."""
        self.x, self.y = x, y

    def _model_for(self, architecture: str) -> Any:
        digest = hashlib.sha256(architecture.encode()).hexdigest()
        if digest != self._architecture_digest:
            self._model = model_from_architecture(architecture)
            self._architecture_digest = digest
            input_shape = tuple(self._model.input_shape[1:])
            if input_shape != tuple(self.x.shape[1:]):
                raise ValueError(f"model expects inputs of shape {input_shape}, local data has {self.x.shape[1:]}")
        return self._model

    def train(
        self,
        architecture: str,
        compile_spec: dict[str, Any],
        weights: Sequence[np.ndarray],
        config: TrainConfig,
        *,
        server_round: int,
    ) -> TrainResult:
        import keras

        model = self._model_for(architecture)
        # A fresh optimizer each round: the server sends weights, not optimizer state.
        compile_model(model, compile_spec, learning_rate=config.learning_rate)
        model.set_weights(list(weights))
        node_id = self.node_id

        def log_epoch(epoch: int, logs: dict[str, float] | None = None) -> None:
            shown = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
            logger.info("node %s round %d: epoch %d/%d %s", node_id, server_round, epoch + 1, config.epochs, shown)

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                log_epoch(epoch, logs)

        started = time.perf_counter()
        if config.proximal_mu > 0:  # FedProx: custom loop with the proximal term
            metrics = fit_proximal(model, self.x, self.y, epochs=config.epochs, batch_size=config.batch_size,
                                   proximal_mu=config.proximal_mu,
                                   with_accuracy="accuracy" in compile_spec.get("metrics", []),
                                   on_epoch_end=log_epoch)
        else:
            fit = model.fit(self.x, self.y, epochs=config.epochs, batch_size=config.batch_size, verbose=0,
                            shuffle=True, callbacks=[EpochLog()])
            metrics = {name: float(values[-1]) for name, values in fit.history.items()}
        train_s = time.perf_counter() - started
        return TrainResult(model.get_weights(), metrics, train_s)

    def save(self, architecture: str, weights: Sequence[np.ndarray], path: Path) -> None:
        model = self._model_for(architecture)
        model.set_weights(list(weights))
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
