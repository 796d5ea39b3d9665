"""End to end: real Kafka broker, real Socket.IO server process, real node processes."""

from pathlib import Path

import numpy as np

from common.wire.protocol import KIND_MODEL, KIND_UPDATE
from fl_server.strategies import weighted_average
from tests.integration.harness import Federation, expect_clean_exit, read_weights
from tests.integration.history_tools import check_history_tools

ROUND_FIELDS = {"round", "started_at", "ended_at", "participants", "num_samples", "train", "holdout", "timings_s",
                "rejected_updates"}
TIMING_FIELDS = {"train", "transport", "waiting", "aggregate", "evaluate", "total"}


def assert_round_is_fedavg_of_updates(federation: Federation, server_round: int) -> None:
    """The global model published after ``server_round`` equals the sample-weighted mean of that round's updates."""
    updates = read_weights(federation.kafka, federation.updates_topic, federation.keys)
    models = read_weights(federation.kafka, federation.models_topic)
    history = federation.history()
    record = history["rounds"][server_round - 1]
    accepted = [(updates[(KIND_UPDATE, node, server_round)]) for node in record["accepted"]]
    assert [n for n, _ in accepted] == [record["num_samples"][node] for node in record["accepted"]]
    expected = weighted_average([(weights, n) for n, weights in accepted])
    _, published = models[(KIND_MODEL, "server", server_round + 1)]
    for got, want in zip(published, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_three_nodes_train_three_rounds(federation: Federation, capsys) -> None:
    # The aggregation is a strategy from outside the package (tests/plugins/clipped.py, loaded by import path):
    # with a max_norm no update reaches, it is FedAvg, and the checks below hold as they do for FedAvg.
    server = federation.start_server("--min-nodes", "3", "--rounds", "3", "--round-timeout", "90", "--epochs", "2",
                                     "--strategy", "tests.plugins.clipped:ClippedFedAvg",
                                     "--strategy-param", "max_norm=1e6")
    nodes = federation.start_nodes(3)
    expect_clean_exit(server, nodes, server_timeout_s=240)

    history = federation.history()
    assert history["status"] == "completed" and history["finished_at"] is not None
    assert {"session_id", "config", "started_at", "finished_at", "rounds"} <= set(history)
    assert [r["round"] for r in history["rounds"]] == [1, 2, 3]
    for record in history["rounds"]:
        assert ROUND_FIELDS <= set(record)
        assert TIMING_FIELDS <= set(record["timings_s"])
        assert record["participants"] == ["n0", "n1", "n2"] and record["accepted"] == ["n0", "n1", "n2"]
        # every digits training row, exactly once
        assert sum(record["num_samples"].values()) == 1797 - history["config"]["num_holdout"]
        assert set(record["train"]["per_node"]) == {"n0", "n1", "n2"} and record["train"]["loss"] > 0
        assert record["rejected_updates"] == 0
    first, last = history["rounds"][0]["holdout"]["accuracy"], history["rounds"][-1]["holdout"]["accuracy"]
    assert last > first, (first, last)
    assert last > 0.6  # ten classes: chance is 0.1

    assert_round_is_fedavg_of_updates(federation, 3)
    assert history["config"]["strategy_params"] == {"max_norm": 1e6}  # the plugin ran in the server process
    assert all(r["aggregation"] == {"clipped_updates": 0} for r in history["rounds"])
    assert Path(history["final_model"]).is_file()
    assert len(list((federation.tmp_path / "models").glob("*.keras"))) == 3
    check_history_tools(federation, capsys)


def test_model_over_5_mb_travels_both_ways_and_aggregates(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "2", "--rounds", "1", "--model", "mlp:1280,1024",
                                     "--round-timeout", "120")
    nodes = federation.start_nodes(2)
    expect_clean_exit(server, nodes, server_timeout_s=240)
    history = federation.history()
    assert history["config"]["num_parameters"] * 4 > 5_000_000
    assert history["rounds"][0]["accepted"] == ["n0", "n1"]
    assert_round_is_fedavg_of_updates(federation, 1)


def test_session_over_tls_with_a_private_ca(federation: Federation) -> None:
    from tests.test_tls import make_pki

    pki = make_pki(federation.tmp_path)
    server = federation.start_server("--min-nodes", "2", "--rounds", "1", "--tls-cert", str(pki.cert),
                                     "--tls-key", str(pki.key))
    nodes = [federation.start_node(f"n{i}", "--partition", f"{i}/2", "--tls-ca", str(pki.ca), scheme="https")
             for i in range(2)]
    untrusting = federation.start_node("n2", "--partition", "0/2", scheme="https")  # no --tls-ca
    expect_clean_exit(server, nodes, server_timeout_s=240)
    assert "https://" in server.log()
    assert federation.history()["rounds"][0]["accepted"] == ["n0", "n1"]
    assert untrusting.wait(60) == 2  # a certificate it cannot verify is a configuration error: it says so and stops
    assert "cannot verify the TLS certificate" in untrusting.log() and "--tls-ca" in untrusting.log()
    assert "node n2" not in server.log()
