"""The RDP accountant and the budget, checked against Google's dp-accounting called directly."""

import json
import math
from typing import Any

import dp_accounting
import pytest
from dp_accounting import rdp

from fl_server.privacy import (
    PrivacyAccountant,
    calibrate_noise_multiplier,
    next_round_within_budget,
    rounds_within_budget,
)

DELTA = 1e-5


def _library_epsilon(*events: tuple[float, float, int], delta: float = DELTA) -> float:
    """Epsilon straight from the library: each (q, z, rounds) as a self-composed Poisson-sampled Gaussian."""
    accountant = rdp.RdpAccountant()
    for sampling_rate, noise_multiplier, rounds in events:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


def _accountant(*runs: tuple[float, float, int]) -> PrivacyAccountant:
    accountant = PrivacyAccountant()
    for sampling_rate, noise_multiplier, rounds in runs:
        for _ in range(rounds):
            accountant.record_round(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier)
    return accountant


@pytest.mark.parametrize(("q", "z", "rounds"), [(1.0, 1.0, 100), (0.1, 1.0, 100), (0.01, 1.1, 50), (0.5, 2.0, 7)])
def test_epsilon_equals_the_library_for_the_same_event(q: float, z: float, rounds: int) -> None:
    assert _accountant((q, z, rounds)).epsilon(DELTA) == pytest.approx(_library_epsilon((q, z, rounds)), rel=1e-12)


def test_round_by_round_equals_the_library_composing_round_by_round() -> None:
    library = rdp.RdpAccountant()
    for _ in range(3):
        library.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)))
    assert _accountant((0.1, 1.0, 3)).epsilon(DELTA) == pytest.approx(library.get_epsilon(DELTA), rel=1e-9)


def test_mixed_rounds_compose_in_order() -> None:
    runs = ((0.1, 1.0, 2), (1.0, 2.0, 1), (0.1, 1.0, 1))
    accountant = _accountant(*runs)
    assert accountant.rounds == 4
    assert [(r.sampling_rate, r.noise_multiplier, r.rounds) for r in accountant.runs] == list(runs)
    assert accountant.epsilon(DELTA) == pytest.approx(_library_epsilon(*runs), rel=1e-12)


def test_epsilon_grows_with_rounds() -> None:
    epsilons = [_accountant((1.0, 1.0, rounds)).epsilon(DELTA) for rounds in (1, 10, 100)]
    assert epsilons == sorted(epsilons)
    assert len(set(epsilons)) == 3


def test_subsampling_amplifies_privacy_at_z_1_after_100_rounds() -> None:
    # dp-accounting 0.6.0's RDP accountant at delta 1e-5: about 96.1 with everyone every round, 7.90 at q = 0.1.
    full = _accountant((1.0, 1.0, 100)).epsilon(DELTA)
    sampled = _accountant((0.1, 1.0, 100)).epsilon(DELTA)
    print(f"epsilon after 100 rounds at z=1, delta=1e-5: q=1 -> {full:.4f}, q=0.1 -> {sampled:.4f}")
    assert full == pytest.approx(96.116, rel=1e-3)
    assert sampled == pytest.approx(7.904, rel=1e-3)


def test_no_rounds_spend_nothing_and_no_noise_spends_everything() -> None:
    assert PrivacyAccountant().epsilon(DELTA) == 0.0
    assert math.isinf(_accountant((0.1, 0.0, 1)).epsilon(DELTA))


def test_epsilon_after_next_round_does_not_record() -> None:
    accountant = _accountant((1.0, 1.5, 4))
    after = accountant.epsilon_after_next_round(DELTA, sampling_rate=1.0, noise_multiplier=1.5)
    assert accountant.rounds == 4
    accountant.record_round(sampling_rate=1.0, noise_multiplier=1.5)
    assert accountant.epsilon(DELTA) == pytest.approx(after, rel=1e-12)


@pytest.mark.parametrize(("q", "z", "message"), [(0.0, 1.0, "sampling rate"), (1.5, 1.0, "sampling rate"),
                                                 (0.1, -1.0, "noise multiplier"), (0.1, math.inf, "noise multiplier")])
