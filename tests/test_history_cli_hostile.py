"""``fl-history`` on hostile or damaged history files: a table or one line and exit code 2, never a traceback."""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fl_server.history_cli import main

VALID = {"format": "fl-history/1", "session_id": "s1", "status": "completed", "config": {"strategy": "fedavg"},
         "rounds": [{"round": 1, "status": "completed", "participants": ["a", "b"], "accepted": ["a"],
                     "train": {"loss": 0.5, "per_node": {"a": {"loss": 0.5}}}, "holdout": {"loss": 0.4,
                     "accuracy": 0.8}, "timings_s": {"train": 1.0, "total": 2.0}, "rejected_updates": 0,
                     "privacy": {"epsilon": 1.5, "mechanism": "central"}}]}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=8)
PLACES = [("rounds",), ("config",), ("rounds", 0), ("rounds", 0, "round"), ("rounds", 0, "holdout"),
          ("rounds", 0, "holdout", "accuracy"), ("rounds", 0, "train"), ("rounds", 0, "train", "loss"),
          ("rounds", 0, "timings_s"), ("rounds", 0, "timings_s", "total"), ("rounds", 0, "accepted"),
          ("rounds", 0, "participants"), ("rounds", 0, "rejected_updates"), ("session_id",), ("status",),
          ("rounds", 0, "privacy"), ("rounds", 0, "privacy", "epsilon")]


def mutated(place: tuple, value) -> dict:
    document = json.loads(json.dumps(VALID))
    target = document
    for key in place[:-1]:
        target = target[key]
    target[place[-1]] = value
    return document


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(PLACES), value=JSON)
@example(place=("rounds", 0), value="not a round")
@example(place=("rounds", 0, "holdout", "accuracy"), value="0.9")
@example(place=("rounds", 0, "timings_s"), value=[1, 2])
def test_every_command_answers_a_hostile_history_with_a_table_or_one_line(tmp_path_factory, place, value):
    path = tmp_path_factory.mktemp("h") / "h.json"
    path.write_text(json.dumps(mutated(place, value)))
    for argv in (["show", str(path)], ["compare", str(path), "--target", "0.5"],
                 ["export", str(path), "--csv", str(path.with_suffix(".csv"))]):
        code = main([*argv, "--quiet"])  # anything but a HistoryFileError would raise out of main here
        assert code in (0, 2)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[" * 100_000, b'{"format": "fl-history/1", "rounds": 1}',
                                     b"9" * 5000, json.dumps({"format": "fl-history/1", "rounds": [3]}).encode()])
def test_damaged_files_are_one_line_with_exit_code_2(tmp_path, capsys, content):
    path = tmp_path / "h.json"
    path.write_bytes(content)
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fl-history: ")


def test_plot_draws_a_valid_file_and_refuses_a_hostile_one(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(VALID))
    bad.write_text(json.dumps(mutated(("rounds", 0, "holdout", "accuracy"), {"x": 1})))
    assert main(["plot", str(good), "--out", str(tmp_path / "c.png"), "--quiet"]) == 0
    assert main(["plot", str(good), str(bad), "--out", str(tmp_path / "d.png"), "--quiet"]) == 2


def test_plot_draws_accuracy_against_epsilon(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(VALID))
    out = tmp_path / "eps.png"
    assert main(["plot", str(good), "--x", "epsilon", "--out", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
