"""Federated evaluation in a CSV federation whose server keeps no holdout at all: the nodes measure progress."""

import math

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from fl_data.cli import main as fl_data
from tests.integration.harness import Federation, expect_clean_exit

TEST_FRACTION = 0.25


def test_federated_eval_without_a_server_holdout(federation: Federation) -> None:
    source = federation.tmp_path / "clinic.csv"
    frame = load_breast_cancer(as_frame=True).frame
    frame.to_csv(source, index=False)
    parts = federation.tmp_path / "parts"
    assert fl_data(["partition", "--data", str(source), "--target", "target", "--nodes", "2", "--out",
                    str(parts)]) == 0
    server = federation.start_server("--min-nodes", "2", "--rounds", "2", "--round-timeout", "90", "--epochs", "3",
                                     "--no-holdout", "--target", "target", "--federated-eval")
    nodes = [federation.start_node(f"site{i}", "--data", str(parts / f"node-{i}.csv"),
                                   "--local-test-fraction", str(TEST_FRACTION)) for i in range(2)]
    expect_clean_exit(server, nodes, server_timeout_s=240)

    history = federation.history()
    assert history["status"] == "completed"
    assert history["config"]["no_holdout"] is True and history["config"]["num_holdout"] == 0
    rows = {f"site{i}": len(pd.read_csv(parts / f"node-{i}.csv")) for i in range(2)}
    for record in history["rounds"]:
        assert record["holdout"] == {}
        federated = record["federated_eval"]
        per_node = federated["per_node"]
        assert set(per_node) == {"site0", "site1"}
        for node, evaluation in per_node.items():
            test_rows = math.floor(TEST_FRACTION * rows[node])
            assert evaluation["num_samples"] == test_rows
            assert record["num_samples"][node] == rows[node] - test_rows  # the test rows were not trained on
        total = sum(e["num_samples"] for e in per_node.values())
        assert federated["num_samples"] == total
        for metric in ("loss", "accuracy"):
            by_hand = sum(e["num_samples"] * e["metrics"][metric] for e in per_node.values()) / total
            assert federated["weighted"][metric] == pytest.approx(by_hand)
    # Round 2 evaluates the model round 1 made: trained, it beats the random model round 1 started from.
    first, second = (r["federated_eval"]["weighted"]["accuracy"] for r in history["rounds"])
    assert second > 0.85 and second > first
    for node in nodes:
        assert "global model on" in node.log()
