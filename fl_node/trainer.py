"""Local training with Keras (blocking: call from the node's worker thread)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.metrics_format import format_metrics
from common.ml.batch_eval import evaluate_in_batches
from common.ml.model_budget import DEFAULT_MAX_MODEL_PARAMS, check_parameter_budget, estimate_parameters
from common.ml.models import MAX_ARCHITECTURE_BYTES, class_weight_of, compile_model, model_from_architecture
from common.privacy.accountant import PrivacyAccountant
from common.wire.protocol import TrainConfig
from common.wire.safe_json import loads_untrusted
from fl_node.dp_sgd import DEFAULT_DELTA, DpSgdLoop
from fl_node.proximal import ProximalLoop

logger = logging.getLogger(__name__)
METRIC_NAMES = {"binary_accuracy": "accuracy"}  # Keras name -> the name the history uses


@dataclass(frozen=True)
class TrainResult:
    weights: list[np.ndarray]
    metrics: dict[str, float]
    train_s: float


class LocalTrainer:
    """Holds the node's data and a model rebuilt from the server's architecture (cached across rounds)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, node_id: str,
                 max_model_params: int = DEFAULT_MAX_MODEL_PARAMS) -> None:
        self.x = x
        self.y = y
        self.node_id = node_id
        self.max_model_params = max_model_params
        self._model: Any = None
        self._architecture_digest: str | None = None
        self._compiled_for: str | None = None  # the compile spec (less the learning rate) the model has
        self._fresh_optimizer: list[np.ndarray] = []  # the optimizer's variables as a new optimizer has them
        self._proximal: ProximalLoop | None = None
        self._dp_sgd: DpSgdLoop | None = None
        self._dp_sgd_books: dict[str, PrivacyAccountant] = {}  # per session: the DP-SGD steps this process ran
        self.x_test: np.ndarray | None = None  # the local test split (fl-node --local-test-fraction)
        self.y_test: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """Train on these (already encoded) local examples from now on."""
        self.x, self.y = x, y

    def set_test_data(self, x: np.ndarray | None, y: np.ndarray | None) -> None:
        """Evaluate on these (already encoded) local test examples when a round asks (federated evaluation)."""
        self.x_test, self.y_test = x, y

    @property
    def num_test_samples(self) -> int:
        return 0 if self.y_test is None else len(self.y_test)

    def personal_indices(self, architecture: str, personal_layers: int) -> list[int]:
        """Positions of the arrays of the model's last ``personal_layers`` layers with weights (FedPer)."""
        from common.ml.personal import personal_indices

        model = self._model_for(architecture)
        return personal_indices([len(layer.weights) for layer in model.layers], personal_layers)

    def evaluate(self, architecture: str, compile_spec: dict[str, Any], weights: Sequence[np.ndarray],
                 learning_rate: float) -> dict[str, float | None]:
        """The metrics of ``weights`` on the local test split (null where not finite); no training."""
        if self.x_test is None or self.y_test is None or len(self.y_test) == 0:
            raise ValueError("no local test split (fl-node --local-test-fraction)")
        model = self._compiled_model(architecture, compile_spec, learning_rate)
        model.set_weights(list(weights))
        scores = evaluate_in_batches(model, self.x_test, self.y_test)
        # A binary model's Keras metric is "binary_accuracy": report it as accuracy, as the server's holdout does.
        return {METRIC_NAMES.get(str(k), str(k)): float(v) if math.isfinite(float(v)) else None
                for k, v in scores.items()}

    def _model_for(self, architecture: str) -> Any:
        digest = hashlib.sha256(architecture.encode()).hexdigest()
        if digest != self._architecture_digest:
            config = loads_untrusted(architecture, max_bytes=MAX_ARCHITECTURE_BYTES, what="model architecture")
            check_parameter_budget(estimate_parameters(config), self.max_model_params, "the server's architecture")
            self._model = model_from_architecture(architecture)
            # The estimate reads shapes the architecture declares; the built model's own count is the truth.
            check_parameter_budget(int(self._model.count_params()), self.max_model_params, "the built model")
            self._architecture_digest = digest
            self._compiled_for = None
            input_shape = tuple(self._model.input_shape[1:])
            if input_shape != tuple(self.x.shape[1:]):
                raise ValueError(f"model expects inputs of shape {input_shape}, local data has {self.x.shape[1:]}")
        return self._model

    def _compiled_model(self, architecture: str, compile_spec: dict[str, Any], learning_rate: float) -> Any:
        """The model, compiled once per architecture and compile spec, with a fresh optimizer for this round.

        The server sends weights, not optimizer state, so every round starts from a new optimizer. Calling
        ``compile()`` for that would drop Keras' traced train function and trace it again every round (most
        of a small model's round); instead the optimizer's variables (step count, moments) are put back to
        what a new optimizer has, and the round's learning rate is assigned to its variable."""
        model = self._model_for(architecture)
        spec_key = json.dumps({k: v for k, v in compile_spec.items() if k != "learning_rate"}, sort_keys=True)
        if self._compiled_for != spec_key:
            compile_model(model, compile_spec, learning_rate=learning_rate)
            model.optimizer.build(model.trainable_variables)
            self._fresh_optimizer = [np.array(v.numpy()) for v in model.optimizer.variables]
            self._compiled_for = spec_key
            self._proximal = None
            self._dp_sgd = None
            return model
        for variable, fresh in zip(model.optimizer.variables, self._fresh_optimizer, strict=True):
            variable.assign(fresh)
        model.optimizer.learning_rate = float(learning_rate)
        return model

    def train(
        self,
        architecture: str,
        compile_spec: dict[str, Any],
        weights: Sequence[np.ndarray],
        config: TrainConfig,
        *,
        server_round: int,
        session_id: str = "",
    ) -> TrainResult:
        import keras

        model = self._compiled_model(architecture, compile_spec, config.learning_rate)
        model.set_weights(list(weights))
        node_id = self.node_id

        def log_epoch(epoch: int, logs: dict[str, float] | None = None) -> None:
            shown = format_metrics(logs or {})
            logger.info("node %s round %d: epoch %d/%d %s", node_id, server_round, epoch + 1, config.epochs, shown)

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                log_epoch(epoch, logs)

        started = time.perf_counter()
        class_weight = class_weight_of(compile_spec)
        if class_weight is not None and (config.dp_sgd_clip > 0 or config.proximal_mu > 0):
            raise ValueError("class weights work with plain local training only, not with DP-SGD or FedProx")
        if config.dp_sgd_clip > 0:  # record-level DP-SGD: custom loop, per-example clipping and noise
            if config.proximal_mu > 0:
                raise ValueError("DP-SGD has no proximal term: the server must not ask for both")
            metrics = self._train_dp_sgd(model, compile_spec, config, session_id=session_id, on_epoch_end=log_epoch)
            logger.info("node %s round %d: DP-SGD (clip %g, noise multiplier %g): record-level epsilon %.4g at "
                        "delta %g so far", node_id, server_round, config.dp_sgd_clip, config.dp_sgd_noise_multiplier,
                        metrics["dp_epsilon"], config.dp_delta or DEFAULT_DELTA)
        elif config.proximal_mu > 0:  # FedProx: custom loop with the proximal term
            if self._proximal is None:
                self._proximal = ProximalLoop(model, with_accuracy="accuracy" in compile_spec.get("metrics", []))
            metrics = self._proximal.fit(self.x, self.y, epochs=config.epochs, batch_size=config.batch_size,
                                         proximal_mu=config.proximal_mu, on_epoch_end=log_epoch)
        else:
            fit = model.fit(self.x, self.y, epochs=config.epochs, batch_size=config.batch_size, verbose=0,
                            shuffle=True, callbacks=[EpochLog()], class_weight=class_weight)
            metrics = {name: float(values[-1]) for name, values in fit.history.items()}
        train_s = time.perf_counter() - started
        return TrainResult(model.get_weights(), metrics, train_s)

    def _train_dp_sgd(self, model: Any, compile_spec: dict[str, Any], config: TrainConfig, *, session_id: str,
                      on_epoch_end: Any) -> dict[str, float]:
        """DP-SGD for this round, accounted in the session's books; returns only ``dp_epsilon``: the loss and
        accuracy of the training data are not covered by the guarantee, so they are logged here and not sent."""
        delta = config.dp_delta or DEFAULT_DELTA
        if delta >= 1 / self.num_samples:
            logger.warning("node %s: DP-SGD delta %g is not below 1 / %d records: a delta that large allows "
                           "publishing one record in the clear", self.node_id, delta, self.num_samples)
        if self._dp_sgd is None:
            self._dp_sgd = DpSgdLoop(model, with_accuracy="accuracy" in compile_spec.get("metrics", []))
        run = self._dp_sgd.fit(self.x, self.y, epochs=config.epochs, batch_size=config.batch_size,
                               clip_norm=config.dp_sgd_clip, noise_multiplier=config.dp_sgd_noise_multiplier,
                               on_epoch_end=on_epoch_end)
        books = self._dp_sgd_books.setdefault(session_id, PrivacyAccountant())
        books.record_rounds(sampling_rate=run.sampling_rate, noise_multiplier=run.noise_multiplier, rounds=run.steps)
        return {"dp_epsilon": books.epsilon(delta)}

    def save(self, architecture: str, weights: Sequence[np.ndarray], path: Path) -> None:
        model = self._model_for(architecture)
        model.set_weights(list(weights))
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
