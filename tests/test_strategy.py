import numpy as np
import pytest

from fl_server.strategy import FedAvg, make_strategy, weighted_average


def run_fedavg(updates):
    strategy = FedAvg()
    strategy.begin_round(1, updates[0][0])
    for index, (weights, num_samples) in enumerate(updates):
        strategy.accumulate(f"n{index}", weights, num_samples)
    return strategy.aggregate()


def test_fedavg_equals_hand_computed_weighted_average():
    a = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
    b = [np.array([3.0, 6.0], np.float32), np.array([[4.0]], np.float32)]
    result = run_fedavg([(a, 1), (b, 3)])
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5, (0 + 3*4)/4 = 3
    np.testing.assert_allclose(result[0], [2.5, 5.0])
    np.testing.assert_allclose(result[1], [[3.0]])
    assert result[0].dtype == np.float32


def test_node_with_more_samples_pulls_harder():
    a, b = [np.array([0.0])], [np.array([10.0])]
    equal = run_fedavg([(a, 5), (b, 5)])[0][0]
    b_heavier = run_fedavg([(a, 5), (b, 45)])[0][0]
    assert equal == pytest.approx(5.0)
    assert b_heavier == pytest.approx(9.0)


def test_streaming_matches_reference_and_is_not_a_plain_mean():
    rng = np.random.default_rng(0)
    updates = [([rng.standard_normal((3, 4)), rng.standard_normal(4)], n) for n in (1, 7, 50)]
    streamed = run_fedavg(updates)
    reference = weighted_average(updates)
    for got, want in zip(streamed, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    plain_mean = np.mean([u[0][0] for u in updates], axis=0)
    assert not np.allclose(streamed[0], plain_mean)


def test_single_node_round_returns_its_weights_and_empty_round_returns_none():
    w = [np.array([1.5, -2.0])]
    np.testing.assert_array_equal(run_fedavg([(w, 3)])[0], w[0])
    strategy = FedAvg()
    strategy.begin_round(1, w)
    assert strategy.aggregate() is None


def test_zero_sample_update_is_refused():
    strategy = FedAvg()
    strategy.begin_round(1, [np.zeros(2)])
    with pytest.raises(ValueError, match="positive"):
        strategy.accumulate("n0", [np.ones(2)], 0)


def test_unknown_strategy_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("nope")
