"""A warm start from a previous session's final model (.keras): round 0 is that model, and frozen layers stay."""

import keras
import numpy as np
import pytest

from fl_server.history import load_history
from tests.integration.harness import Federation, expect_clean_exit

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def run_session(federation: Federation, session_id: str, *args: str) -> dict:
    server = federation.start_server("--session-id", session_id, "--min-nodes", "2", "--rounds", "1",
                                     "--round-timeout", "90", "--epochs", "2", *args, name=f"server-{session_id}")
    nodes = [federation.start_node(f"n{i}", "--partition", f"{i}/2", name=f"{session_id}-n{i}") for i in range(2)]
    expect_clean_exit(server, nodes, server_timeout_s=240)
    return load_history(federation.history_dir / f"{session_id}.json")  # the summary with its rounds' detail


def test_a_warm_start_begins_at_the_files_accuracy_and_keeps_frozen_layers(federation: Federation) -> None:
    first = run_session(federation, "warm-a")
    saved = federation.history_dir / "warm-a.keras"
    trained = first["rounds"][-1]["holdout"]
    assert trained["accuracy"] > 0.5

    second = run_session(federation, "warm-b", "--initial-model", str(saved), "--freeze-layers", "1")
    # Same holdout, same schema (merged from the same nodes' statistics): round 0 is the file's accuracy.
    assert second["initial_holdout"]["accuracy"] == pytest.approx(trained["accuracy"])
    assert second["initial_holdout"]["loss"] == pytest.approx(trained["loss"], rel=1e-5)
    assert second["config"]["initial_model"] == str(saved) and second["config"]["freeze_layers"] == 1

    before, after = (keras.saving.load_model(p, compile=False, safe_mode=True)
                     for p in (saved, federation.history_dir / "warm-b.keras"))
    assert not after.layers[0].trainable
    np.testing.assert_array_equal(after.layers[0].get_weights()[0], before.layers[0].get_weights()[0])
    assert not np.array_equal(after.layers[-1].get_weights()[0], before.layers[-1].get_weights()[0])
