"""The server's side of differential privacy: the accountant, the budget, adaptive clipping, settings checks.

Pure (no sockets, Kafka or TensorFlow). Clipping and noise, which the nodes need too for local DP, are in
``common.privacy``.
"""

from common.privacy.accountant import PrivacyAccountant, RoundRun, round_event
from fl_server.privacy.adaptive_clipping import AdaptiveClipping, recommended_count_stddev, weights_noise_multiplier
from fl_server.privacy.budget import calibrate_noise_multiplier, next_round_within_budget, rounds_within_budget
from fl_server.privacy.validation import (
    DP_MODES,
    INCOMPATIBLE_STRATEGIES,
    validate_clip_norm,
    validate_delta,
    validate_noise_multiplier,
    validate_strategy_for_dp,
    validate_target_epsilon,
    validate_target_quantile,
)

__all__ = [
    "DP_MODES",
    "INCOMPATIBLE_STRATEGIES",
    "AdaptiveClipping",
    "PrivacyAccountant",
    "RoundRun",
    "calibrate_noise_multiplier",
    "next_round_within_budget",
    "recommended_count_stddev",
    "round_event",
    "rounds_within_budget",
    "validate_clip_norm",
    "validate_delta",
    "validate_noise_multiplier",
    "validate_strategy_for_dp",
    "validate_target_epsilon",
    "validate_target_quantile",
    "weights_noise_multiplier",
]
