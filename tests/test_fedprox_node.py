"""FedProx at the node: with mu > 0 local training stays closer to the global weights (real Keras, tiny data)."""

import numpy as np
import pytest

from common.wire.protocol import TrainConfig
from fl_node.trainer import LocalTrainer
from tests.tiny_keras import digits_and_mlp


@pytest.fixture(scope="module")
def setup():
    x, y, architecture, weights = digits_and_mlp(rows=300, hidden=32)
    return LocalTrainer(x, y, node_id="t"), architecture, weights


def distance(a, b):
    return float(np.sqrt(sum(np.sum((np.asarray(u, np.float64) - v) ** 2) for u, v in zip(a, b, strict=True))))


@pytest.mark.parametrize(("optimizer", "learning_rate"), [("sgd", 0.1), ("adam", 0.01)])
def test_proximal_term_keeps_local_weights_closer_to_the_global_model(setup, optimizer, learning_rate):
    trainer, architecture, global_weights = setup
    spec = {"optimizer": optimizer, "learning_rate": learning_rate, "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"]}
    distances, results = {}, {}
    for mu in (0.0, 0.1, 1.0):
        result = trainer.train(architecture, spec, global_weights, TrainConfig(3, 32, learning_rate, proximal_mu=mu),
                               server_round=1)
        distances[mu], results[mu] = distance(result.weights, global_weights), result
    assert distances[1.0] < distances[0.1] < distances[0.0], distances
    assert set(results[0.1].metrics) == {"loss", "accuracy", "proximal_term"}
    assert set(results[0.0].metrics) == {"loss", "accuracy"}  # mu = 0 trains with plain fit, as before
    assert results[0.1].metrics["accuracy"] > 0.3  # ten classes: it still learns
    assert all(np.isfinite(w).all() for w in results[1.0].weights)
