"""FedProx local training (Li et al., 2020): the compiled loss plus ``mu/2 * ||w - w_global||^2``.

Keras' ``fit`` has no hook for a loss that depends on a fixed copy of the weights, so this is a
small custom loop: ``tf.GradientTape`` over shuffled mini-batches, the model's own compiled loss
(``model.compute_loss``, which includes regularisation losses) and its own optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

EpochCallback = Callable[[int, dict[str, float]], None]


class ProximalLoop:
    """FedProx's training loop for one compiled model, traced once and reused every round.

    The round's global weights (the anchors) and ``mu`` live in variables assigned at the start of each
    round, so the ``tf.function`` is not traced again when they change."""

    def __init__(self, model: Any, *, with_accuracy: bool = True) -> None:
        import tensorflow as tf

        self.model = model
        self.with_accuracy = with_accuracy
        self._variables = list(model.trainable_variables)
        self._anchors = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._variables]
        self._half_mu = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        model.optimizer.build(self._variables)
        self._step = tf.function(self._train_step, reduce_retracing=True)

    def _train_step(self, x_batch: Any, y_batch: Any) -> tuple[Any, Any, Any]:
        import tensorflow as tf

        model, variables = self.model, self._variables
        with tf.GradientTape() as tape:
            y_pred = model(x_batch, training=True)
            data_loss = model.compute_loss(x=x_batch, y=y_batch, y_pred=y_pred, training=True)
            proximal = self._half_mu * tf.add_n([
                tf.cast(tf.reduce_sum(tf.square(v - a)), tf.float32)
                for v, a in zip(variables, self._anchors, strict=True)])
            total = data_loss + tf.cast(proximal, data_loss.dtype)
        gradients = tape.gradient(total, variables)
        model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(tf.reshape(y_batch, [-1]), tf.int64)),
                                        tf.float32))
        return data_loss, proximal, correct

    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, proximal_mu: float,
            on_epoch_end: EpochCallback | None = None, rng: np.random.Generator | None = None) -> dict[str, float]:
        """Train in place from the model's current weights (the round's global model, which become the anchors).

        Returns the last epoch's metrics: ``loss`` (the data loss, without the proximal term, so it
        compares with FedAvg's), ``accuracy`` (if asked) and ``proximal_term`` (its sample-weighted mean)."""
        import tensorflow as tf

        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        # Seeded from numpy's global state, as Keras' own shuffle is: keras.utils.set_random_seed makes it repeatable.
        rng = rng or np.random.default_rng(np.random.randint(2**31))
        for anchor, variable in zip(self._anchors, self._variables, strict=True):
            anchor.assign(variable)
        self._half_mu.assign(0.5 * float(proximal_mu))
        metrics: dict[str, float] = {}
        num_samples = len(y)
        for epoch in range(epochs):
            order = rng.permutation(num_samples)
            loss_sum = proximal_sum = correct_sum = 0.0
            for start in range(0, num_samples, batch_size):
                index = order[start : start + batch_size]
                data_loss, proximal, correct = self._step(tf.convert_to_tensor(x[index]),
                                                          tf.convert_to_tensor(y[index]))
                loss_sum += float(data_loss) * len(index)
                proximal_sum += float(proximal) * len(index)
                correct_sum += float(correct)
            metrics = {"loss": loss_sum / num_samples}
            if self.with_accuracy:
                metrics["accuracy"] = correct_sum / num_samples
            metrics["proximal_term"] = proximal_sum / num_samples
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        return metrics
