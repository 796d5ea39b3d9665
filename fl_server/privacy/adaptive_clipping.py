"""Adaptive clipping: the clipping norm tracks a quantile of the update norms, privately. No I/O.

Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021
(arXiv:1905.03871). Each round, with clipping norm C and m the expected number of updates:

* every update reports b_i = 1 if its norm <= C (unclipped) else 0;
* the server releases the noised unclipped fraction
  b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2, clamped to [0, 1];
* the clip follows the geometric update C <- C * exp(-eta_C * (b_bar - gamma)) for target quantile gamma.

The counts are centred (b_i - 1/2) so that adding or removing one update moves the sum by at most 1/2: the
count query's sensitivity is 1/2 and its noise multiplier 2 * sigma_b. That is what the paper's joint analysis
uses, and it is how the authors' reference implementation does it (tensorflow_privacy's
``QuantileEstimatorQuery``, which shifts by 0.5 and unshifts after dividing by the expected count).

Splitting the budget: the weights' Gaussian (multiplier z_delta) and the count's Gaussian (multiplier 2 sigma_b)
are released together each round, and together they are exactly as private as one Gaussian with multiplier z
where z^-2 = z_delta^-2 + (2 sigma_b)^-2 (Andrew et al. 2021, their joint privacy analysis of DP-FedAvg with
adaptive clipping; TensorFlow Federated computes its ``value_noise_multiplier`` the same way). So to run
at an effective z (the one given to the accountant), the weights get
    z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2),
which needs 2 sigma_b > z. The paper recommends sigma_b = m / 20, gamma = 0.5 (the median) and eta_C = 0.2.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from common.privacy.noise import secure_generator
from fl_server.privacy.validation import validate_target_quantile

logger = logging.getLogger(__name__)

RECOMMENDED_TARGET_QUANTILE = 0.5
RECOMMENDED_LEARNING_RATE = 0.2


def recommended_count_stddev(expected_num_updates: float) -> float:
    """The paper's suggested sigma_b: m / 20 for m expected updates per round."""
    if not expected_num_updates > 0:
        raise ValueError(f"the expected number of updates must be positive, got {expected_num_updates}")
    return expected_num_updates / 20


def weights_noise_multiplier(*, noise_multiplier: float, count_stddev: float) -> float:
    """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the weights' multiplier that, with the count's noise sigma_b,
    spends the same budget as one Gaussian of multiplier z (Andrew et al. 2021; see the module docstring)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"the noise multiplier z must be a finite number >= 0, got {noise_multiplier}")
    if noise_multiplier == 0:
        return 0.0
    if not (math.isfinite(count_stddev) and 2 * count_stddev > noise_multiplier):
        raise ValueError(f"the clipped-count noise sigma_b = {count_stddev} is too small for the noise multiplier "
                         f"z = {noise_multiplier}: adaptive clipping needs 2 * sigma_b > z (raise sigma_b, for "
                         "example to the recommended expected updates / 20, or lower z)")
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


@dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping's settings: target quantile gamma, learning rate eta_C, count noise sigma_b, and m."""

    target_quantile: float = RECOMMENDED_TARGET_QUANTILE
    learning_rate: float = RECOMMENDED_LEARNING_RATE
    count_stddev: float = 0.0
    expected_num_updates: float = 1.0

    def __post_init__(self) -> None:
        validate_target_quantile(self.target_quantile)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"the clip learning rate must be a positive finite number, got {self.learning_rate}")
        if not (math.isfinite(self.count_stddev) and self.count_stddev >= 0):
            raise ValueError(f"the clipped-count noise sigma_b must be a finite number >= 0, got {self.count_stddev}")
        if not (math.isfinite(self.expected_num_updates) and self.expected_num_updates > 0):
            raise ValueError(f"the expected number of updates must be positive, got {self.expected_num_updates}")

    def noised_unclipped_fraction(self, update_norms: Sequence[float], clip_norm: float) -> float:
        """b_bar: the fraction of updates with norm <= ``clip_norm``, noised with sigma_b and clamped to [0, 1]."""
        centred_count = sum(1.0 if norm <= clip_norm else 0.0 for norm in update_norms) - len(update_norms) / 2
        noise = float(secure_generator().normal(0.0, self.count_stddev)) if self.count_stddev > 0 else 0.0
        fraction = (centred_count + noise) / self.expected_num_updates + 0.5
        return min(1.0, max(0.0, fraction))

    def next_clip_norm(self, clip_norm: float, unclipped_fraction: float) -> float:
        """The geometric update C * exp(-eta_C * (b_bar - gamma))."""
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm}")
        return clip_norm * math.exp(-self.learning_rate * (unclipped_fraction - self.target_quantile))

    def adapt(self, update_norms: Sequence[float], clip_norm: float) -> tuple[float, float]:
        """One round's step: (the noised unclipped fraction, the clipping norm for the next round)."""
        fraction = self.noised_unclipped_fraction(update_norms, clip_norm)
        return fraction, self.next_clip_norm(clip_norm, fraction)
