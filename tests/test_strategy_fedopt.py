"""Server optimizers on the pseudo-gradient, two rounds against hand-computed values (state carries over)."""

import math

import numpy as np
import pytest

from fl_server.strategies import FedAdagrad, FedAdam, FedAvgM, FedYogi

# Round 1: global [0, 0], nodes [1, 0.2] and [3, 0.2] with equal samples -> delta1 = [2, 0.2].
# Round 2: both nodes send w1 + [1, 1]                                    -> delta2 = [1, 1].
# eta = 1, beta1 = beta2 = 0.5, tau = 0.5 (so v starts at tau^2 = 0.25).
# m1 = 0.5 * delta1 = [1, 0.1];  m2 = 0.5 * m1 + 0.5 * delta2 = [1, 0.55]
M1, M2 = [1.0, 0.1], [1.0, 0.55]
V = {  # (v1, v2) per variant
    # v + delta^2
    "fedadagrad": ([0.25 + 4, 0.25 + 0.04], [4.25 + 1, 0.29 + 1]),
    # 0.5 v + 0.5 delta^2
    "fedadam": ([0.125 + 2, 0.125 + 0.02], [1.0625 + 0.5, 0.0725 + 0.5]),
    # v - 0.5 delta^2 sign(v - delta^2): round 1 coordinate 0 grows (0.25 < 4), coordinate 1 shrinks (0.25 > 0.04);
    # round 2 coordinate 0 shrinks (2.25 > 1), coordinate 1 grows (0.23 < 1)
    "fedyogi": ([0.25 + 2, 0.25 - 0.02], [2.25 - 0.5, 0.23 + 0.5]),
}
BUILD = {
    "fedadagrad": lambda: FedAdagrad(server_lr=1.0, beta1=0.5, tau=0.5),
    "fedadam": lambda: FedAdam(server_lr=1.0, beta1=0.5, beta2=0.5, tau=0.5),
    "fedyogi": lambda: FedYogi(server_lr=1.0, beta1=0.5, beta2=0.5, tau=0.5),
}


def two_rounds(strategy):
    w0 = [np.zeros(2)]
    strategy.begin_round(1, w0)
    strategy.accumulate("a", [np.array([1.0, 0.2])], 5)
    strategy.accumulate("b", [np.array([3.0, 0.2])], 5)
    w1 = strategy.aggregate()
    strategy.begin_round(2, w1)
    strategy.accumulate("a", [w1[0] + 1.0], 5)
    strategy.accumulate("b", [w1[0] + 1.0], 7)
    return w1[0], strategy.aggregate()[0]


@pytest.mark.parametrize("name", sorted(BUILD))
def test_adaptive_server_optimizers_follow_reddi_et_al_algorithm_2(name):
    v1, v2 = V[name]
    expected_w1 = [m / (math.sqrt(v) + 0.5) for m, v in zip(M1, v1, strict=True)]
    expected_w2 = [w + m / (math.sqrt(v) + 0.5) for w, m, v in zip(expected_w1, M2, v2, strict=True)]
    w1, w2 = two_rounds(BUILD[name]())
    np.testing.assert_allclose(w1, expected_w1, rtol=1e-12)
    np.testing.assert_allclose(w2, expected_w2, rtol=1e-12)


def test_fedadam_second_round_is_exact_where_sqrt_is_nice():
    # v2[0] = 1.5625 = 1.25^2 -> step m2[0] / (1.25 + 0.5) = 1 / 1.75
    w1, w2 = two_rounds(BUILD["fedadam"]())
    assert w2[0] - w1[0] == pytest.approx(1 / 1.75, rel=1e-12)


def test_fedavgm_momentum_carries_across_rounds():
    # delta1 = 2 -> m1 = 2, w1 = 0 + 0.5 * 2 = 1;  delta2 = 1 -> m2 = 0.9 * 2 + 1 = 2.8, w2 = 1 + 0.5 * 2.8 = 2.4
    strategy = FedAvgM(server_lr=0.5, server_momentum=0.9)
    strategy.begin_round(1, [np.zeros(1, np.float32)])
    strategy.accumulate("a", [np.array([2.0], np.float32)], 3)
    w1 = strategy.aggregate()
    assert w1[0].dtype == np.float32 and w1[0][0] == pytest.approx(1.0)
    strategy.begin_round(2, w1)
    strategy.accumulate("a", [w1[0] + 1.0], 3)
    assert strategy.aggregate()[0][0] == pytest.approx(2.4)


def test_fedavgm_without_momentum_and_unit_rate_is_fedavg():
    strategy = FedAvgM(server_lr=1.0, server_momentum=0.0)
    strategy.begin_round(1, [np.array([5.0])])
    strategy.accumulate("a", [np.array([1.0])], 1)
    strategy.accumulate("b", [np.array([3.0])], 3)
    assert strategy.aggregate()[0][0] == pytest.approx(2.5)


def test_failed_round_leaves_optimizer_state_untouched():
    strategy = BUILD["fedadam"]()
    strategy.begin_round(1, [np.zeros(2)])
    assert strategy.aggregate() is None  # no update: no step, no state
    _, w2 = two_rounds(strategy)
    _, fresh_w2 = two_rounds(BUILD["fedadam"]())
    np.testing.assert_allclose(w2, fresh_w2, rtol=1e-12)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: FedAdam(server_lr=0.0), "server_lr"),
    (lambda: FedAdam(beta1=1.0), "beta1"),
    (lambda: FedYogi(beta2=-0.1), "beta2"),
    (lambda: FedAdagrad(tau=0.0), "tau"),
    (lambda: FedAvgM(server_momentum=1.0), "server_momentum"),
])
def test_bad_hyperparameters_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()
