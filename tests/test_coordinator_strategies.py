"""The round loop with other strategies: per-round node config, and aggregation failures recorded as data."""


import numpy as np

from fl_server.strategies import FedProx, Krum, Median
from tests.test_coordinator import INITIAL
from tests.test_coordinator import run_session as base_run_session


async def run_session(tmp_path, strategy, connect, rounds=2):
    """Every node answers; the session runs with ``strategy``."""
    return await base_run_session(tmp_path, dict.fromkeys(connect, "ok"), rounds=rounds, timeout_s=0.5,
                                  connect=connect, strategy=strategy)


async def test_fedprox_sends_mu_to_every_node_every_round(tmp_path):
    _, history, fake = await run_session(tmp_path, FedProx(proximal_mu=0.25), ("n1", "n3"))
    assert len(fake.configs) == 4 and all(c.proximal_mu == 0.25 and c.epochs == 1 for c in fake.configs)
    assert all(r["status"] == "completed" and r["failure_reason"] is None for r in history["rounds"])


async def test_krum_round_with_too_few_updates_fails_with_reason_and_the_session_goes_on(tmp_path):
    weights, history, _ = await run_session(tmp_path, Krum(num_byzantine=1), ("n1", "n3"))
    np.testing.assert_array_equal(weights[0], INITIAL[0])  # unchanged
    assert [r["status"] for r in history["rounds"]] == ["failed", "failed"]
    assert all("needs more than 2f + 2 = 4 updates, got 2" in r["failure_reason"] for r in history["rounds"])
    assert all(r["accepted"] == ["n1", "n3"] for r in history["rounds"])  # the updates arrived; aggregation failed


async def test_krum_selection_is_recorded_in_the_history(tmp_path):
    # Round 1 updates are the node's factor: 1, 3, 4, 5, 9. Scores (2 nearest, squared, per coordinate x3):
    # 1 -> 4 + 9, 3 -> 1 + 4, 4 -> 1 + 1, 5 -> 1 + 4, 9 -> 16 + 25: n4 is the unique minimum.
    weights, history, _ = await run_session(tmp_path, Krum(num_byzantine=1), ("n1", "n3", "n4", "n5", "n9"),
                                            rounds=1)
    record = history["rounds"][0]
    assert record["status"] == "completed" and record["aggregation"]["selected"] == ["n4"]
    assert record["aggregation"]["scores"]["n4"] == 3 * (1 + 1)
    np.testing.assert_array_equal(weights[0], [4.0] * 3)


async def test_median_session_aggregates(tmp_path):
    weights, _, fake = await run_session(tmp_path, Median(), ("n1", "n2", "n9"), rounds=1)
    np.testing.assert_allclose(weights[0], [2.0] * 3)  # median of 1, 2, 9
    assert fake.configs[0].proximal_mu == 0.0
