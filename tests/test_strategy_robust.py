"""Median, trimmed mean, Krum and Multi-Krum against hand-computed values."""

import numpy as np
import pytest

from fl_server.strategies import AggregationError, Krum, Median, MultiKrum, TrimmedMean
from fl_server.strategies.robust import UpdateStack, krum_scores


def run(strategy, vectors, samples=None):
    """Each update is two layers: the first two coordinates as shape (2,), the rest as shape (1, k)."""
    first = np.asarray(vectors[0], np.float32)
    strategy.begin_round(1, [first[:2] * 0, first[2:].reshape(1, -1) * 0])
    for index, vector in enumerate(vectors):
        v = np.asarray(vector, np.float32)
        strategy.accumulate(f"n{index}", [v[:2], v[2:].reshape(1, -1)], (samples or {}).get(index, 1))
    result = strategy.aggregate()
    assert result[0].shape == (2,) and result[1].shape == (1, len(first) - 2)
    assert all(layer.dtype == np.float32 for layer in result)
    return np.concatenate([result[0], result[1].ravel()])


@pytest.mark.parametrize(("vectors", "expected"), [
    ([[1, 5, -1], [2, 0, 100], [3, 1, 2]], [2, 1, 2]),
    ([[1, 0, 0], [2, 0, 0], [3, 0, 0], [40, 0, 8]], [2.5, 0, 0]),  # even n: mean of the two middle values
])
def test_median_is_coordinate_wise(vectors, expected):
    np.testing.assert_allclose(run(Median(), vectors), expected)


def test_median_ignores_sample_counts():
    vectors = [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    np.testing.assert_allclose(run(Median(), vectors, samples={2: 10**9}), [1, 1, 1])


@pytest.mark.parametrize(("fraction", "vectors", "expected"), [
    # n = 5, k = floor(0.2 * 5) = 1 per side: column 0 keeps 2, 3, 4; column 1 (0, 2, 1, 0, -9) keeps 0, 0, 1;
    # column 2 (-50, 0, 1, -1, 60) keeps -1, 0, 1
    (0.2, [[1, 0, -50], [2, 2, 0], [3, 1, 1], [4, 0, -1], [100, -9, 60]], [3, 1 / 3, 0]),
    # n = 4, k = floor(0.2 * 4) = 0: the plain mean
    (0.2, [[1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 4, 0]], [4, 1, 0]),
    # n = 4, k = floor(0.25 * 4) = 1: mean of the middle two per coordinate
    (0.25, [[1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 4, 0]], [2.5, 0, 0]),
])
def test_trimmed_mean_drops_k_largest_and_smallest_per_coordinate(fraction, vectors, expected):
    np.testing.assert_allclose(run(TrimmedMean(trim_fraction=fraction), vectors), expected, rtol=1e-6)


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7])
def test_trim_fraction_must_be_below_one_half(fraction):
    with pytest.raises(ValueError, match="trim_fraction"):
        TrimmedMean(trim_fraction=fraction)


# Five 1-D points (padded to 3 coordinates with zeros), f = 1: each score sums the n - f - 2 = 2 smallest squared
# distances to the others.  0 -> 1 + 6.25;  1 -> 1 + 2.25;  2.5 -> 2.25 + 2.25;  4 -> 2.25 + 9;  100 -> 96^2 + 97.5^2
POINTS = [0.0, 1.0, 2.5, 4.0, 100.0]
SCORES = [7.25, 3.25, 4.5, 11.25, 96.0**2 + 97.5**2]


def padded(points):
    return [[p, 0, 0] for p in points]


def test_krum_scores_are_blanchard_et_al():
    rows = np.array(padded(POINTS), np.float32)
    np.testing.assert_allclose(krum_scores(rows, 1), SCORES)


@pytest.mark.parametrize(("strategy", "expected", "selected"), [
    (Krum(num_byzantine=1), 1.0, ["n1"]),
    (MultiKrum(num_byzantine=1, num_selected=3), (1 + 2.5 + 0) / 3, ["n1", "n2", "n0"]),
    (MultiKrum(num_byzantine=1), (1 + 2.5 + 0 + 4) / 4, ["n1", "n2", "n0", "n3"]),  # default m = n - f = 4
    (MultiKrum(num_byzantine=1, num_selected=50), (1 + 2.5 + 0 + 4) / 4, ["n1", "n2", "n0", "n3"]),  # capped
])
def test_krum_and_multi_krum_select_the_lowest_scores(strategy, expected, selected):
    # Sample counts do not weigh in: the outlier claims a billion samples and n0 claims 7.
    result = run(strategy, padded(POINTS), samples={4: 10**9, 0: 7})
    np.testing.assert_allclose(result, [expected, 0, 0], rtol=1e-6)
    assert strategy.last_round_info()["selected"] == selected
    assert strategy.last_round_info()["scores"]["n4"] == pytest.approx(SCORES[4])


@pytest.mark.parametrize(("num_byzantine", "num_updates"), [(1, 4), (1, 3), (2, 6), (0, 2)])
def test_krum_refuses_rounds_with_n_at_most_2f_plus_2(num_byzantine, num_updates):
    strategy = Krum(num_byzantine=num_byzantine)
    with pytest.raises(AggregationError, match=rf"more than 2f \+ 2 = {2 * num_byzantine + 2} updates, "
                                               rf"got {num_updates}"):
        run(strategy, padded(POINTS[:num_updates] + [0.0] * max(0, num_updates - len(POINTS))))


def test_krum_condition_is_checkable_before_a_round():
    Krum(num_byzantine=1).check_num_updates(5)
    with pytest.raises(AggregationError):
        MultiKrum(num_byzantine=2).check_num_updates(6)


def test_update_stack_grows_keeps_rows_and_round_trips_layers():
    stack = UpdateStack([(2,), (1, 3)], np.dtype(np.float32), initial_rows=1)
    for i in range(5):
        stack.append(f"n{i}", [np.full(2, i), np.full((1, 3), -i)])
    assert len(stack) == 5 and stack.rows.shape == (5, 5) and stack.node_ids[-1] == "n4"
    np.testing.assert_array_equal(stack.rows[3], [3, 3, -3, -3, -3])
    layers = stack.unflatten(stack.rows[2], [np.dtype(np.float32), np.dtype(np.float64)])
    assert layers[0].shape == (2,) and layers[1].shape == (1, 3) and layers[1].dtype == np.float64
    with pytest.raises(ValueError, match="shape"):
        stack.append("bad", [np.zeros(3), np.zeros((1, 3))])


def test_float64_models_are_stacked_in_float64():
    strategy = Median()
    strategy.begin_round(1, [np.zeros(2, np.float64)])
    strategy.accumulate("a", [np.array([1 + 1e-12, 0.0])], 1)
    assert strategy.aggregate()[0][0] == 1 + 1e-12
