"""Record-level DP-SGD at the node (Abadi et al. 2016), on TensorFlow's own vectorised per-example gradients.

``tensorflow-privacy`` cannot be installed next to TensorFlow 2.21 (it pins numpy 1.x), so this is a small
custom loop in the manner of ``fl_node.proximal.ProximalLoop``: each step takes a Poisson sample of the local
records (each one independently with probability q = batch_size / records), computes every sampled example's
gradient of the compiled loss (``tf.vectorized_map``), clips each to global L2 norm C across all trainable
variables, sums them, adds N(0, (sigma*C)^2) to every coordinate and divides by the *expected* batch size
(dividing by the drawn size would make the sensitivity depend on the sample). The optimizer then applies it.

An epoch is ceil(records / batch_size) such steps. Each step is the Poisson-subsampled Gaussian mechanism that
``common.privacy.accountant`` accounts; the node's epsilon comes from there, never from a formula here. Both
the sampling and the noise draw from the operating system's entropy, never from the session's seed: the
amplification by subsampling assumes the server cannot know which records a step used.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
DEFAULT_DELTA = 1e-5  # the node's delta when the server sends none (the server's --dp-delta default)


@dataclass(frozen=True)
class DpSgdRun:
    """What one call of ``DpSgdLoop.fit`` spent: ``steps`` steps of sampling rate q and noise multiplier sigma."""

    steps: int
    sampling_rate: float
    noise_multiplier: float
    metrics: dict[str, float]


def steps_per_epoch(num_records: int, batch_size: int) -> int:
    """ceil(N / B): as many steps as ``fit`` with that batch size would take."""
    if num_records < 1 or batch_size < 1:
        raise ValueError(f"need at least one record and a batch size >= 1, got {num_records} and {batch_size}")
    return math.ceil(num_records / batch_size)


def sampling_rate(num_records: int, batch_size: int) -> float:
    """q = B / N, at most 1: each record's chance to be in a step's Poisson sample."""
    steps_per_epoch(num_records, batch_size)
    return min(1.0, batch_size / num_records)


def clipped_noised_mean(per_example: list[Any], *, clip_norm: Any, noise_stddev: Any, denominator: Any,
                        generator: Any) -> tuple[list[Any], Any]:
    """The DP-SGD gradient from per-example gradients (each tensor shaped ``[examples, *variable_shape]``).

    Every example's gradient is scaled by min(1, C / ||g||) with ||g|| its global L2 norm over all tensors,
    the scaled gradients are summed, N(0, noise_stddev^2) is added per coordinate and the result is divided by
    ``denominator``. Returns the gradients and the examples' norms before clipping."""
    import tensorflow as tf

    squared = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1) for g in per_example])
    norms = tf.sqrt(squared)
    scale = tf.minimum(1.0, clip_norm / tf.maximum(norms, 1e-12))
    gradients = []
    for g in per_example:
        factor = tf.reshape(tf.cast(scale, g.dtype), tf.concat([[-1], tf.ones([tf.rank(g) - 1], tf.int32)], axis=0))
        summed = tf.reduce_sum(g * factor, axis=0)
        noise = generator.normal(tf.shape(summed), stddev=tf.cast(noise_stddev, tf.float32), dtype=tf.float32)
        gradients.append((summed + tf.cast(noise, summed.dtype)) / tf.cast(denominator, summed.dtype))
    return gradients, norms


