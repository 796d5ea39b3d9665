"""Differential privacy in the round: DP aggregation, the plan from the flags, the ledger and the budget stop."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from common.privacy.clipping import global_l2_norm
from common.privacy.local import privatize_update
from common.wire.protocol import TrainConfig
from fl_server.privacy.adaptive_clipping import AdaptiveClipping
from fl_server.privacy.aggregation import DPAggregation
from fl_server.privacy.ledger import PrivacyLedger, PrivacySettings
from fl_server.privacy.plan import PrivacyOptions, plan_privacy, with_dp_sgd
from fl_server.strategies import FedAvg, FedAvgM
from tests.test_coordinator import run_session

GLOBAL = [np.zeros(2, np.float32)]


def library_epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(1.0, dp_accounting.GaussianDpEvent(noise_multiplier)), rounds)
    return float(rdp.RdpAccountant().compose(event).get_epsilon(delta))


def aggregate(strategy, updates):
    strategy.begin_round(1, GLOBAL)
    for node_id, weights, num_samples in updates:
        strategy.accumulate(node_id, [np.asarray(weights, np.float32)], num_samples)
    return strategy.aggregate()


def test_central_dp_clips_each_delta_and_weighs_nodes_equally():
    dp = DPAggregation(FedAvg(), mode="central", clip_norm=1.0, noise_multiplier=0.0)
    # delta (3, 4) has norm 5 -> (0.6, 0.8); (0.3, 0.4) is inside; the 100 samples claimed buy nothing
    (result,) = aggregate(dp, [("a", [3.0, 4.0], 100), ("b", [0.3, 0.4], 1)])
    np.testing.assert_allclose(result, [0.45, 0.6], rtol=1e-6)
    assert dp.last_round_info()["dp"] == {"mode": "central", "clip_norm": 1.0, "updates": 2, "noise_stddev": 0.0}


def test_central_noise_has_stddev_z_c_over_n():
    dp = DPAggregation(FedAvg(), mode="central", clip_norm=2.0, noise_multiplier=1.5)
    size = 400_000
    dp.begin_round(1, [np.zeros(size)])
    for node_id in ("a", "b", "c"):
        dp.accumulate(node_id, [np.zeros(size)], 1)
    (noised,) = dp.aggregate()
    expected = 1.5 * 2.0 / 3
    # the sample stddev of 400,000 draws is within 6 of its standard errors (expected / sqrt(2 * size))
    assert abs(np.std(noised) - expected) < 6 * expected / math.sqrt(2 * size)
    assert dp.last_round_info()["dp"]["noise_stddev"] == pytest.approx(expected)


def test_a_server_optimizer_only_post_processes_the_noised_mean():
    plain = aggregate(FedAvgM(server_lr=1.0, server_momentum=0.0), [("m", [0.45, 0.6], 1)])
    private = aggregate(DPAggregation(FedAvgM(server_lr=1.0, server_momentum=0.0), mode="central", clip_norm=1.0,
                                      noise_multiplier=0.0), [("a", [3.0, 4.0], 100), ("b", [0.3, 0.4], 1)])
    np.testing.assert_allclose(private[0], plain[0], rtol=1e-6)


def test_local_mode_takes_the_equal_weight_mean_and_adds_nothing():
    dp = DPAggregation(FedAvg(), mode="local", clip_norm=1.0, noise_multiplier=1.0)
    (result,) = aggregate(dp, [("a", [3.0, 4.0], 100), ("b", [1.0, 0.0], 1)])
    np.testing.assert_allclose(result, [2.0, 2.0])  # the nodes clipped and noised already


def test_adaptive_clipping_moves_the_clip_towards_the_quantile_and_survives_a_checkpoint():
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=0.0, expected_num_updates=2)
    dp = DPAggregation(FedAvg(), mode="central", clip_norm=1.0, noise_multiplier=0.0, adaptive=adaptive)
    aggregate(dp, [("a", [3.0, 4.0], 1), ("b", [6.0, 8.0], 1)])  # both clipped: b_bar = 0, C grows by e^0.1
    assert dp.clip_norm == pytest.approx(math.exp(0.2 * 0.5))
    restored = DPAggregation(FedAvg(), mode="central", clip_norm=1.0, noise_multiplier=0.0, adaptive=adaptive)
    restored.load_state(dp.state())
    assert restored.clip_norm == dp.clip_norm


def test_local_dp_publishes_a_clipped_delta():
    published, norm = privatize_update([np.ones(3, np.float32)], [np.array([4.0, 1.0, 1.0], np.float32)],
                                       clip_norm=0.5, noise_stddev=0.0)
    assert norm == pytest.approx(3.0)
    np.testing.assert_allclose(published[0], [1.5, 1.0, 1.0])
    noised, _ = privatize_update([np.zeros(10_000)], [np.ones(10_000)], clip_norm=0.5, noise_stddev=0.1)
    assert global_l2_norm([noised[0] - 0.5 / 100]) > 0.5  # the noise is there (its norm is about 0.1 * 100)


@pytest.mark.parametrize(("options", "strategy", "says"), [
    (PrivacyOptions(mode="central", clip="1", noise_multiplier=1.0), "krum", "cannot be used with central"),
    (PrivacyOptions(mode="central", noise_multiplier=1.0), "fedavg", "--dp-clip"),
    (PrivacyOptions(mode="central", clip="0", noise_multiplier=1.0), "fedavg", "clipping norm"),
    (PrivacyOptions(mode="central", clip="1"), "fedavg", "--dp-noise-multiplier z or a budget"),
    (PrivacyOptions(mode="central", clip="1", noise_multiplier=1.0, delta=0.6), "fedavg", "below 1 / 2"),
    (PrivacyOptions(mode="local", clip="adaptive", noise_multiplier=1.0), "fedavg", "needs --dp central"),
    (PrivacyOptions(clip="1"), "fedavg", "need --dp central, local or sgd"),
    (PrivacyOptions(mode="central", clip="1", noise_multiplier=1.0, target_epsilon=5.0), "fedavg",
     "spends --dp-target-epsilon 5.0 in 1 round"),
])
def test_settings_that_cannot_work_are_refused(options, strategy, says):
    with pytest.raises(ValueError, match=says):
        plan_privacy(options, strategy=strategy, rounds=10, num_nodes=2, expected_updates=2)


def test_a_budget_alone_calibrates_z_for_the_planned_rounds():
    plan = plan_privacy(PrivacyOptions(mode="central", clip="1", target_epsilon=8.0), strategy="fedavg", rounds=10,
                        num_nodes=3, expected_updates=3)
    z = plan.settings.noise_multiplier
    assert library_epsilon(z, 10) <= 8.0 < library_epsilon(z * 0.98, 10)


async def test_the_budget_stops_the_session_before_the_round_that_would_cross_it(tmp_path):
    target = (library_epsilon(1.0, 3) + library_epsilon(1.0, 4)) / 2  # three rounds fit, the fourth does not
    ledger = PrivacyLedger(PrivacySettings("central", 1.0, 1e-5, target, clip_norm=1.0))
    strategy = DPAggregation(FedAvg(), mode="central", clip_norm=1.0, noise_multiplier=1.0)
    _, history, fake = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=6, strategy=strategy,
                                         privacy=ledger)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and sorted({r for _, r in fake.starts}) == [1, 2, 3]
    epsilons = [r["privacy"]["epsilon"] for r in rounds]
    assert epsilons == pytest.approx([library_epsilon(1.0, t) for t in (1, 2, 3)], rel=1e-9)
    assert epsilons == sorted(epsilons) and epsilons[-1] <= target
    assert rounds[0]["privacy"]["sampling_rate"] == 1.0 and rounds[0]["privacy"]["clip"] == 1.0
    assert history["privacy_accountant"]["rounds"] == 3


async def test_local_mode_sends_each_participant_its_share_of_the_noise(tmp_path):
    ledger = PrivacyLedger(PrivacySettings("local", 2.0, 1e-5, None, clip_norm=0.5))
    _, history, fake = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=1,
                                         strategy=DPAggregation(FedAvg(), mode="local", clip_norm=0.5,
                                                                noise_multiplier=2.0), privacy=ledger)
    assert [(c.dp_clip_norm, c.dp_noise_stddev) for c in fake.configs] == [(0.5, pytest.approx(2.0 * 0.5 / 2**0.5))] * 2
    assert history["rounds"][0]["privacy"]["noise_multiplier"] == 2.0  # both delivered: the full z


async def test_a_resumed_session_continues_the_privacy_books(tmp_path):
    from common.privacy.accountant import PrivacyAccountant
    from fl_server.history import SessionHistory

    first = SessionHistory.create(tmp_path / "a", "s", {})
    await run_session(tmp_path / "a", {"n1": "ok", "n3": "ok"}, rounds=2, history=first,
                      strategy=DPAggregation(FedAvg(), mode="central", clip_norm=1.0, noise_multiplier=1.0),
                      privacy=PrivacyLedger(PrivacySettings("central", 1.0, 1e-5, clip_norm=1.0)))
    resumed = PrivacyLedger(PrivacySettings("central", 1.0, 1e-5, clip_norm=1.0),
                            PrivacyAccountant.from_state(first.privacy_state))
    record = resumed.record_round(clip_norm=1.0, delivered=2, asked=2)
    assert record["rounds_accounted"] == 3 and record["epsilon"] == pytest.approx(library_epsilon(1.0, 3), rel=1e-9)


@pytest.mark.parametrize(("options", "strategy", "says"), [
    (PrivacyOptions(mode="sgd", clip="adaptive", noise_multiplier=1.0), "fedavg", "--dp sgd needs a fixed"),
    (PrivacyOptions(mode="sgd", clip="1", noise_multiplier=1.0, target_epsilon=3.0), "fedavg",
     "does not take --dp-target-epsilon"),
    (PrivacyOptions(mode="sgd", clip="1", noise_multiplier=1.0, budget_stop=True), "fedavg", "--dp-budget-stop"),
    (PrivacyOptions(mode="sgd", clip="1"), "fedavg", "needs --dp-noise-multiplier sigma > 0"),
    (PrivacyOptions(mode="sgd", clip="1", noise_multiplier=0.0), "fedavg", "needs --dp-noise-multiplier sigma > 0"),
    (PrivacyOptions(mode="sgd", noise_multiplier=1.0), "fedavg", "--dp-clip"),
    (PrivacyOptions(mode="sgd", clip="1", noise_multiplier=1.0), "fedprox", "no proximal term"),
])
def test_dp_sgd_settings_that_cannot_work_are_refused(options, strategy, says):
    with pytest.raises(ValueError, match=says):
        plan_privacy(options, strategy=strategy, rounds=10, num_nodes=2, expected_updates=2)


@pytest.mark.parametrize("strategy", ["fedavg", "krum", "median"])
def test_dp_sgd_plans_the_nodes_fields_with_any_aggregation(strategy):
    plan = plan_privacy(PrivacyOptions(mode="sgd", clip="1", noise_multiplier=1.1, delta=0.4), strategy=strategy,
                        rounds=10, num_nodes=2, expected_updates=2)  # delta vs records is each node's to check
    train = TrainConfig(1, 32, 0.1)
    assert with_dp_sgd(train, plan) == TrainConfig(1, 32, 0.1, dp_sgd_clip=1.0, dp_sgd_noise_multiplier=1.1,
                                                   dp_delta=0.4)
    central = plan_privacy(PrivacyOptions(mode="central", clip="1", noise_multiplier=1.1), strategy="fedavg",
                           rounds=10, num_nodes=2, expected_updates=2)
    assert with_dp_sgd(train, central) == with_dp_sgd(train, None) == train
