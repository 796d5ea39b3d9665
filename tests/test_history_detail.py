"""The history on disk is a small summary plus an append-only JSON Lines file of each round's full record (issue
19): a round costs the same to persist whatever came before it, and every reader still sees the full rounds."""

import json

import pytest

from fl_server.history import (
    PER_NODE_FIELDS,
    HistoryFileError,
    SessionHistory,
    detail_path,
    load_history,
    summarize_round,
)
from fl_server.records import ResumeMark
from tests.test_coordinator import run_session


async def test_rounds_are_appended_to_the_detail_file_and_the_summary_keeps_no_per_node_fields(tmp_path):
    history = SessionHistory.create(tmp_path, "s", {})
    _, document, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=3, history=history)
    summary = json.loads(history.path.read_text())
    lines = detail_path(history.path).read_text().splitlines()
    assert summary["round_detail"] == "s.rounds.jsonl" and len(lines) == 3
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(document["rounds"]))  # the full records
    for record in summary["rounds"]:
        assert not set(PER_NODE_FIELDS) & set(record) and "per_node" not in record["train"]
        assert (record["num_participants"], record["num_accepted"]) == (2, 2)
    assert load_history(history.path)["rounds"] == json.loads(json.dumps(document["rounds"]))
    assert load_history(history.path)["rounds"][-1]["accepted"] == ["n1", "n3"]


async def test_saving_a_round_appends_one_line_and_leaves_the_earlier_ones_as_they_were(tmp_path):
    history = SessionHistory.create(tmp_path, "s", {})
    await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=2, history=history)
    before = detail_path(history.path).read_bytes()
    record = dict(history.rounds[-1], round=3, round_digest="x" * 64)
    history.rounds.append(record)  # as add_round does, without the chain
    history.save()
    history.save()  # idempotent: nothing new to append
    after = detail_path(history.path).read_bytes()
    assert after.startswith(before) and after[len(before):].count(b"\n") == 1


async def test_resume_takes_the_checkpoints_rounds_and_drops_detail_written_past_them(tmp_path):
    history = SessionHistory.create(tmp_path, "s", {})
    await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=3, history=history)
    checkpoint_summary = json.loads(json.dumps(history.summary_document()))
    checkpoint_summary["rounds"] = checkpoint_summary["rounds"][:2]  # the checkpoint was written after round 2
    mark = ResumeMark("2026-01-01T00:00:00.000+00:00", 2, "0" * 64, {})
    resumed = SessionHistory.resumed(history.path, checkpoint_summary, mark)
    assert [r["round"] for r in resumed.rounds] == [1, 2] and resumed.rounds[1]["accepted"] == ["n1", "n3"]
    assert len(detail_path(history.path).read_text().splitlines()) == 2
    resumed.save()
    assert [r["round"] for r in load_history(history.path)["rounds"]] == [1, 2]


async def test_a_detail_file_that_is_not_the_summarized_one_is_refused_and_an_old_history_still_loads(tmp_path):
    history = SessionHistory.create(tmp_path, "s", {})
    await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=2, history=history)
    lines = detail_path(history.path).read_text().splitlines()
    forged = dict(json.loads(lines[1]), round_digest="f" * 64)
    detail_path(history.path).write_text(lines[0] + "\n" + json.dumps(forged) + "\n")
    with pytest.raises(HistoryFileError, match="round 2 is not the round the summary names"):
        load_history(history.path)
    detail_path(history.path).unlink()
    with pytest.raises(HistoryFileError, match="no such file"):
        load_history(history.path)
    old = tmp_path / "old.json"  # a history written before the split: full rounds, no round_detail
    full = {**history.document, "rounds": history.rounds}
    old.write_text(json.dumps(full))
    assert load_history(old)["rounds"][0]["accepted"] == ["n1", "n3"]


def test_a_history_saved_before_its_first_round_loads(tmp_path):
    history = SessionHistory.create(tmp_path, "s", {})
    history.save()  # what the server does at start-up
    assert load_history(history.path)["rounds"] == [] and not detail_path(history.path).exists()


def test_summarize_round_counts_what_it_leaves_out():
    record = {"round": 1, "participants": ["a", "b", "c"], "accepted": ["a"], "num_samples": {"a": 1},
              "train": {"loss": 0.5, "per_node": {"a": {"loss": 0.5}}}, "holdout": {"accuracy": 0.9}}
    assert summarize_round(record) == {"round": 1, "num_participants": 3, "num_accepted": 1, "train": {"loss": 0.5},
                                       "holdout": {"accuracy": 0.9}}


async def test_an_edit_to_the_summary_shows_in_the_merged_round(tmp_path):
    history = SessionHistory.create(tmp_path, "s", {})
    await run_session(tmp_path, {"n1": "ok", "n3": "ok"}, rounds=2, history=history)
    summary = json.loads(history.path.read_text())
    summary["rounds"][0]["holdout"] = {"accuracy": 0.999}
    history.path.write_text(json.dumps(summary))
    merged = load_history(history.path)["rounds"][0]
    assert merged["holdout"] == {"accuracy": 0.999} and merged["accepted"] == ["n1", "n3"]
    assert "per_node" in merged["train"]  # the detail's per-node metrics under the summary's loss
