"""Every command answers a hostile file with one line and a non-zero exit, never a traceback or a hang."""

import json

import pytest

from fl_data.cli import main as fl_data
from fl_server.cli import main as fl_server
from fl_server.keys_cli import main as fl_keys

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def files(tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    (tmp_path / "huge-int.json").write_text('{"format": "fl-keys/1", "nodes": {"a": ' + "9" * 5000 + "}}")
    (tmp_path / "history.json").write_text(json.dumps({"format": "fl-history/1", "session_id": "../../etc/x",
                                                       "rounds": []}))
    (tmp_path / "labels.csv").write_text("x,y\n" + "".join(f"{i},{i}\n" for i in range(100_000)))
    return tmp_path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "ERROR" in line or line.startswith("fl-")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(("argv", "says"), [
    (["--node-keys", "deep.json"], "nests deeper"),
    (["--node-keys", "huge-int.json"], "at most 64 digits"),
    (["--resume", "deep.json", "--allow-unauthenticated"], "nests deeper"),
    (["--resume", "history.json", "--allow-unauthenticated"], "cannot resume"),
])
def test_fl_server_answers_hostile_files_in_one_line(files, capsys, argv, says):
    argv = [str(files / a) if a.endswith(".json") else a for a in argv]
    assert fl_server([*argv, "--port", "0", "--history-dir", str(files / "h")]) != 0
    assert says in one_error_line(capsys)


def test_fl_keys_answers_a_hostile_registry_in_one_line(files, capsys):
    assert fl_keys(["list", "--registry", str(files / "deep.json")]) == 2
    assert "nests deeper" in one_error_line(capsys)


def test_fl_data_refuses_a_class_column_of_100000_values_at_once(files, capsys):
    # Without --task, 100,000 distinct numbers are a regression target (common.ml.tasks); as classes, refused.
    assert fl_data(["partition", "--data", str(files / "labels.csv"), "--target", "y", "--task", "classification",
                    "--out", str(files / "out"), "--quiet"]) == 2
    assert "100000 distinct values" in one_error_line(capsys)
