"""Secure aggregation end to end: a real broker, server and five node processes, two of them SIGKILLed at
exact stages (``fl_node.testing``), and the nodes' clear updates (written to local files, never to the network)
to check the server's unmasked model against plain FedAvg."""

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from common.wire.protocol import KIND_MODEL, KIND_UPDATE
from common.wire.server_key import ServerSigner
from fl_node.testing import CLEAR_UPDATES_ENV, EXIT_AFTER_ENV
from fl_server.config import ServerConfig
from fl_server.session import LiveRuntime
from tests.integration.harness import Federation, read_records, read_weights

NODES = 5
KILLED = {"n1": "shares", "n3": "masked"}  # n1 dies after key sharing, n3 after publishing its masked input


def clear_fedavg(clear_dir: Path, server_round: int, nodes: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The round's start weights and the plain FedAvg of ``nodes``' clear updates (float64)."""
    dumps = {node: np.load(clear_dir / f"{node}-round{server_round}.npz", allow_pickle=False) for node in nodes}
    first = dumps[nodes[0]]
    layers = len([name for name in first.files if name.startswith("reference_")])
    reference = [first[f"reference_{i}"].astype(np.float64) for i in range(layers)]
    total = sum(int(d["num_examples"]) for d in dumps.values())
    mean = [sum(int(d["num_examples"]) * d[f"trained_{i}"].astype(np.float64) for d in dumps.values()) / total
            for i in range(layers)]
    return reference, mean


def holdout_accuracy(history_dir: Path, weights: list[np.ndarray]) -> float:
    """Accuracy of ``weights`` on the server's own holdout (same split, model and data spec: its checkpoint's)."""
    runtime, config = LiveRuntime(), ServerConfig()
    saved = json.loads(next((history_dir / "checkpoints").glob("*.json")).read_text())
    checkpoint: Any = SimpleNamespace(model=saved["model"])  # what the runtime reads of a checkpoint

    async def no_statistics(request: object) -> dict[str, object]:
        return {}

    data = asyncio.run(runtime.server_data(config, checkpoint, no_statistics))
    model = runtime.build_model(config, data, checkpoint)
    return model.evaluate(0, [np.asarray(w, np.float32) for w in weights])["accuracy"]


def test_secure_aggregation_with_two_nodes_killed_equals_plain_fedavg_of_the_survivors(federation: Federation,
                                                                                      tmp_path: Path) -> None:
    clear_dir = tmp_path / "clear"
    clear_dir.mkdir()
    server_key, server_pub = federation.keys_dir / "server.key", federation.keys_dir / "server.pub"
    ServerSigner.generate().save(server_key, server_pub)
    server = federation.start_server("--min-nodes", str(NODES), "--min-round-nodes", "3", "--rounds", "2",
                                     "--secure-aggregation", "secagg", "--secagg-threshold", "3",
                                     "--server-key", str(server_key))
    nodes = {f"n{i}": federation.start_node(f"n{i}", "--partition", f"{i}/{NODES}", "--server-public-key",
                                            str(server_pub),
                                            env={CLEAR_UPDATES_ENV: str(clear_dir),
                                                 **({EXIT_AFTER_ENV: KILLED[f"n{i}"]} if f"n{i}" in KILLED else {})})
             for i in range(NODES)}
    assert server.wait(300) == 0, server.log()[-3000:]
    for node_id, proc in nodes.items():
        expected = -signal.SIGKILL if node_id in KILLED else 0
        assert proc.wait(60) == expected, (node_id, proc.log()[-3000:])

    history = federation.history()
    assert history is not None and history["status"] == "completed"
    first, second = history["rounds"]
    secure = first["secure_aggregation"]
    assert secure["survivors"] == ["n0", "n2", "n3", "n4"]  # n3's masked input counts although it died after it
    assert secure["dropped_by_stage"] == {"masked_input": ["n1"], "unmask": ["n3"]}
    assert secure["unmasked_dropped"] == ["n1"]
    assert second["secure_aggregation"]["survivors"] == ["n0", "n2", "n4"]
    assert first["num_samples"] == {} and first["status"] == second["status"] == "completed"

    # What the server published after each round is the survivors' FedAvg within the recorded bound.
    models = read_weights(federation.kafka, federation.models_topic)
    for record, survivors in ((first, ["n0", "n2", "n3", "n4"]), (second, ["n0", "n2", "n4"])):
        server_round = record["round"]
        reference, plain = clear_fedavg(clear_dir, server_round, survivors)
        _, start = models[(KIND_MODEL, "server", server_round)]
        _, published = models[(KIND_MODEL, "server", server_round + 1)]
        for got, want in zip(start, reference, strict=True):
            np.testing.assert_array_equal(got, want)  # the nodes masked deltas against the model the server sent
        bound = record["secure_aggregation"]["quantization_error_bound"]
        assert 0 < bound < 1e-4
        for got, want in zip(published, plain, strict=True):
            np.testing.assert_allclose(got, want, atol=bound + 1e-6, rtol=0)  # + float32 rounding of the model

    # Accuracy: the secure model scores what plain FedAvg of the same updates scores, within a point.
    _, plain = clear_fedavg(clear_dir, 2, ["n0", "n2", "n4"])
    assert abs(second["holdout"]["accuracy"] - holdout_accuracy(federation.history_dir, plain)) <= 0.01
    assert second["holdout"]["accuracy"] > first["holdout"]["accuracy"] - 0.05 and second["holdout"]["accuracy"] > 0.5

    # Nothing on the updates topic is a clear update: every record is one masked uint32 vector.
    updates = [r for r in read_records(federation.kafka, federation.updates_topic) if r.value]
    assert updates and all(b'"uint32"' in r.value for r in updates)
    assert all(kind == KIND_UPDATE for kind, _, _ in read_weights(federation.kafka, federation.updates_topic))

    # fl-audit, from Kafka and the history alone, redoes both rounds' unmasking and aggregation.
    audit = subprocess.run([sys.executable, "-m", "fl_server.audit_cli", str(next(federation.history_dir.glob(
        "*.json"))), "--kafka", federation.kafka, "--node-keys", str(federation.registry_path), "--server-key",
        str(server_pub)], env=federation.env(), capture_output=True, text=True, timeout=300, check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "AUDIT PASSED: 2 ok, 0 MISMATCH, 0 not checked" in audit.stdout, audit.stdout
