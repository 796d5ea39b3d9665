"""The privacy budget: calibrating z to a target epsilon, and the stop before a round would cross it. No I/O.

Both searches are the library's own ``dp_accounting.calibrate_dp_mechanism`` (Brent's method over a fresh
``RdpAccountant`` per trial), which returns a parameter that meets the target; the result is checked again
here against the same accountant so a library change cannot silently overspend.
"""

from __future__ import annotations

import logging
import math

import dp_accounting
from dp_accounting import rdp

from common.privacy.accountant import PrivacyAccountant, check_round_parameters, round_event

logger = logging.getLogger(__name__)

# calibrate_dp_mechanism's tolerance on z: the returned z is within this of the smallest z that meets the target.
NOISE_MULTIPLIER_TOLERANCE = 1e-4


def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sampling_rate: float, rounds: int) -> float:
    """The smallest z (within 1e-4) for which ``rounds`` rounds at sampling rate q stay within (epsilon, delta)."""
    _check_target(target_epsilon, delta)
    check_round_parameters(sampling_rate=sampling_rate, noise_multiplier=1.0)
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")

    def make_event(noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(
            round_event(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier), rounds)

    noise_multiplier = float(dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant, make_event, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=NOISE_MULTIPLIER_TOLERANCE))
    spent = _epsilon(make_event(noise_multiplier), delta)
    if not spent <= target_epsilon:
        raise RuntimeError(f"calibration returned z = {noise_multiplier} with epsilon {spent} > {target_epsilon}")
    logger.info("calibrated noise multiplier z=%.4f: epsilon %.4f <= %s at delta %s, q=%s, %d rounds",
                noise_multiplier, spent, target_epsilon, delta, sampling_rate, rounds)
    return noise_multiplier


def rounds_within_budget(*, target_epsilon: float, delta: float, sampling_rate: float,
                         noise_multiplier: float) -> int:
    """How many rounds at (q, z) fit in (epsilon, delta): the largest T with epsilon(T) <= target (0 if none)."""
    _check_target(target_epsilon, delta)
    event = round_event(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier)
    if _epsilon(event, delta) > target_epsilon:
        return 0

    def make_event(rounds: int) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(event, max(int(rounds), 1))

    rounds = int(dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant, make_event, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1, 2), discrete=True))
    if not _epsilon(make_event(rounds), delta) <= target_epsilon:
        raise RuntimeError(f"calibration returned {rounds} rounds, over the budget {target_epsilon}")
    return rounds


def next_round_within_budget(accountant: PrivacyAccountant, *, target_epsilon: float, delta: float,
                             sampling_rate: float, noise_multiplier: float) -> bool:
    """Whether one more round at (q, z) keeps the session's epsilon within the target: the budget stop."""
    _check_target(target_epsilon, delta)
    after = accountant.epsilon_after_next_round(delta, sampling_rate=sampling_rate, noise_multiplier=noise_multiplier)
    return after <= target_epsilon


def _epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    return float(rdp.RdpAccountant().compose(event).get_epsilon(delta))


def _check_target(target_epsilon: float, delta: float) -> None:
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"the target epsilon must be a positive finite number, got {target_epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
