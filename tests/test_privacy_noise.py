"""Gaussian noise for DP-FedAvg: the stddev formulas, the statistics of the draws, and where randomness comes from.

The statistical tests never flake: with N draws the sample stddev has stddev about sigma / sqrt(2 (N - 1)), so
a 6-sigma bound fails with probability about 2e-9 per run.
"""

import inspect
import math
import random

import numpy as np
import pytest

from common.privacy import (
    add_gaussian_noise,
    add_local_noise,
    central_noise_stddev,
    local_noise_stddev,
    noised_mean,
    secure_generator,
)
from common.privacy import noise as noise_module

SAMPLE_SIZE = 1_000_000
SIGMAS = 6.0


def _assert_stddev(samples: np.ndarray, expected: float) -> None:
    samples = np.asarray(samples, dtype=np.float64).ravel()
    count = samples.size
    stddev_of_stddev = expected / math.sqrt(2 * (count - 1))
    assert abs(float(np.std(samples, ddof=1)) - expected) <= SIGMAS * stddev_of_stddev
    assert abs(float(np.mean(samples))) <= SIGMAS * expected / math.sqrt(count)


@pytest.mark.parametrize(("z", "clip", "n", "expected"), [(1.0, 1.0, 10, 0.1), (1.2, 0.5, 4, 0.15), (0.0, 2.0, 3, 0.0)])
def test_central_stddev_is_z_c_over_n(z: float, clip: float, n: int, expected: float) -> None:
    assert central_noise_stddev(noise_multiplier=z, clip_norm=clip, denominator=n) == pytest.approx(expected)


@pytest.mark.parametrize(("z", "clip", "n", "expected"), [(1.0, 1.0, 4, 0.5), (2.0, 0.5, 16, 0.25), (1.0, 3.0, 1, 3.0)])
def test_local_stddev_is_z_c_over_sqrt_n(z: float, clip: float, n: int, expected: float) -> None:
    assert local_noise_stddev(noise_multiplier=z, clip_norm=clip, num_nodes=n) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_local_noise_of_n_nodes_sums_to_the_central_noise(n: int) -> None:
    # Variances add: n * (z C / sqrt(n))^2 = (z C)^2 on the sum, so (z C / n)^2 on the mean.
    z, clip = 1.3, 0.7
    local = local_noise_stddev(noise_multiplier=z, clip_norm=clip, num_nodes=n)
    assert math.sqrt(n * local**2) / n == pytest.approx(central_noise_stddev(noise_multiplier=z, clip_norm=clip,
                                                                             denominator=n))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -0.1, "clip_norm": 1.0, "denominator": 2}, "noise_multiplier must be"),
        ({"noise_multiplier": math.nan, "clip_norm": 1.0, "denominator": 2}, "noise_multiplier must be"),
        ({"noise_multiplier": 1.0, "clip_norm": 0.0, "denominator": 2}, "clip_norm must be"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "denominator": 0}, "denominator must be positive"),
    ],
)
def test_central_stddev_refuses_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        central_noise_stddev(**kwargs)


def test_local_stddev_needs_a_node() -> None:
    with pytest.raises(ValueError, match="num_nodes must be at least 1"):
        local_noise_stddev(noise_multiplier=1.0, clip_norm=1.0, num_nodes=0)


def test_noised_mean_has_stddev_z_c_over_n() -> None:
    z, clip, n = 1.1, 2.0, 5
    zeros = [[np.zeros(SAMPLE_SIZE)] for _ in range(n)]
    noised = noised_mean(zeros, clip_norm=clip, noise_multiplier=z)
    _assert_stddev(noised[0], z * clip / n)


def test_noised_mean_centres_on_the_equal_weight_mean() -> None:
    # Two deltas, mean (1, 0.5) and (0.25,); with z = 0 nothing is added.
    deltas = [[np.array([1.0, 0.0]), np.array([0.5])], [np.array([1.0, 1.0]), np.array([0.0])]]
    mean = noised_mean(deltas, clip_norm=2.0, noise_multiplier=0.0)
    np.testing.assert_allclose(mean[0], [1.0, 0.5])
    np.testing.assert_allclose(mean[1], [0.25])


