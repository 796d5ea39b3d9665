"""History records and the one writer of the history document."""

import json

import pytest

from fl_server.chain import UNSIGNED_FIELDS, genesis_digest
from fl_server.history import HISTORY_FORMAT, HistoryFileError, SessionHistory, load_history
from fl_server.records import ResumeMark, RoundRecord, RoundTimings, SessionSummary

RECORD = RoundRecord(
    server_round=2, status="completed", started_at="t0", ended_at="t1", participants=["a", "b"], accepted=["a"],
    num_samples={"a": 10}, train_loss=0.5, train_per_node={"a": {"loss": 0.5}}, holdout={"accuracy": 0.9},
    timings=RoundTimings(train=1.23456, total=2.0), rejected_by_reason={"bad_mac": 2, "late": 1},
    refused_nodes={"b": "train_failed: x"}, capped_weights={"a": {"claimed": 99, "used": 10}},
)


def test_a_round_record_survives_the_json_round_trip():
    wire = json.loads(json.dumps(RECORD.to_wire()))
    assert wire["round"] == 2 and wire["rejected_updates"] == 3 and wire["timings_s"]["train"] == 1.2346
    assert list(wire["rejected_updates_by_reason"]) == ["bad_mac", "late"]
    again = RoundRecord.from_wire(wire)
    assert again.to_wire() == wire


def test_a_baseline_style_round_without_optional_fields_reads():
    record = RoundRecord.from_wire({"round": 1, "holdout": {"loss": 1.0}, "timings_s": {"total": 3}})
    assert record.server_round == 1 and record.timings.total == 3.0 and record.rejected_updates == 0


def test_the_history_is_written_only_through_session_history(tmp_path):
    history = SessionHistory.create(tmp_path, "s1", {"rounds": 2})
    history.set_initial_holdout({"accuracy": 0.1})
    history.add_round(RECORD)
    history.save()
    written = load_history(history.path)["rounds"][0]
    chained = {**RECORD.to_wire(), "prev_round_digest": genesis_digest("s1", {"rounds": 2})}
    assert {k: v for k, v in written.items() if k not in UNSIGNED_FIELDS} == chained
    history.finish("completed", SessionSummary({"late": 1}, {"unknown_node": 2}, {"b": "statistics: no"}, {}, {}))
    document = load_history(history.path)
    assert document["format"] == HISTORY_FORMAT and document["status"] == "completed"
    assert document["refused_connections"] == 2 and document["node_refusals"] == {"b": "statistics: no"}
    assert [r.to_wire() for r in history.round_records()] == [chained]  # timings kept to 4 digits


def test_a_resume_is_appended_and_the_session_runs_again(tmp_path):
    history = SessionHistory.create(tmp_path, "s1", {})
    history.add_round(RECORD)
    history.finish("interrupted")
    again = SessionHistory.resumed(history.path, load_history(history.path), ResumeMark("t2", 2, "ab", {"port": 1}))
    assert again.document["status"] == "running" and again.document["finished_at"] is None
    assert [ResumeMark.from_wire(r) for r in again.document["resumes"]] == [ResumeMark("t2", 2, "ab", {"port": 1})]


def test_a_damaged_round_is_named(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"format": HISTORY_FORMAT, "rounds": [RECORD.to_wire(), {"round": "2"}]}))
    with pytest.raises(HistoryFileError, match=r"rounds\[1\]\.round must be an integer"):
        load_history(path)


def test_a_history_written_before_a_setting_existed_keeps_its_chain():
    """A setting added to SESSION_SETTINGS in a later version is not in an older history's config: the older
    history's first link must still verify (it did not, until the link hashed only recorded settings); removing
    or editing a recorded setting still breaks it."""
    from fl_server.config import SESSION_SETTINGS

    newest = SESSION_SETTINGS[-1]
    full = {name: None for name in SESSION_SETTINGS} | {"rounds": 3, "strategy_params": {}}
    older = {name: value for name, value in full.items() if name != newest}  # written before `newest` existed
    # What the version before `newest` wrote as round 1's link: its settings, all of them recorded.
    from fl_server.chain import CHAIN_FORMAT, canonical_json, sha256_hex

    written_then = sha256_hex(canonical_json({"format": CHAIN_FORMAT, "session_id": "s1", "settings": older}))
    assert genesis_digest("s1", older) == written_then
    assert genesis_digest("s1", full) != written_then
    assert genesis_digest("s1", {k: v for k, v in older.items() if k != "rounds"}) != genesis_digest("s1", older)
    assert genesis_digest("s1", older | {"rounds": 4}) != genesis_digest("s1", older)