class DpSgdLoop:
    """DP-SGD for one compiled model, traced once and reused every round (clip, noise and the expected batch
    size live in variables, so a new round with other values does not trace again)."""

    def __init__(self, model: Any, *, with_accuracy: bool = True, seed: int | None = None) -> None:
        """``seed`` is for tests only: by default the noise generator is seeded from the OS (``secrets``)."""
        import tensorflow as tf

        self.model = model
        self.with_accuracy = with_accuracy
        self._variables = list(model.trainable_variables)
        self._clip_norm = tf.Variable(1.0, dtype=tf.float32, trainable=False)
        self._noise_stddev = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        self._denominator = tf.Variable(1.0, dtype=tf.float32, trainable=False)
        self._generator = tf.random.Generator.from_seed(seed if seed is not None else secrets.randbits(63))
        model.optimizer.build(self._variables)
        self._step = tf.function(self._train_step, reduce_retracing=True)
        self._noise_step = tf.function(self._noise_only_step)

    def _example_gradient(self, example: tuple[Any, Any]) -> tuple[list[Any], Any, Any]:
        import tensorflow as tf

        x_one, y_one = example[0][None], example[1][None]
        with tf.GradientTape() as tape:
            y_pred = self.model(x_one, training=True)
            loss = self.model.compute_loss(x=x_one, y=y_one, y_pred=y_pred, training=True)
        gradients = tape.gradient(loss, self._variables)
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
        correct = tf.cast(tf.equal(predicted, tf.cast(tf.reshape(y_one, [-1]), tf.int64)), tf.float32)[0]
        return [tf.convert_to_tensor(g) for g in gradients], tf.cast(loss, tf.float32), correct

    def per_example_gradients(self, x_batch: Any, y_batch: Any) -> tuple[list[Any], Any, Any]:
        """Each example's gradient of the compiled loss (``[examples, *shape]`` per variable), loss and hit."""
        import tensorflow as tf

        return tf.vectorized_map(self._example_gradient, (x_batch, y_batch))  # type: ignore[no-any-return]

    def _train_step(self, x_batch: Any, y_batch: Any) -> tuple[Any, Any, Any]:
        import tensorflow as tf

        per_example, losses, correct = self.per_example_gradients(x_batch, y_batch)
        gradients, _ = clipped_noised_mean(per_example, clip_norm=self._clip_norm, noise_stddev=self._noise_stddev,
                                           denominator=self._denominator, generator=self._generator)
        self.model.optimizer.apply_gradients(zip(gradients, self._variables, strict=True))
        return tf.reduce_sum(losses), tf.reduce_sum(correct), tf.shape(losses)[0]

    def _noise_only_step(self) -> None:
        """A step whose Poisson sample came out empty: the mechanism still releases the noise."""
        import tensorflow as tf

        gradients = [self._generator.normal(tf.shape(v), stddev=self._noise_stddev, dtype=tf.float32)
                     / self._denominator for v in self._variables]
        self.model.optimizer.apply_gradients(
            zip([tf.cast(g, v.dtype) for g, v in zip(gradients, self._variables, strict=True)], self._variables,
                strict=True))

    def configure(self, *, clip_norm: float, noise_multiplier: float, expected_batch_size: float) -> None:
        """Set C, sigma and the divisor for the next steps."""
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError(f"the clipping norm must be a positive finite number, got {clip_norm}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError(f"the noise multiplier must be a finite number >= 0, got {noise_multiplier}")
        self._clip_norm.assign(float(clip_norm))
        self._noise_stddev.assign(float(noise_multiplier) * float(clip_norm))
        self._denominator.assign(float(expected_batch_size))

    def step(self, x_batch: np.ndarray, y_batch: np.ndarray) -> tuple[float, float, int]:
        """One DP-SGD step on these examples (summed loss, correct predictions, examples)."""
        import tensorflow as tf

        if len(y_batch) == 0:
            self._noise_step()
            return 0.0, 0.0, 0
        loss_sum, correct, count = self._step(tf.convert_to_tensor(x_batch), tf.convert_to_tensor(y_batch))
        return float(loss_sum), float(correct), int(count)

    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, clip_norm: float,
            noise_multiplier: float, on_epoch_end: EpochCallback | None = None,
            rng: np.random.Generator | None = None) -> DpSgdRun:
        """Train in place; ``rng`` (tests only) replaces the OS-seeded Poisson sampling.

        The metrics (mean loss and accuracy over the sampled examples) are computed on the node's data and
        are not covered by the guarantee: keep them at the node."""
        num_records = len(y)
        q = sampling_rate(num_records, batch_size)
        per_epoch = steps_per_epoch(num_records, batch_size)
        self.configure(clip_norm=clip_norm, noise_multiplier=noise_multiplier, expected_batch_size=q * num_records)
        rng = rng or np.random.default_rng(secrets.randbits(128))
        metrics: dict[str, float] = {}
        for epoch in range(epochs):
            loss_sum = correct_sum = 0.0
            seen = 0
            for _ in range(per_epoch):
                index = np.flatnonzero(rng.random(num_records) < q)
                step_loss, step_correct, count = self.step(x[index], y[index])
                loss_sum, correct_sum, seen = loss_sum + step_loss, correct_sum + step_correct, seen + count
            metrics = {"loss": loss_sum / max(seen, 1)}
            if self.with_accuracy:
                metrics["accuracy"] = correct_sum / max(seen, 1)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        return DpSgdRun(epochs * per_epoch, q, float(noise_multiplier), metrics)