def test_noised_mean_with_fixed_denominator() -> None:
    # Poisson sampling divides by the expected count (here 4), not by the 2 deltas that arrived.
    deltas = [[np.array([1.0])], [np.array([1.0])]]
    np.testing.assert_allclose(noised_mean(deltas, clip_norm=1.0, noise_multiplier=0.0, denominator=4)[0], [0.5])
    noised = noised_mean([[np.zeros(SAMPLE_SIZE)]] * 2, clip_norm=1.0, noise_multiplier=2.0, denominator=4)
    _assert_stddev(noised[0], 2.0 * 1.0 / 4)


def test_noised_mean_keeps_dtypes() -> None:
    deltas = [[np.zeros(3, dtype=np.float32)], [np.zeros(3, dtype=np.float32)]]
    assert noised_mean(deltas, clip_norm=1.0, noise_multiplier=1.0)[0].dtype == np.float32


def test_noised_mean_refuses_unclipped_deltas() -> None:
    with pytest.raises(ValueError, match="delta 1 has norm 5 above the clipping norm 1; clip it first"):
        noised_mean([[np.array([0.6, 0.8])], [np.array([3.0, 4.0])]], clip_norm=1.0, noise_multiplier=1.0)


def test_noised_mean_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="delta 1 has layer shapes"):
        noised_mean([[np.zeros(2)], [np.zeros(3)]], clip_norm=1.0, noise_multiplier=1.0)


def test_noised_mean_needs_deltas() -> None:
    with pytest.raises(ValueError, match="no deltas"):
        noised_mean([], clip_norm=1.0, noise_multiplier=1.0)


def test_local_noise_has_stddev_z_c_over_sqrt_n() -> None:
    z, clip, n = 1.0, 0.5, 16
    noised = add_local_noise([np.zeros(SAMPLE_SIZE)], clip_norm=clip, noise_multiplier=z, num_nodes=n)
    _assert_stddev(noised[0], z * clip / math.sqrt(n))


def test_local_noise_refuses_unclipped_delta() -> None:
    with pytest.raises(ValueError, match="above the clipping norm"):
        add_local_noise([np.array([3.0, 4.0])], clip_norm=1.0, noise_multiplier=1.0, num_nodes=2)


def test_sum_of_local_noise_matches_central_noise_on_the_mean() -> None:
    n, z, clip = 4, 1.5, 1.0
    per_node = [add_local_noise([np.zeros(SAMPLE_SIZE)], clip_norm=clip, noise_multiplier=z, num_nodes=n)[0]
                for _ in range(n)]
    _assert_stddev(np.sum(per_node, axis=0) / n, z * clip / n)


@pytest.mark.parametrize("stddev", [-1.0, math.inf, math.nan])
def test_noise_stddev_must_be_finite_and_non_negative(stddev: float) -> None:
    with pytest.raises(ValueError, match="noise stddev must be"):
        add_gaussian_noise([np.zeros(2)], stddev)


# Where the randomness comes from.

@pytest.mark.parametrize("function", [add_gaussian_noise, add_local_noise, noised_mean, secure_generator])
def test_no_noise_function_takes_a_seed_or_generator(function: object) -> None:
    assert callable(function)
    parameters = set(inspect.signature(function).parameters)
    assert not parameters & {"seed", "rng", "generator", "random_state", "entropy"}


def test_global_seeds_do_not_reproduce_the_noise() -> None:
    draws = []
    for _ in range(2):
        np.random.seed(0)
        random.seed(0)
        draws.append(add_gaussian_noise([np.zeros(64)], 1.0)[0])
    assert not np.array_equal(draws[0], draws[1])


def test_two_generators_differ() -> None:
    assert not np.array_equal(secure_generator().normal(size=64), secure_generator().normal(size=64))


def test_entropy_comes_from_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pinning os.urandom (and nothing else) makes the generator repeat: it is the only entropy source.
    monkeypatch.setattr(noise_module.os, "urandom", lambda size: b"\x07" * size)
    assert np.array_equal(secure_generator().normal(size=8), secure_generator().normal(size=8))
