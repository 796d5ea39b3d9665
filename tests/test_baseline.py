"""``fl-baseline`` in every form the README documents (real Keras, small budgets)."""

import json

from fl_data.cli import main as fl_data
from fl_server.baseline import main as fl_baseline


def test_builtin_dataset_baseline_writes_a_history_that_learns(tmp_path, capsys):
    assert fl_baseline(["--dataset", "digits", "--rounds", "2", "--epochs", "2", "--history-dir", str(tmp_path),
                        "--session-id", "b1", "--quiet"]) == 0
    history = json.loads((tmp_path / "b1.json").read_text())
    assert history["status"] == "completed" and [r["round"] for r in history["rounds"]] == [1, 2]
    assert history["config"]["kind"] == "central_baseline"
    assert history["rounds"][-1]["holdout"]["accuracy"] > 0.5  # ten classes: far above chance
    assert capsys.readouterr().out.strip() == str(tmp_path / "b1.json")


def test_csv_partitions_baseline_pools_them(tmp_path):
    parts = tmp_path / "parts"
    assert fl_data(["partition", "--dataset", "breast_cancer", "--nodes", "3", "--out", str(parts), "--quiet"]) == 0
    nodes = sorted(str(p) for p in parts.glob("node-*.csv"))
    assert len(nodes) == 3
    assert fl_baseline(["--data", *nodes, "--holdout", str(parts / "holdout.csv"), "--target", "target",
                        "--rounds", "2", "--history-dir", str(tmp_path), "--session-id", "b2", "--quiet"]) == 0
    history = json.loads((tmp_path / "b2.json").read_text())
    assert history["config"]["data"] == nodes  # the paths, as text: the history is JSON
    assert history["rounds"][-1]["holdout"]["accuracy"] > 0.8


def test_csv_without_holdout_is_a_one_line_error(tmp_path, capsys):
    assert fl_baseline(["--data", str(tmp_path / "a.csv"), "--history-dir", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].endswith("--data needs --holdout and --target")


def test_partition_refuses_a_folder_that_is_not_empty_and_overwrite_removes_only_its_own_files(tmp_path, capsys):
    out = tmp_path / "parts"
    assert fl_data(["partition", "--dataset", "iris", "--nodes", "5", "--out", str(out), "--quiet"]) == 0
    (out / "notes.txt").write_text("mine")
    assert fl_data(["partition", "--dataset", "iris", "--nodes", "3", "--out", str(out), "--quiet"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert len(list(out.glob("node-*.csv"))) == 5  # refused: nothing touched
    assert fl_data(["partition", "--dataset", "iris", "--nodes", "3", "--out", str(out), "--overwrite",
                    "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["holdout.csv", "node-0.csv", "node-1.csv", "node-2.csv",
                                                     "notes.txt"]
