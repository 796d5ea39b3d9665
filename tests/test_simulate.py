"""The light nodes' numpy "training" (``fl_node.simulate``), checked by hand."""

import math

import numpy as np
import pytest

from fl_node.sim_cli import build_parser, prepare
from fl_node.simulate import light_train, softmax_regression


def test_softmax_regression_one_step_by_hand():
    x = np.array([[1.0], [2.0]])
    y = np.array([0, 1])
    weights = [np.zeros((1, 2), np.float32), np.zeros(2, np.float32)]
    # logits 0 -> p = 1/2 each; gradient (p - onehot) / 2 = [[-1/4, 1/4], [1/4, -1/4]]; x.T @ g = [1/4, -1/4]
    (kernel, bias), loss = softmax_regression(weights, x, y, epochs=1, learning_rate=1.0)
    np.testing.assert_allclose(kernel, [[-0.25, 0.25]])
    np.testing.assert_allclose(bias, [0.0, 0.0])
    assert kernel.dtype == np.float32 and loss == pytest.approx(math.log(2))


def test_light_train_falls_back_to_noise_for_a_model_that_is_not_softmax_regression():
    rng = np.random.default_rng(0)
    x, y = np.ones((3, 4)), np.array([0, 1, 2])
    mlp = [np.zeros((4, 8), np.float32), np.zeros(8, np.float32), np.zeros((8, 3), np.float32), np.zeros(3)]
    trained, loss = light_train(mlp, x, y, epochs=1, learning_rate=0.1, rng=rng)
    assert loss is None and [w.shape for w in trained] == [w.shape for w in mlp]
    assert 0 < np.abs(trained[0]).max() < 0.1
    binary = [np.zeros((4, 1), np.float32), np.zeros(1, np.float32)]  # one sigmoid unit: not softmax
    assert light_train(binary, x, np.array([0, 1, 1]), epochs=1, learning_rate=0.1, rng=rng)[1] is None
    logreg = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
    assert light_train(logreg, x, y, epochs=2, learning_rate=0.1, rng=rng)[1] == pytest.approx(math.log(3))


def test_fl_sim_names_its_nodes_in_disjoint_ranges():
    setup = prepare(build_parser().parse_args(["--nodes", "3", "--first-index", "250"]))
    assert setup.node_ids == ["sim250", "sim251", "sim252"] and setup.keys == [None] * 3