def test_record_round_refuses_bad_parameters(q: float, z: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrivacyAccountant().record_round(sampling_rate=q, noise_multiplier=z)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_epsilon_refuses_bad_delta(delta: float) -> None:
    with pytest.raises(ValueError, match="delta must be in"):
        _accountant((1.0, 1.0, 1)).epsilon(delta)


def test_state_round_trips_through_json() -> None:
    accountant = _accountant((0.1, 1.0, 5), (0.2, 1.3, 2))
    text = json.dumps(accountant.to_state())
    rebuilt = PrivacyAccountant.from_state(json.loads(text))
    assert rebuilt.runs == accountant.runs
    assert rebuilt.rounds == 7
    assert rebuilt.epsilon(DELTA) == accountant.epsilon(DELTA)


def test_empty_state_round_trips() -> None:
    assert PrivacyAccountant.from_state(json.loads(json.dumps(PrivacyAccountant().to_state()))).rounds == 0


def _state(**changes: Any) -> dict[str, Any]:
    state = _accountant((0.1, 1.0, 2)).to_state()
    state.update(changes)
    return state


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([], "must be a JSON object"),
        (_state(format="pickle"), "must have format"),
        (_state(version=2), "must have format"),
        (_state(runs={}), "'runs' must be a list"),
        (_state(runs=[{"sampling_rate": 0.1, "noise_multiplier": 1.0}]), "run 0 must have exactly"),
        (_state(runs=[{"sampling_rate": 0.1, "noise_multiplier": 1.0, "rounds": 0}]), "rounds 0"),
        (_state(runs=[{"sampling_rate": 0.1, "noise_multiplier": 1.0, "rounds": 2.0}]), "rounds 2.0"),
        (_state(runs=[{"sampling_rate": 0.1, "noise_multiplier": 1.0, "rounds": True}]), "rounds True"),
        (_state(runs=[{"sampling_rate": True, "noise_multiplier": 1.0, "rounds": 2}]), "sampling_rate True"),
        (_state(runs=[{"sampling_rate": 2, "noise_multiplier": 1.0, "rounds": 2}]), "run 0: the sampling rate"),
        (_state(runs=[{"sampling_rate": 0.1, "noise_multiplier": "1", "rounds": 2}]), "run 0: the noise multiplier"),
        (_state(rounds=3), "says 3 rounds but its runs add up to 2"),
    ],
)
def test_malformed_state_is_refused(state: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrivacyAccountant.from_state(state)


# The budget.

@pytest.mark.parametrize(("target", "q", "rounds"), [(2.0, 0.1, 100), (8.0, 1.0, 100), (1.0, 0.01, 200)])
def test_calibrated_noise_multiplier_meets_the_target_near_tightly(target: float, q: float, rounds: int) -> None:
    z = calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sampling_rate=q, rounds=rounds)
    assert _library_epsilon((q, z, rounds)) <= target
    assert _library_epsilon((q, z * 0.98, rounds)) > target


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0, "delta": DELTA, "sampling_rate": 0.1, "rounds": 10}, "target epsilon"),
        ({"target_epsilon": 1.0, "delta": 1.0, "sampling_rate": 0.1, "rounds": 10}, "delta must be in"),
        ({"target_epsilon": 1.0, "delta": DELTA, "sampling_rate": 0.0, "rounds": 10}, "sampling rate"),
        ({"target_epsilon": 1.0, "delta": DELTA, "sampling_rate": 0.1, "rounds": 0}, "rounds must be at least 1"),
    ],
)
def test_calibration_refuses_bad_targets(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate_noise_multiplier(**kwargs)


@pytest.mark.parametrize(("target", "q", "z"), [(5.0, 0.1, 1.0), (1.0, 0.01, 1.1), (50.0, 1.0, 2.0)])
def test_rounds_within_budget_is_the_last_round_under_the_target(target: float, q: float, z: float) -> None:
    rounds = rounds_within_budget(target_epsilon=target, delta=DELTA, sampling_rate=q, noise_multiplier=z)
    assert rounds >= 1
    assert _library_epsilon((q, z, rounds)) <= target < _library_epsilon((q, z, rounds + 1))


def test_no_round_fits_a_budget_smaller_than_one_round() -> None:
    assert rounds_within_budget(target_epsilon=0.01, delta=DELTA, sampling_rate=1.0, noise_multiplier=1.0) == 0


def test_budget_stop_before_the_round_that_would_cross() -> None:
    target, q, z = 50.0, 1.0, 2.0
    rounds = rounds_within_budget(target_epsilon=target, delta=DELTA, sampling_rate=q, noise_multiplier=z)
    below = _accountant((q, z, rounds - 1))
    assert next_round_within_budget(below, target_epsilon=target, delta=DELTA, sampling_rate=q, noise_multiplier=z)
    at = _accountant((q, z, rounds))
    assert not next_round_within_budget(at, target_epsilon=target, delta=DELTA, sampling_rate=q, noise_multiplier=z)
