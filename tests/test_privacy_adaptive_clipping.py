"""Adaptive clipping (Andrew et al. 2021): the noised unclipped fraction, the geometric update, the noise split."""

import math

import numpy as np
import pytest

from fl_server.privacy import AdaptiveClipping, recommended_count_stddev, weights_noise_multiplier

DRAWS = 20_000
SIGMAS = 6.0


@pytest.mark.parametrize(
    ("norms", "clip_norm", "expected_updates", "fraction"),
    [
        ([0.5, 1.0, 2.0, 3.0], 1.0, 4, 0.5),  # a norm equal to C counts as unclipped
        ([0.5, 0.6, 0.7, 3.0], 1.0, 4, 0.75),
        ([5.0, 6.0], 1.0, 2, 0.0),
        ([0.1, 0.2, 0.3], 1.0, 4, 0.875),  # centred: (3 - 3/2) / 4 + 1/2
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 1.0, 4, 1.0),  # (6 - 3) / 4 + 1/2 = 1.25, clamped to 1
    ],
)
def test_unclipped_fraction_without_noise(norms: list[float], clip_norm: float, expected_updates: int,
                                          fraction: float) -> None:
    clipping = AdaptiveClipping(count_stddev=0.0, expected_num_updates=expected_updates)
    assert clipping.noised_unclipped_fraction(norms, clip_norm) == pytest.approx(fraction)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.5, 2.0), (1.0, 2.0 * math.exp(-0.2 * 0.5)), (0.0, 2.0 * math.exp(0.2 * 0.5))],
)
def test_geometric_update(fraction: float, expected: float) -> None:
    # Too many unclipped (b > gamma): the clip shrinks; too few: it grows; on target: it stays.
    clipping = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2)
    assert clipping.next_clip_norm(2.0, fraction) == pytest.approx(expected)


def test_adapt_is_one_round() -> None:
    clipping = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, expected_num_updates=4)
    fraction, clip_norm = clipping.adapt([0.5, 0.6, 0.7, 3.0], 1.0)
    assert fraction == pytest.approx(0.75)
    assert clip_norm == pytest.approx(math.exp(-0.2 * 0.25))


def test_clip_converges_to_the_target_quantile_without_noise() -> None:
    norms = list(np.linspace(0.1, 10.0, 100))
    clipping = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, expected_num_updates=len(norms))
    clip_norm = 0.01
    for _ in range(500):
        _, clip_norm = clipping.adapt(norms, clip_norm)
    assert abs(sum(norm <= clip_norm for norm in norms) / len(norms) - 0.5) <= 0.02


def test_count_noise_has_stddev_sigma_b_over_m() -> None:
    # Half the updates unclipped: the fraction centres on 1/2 and the clamp at 0 and 1 is 10 stddevs away.
    sigma_b, expected_updates = 50.0, 1000
    clipping = AdaptiveClipping(count_stddev=sigma_b, expected_num_updates=expected_updates)
    norms = [0.5] * 500 + [2.0] * 500
    draws = np.array([clipping.noised_unclipped_fraction(norms, 1.0) for _ in range(DRAWS)])
    expected = sigma_b / expected_updates
    assert abs(float(np.std(draws, ddof=1)) - expected) <= SIGMAS * expected / math.sqrt(2 * (DRAWS - 1))
    assert abs(float(np.mean(draws)) - 0.5) <= SIGMAS * expected / math.sqrt(DRAWS)


def test_count_noise_is_not_repeatable() -> None:
    clipping = AdaptiveClipping(count_stddev=1.0, expected_num_updates=10)
    assert len({clipping.noised_unclipped_fraction([1.0] * 10, 2.0) for _ in range(5)}) > 1


@pytest.mark.parametrize(
    ("z", "sigma_b", "expected"),
    [
        (1.0, 5.0, (1 - 0.01) ** -0.5),  # 2 sigma_b = 10: z_delta^-2 = 1 - 1/100
        (2.0, 2.0, (0.25 - 1 / 16) ** -0.5),
        (0.0, 0.0, 0.0),
    ],
)
def test_weights_noise_multiplier(z: float, sigma_b: float, expected: float) -> None:
    assert weights_noise_multiplier(noise_multiplier=z, count_stddev=sigma_b) == pytest.approx(expected)


def test_split_spends_the_same_as_the_effective_multiplier() -> None:
    z, sigma_b = 1.3, 2.5
    z_delta = weights_noise_multiplier(noise_multiplier=z, count_stddev=sigma_b)
    assert z_delta > z
    assert (z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)


@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 0.5), (1.0, 0.0), (3.0, 1.0)])
def test_count_noise_too_small_for_the_multiplier(z: float, sigma_b: float) -> None:
    with pytest.raises(ValueError, match=r"adaptive clipping needs 2 \* sigma_b > z"):
        weights_noise_multiplier(noise_multiplier=z, count_stddev=sigma_b)


def test_recommended_count_stddev_is_m_over_20() -> None:
    assert recommended_count_stddev(100) == 5.0
    with pytest.raises(ValueError, match="expected number of updates must be positive"):
        recommended_count_stddev(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_quantile": 0.0}, "target quantile"),
        ({"target_quantile": 1.0}, "target quantile"),
        ({"learning_rate": 0.0}, "learning rate"),
        ({"count_stddev": -1.0}, "sigma_b"),
        ({"expected_num_updates": 0}, "expected number of updates"),
    ],
)
def test_settings_are_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveClipping(**kwargs)


def test_next_clip_norm_needs_a_positive_clip() -> None:
    with pytest.raises(ValueError, match="clip_norm must be"):
        AdaptiveClipping().next_clip_norm(0.0, 0.5)
