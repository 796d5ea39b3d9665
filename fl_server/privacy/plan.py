"""From the ``--dp*`` settings to what a session runs with: checked, with z calibrated when only a budget is given.

Pure: every number comes from ``fl_server.privacy`` (the accountant library underneath); every mistake is a
``ValueError`` that names the flag.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from common.wire.protocol import TrainConfig
from fl_server.privacy.adaptive_clipping import AdaptiveClipping, recommended_count_stddev, weights_noise_multiplier
from fl_server.privacy.budget import calibrate_noise_multiplier, rounds_within_budget
from fl_server.privacy.ledger import SAMPLING_RATE, PrivacySettings
from fl_server.privacy.validation import (
    validate_clip_norm,
    validate_delta,
    validate_noise_multiplier,
    validate_strategy_for_dp,
    validate_target_epsilon,
)

ADAPTIVE = "adaptive"


@dataclass(frozen=True)
class PrivacyPlan:
    settings: PrivacySettings
    clip_norm: float  # the fixed clip, or adaptive clipping's initial one
    adaptive: AdaptiveClipping | None
    budget_stop: bool  # run until the budget is spent, even if that is before --rounds


@dataclass(frozen=True)
class PrivacyOptions:
    """The ``--dp*`` flags as given (``clip`` is a number or ``"adaptive"``)."""

    mode: str | None = None
    clip: str | None = None
    initial_clip: float = 0.1
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_stddev: float | None = None
    budget_stop: bool = False


def plan_privacy(options: PrivacyOptions, *, strategy: str, rounds: int, num_nodes: int,
                 expected_updates: int) -> PrivacyPlan | None:
    """The session's DP plan, or None without ``--dp``; ``ValueError`` says which flag to change."""
    if options.mode is None:
        given = [flag for flag, value in (("--dp-clip", options.clip), ("--dp-noise-multiplier",
                 options.noise_multiplier), ("--dp-target-epsilon", options.target_epsilon)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --dp central, local or sgd")
        return None
    validate_strategy_for_dp(options.mode, strategy)
    if options.mode == "sgd":
        return _plan_dp_sgd(options)
    validate_delta(options.delta, num_records=num_nodes)
    clip_norm, adaptive = _clipping(options, expected_updates)
    z = _noise_multiplier(options, rounds)
    if adaptive is not None and z > 0:
        weights_noise_multiplier(noise_multiplier=z, count_stddev=adaptive.count_stddev)  # refuses 2*sigma_b <= z
    return PrivacyPlan(PrivacySettings(options.mode, z, options.delta, options.target_epsilon, clip_norm),
                       clip_norm, adaptive, options.budget_stop)


def _plan_dp_sgd(options: PrivacyOptions) -> PrivacyPlan:
    """Record-level DP-SGD at the nodes: a fixed clip and a noise multiplier, no server-side budget (each node
    accounts its own records and reports its epsilon)."""
    validate_delta(options.delta)  # below 1/records is each node's to check: the server does not know the counts
    if options.clip == ADAPTIVE:
        raise ValueError("--dp-clip adaptive is for --dp central; --dp sgd needs a fixed --dp-clip C (the L2 norm "
                         "each example's gradient is clipped to)")
    if options.target_epsilon is not None or options.budget_stop:
        raise ValueError("--dp sgd does not take --dp-target-epsilon or --dp-budget-stop: each node accounts its "
                         "own records (its epsilon is in the history per node); set --dp-noise-multiplier")
    if options.noise_multiplier is None or options.noise_multiplier == 0:
        raise ValueError("--dp sgd needs --dp-noise-multiplier sigma > 0 (Gaussian noise of stddev sigma*C on each "
                         "step's sum of clipped per-example gradients; 0 gives no guarantee)")
    validate_noise_multiplier(options.noise_multiplier)
    clip_norm, _ = _clipping(options, expected_updates=1)
    return PrivacyPlan(PrivacySettings("sgd", options.noise_multiplier, options.delta, None, clip_norm), clip_norm,
                       None, False)


def with_dp_sgd(train: TrainConfig, plan: PrivacyPlan | None) -> TrainConfig:
    """``train`` with the fields that make every node train with DP-SGD (unchanged unless ``--dp sgd``)."""
    if plan is None or plan.settings.mode != "sgd":
        return train
    return replace(train, dp_sgd_clip=plan.clip_norm, dp_sgd_noise_multiplier=plan.settings.noise_multiplier,
                   dp_delta=plan.settings.delta)


def _clipping(options: PrivacyOptions, expected_updates: int) -> tuple[float, AdaptiveClipping | None]:
    if options.clip is None:
        raise ValueError("--dp needs --dp-clip C (the L2 norm each update delta is clipped to) or --dp-clip adaptive")
    if options.clip == ADAPTIVE:
        if options.mode != "central":
            raise ValueError("--dp-clip adaptive needs --dp central: the server must see the update norms")
        validate_clip_norm(options.initial_clip)
        count_stddev = (options.count_stddev if options.count_stddev is not None
                        else recommended_count_stddev(expected_updates))
        return options.initial_clip, AdaptiveClipping(options.target_quantile, options.clip_learning_rate,
                                                      count_stddev, float(expected_updates))
    try:
        clip_norm = float(options.clip)
    except ValueError:
        raise ValueError(f"--dp-clip {options.clip!r}: a positive number or 'adaptive'") from None
    validate_clip_norm(clip_norm)
    return clip_norm, None


def _noise_multiplier(options: PrivacyOptions, rounds: int) -> float:
    z, target = options.noise_multiplier, options.target_epsilon
    if target is not None:
        validate_target_epsilon(target)
    if z is None:
        if target is None:
            raise ValueError("--dp needs --dp-noise-multiplier z or a budget --dp-target-epsilon E (z is then "
                             "calibrated for --rounds)")
        return calibrate_noise_multiplier(target_epsilon=target, delta=options.delta, sampling_rate=SAMPLING_RATE,
                                          rounds=rounds)
    validate_noise_multiplier(z)
    if target is not None and not options.budget_stop:
        if z == 0:
            raise ValueError("--dp-noise-multiplier 0 spends any --dp-target-epsilon in one round")
        fit = rounds_within_budget(target_epsilon=target, delta=options.delta, sampling_rate=SAMPLING_RATE,
                                   noise_multiplier=z)
        if fit < rounds:
            raise ValueError(f"--dp-noise-multiplier {z} spends --dp-target-epsilon {target} in {fit} round(s), "
                             f"not --rounds {rounds}: raise z, lower --rounds, leave z out to calibrate it, or "
                             "add --dp-budget-stop to stop when the budget is spent")
    return z
