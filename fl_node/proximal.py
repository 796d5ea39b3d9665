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


def fit_proximal(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    proximal_mu: float,
    with_accuracy: bool = True,
    on_epoch_end: EpochCallback | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Train ``model`` (compiled, weights already set to the global model) in place.

    Returns the last epoch's metrics: ``loss`` (the data loss, without the proximal term, so it
    compares with FedAvg's), ``accuracy`` (if asked) and ``proximal_term`` (its sample-weighted mean).
    """
    import tensorflow as tf

    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    rng = rng or np.random.default_rng()
    variables = list(model.trainable_variables)
    anchors = [tf.constant(np.array(v.numpy())) for v in variables]  # w_global: the weights the round starts from
    optimizer = model.optimizer
    optimizer.build(variables)
    half_mu = 0.5 * float(proximal_mu)

    # A new tf.function per round: the anchors are captured constants of this round's global model.
    @tf.function(reduce_retracing=True)
    def train_step(x_batch: Any, y_batch: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape() as tape:
            y_pred = model(x_batch, training=True)
            data_loss = model.compute_loss(x=x_batch, y=y_batch, y_pred=y_pred, training=True)
            proximal = half_mu * tf.add_n([tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchors,
                                                                                           strict=True)])
            total = data_loss + tf.cast(proximal, data_loss.dtype)
        gradients = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(tf.reshape(y_batch, [-1]), tf.int64)),
                                        tf.float32))
        return data_loss, proximal, correct

    metrics: dict[str, float] = {}
    num_samples = len(y)
    for epoch in range(epochs):
        order = rng.permutation(num_samples)
        loss_sum = proximal_sum = correct_sum = 0.0
        for start in range(0, num_samples, batch_size):
            index = order[start : start + batch_size]
            data_loss, proximal, correct = train_step(tf.convert_to_tensor(x[index]), tf.convert_to_tensor(y[index]))
            loss_sum += float(data_loss) * len(index)
            proximal_sum += float(proximal) * len(index)
            correct_sum += float(correct)
        metrics = {"loss": loss_sum / num_samples}
        if with_accuracy:
            metrics["accuracy"] = correct_sum / num_samples
        metrics["proximal_term"] = proximal_sum / num_samples
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return metrics
