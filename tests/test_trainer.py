"""The node's trainer compiles once and resets its optimizer each round (real Keras, tiny data).

The maths must stay "a fresh optimizer every round": two rounds from the same weights and data give what
two fresh compiles give. And the traced train function must survive from round to round."""

import numpy as np
import pytest

from common.ml.models import compile_model, model_from_architecture
from common.wire.protocol import TrainConfig
from fl_node.trainer import LocalTrainer
from tests.tiny_keras import digits_and_mlp


@pytest.fixture(scope="module")
def digits():
    return digits_and_mlp(rows=200, hidden=16)


def spec(optimizer):
    return {"optimizer": optimizer, "learning_rate": 0.01, "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"]}


def fresh_compile_round(architecture, compile_spec, weights, x, y, config, seed):
    """The reference: what every round did before, a new compile each time."""
    import keras

    model = model_from_architecture(architecture)
    compile_model(model, compile_spec, learning_rate=config.learning_rate)
    model.set_weights(weights)
    keras.utils.set_random_seed(seed)
    model.fit(x, y, epochs=config.epochs, batch_size=config.batch_size, verbose=0, shuffle=True)
    return model.get_weights()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_compiled_once_rounds_equal_fresh_compiles(digits, optimizer, mu):
    import keras

    x, y, architecture, initial = digits
    trainer = LocalTrainer(x, y, node_id="t")
    rates = [0.01, 0.02, 0.01]  # the learning rate may change between rounds without a recompile
    seeds = [7, 8, 7]  # rounds 1 and 3: same start, rate and shuffle
    results = []
    for server_round, rate in enumerate(rates, start=1):
        keras.utils.set_random_seed(seeds[server_round - 1])
        results.append(trainer.train(architecture, spec(optimizer), initial,
                                     TrainConfig(2, 32, rate, proximal_mu=mu), server_round=server_round).weights)
        if server_round == 1:
            traced = trainer._model.train_function if mu == 0 else trainer._proximal._step
    if mu == 0:
        assert trainer._model.train_function is traced  # not dropped by a compile(), so not traced again
        for server_round, rate in enumerate(rates, start=1):
            want = fresh_compile_round(architecture, spec(optimizer), initial, x, y, TrainConfig(2, 32, rate),
                                       seed=seeds[server_round - 1])
            for got, expected in zip(results[server_round - 1], want, strict=True):
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    else:
        assert trainer._proximal._step is traced
        # one trace for full batches and one for the shorter last batch, whatever the rounds and mu
        assert trainer._proximal._step.experimental_get_tracing_count() <= 2
    # Rounds 1 and 3 start from the same weights with the same rate and seed: with the optimizer's state reset
    # they are the same round; had Adam's moments or step count carried over they would differ.
    for first, third in zip(results[0], results[2], strict=True):
        np.testing.assert_allclose(first, third, rtol=1e-5, atol=1e-6)
