"""A federation of CSV files with numeric and categorical columns, missing values and one misfit node."""

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from fl_data.cli import main as fl_data
from tests.integration.harness import Federation, expect_clean_exit


def write_mixed_csv(path):
    """Real data (scikit-learn's bundled breast cancer set) with a text category, a text target and holes."""
    frame = load_breast_cancer(as_frame=True).frame
    frame["size_band"] = pd.cut(frame["mean radius"], [0, 12, 16, 100], labels=["small", "medium", "large"]).astype(str)
    frame["diagnosis"] = np.where(frame.pop("target") == 0, "malignant", "benign")
    rng = np.random.default_rng(0)
    frame.loc[rng.random(len(frame)) < 0.05, "mean texture"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.05, "size_band"] = None
    # What must never leave a node: identifiers, dates, and a category only two patients have.
    frame["patient_id"] = [f"MRN-{i:06d}" for i in range(len(frame))]
    frame["admission_date"] = pd.date_range("2024-01-01", periods=len(frame), freq="D").strftime("%Y-%m-%d")
    frame["ward"] = rng.choice(["north", "south"], len(frame)).astype(object)
    frame.loc[[10, 400], "ward"] = RARE_WARD
    frame.to_csv(path, index=False)
    return frame


RARE_WARD = "isolation-7"


def test_mixed_csv_federation_refuses_a_misfit_node_and_finishes(federation: Federation) -> None:
    source = federation.tmp_path / "clinic.csv"
    frame = write_mixed_csv(source)
    parts = federation.tmp_path / "parts"
    assert fl_data(["partition", "--data", str(source), "--target", "diagnosis", "--nodes", "3", "--out",
                    str(parts)]) == 0
    misfit = pd.read_csv(parts / "node-0.csv").drop(columns=["size_band"])
    misfit.to_csv(parts / "misfit.csv", index=False)

    # Round 1 waits for all four (the misfit must be there to refuse); later rounds go on with the three that fit.
    server = federation.start_server("--min-nodes", "4", "--min-round-nodes", "3", "--rounds", "3",
                                     "--round-timeout", "90", "--epochs", "3",
                                     "--holdout", str(parts / "holdout.csv"), "--target", "diagnosis")
    nodes = [federation.start_node(f"site{i}", "--data", str(parts / f"node-{i}.csv")) for i in range(3)]
    bad = federation.start_node("misfit", "--data", str(parts / "misfit.csv"))
    assert bad.wait(180) == 2
    assert "column 'size_band' is missing" in bad.log()
    expect_clean_exit(server, nodes, server_timeout_s=240)

    history = federation.history()
    assert history["status"] == "completed"
    schema = history["config"]["data"]["schema"]
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds["size_band"] == "categorical" and kinds["mean texture"] == "numeric"
    assert schema["classes"] == ["benign", "malignant"]
    first = history["rounds"][0]
    assert "misfit" in first["refused_nodes"] and "size_band" in first["refused_nodes"]["misfit"]
    assert not first["timed_out"]  # a refusal is an answer: the round did not wait for the timeout
    assert [r["accepted"] for r in history["rounds"]] == [["site0", "site1", "site2"]] * 3
    assert history["rounds"][-1]["holdout"]["accuracy"] > 0.85

    # Privacy of the statistics: no identifier, date or rare category anywhere the server keeps or sends
    # things (the schema in the history is what every start_round carries; the checkpoint; the server's log).
    assert {"patient_id", "admission_date"}.isdisjoint(kinds) and kinds["ward"] == "categorical"
    session = history["session_id"]
    kept = [federation.history_dir / f"{session}.json", federation.history_dir / f"{session}.rounds.jsonl",
            federation.history_dir / "checkpoints" / f"{session}.json", federation.tmp_path / "server.log"]
    texts = [path.read_text() for path in kept]
    secrets = [*frame["patient_id"], *frame["admission_date"], RARE_WARD]
    leaked = [value for value in secrets if any(value in text for text in texts)]
    assert not leaked, leaked[:5]
    for node in nodes:  # each node said why it withheld them
        assert "column 'patient_id' is not shared in statistics" in node.log()
