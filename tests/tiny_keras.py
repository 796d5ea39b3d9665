"""A tiny real-Keras setup shared by the node trainer tests: scikit-learn's digits and a one-hidden-layer MLP."""

import numpy as np


def digits_and_mlp(*, rows: int, hidden: int) -> tuple[np.ndarray, np.ndarray, str, list[np.ndarray]]:
    """The first ``rows`` digits (pixels scaled to [0, 1]), their labels, and a seeded 64-``hidden``-10 MLP's
    architecture (JSON) and initial weights."""
    import keras
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    return (x[:rows] / 16).astype(np.float32), y[:rows], model.to_json(), model.get_weights()
