"""Every strategy's common contract, and FedAvg / FedProx against hand-computed averages."""

import numpy as np
import pytest

from fl_server.strategies import (
    STRATEGIES,
    AggregationError,
    FedAvg,
    FedProx,
    make_strategy,
    strategy_parameters,
    weighted_average,
)

# Strategies whose result for identical updates is that update (not a server-optimizer step).
AVERAGING = ["fedavg", "fedprox", "median", "trimmed_mean", "krum", "multi_krum"]
NEEDS_MORE_THAN_ONE = {"krum", "multi_krum"}  # n > 2f + 2 even with f = 0


def run(strategy, updates, global_weights=None):
    strategy.begin_round(1, global_weights if global_weights is not None else updates[0][0])
    for index, (weights, num_samples) in enumerate(updates):
        strategy.accumulate(f"n{index}", weights, num_samples)
    return strategy.aggregate()


def run_fedavg(updates):
    return run(FedAvg(), updates)


def test_fedavg_equals_hand_computed_weighted_average():
    a = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
    b = [np.array([3.0, 6.0], np.float32), np.array([[4.0]], np.float32)]
    result = run_fedavg([(a, 1), (b, 3)])
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5, (0 + 3*4)/4 = 3
    np.testing.assert_allclose(result[0], [2.5, 5.0])
    np.testing.assert_allclose(result[1], [[3.0]])
    assert result[0].dtype == np.float32


@pytest.mark.parametrize(("samples_b", "expected"), [(5, 5.0), (45, 9.0)])
def test_node_with_more_samples_pulls_harder_and_equal_counts_give_the_plain_mean(samples_b, expected):
    a, b = [np.array([0.0])], [np.array([10.0])]
    assert run_fedavg([(a, 5), (b, samples_b)])[0][0] == pytest.approx(expected)


def test_streaming_matches_reference_and_is_not_a_plain_mean():
    rng = np.random.default_rng(0)
    updates = [([rng.standard_normal((3, 4)), rng.standard_normal(4)], n) for n in (1, 7, 50)]
    streamed = run_fedavg(updates)
    reference = weighted_average(updates)
    for got, want in zip(streamed, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    plain_mean = np.mean([u[0][0] for u in updates], axis=0)
    assert not np.allclose(streamed[0], plain_mean)


def test_integer_layers_are_rounded_not_truncated():
    result = run_fedavg([([np.array([1], np.int32)], 1), ([np.array([2], np.int32)], 3)])
    assert result[0].dtype == np.int32 and result[0][0] == 2  # 1.75 -> 2


def test_fedprox_averages_like_fedavg_and_tells_nodes_mu():
    updates = [([np.array([0.0, 4.0])], 1), ([np.array([2.0, 0.0])], 3)]
    np.testing.assert_allclose(run(FedProx(proximal_mu=0.5), updates)[0], [1.5, 1.0])
    assert FedProx(proximal_mu=0.5).train_config(3) == {"proximal_mu": 0.5}
    assert FedAvg().train_config(1) == {}


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf")])
def test_fedprox_refuses_bad_mu(mu):
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(proximal_mu=mu)


# ------------------------------------------------------------------ every strategy


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_round_without_updates_returns_none(name):
    strategy = make_strategy(name)
    strategy.begin_round(1, [np.zeros(2)])
    assert strategy.aggregate() is None


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_zero_sample_update_is_refused(name):
    strategy = make_strategy(name)
    strategy.begin_round(1, [np.zeros(2)])
    with pytest.raises(ValueError, match="positive"):
        strategy.accumulate("n0", [np.ones(2)], 0)


@pytest.mark.parametrize("name", AVERAGING)
def test_one_node_round_returns_its_weights_or_fails_cleanly(name):
    w = [np.array([1.5, -2.0], np.float32), np.array([[3.0]], np.float32)]
    strategy = make_strategy(name, num_byzantine=0) if name in NEEDS_MORE_THAN_ONE else make_strategy(name)
    if name in NEEDS_MORE_THAN_ONE:
        with pytest.raises(AggregationError, match="2f \\+ 2"):
            run(strategy, [(w, 3)], global_weights=[np.zeros(2, np.float32), np.zeros((1, 1), np.float32)])
        return
    result = run(strategy, [(w, 3)], global_weights=[np.zeros(2, np.float32), np.zeros((1, 1), np.float32)])
    for got, want in zip(result, w, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


@pytest.mark.parametrize("name", AVERAGING)
def test_identical_updates_aggregate_to_that_update(name):
    w = [np.array([0.25, -1.0, 7.0], np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)]
    updates = [([layer.copy() for layer in w], n) for n in (1, 2, 3, 4, 5)]
    result = run(make_strategy(name), updates, global_weights=[np.zeros(3, np.float32), np.zeros((2, 3), np.float32)])
    for got, want in zip(result, w, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert got.shape == want.shape and got.dtype == want.dtype


def test_make_strategy_passes_parameters_and_refuses_ones_it_does_not_take():
    assert make_strategy("fedprox", proximal_mu=0.3).proximal_mu == 0.3
    with pytest.raises(ValueError, match="does not take proximal_mu"):
        make_strategy("fedavg", proximal_mu=0.3)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("nope")
    assert strategy_parameters("fedadam") == ["server_lr", "beta1", "beta2", "tau"]
    assert strategy_parameters("fedavg") == []


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_constructors_are_keyword_only(name):
    if strategy_parameters(name):
        with pytest.raises(TypeError):
            STRATEGIES[name](0.5)
