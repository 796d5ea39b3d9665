import json

import numpy as np

from common.codec import ArraySpec
from common.protocol import KIND_MODEL, KIND_UPDATE, UpdateAck, encode_chunk, split_weights
from fl_server.collector import RoundCollector

MODEL = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]


def collector(participants=("a", "b")):
    return RoundCollector(session_id="s", server_round=2, participants=participants,
                          expected_specs=[ArraySpec.of(w) for w in MODEL])


def records(node_id="a", weights=None, server_round=2, session_id="s", num_samples=5, kind=KIND_UPDATE):
    weights = weights if weights is not None else [w + 1 for w in MODEL]
    return [encode_chunk(c) for c in split_weights(weights, kind=kind, session_id=session_id,
                                                   server_round=server_round, node_id=node_id,
                                                   num_samples=num_samples, chunk_bytes=16)]


def test_complete_update_is_returned_once_and_duplicates_counted():
    c = collector()
    values = records()
    results = [c.offer_record(v) for v in values + values]
    completed = [r for r in results if r is not None]
    assert len(completed) == 1 and completed[0].node_id == "a" and completed[0].num_samples == 5
    assert c.duplicates == len(values)
    assert not c.rejected


def test_rejections_are_counted_by_reason():
    c = collector()
    c.offer_record(b"not json")
    c.offer_record(records(weights=[np.zeros((3, 4), np.float32), MODEL[1]])[0])
    c.offer_record(records(node_id="intruder")[0])
    c.offer_record(records(server_round=1)[0])
    c.offer_record(records(server_round=3)[0])
    nan = [np.full((4, 3), np.nan, np.float32), MODEL[1]]
    for v in records(node_id="b", weights=nan):
        c.offer_record(v)
    assert dict(c.rejected) == {"not_json": 1, "shape_mismatch": 1, "unknown_node": 1, "stale_round": 1,
                                "future_round": 1, "non_finite": 1}
    assert c.failed == {"b": "non_finite"}
    assert not c.completed


def test_other_sessions_and_model_records_are_ignored_not_rejected():
    c = collector()
    c.offer_record(records(session_id="other")[0])
    c.offer_record(json.dumps(json.loads(records(kind=KIND_MODEL, node_id="server", num_samples=0)[0])).encode())
    assert c.ignored == 2 and not c.rejected


def test_done_needs_update_and_ack_from_every_participant():
    c = collector()
    for v in records("a") + records("b"):
        c.offer_record(v)
    assert not c.done()
    assert c.offer_ack(UpdateAck("s", 2, "a", 5, 1, {"loss": 1.0}, {})) is None
    assert c.offer_ack(UpdateAck("s", 1, "b", 5, 1, {}, {})) == "stale_round"
    assert not c.done()
    c.offer_ack(UpdateAck("s", 2, "b", 5, 1, {}, {}))
    assert c.done()
