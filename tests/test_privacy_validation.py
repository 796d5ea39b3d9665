"""Differential-privacy settings checks: each bad setting raises ValueError with a message that says why."""

import math

import pytest

from fl_server.privacy import (
    INCOMPATIBLE_STRATEGIES,
    validate_clip_norm,
    validate_delta,
    validate_noise_multiplier,
    validate_strategy_for_dp,
    validate_target_epsilon,
    validate_target_quantile,
)
from fl_server.strategies import STRATEGIES


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_clip_norm(clip_norm: float) -> None:
    with pytest.raises(ValueError, match="the clipping norm must be a positive finite number"):
        validate_clip_norm(clip_norm)


@pytest.mark.parametrize("noise_multiplier", [-0.5, math.inf, math.nan])
def test_noise_multiplier(noise_multiplier: float) -> None:
    with pytest.raises(ValueError, match="the noise multiplier must be a finite number >= 0"):
        validate_noise_multiplier(noise_multiplier)


@pytest.mark.parametrize("delta", [0.0, -1e-5, 1.0, 2.0, math.nan])
def test_delta_outside_the_open_unit_interval(delta: float) -> None:
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        validate_delta(delta)


def test_delta_must_be_below_one_over_the_number_of_records() -> None:
    with pytest.raises(ValueError, match=r"delta = 0.001 must be below 1 / 1000 records = 0.001"):
        validate_delta(1e-3, num_records=1000)
    with pytest.raises(ValueError, match="number of records must be at least 1"):
        validate_delta(1e-3, num_records=0)


@pytest.mark.parametrize("target_quantile", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_target_quantile(target_quantile: float) -> None:
    with pytest.raises(ValueError, match=r"the target quantile must be in \(0, 1\)"):
        validate_target_quantile(target_quantile)


@pytest.mark.parametrize("target_epsilon", [0.0, -1.0, math.inf, math.nan])
def test_target_epsilon(target_epsilon: float) -> None:
    with pytest.raises(ValueError, match="the target epsilon must be a positive finite number"):
        validate_target_epsilon(target_epsilon)


def test_good_settings_pass() -> None:
    validate_clip_norm(1.0)
    validate_noise_multiplier(0.0)
    validate_delta(1e-5, num_records=60_000)
    validate_target_quantile(0.5)
    validate_target_epsilon(3.0)


@pytest.mark.parametrize("mode", ["central", "local"])
@pytest.mark.parametrize("strategy", sorted(INCOMPATIBLE_STRATEGIES))
def test_robust_strategies_are_refused_with_dp(mode: str, strategy: str) -> None:
    with pytest.raises(ValueError, match=f"strategy '{strategy}' cannot be used with {mode} differential privacy: "):
        validate_strategy_for_dp(mode, strategy)


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_averaging_strategies_are_allowed(strategy: str) -> None:
    validate_strategy_for_dp("central", strategy)
    validate_strategy_for_dp("local", strategy)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", *sorted(INCOMPATIBLE_STRATEGIES)])
def test_dp_sgd_allows_any_aggregation_but_fedprox(strategy: str) -> None:
    validate_strategy_for_dp("sgd", strategy)  # every update is already private: aggregation is post-processing
    with pytest.raises(ValueError, match="no proximal term"):
        validate_strategy_for_dp("sgd", "fedprox")


def test_anything_goes_without_dp() -> None:
    validate_strategy_for_dp(None, "krum")


def test_unknown_dp_mode() -> None:
    with pytest.raises(ValueError, match="unknown DP mode 'shuffle'; choose from central, local"):
        validate_strategy_for_dp("shuffle", "fedavg")


def test_the_table_names_real_strategies() -> None:
    assert set(INCOMPATIBLE_STRATEGIES) <= set(STRATEGIES)
