"""End to end: real Kafka broker, real Socket.IO server process, real node processes."""

import pickle
from pathlib import Path

import numpy as np

from common.protocol import KIND_MODEL, KIND_UPDATE, encode_chunk, split_weights
from fl_server.strategies import weighted_average
from tests.integration.harness import Federation, read_weights
from tests.integration.history_tools import check_history_tools

ROUND_FIELDS = {"round", "started_at", "ended_at", "participants", "num_samples", "train", "holdout", "timings_s",
                "rejected_updates"}
TIMING_FIELDS = {"train", "transport", "aggregate", "evaluate", "total"}


def start_nodes(federation: Federation, count: int, *args: str) -> list:
    return [federation.start_node(f"n{i}", "--partition", f"{i}/{count}", *args) for i in range(count)]


def assert_round_is_fedavg_of_updates(federation: Federation, server_round: int) -> None:
    """The global model published after ``server_round`` equals the sample-weighted mean of that round's updates."""
    updates = read_weights(federation.kafka, federation.updates_topic)
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
    server = federation.start_server("--min-nodes", "3", "--rounds", "3", "--round-timeout", "90", "--epochs", "2")
    nodes = start_nodes(federation, 3)
    assert server.wait(240) == 0, server.log()[-3000:]
    for node in nodes:
        assert node.wait(60) == 0, node.log()[-3000:]

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
    assert Path(history["final_model"]).is_file()
    assert len(list((federation.tmp_path / "models").glob("*.keras"))) == 3
    check_history_tools(federation, capsys)


def test_model_over_5_mb_travels_both_ways_and_aggregates(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "2", "--rounds", "1", "--model", "mlp:1280,1024",
                                     "--round-timeout", "120")
    nodes = start_nodes(federation, 2)
    assert server.wait(240) == 0, server.log()[-3000:]
    for node in nodes:
        assert node.wait(60) == 0, node.log()[-3000:]
    history = federation.history()
    assert history["config"]["num_parameters"] * 4 > 5_000_000
    assert history["rounds"][0]["accepted"] == ["n0", "n1"]
    assert_round_is_fedavg_of_updates(federation, 1)


def test_node_killed_mid_round_does_not_hang_the_session(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "3", "--rounds", "3", "--round-timeout", "25",
                                     "--epochs", "30")
    nodes = start_nodes(federation, 3)
    nodes[2].wait_for_log(r"node n2 round 2: epoch 1/30", timeout_s=180)
    nodes[2].kill()
    assert server.wait(240) == 0, server.log()[-3000:]

    rounds = federation.history()["rounds"]
    assert rounds[1]["participants"] == ["n0", "n1", "n2"]
    assert rounds[1]["accepted"] == ["n0", "n1"] and rounds[1]["timed_out"]
    assert rounds[1]["status"] == "completed"
    assert rounds[2]["participants"] == ["n0", "n1"] and rounds[2]["accepted"] == ["n0", "n1"]
    assert federation.history()["status"] == "completed"


def test_malformed_update_records_are_rejected_counted_and_survived(federation: Federation) -> None:
    server = federation.start_server("--min-nodes", "3", "--rounds", "4", "--round-timeout", "90")
    nodes = start_nodes(federation, 3)
    history = federation.wait_for_rounds(1, timeout_s=180)
    session = history["session_id"]
    _, model = read_weights(federation.kafka, federation.models_topic)[(KIND_MODEL, "server", 1)]

    def chunk(weights, node_id, server_round):
        return encode_chunk(next(split_weights(weights, kind=KIND_UPDATE, session_id=session,
                                               server_round=server_round, node_id=node_id, num_samples=10)))

    federation.produce_raw([
        b"this is not json",
        pickle.dumps({"weights": model}),
        chunk([np.zeros((3, 3), np.float32)], "n0", 2),  # wrong shape for this model
        chunk(model, "intruder", 2),  # unknown node
        chunk(model, "n1", 1),  # old round (round 1 is already closed)
    ])
    assert server.wait(240) == 0, server.log()[-3000:]
    for node in nodes:
        assert node.wait(60) == 0

    history = federation.history()
    assert history["status"] == "completed"
    totals: dict[str, int] = {}
    for record in history["rounds"]:
        assert record["accepted"] == ["n0", "n1", "n2"]
        for reason, count in record["rejected_updates_by_reason"].items():
            totals[reason] = totals.get(reason, 0) + count
    assert totals == {"not_json": 2, "shape_mismatch": 1, "unknown_node": 1, "stale_round": 1}
    assert sum(r["rejected_updates"] for r in history["rounds"]) == 5
