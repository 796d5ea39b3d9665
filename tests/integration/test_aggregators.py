"""Aggregation scaled out: a real broker, ``fl-server --aggregators 2``, two ``fl-aggregator`` processes in one
consumer group and three node processes. The global model the server publishes after each round must be the
plain FedAvg of the very updates the nodes wrote to Kafka, although the server never read one of them."""

import uuid
from pathlib import Path

import numpy as np

from common.wire.protocol import KIND_MODEL, KIND_UPDATE
from fl_server.aggregator.partial import expected_partition
from fl_server.strategies import weighted_average
from tests.integration.harness import Federation, expect_clean_exit, read_weights

NODES = ["n0", "n1", "n2"]


def test_two_aggregators_sum_what_one_server_would(federation: Federation, tmp_path: Path) -> None:
    key_file = tmp_path / "aggregation.key"
    key_file.write_text("5a" * 32)
    server = federation.start_server("--min-nodes", "3", "--rounds", "2", "--model", "logreg",
                                     "--aggregators", "2", "--aggregator-key", str(key_file))
    server.wait_for_log(r"aggregation by fl-aggregator workers over 2 partition", 120)
    group = f"test-agg-{uuid.uuid4().hex[:8]}"
    workers = [federation._start(name, "fl_server.aggregator", [
        "--node-keys", str(federation.registry_path), "--aggregator-key", str(key_file), "--aggregator-id", name,
        "--group", group]) for name in ("agg0", "agg1")]
    for worker in workers:  # each owns one partition (after the second joined the group)
        worker.wait_for_log(r"owns partitions \[\d\] ", 60)
    nodes = [federation.start_node(node, "--partition", f"{i}/{len(NODES)}") for i, node in enumerate(NODES)]
    expect_clean_exit(server, nodes, server_timeout_s=180)

    history = federation.history()
    assert history is not None and history["status"] == "completed", history and history.get("status")
    updates = read_weights(federation.kafka, federation.updates_topic, federation.keys)
    models = read_weights(federation.kafka, federation.models_topic)
    for record in history["rounds"]:
        server_round = record["round"]
        assert record["status"] == "completed" and record["accepted"] == NODES, record
        assert record["rejected_updates_by_reason"] == {}
        partials = record["aggregation"]["partials"]
        # One partial per partition, from both workers, and every node in the partial of its own partition.
        assert sorted(partials) == ["0", "1"]
        assert sorted(p["aggregator"] for p in partials.values()) == ["agg0", "agg1"]
        for node in NODES:
            assert node in partials[str(expected_partition(node, 2))]["nodes"]
        assert sum(p["weight"] for p in partials.values()) == sum(record["num_samples"].values())
        # The single-process FedAvg of the same updates, read back from Kafka.
        same = [(updates[(KIND_UPDATE, node, server_round)][1], record["num_samples"][node]) for node in NODES]
        assert all(updates[(KIND_UPDATE, n, server_round)][0] == record["num_samples"][n] for n in NODES)
        _, published = models[(KIND_MODEL, "server", server_round + 1)]
        for got, want in zip(published, weighted_average(same), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for worker in workers:
        assert worker.popen.poll() is None, worker.log()[-3000:]  # still serving: a worker outlives a session
        assert "partial of partition" in worker.log()
