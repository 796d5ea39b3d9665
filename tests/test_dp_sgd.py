"""Record-level DP-SGD at the node: per-example clipping checked against hand-computed softmax gradients, the
noise's spread, and the node's epsilon against dp-accounting called directly."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from common.wire.protocol import TrainConfig
from fl_node.dp_sgd import DpSgdLoop, clipped_noised_mean, sampling_rate, steps_per_epoch
from fl_node.trainer import LocalTrainer
from tests.tiny_keras import digits_and_mlp

LEARNING_RATE = 0.5
X = np.array([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-2.0, 0.0, 1.0]], np.float32)
Y = np.array([0, 1, 1])


def softmax_model():
    """Dense(2, softmax) on 3 features with fixed weights, compiled with plain SGD."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.set_weights([np.array([[0.2, -0.1], [0.0, 0.3], [-0.4, 0.1]], np.float32), np.array([0.1, -0.2], np.float32)])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    return model


def hand_gradients(kernel, bias):
    """Each example's gradient of -log softmax(xW + b)[y]: dW = x (p - onehot)^T, db = p - onehot."""
    logits = X.astype(np.float64) @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    error = p - np.eye(2)[Y]
    return [(np.outer(x, e), e) for x, e in zip(X, error, strict=True)]


def one_step(*, clip_norm, noise_multiplier=0.0):
    model = softmax_model()
    before = [w.astype(np.float64) for w in model.get_weights()]
    loop = DpSgdLoop(model, seed=7)
    loop.configure(clip_norm=clip_norm, noise_multiplier=noise_multiplier, expected_batch_size=len(Y))
    loop.step(X, Y)
    return before, model


def test_without_noise_and_with_a_huge_clip_a_step_is_the_ordinary_mean_gradient_step():
    import tensorflow as tf

    before, model = one_step(clip_norm=1e6)
    per_example = hand_gradients(*before)
    expected = [before[0] - LEARNING_RATE * np.mean([g[0] for g in per_example], axis=0),
                before[1] - LEARNING_RATE * np.mean([g[1] for g in per_example], axis=0)]
    for got, want in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    reference = softmax_model()  # and the same as Keras' own gradient of the batch's mean loss
    with tf.GradientTape() as tape:
        loss = reference.compute_loss(x=X, y=Y, y_pred=reference(X, training=True))
    for got, start, gradient in zip(model.get_weights(), before, tape.gradient(loss, reference.trainable_variables),
                                    strict=True):
        np.testing.assert_allclose(got, start - LEARNING_RATE * gradient.numpy(), atol=1e-6)


def test_without_noise_the_update_is_the_mean_of_individually_clipped_gradients():
    clip = 0.1
    before, model = one_step(clip_norm=clip)
    per_example = hand_gradients(*before)
    norms = [math.sqrt(np.sum(dw**2) + np.sum(db**2)) for dw, db in per_example]
    assert min(norms) > clip  # every example is clipped
    scaled = [(dw * min(1, clip / n), db * min(1, clip / n)) for (dw, db), n in zip(per_example, norms, strict=True)]
    expected = [before[0] - LEARNING_RATE * sum(s[0] for s in scaled) / 3,
                before[1] - LEARNING_RATE * sum(s[1] for s in scaled) / 3]
    for got, want in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_noise_on_the_summed_gradient_has_stddev_sigma_times_clip():
    import tensorflow as tf

    sigma, clip = 1.3, 0.7
    per_example = [tf.zeros([3, 100, 100]), tf.zeros([3, 10_000])]  # 20,000 coordinates of pure noise
    noised, norms = clipped_noised_mean(per_example, clip_norm=clip, noise_stddev=sigma * clip, denominator=1.0,
                                        generator=tf.random.Generator.from_seed(11))
    values = np.concatenate([g.numpy().ravel() for g in noised]).astype(np.float64)
    n = values.size
    assert np.all(norms.numpy() == 0)
    assert abs(values.mean()) < 6 * sigma * clip / math.sqrt(n)
    assert abs(values.std() / (sigma * clip) - 1) < 6 / math.sqrt(2 * n)  # 6 standard errors of a sample stddev


def test_noise_is_added_once_to_the_sum_not_per_example():
    import tensorflow as tf

    ones = tf.ones([50, 4_000])  # each example's norm is sqrt(4000) > C, clipped to C: the sum is 50 C / sqrt(4000)
    clip, sigma = 1.0, 2.0
    noised, _ = clipped_noised_mean([ones], clip_norm=clip, noise_stddev=sigma * clip, denominator=50.0,
                                    generator=tf.random.Generator.from_seed(3))
    values = noised[0].numpy().astype(np.float64)
    assert abs(values.mean() - clip / math.sqrt(4_000)) < 6 * sigma * clip / 50 / math.sqrt(values.size)
    assert abs(values.std() / (sigma * clip / 50) - 1) < 6 / math.sqrt(2 * values.size)


@pytest.mark.parametrize(("records", "batch", "steps", "q"), [(60, 16, 4, 16 / 60), (10, 10, 1, 1.0), (5, 8, 1, 1.0)])
def test_steps_and_sampling_rate(records, batch, steps, q):
    assert steps_per_epoch(records, batch) == steps
    assert sampling_rate(records, batch) == pytest.approx(q)


def library_epsilon(q, sigma, steps, delta):
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def test_the_node_reports_its_record_level_epsilon_from_the_accountant():
    x, y, architecture, weights = digits_and_mlp(rows=60, hidden=8)
    trainer = LocalTrainer(x, y, node_id="t")
    spec = {"optimizer": "sgd", "learning_rate": 0.1, "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"]}
    config = TrainConfig(2, 16, 0.1, dp_sgd_clip=1.0, dp_sgd_noise_multiplier=1.1, dp_delta=1e-5)
    epsilons = []
    for server_round in (1, 2):
        result = trainer.train(architecture, spec, weights, config, server_round=server_round, session_id="s")
        assert set(result.metrics) == {"dp_epsilon"}  # the training loss is not covered: it stays at the node
        assert all(np.isfinite(w).all() for w in result.weights)
        assert any(not np.array_equal(a, b) for a, b in zip(result.weights, weights, strict=True))
        epsilons.append(result.metrics["dp_epsilon"])
    steps_per_round = 2 * math.ceil(60 / 16)
    assert epsilons == pytest.approx([library_epsilon(16 / 60, 1.1, steps_per_round, 1e-5),
                                      library_epsilon(16 / 60, 1.1, 2 * steps_per_round, 1e-5)], rel=1e-9)
    assert 0 < epsilons[0] < epsilons[1]
    other = trainer.train(architecture, spec, weights, config, server_round=1, session_id="another")
    assert other.metrics["dp_epsilon"] == pytest.approx(epsilons[0], rel=1e-9)  # a new session, new books


def test_poisson_batches_come_out_near_the_batch_size_and_fit_counts_its_steps():
    model = softmax_model()
    loop = DpSgdLoop(model, seed=1)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    run = loop.fit(x, y, epochs=3, batch_size=20, clip_norm=1.0, noise_multiplier=0.5, rng=rng)
    assert (run.steps, run.sampling_rate, run.noise_multiplier) == (30, pytest.approx(0.1), 0.5)
    assert set(run.metrics) == {"loss", "accuracy"}


def test_an_empty_poisson_sample_still_releases_the_noise():
    model = softmax_model()
    before = model.get_weights()
    loop = DpSgdLoop(model, seed=2)
    loop.configure(clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=4)
    assert loop.step(X[:0], Y[:0]) == (0.0, 0.0, 0)
    assert all(not np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))
