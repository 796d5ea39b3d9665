"""Checks of differential-privacy settings, as pure functions that raise ``ValueError`` saying what is wrong.

Meant to be called once at startup, where flags are read, so a session never starts with settings that void the
guarantee.
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

DP_MODES = ("central", "local", "sgd")
USER_LEVEL_MODES = ("central", "local")  # DP-FedAvg: the server aggregates clipped, noised updates

# Strategies that break the guarantee, and why. The accountant's epsilon is for the equal-weight mean of all
# clipped updates plus Gaussian noise (central: the server adds z*C/n; local: each node adds z*C/sqrt(n), and
# only the mean of all n carries z). These rules select or rank updates against each other instead, so the
# output depends on individual updates in a way the noise was not calibrated for. (FedAvg's example-count
# weights are a separate matter: a DP round must aggregate with noised_mean's equal weights. Server optimisers,
# fedavgm/fedadam/fedyogi/fedadagrad, only post-process that noised mean and stay compatible.)
INCOMPATIBLE_STRATEGIES: dict[str, str] = {
    "krum": "Krum returns the one update closest to its neighbours, chosen by comparing raw updates: the result is "
            "a single node's update, not a noised mean",
    "multi_krum": "Multi-Krum averages only the updates it selects by comparing raw updates; the selection depends "
                  "on every update and the noise does not cover it",
    "trimmed_mean": "the trimmed mean drops values by their rank among the updates, so one node can move the result "
                    "by more than the clipping norm over the number of updates the noise assumes",
    "median": "the coordinate-wise median takes each value from one node's update by rank; its sensitivity is not "
              "the clipping norm over the number of updates the noise assumes",
}


def validate_clip_norm(clip_norm: float) -> None:
    """The clipping norm C must be positive and finite."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"the clipping norm must be a positive finite number, got {clip_norm}")


def validate_noise_multiplier(noise_multiplier: float) -> None:
    """The noise multiplier z must be finite and >= 0 (0 adds no noise: epsilon is infinite)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"the noise multiplier must be a finite number >= 0, got {noise_multiplier}")


def validate_delta(delta: float, *, num_records: int | None = None) -> None:
    """delta must be in (0, 1), and below 1 / num_records when that is known (a larger delta allows
    publishing one record outright)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if num_records is not None:
        if num_records < 1:
            raise ValueError(f"the number of records must be at least 1, got {num_records}")
        if delta >= 1 / num_records:
            raise ValueError(f"delta = {delta} must be below 1 / {num_records} records = {1 / num_records:.3g}: "
                             "a delta that large allows a mechanism that publishes one record in the clear")


def validate_target_quantile(target_quantile: float) -> None:
    """Adaptive clipping's target quantile gamma must be in (0, 1)."""
    if not 0 < target_quantile < 1:
        raise ValueError(f"the target quantile must be in (0, 1), got {target_quantile}")


def validate_target_epsilon(target_epsilon: float) -> None:
    """The budget's target epsilon must be positive and finite."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"the target epsilon must be a positive finite number, got {target_epsilon}")


def validate_strategy_for_dp(dp_mode: str | None, strategy_name: str) -> None:
    """A user-level DP mode (``central`` or ``local``) cannot be combined with a strategy in
    ``INCOMPATIBLE_STRATEGIES``. Record-level DP-SGD (``sgd``) works with any aggregation (every update is
    already private; what the server does with it is post-processing) except FedProx, whose proximal term the
    DP-SGD loop does not have."""
    if dp_mode is None:
        return
    if dp_mode not in DP_MODES:
        raise ValueError(f"unknown DP mode {dp_mode!r}; choose from {', '.join(DP_MODES)}")
    if dp_mode == "sgd":
        if strategy_name == "fedprox":
            raise ValueError("strategy 'fedprox' cannot be used with --dp sgd: the nodes' DP-SGD loop has no "
                             "proximal term")
        return
    reason = INCOMPATIBLE_STRATEGIES.get(strategy_name)
    if reason is not None:
        raise ValueError(f"strategy {strategy_name!r} cannot be used with {dp_mode} differential privacy: {reason}")
