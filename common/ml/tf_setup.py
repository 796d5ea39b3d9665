"""TensorFlow process setup: quiet logs and bounded thread pools (several TF processes share few cores)."""

from __future__ import annotations

import os


def configure_tensorflow(threads: int | None = None) -> None:
    """Call before the first TensorFlow op. ``threads`` caps intra/inter-op pools (None: TF's default)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
