"""Differential privacy end to end: real broker, server and node processes."""

import numpy as np
import pytest

from common.privacy.clipping import global_l2_norm
from common.wire.protocol import KIND_MODEL, KIND_UPDATE
from tests.integration.harness import Federation, expect_clean_exit, read_weights
from tests.test_privacy_session import library_epsilon

FLOAT32_SLACK = 1e-3  # w_global + delta is published as float32: its rounding may add ~1e-6 to the norm


def test_central_dp_records_epsilon_every_round_and_stops_at_the_budget(federation: Federation) -> None:
    target = (library_epsilon(1.0, 2) + library_epsilon(1.0, 3)) / 2  # two rounds fit, the third does not
    server = federation.start_server("--min-nodes", "2", "--rounds", "5", "--dp", "central", "--dp-clip", "1.0",
                                     "--dp-noise-multiplier", "1.0", "--dp-target-epsilon", f"{target:.6f}",
                                     "--dp-budget-stop")
    nodes = federation.start_nodes(2)
    expect_clean_exit(server, nodes, server_timeout_s=240)
    history = federation.history()
    assert history["status"] == "budget_exhausted" and [r["round"] for r in history["rounds"]] == [1, 2]
    epsilons = [r["privacy"]["epsilon"] for r in history["rounds"]]
    assert epsilons == pytest.approx([library_epsilon(1.0, 1), library_epsilon(1.0, 2)], rel=1e-9)
    assert epsilons[0] < epsilons[1] <= target
    assert history["privacy_accountant"]["rounds"] == 2
    assert history["config"]["strategy_params"]["dp_mode"] == "central"


def test_local_dp_never_publishes_an_update_whose_delta_exceeds_the_clip(federation: Federation) -> None:
    clip = 0.05
    server = federation.start_server("--min-nodes", "2", "--rounds", "2", "--dp", "local", "--dp-clip", str(clip),
                                     "--dp-noise-multiplier", "0")
    nodes = federation.start_nodes(2)
    expect_clean_exit(server, nodes, server_timeout_s=240)
    assert federation.history()["status"] == "completed"
    updates = read_weights(federation.kafka, federation.updates_topic, federation.keys)
    models = read_weights(federation.kafka, federation.models_topic)
    checked = 0
    for (kind, node, server_round), (_, weights) in updates.items():
        assert kind == KIND_UPDATE
        _, start = models[(KIND_MODEL, "server", server_round)]
        delta = [np.asarray(w, np.float64) - np.asarray(g, np.float64) for w, g in zip(weights, start, strict=True)]
        assert global_l2_norm(delta) <= clip * (1 + FLOAT32_SLACK), (node, server_round)
        checked += 1
    assert checked == 4  # two nodes, two rounds: every update was read back


def test_dp_sgd_nodes_report_their_own_growing_record_level_epsilon(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "2", "--rounds", "2", "--dp", "sgd", "--dp-clip", "1",
                                     "--dp-noise-multiplier", "1.1")
    nodes = federation.start_nodes(2)
    expect_clean_exit(server, nodes, server_timeout_s=240)
    history = federation.history()
    assert history["status"] == "completed" and [r["round"] for r in history["rounds"]] == [1, 2]
    per_round = [r["train"]["per_node"] for r in history["rounds"]]
    assert set(per_round[0]) == set(per_round[1]) and len(per_round[0]) == 2
    for node in per_round[0]:
        first, second = per_round[0][node]["dp_epsilon"], per_round[1][node]["dp_epsilon"]
        assert 0 < first < second, (node, first, second)
        assert set(per_round[0][node]) == {"dp_epsilon"}  # the training loss stays at the node
    assert all(r.get("privacy") is None for r in history["rounds"])  # no user-level books in sgd mode
