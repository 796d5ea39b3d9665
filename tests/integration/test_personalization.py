"""FedPer on a skewed partition (Dirichlet 0.1 digits): the personal layers never leave the nodes, and each node's
personalized model beats the FedAvg global model on its own test rows."""

import keras
import numpy as np
import pytest

from fl_server.history import load_history
from tests.integration.harness import Federation, expect_clean_exit, read_weights

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
NODES = 3
SKEW = ("--scheme", "dirichlet", "--alpha", "0.1", "--local-test-fraction", "0.3")


def run_session(federation: Federation, session_id: str, topic: str, *args: str) -> dict:
    topic_args = ("--updates-topic", topic)
    server = federation.start_server("--session-id", session_id, "--min-nodes", str(NODES), "--rounds", "2",
                                     "--round-timeout", "90", "--epochs", "3", "--federated-eval", *topic_args, *args,
                                     name=f"server-{session_id}")
    nodes = [federation.start_node(f"n{i}", "--partition", f"{i}/{NODES}", *SKEW, *topic_args,
                                   name=f"{session_id}-n{i}") for i in range(NODES)]
    expect_clean_exit(server, nodes, server_timeout_s=240)
    return load_history(federation.history_dir / f"{session_id}.json")  # the summary with its rounds' detail


def test_personal_layers_stay_home_and_beat_the_global_model_on_skewed_nodes(federation: Federation) -> None:
    fedavg = run_session(federation, "fedavg", federation.updates_topic)
    fedper_topic = f"{federation.updates_topic}.fedper"
    fedper = run_session(federation, "fedper", fedper_topic, "--personal-layers", "1")

    # The updates on the topic carry the shared layers only (the mlp's Dense(64)), never the personal head.
    updates = {key: arrays for key, (_, arrays) in read_weights(federation.kafka, fedper_topic).items()
               if key[0] == "update"}
    assert len(updates) == NODES * 2
    assert all([a.shape for a in arrays] == [(64, 64), (64,)] for arrays in updates.values())
    server_model = keras.saving.load_model(federation.history_dir / "fedper.keras", compile=False)
    assert [a.shape for a in server_model.get_weights()] == [(64, 64), (64,), (64, 10), (10,)]

    # Round 2 judges the model after round 1 in both sessions: FedAvg's global vs each node's personalized one.
    global_eval = fedavg["rounds"][1]["federated_eval"]["per_node"]
    personal_eval = fedper["rounds"][1]["federated_eval"]["per_node"]
    figures = {n: (global_eval[n]["metrics"]["accuracy"], personal_eval[n]["personalized"]["accuracy"])
               for n in sorted(personal_eval)}
    print("node: FedAvg global accuracy -> FedPer personalized accuracy (local test rows)", figures)
    assert len(figures) == NODES
    assert all(mine > theirs for theirs, mine in figures.values()), figures
    weighted = fedper["rounds"][1]["federated_eval"]["weighted_personalized"]["accuracy"]
    assert weighted > fedavg["rounds"][1]["federated_eval"]["weighted"]["accuracy"]

    # Each node saved its personalized model: the server's body, its own head.
    for i in range(NODES):
        mine = keras.saving.load_model(federation.tmp_path / "models" / f"fedper-n{i}.keras", compile=False)
        np.testing.assert_array_equal(mine.get_weights()[0], server_model.get_weights()[0])
        assert not np.array_equal(mine.get_weights()[2], server_model.get_weights()[2])
