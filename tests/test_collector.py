import json
import pickle

import numpy as np
import pytest

from common.wire.codec import ArraySpec
from common.wire.integrity import KeyRegistry, record_mac, signed_headers
from common.wire.protocol import KIND_MODEL, KIND_UPDATE, RawRecord, UpdateAck, encode_chunk, split_weights
from fl_server.collector import RoundCollector, update_norm

MODEL = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
KEYS = {"a": b"a" * 32, "b": b"b" * 32, "mallory": b"m" * 32}


def collector(participants=("a", "b"), *, signed=False, **kwargs):
    return RoundCollector(session_id="s", server_round=2, participants=participants,
                          expected_specs=[ArraySpec.of(w) for w in MODEL],
                          keys=KeyRegistry(KEYS) if signed else None, **kwargs)


def records(node_id="a", weights=None, server_round=2, session_id="s", num_samples=5, kind=KIND_UPDATE,
            key: bytes | None = None):
    """Update records of one node; signed with ``key`` if given."""
    weights = weights if weights is not None else [w + 1 for w in MODEL]
    out = []
    for chunk in split_weights(weights, kind=kind, session_id=session_id, server_round=server_round,
                               node_id=node_id, num_samples=num_samples, chunk_bytes=16):
        value = encode_chunk(chunk)
        headers = signed_headers(key, chunk, value) if key else chunk.headers()
        out.append(RawRecord(value, node_id.encode(), tuple(headers)))
    return out


def signed(node_id="a", **kwargs):
    return records(node_id, key=KEYS.get(node_id, b"x" * 32), **kwargs)


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
    c.offer_record(RawRecord(b"not json"))
    c.offer_record(records(weights=[np.zeros((3, 4), np.float32), MODEL[1]])[0])
    c.offer_record(records(node_id="intruder")[0])
    c.offer_record(records(server_round=1)[0])
    c.offer_record(records(server_round=3)[0])
    c.offer_record(records(weights=[np.zeros((4, 3), np.float64), MODEL[1]])[0])
    nan = [np.full((4, 3), np.nan, np.float32), MODEL[1]]
    for v in records(node_id="b", weights=nan):
        c.offer_record(v)
    assert dict(c.rejected) == {"not_json": 1, "shape_mismatch": 1, "dtype_mismatch": 1, "not_participant": 1,
                                "late_update": 1, "wrong_round": 1, "non_finite": 1}
    assert c.failed == {"b": "non_finite"}
    assert not c.completed


def test_oversize_records_are_refused_before_parsing():
    c = collector(max_record_bytes=100)
    c.offer_record(records()[0])
    assert dict(c.rejected) == {"oversize": 1}


def test_replayed_record_of_an_earlier_round_is_told_apart_from_a_late_one():
    seen: dict[bytes, int] = {}
    round2 = RoundCollector(session_id="s", server_round=2, participants=["a"],
                            expected_specs=[ArraySpec.of(w) for w in MODEL], seen=seen)
    old = records("a")
    assert [u for u in map(round2.offer_record, old) if u is not None]
    round3 = RoundCollector(session_id="s", server_round=3, participants=["a"],
                            expected_specs=[ArraySpec.of(w) for w in MODEL], seen=seen)
    round3.offer_record(old[0])  # the exact bytes taken in round 2
    round3.offer_record(records("a", weights=[w + 5 for w in MODEL])[0])  # round 2, never seen: late
    assert dict(round3.rejected) == {"replayed": 1, "late_update": 1}


def test_other_sessions_and_model_records_are_ignored_not_rejected():
    c = collector()
    c.offer_record(records(session_id="other")[0])
    c.offer_record(RawRecord(json.dumps(json.loads(records(kind=KIND_MODEL, node_id="server",
                                                           num_samples=0)[0].value)).encode()))
    assert c.ignored == 2 and not c.rejected


def test_done_needs_update_and_ack_from_every_participant():
    c = collector()
    for v in records("a") + records("b"):
        c.offer_record(v)
    assert not c.done()
    assert c.offer_ack(UpdateAck("s", 2, "a", 5, 1, {"loss": 1.0}, {})) is None
    assert c.offer_ack(UpdateAck("s", 1, "b", 5, 1, {}, {})) == "late_update"
    assert not c.done()
    c.offer_ack(UpdateAck("s", 2, "b", 5, 1, {}, {}))
    assert c.done()


def test_conflicting_chunks_void_the_nodes_update_instead_of_mixing_two():
    c = collector()
    first, second = records("a"), records("a", weights=[w + 7 for w in MODEL])
    c.offer_record(first[0])
    c.offer_record(second[0])  # same chunk, other bytes
    for record in second[1:]:
        assert c.offer_record(record) is None
    assert c.failed == {"a": "conflicting_duplicate"} and not c.completed


# --------------------------------------------------------------------- signatures


def test_signed_update_is_accepted():
    c = collector(signed=True)
    done = [u for u in map(c.offer_record, signed("a")) if u is not None]
    assert len(done) == 1 and not c.rejected


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: records("a")[0], "unsigned"),
        (lambda: records("a", key=b"z" * 32)[0], "bad_signature"),  # forged with another key
        (lambda: records("intruder", key=b"i" * 32)[0], "unknown_node"),
    ],
)
def test_unsigned_forged_and_unknown_records_are_refused(make, reason):
    c = collector(signed=True)
    c.offer_record(make())
    assert dict(c.rejected) == {reason: 1}
    assert not c.failed  # nobody proved who wrote it: no participant is blamed


def test_tampered_value_or_header_breaks_the_signature():
    c = collector(signed=True)
    good = signed("a")[0]
    tampered_value = good.value.replace(b'"num_samples":5', b'"num_samples":9')
    c.offer_record(RawRecord(tampered_value, good.key, good.headers))
    moved = tuple((n, b"3" if n == "fl.round" else v) for n, v in good.headers)
    c.offer_record(RawRecord(good.value, good.key, moved))
    c.offer_record(RawRecord(good.value, b"b", good.headers))  # Kafka key changed
    assert dict(c.rejected) == {"bad_signature": 3}


def test_signed_headers_must_match_the_value():
    """A node signs honest-looking headers over a value that names another round: refused, and it forfeits."""
    c = collector(signed=True)
    chunk = next(split_weights([w + 1 for w in MODEL], kind=KIND_UPDATE, session_id="s", server_round=3,
                               node_id="a", num_samples=5))
    value = encode_chunk(chunk)
    headers = [("fl.kind", b"update"), ("fl.session", b"s"), ("fl.round", b"2"), ("fl.node", b"a")]
    mac = record_mac(KEYS["a"], kind="update", session_id="s", server_round=2, node_id="a", record_key=b"a",
                     value=value)
    c.offer_record(RawRecord(value, b"a", (*headers, ("fl.mac", mac.hex().encode()))))
    assert dict(c.rejected) == {"header_mismatch": 1}
    assert c.failed == {"a": "header_mismatch"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"this is not json", "not_json"),
        (pickle.dumps({"weights": [1, 2, 3]}), "not_json"),
    ],
)
def test_a_participant_signing_garbage_forfeits_the_round(value, reason):
    c = collector(signed=True)
    chunk = next(split_weights(MODEL, kind=KIND_UPDATE, session_id="s", server_round=2, node_id="b", num_samples=1))
    c.offer_record(RawRecord(value, b"b", tuple(signed_headers(KEYS["b"], chunk, value))))
    assert dict(c.rejected) == {reason: 1}
    assert c.failed == {"b": reason}
    assert not c.done()  # "a" has still to deliver
    for record in signed("a"):
        c.offer_record(record)
    c.offer_ack(UpdateAck("s", 2, "a", 5, 1, {}, {}))
    assert c.done()  # the round does not wait for "b" any more


def test_unsigned_mode_never_blames_a_participant_for_malformed_records():
    c = collector()
    c.offer_record(records("a", server_round=9)[0])
    assert dict(c.rejected) == {"wrong_round": 1} and not c.failed


# --------------------------------------------------------------------- norm bound


def test_norm_bound_rejects_large_updates_and_keeps_small_ones():
    c = collector(reference=MODEL, max_update_norm=2.0)
    small = [w + 0.1 for w in MODEL]  # norm sqrt(15 * 0.01) ~ 0.39
    big = [w + 1.0 for w in MODEL]  # norm sqrt(15) ~ 3.87
    assert [u for u in map(c.offer_record, records("a", weights=small)) if u is not None]
    assert not [u for u in map(c.offer_record, records("b", weights=big)) if u is not None]
    assert dict(c.rejected) == {"norm_exceeded": 1} and c.failed == {"b": "norm_exceeded"}


def test_update_norm_is_the_l2_distance_over_float_layers():
    reference = [np.zeros((2, 2), np.float32), np.zeros(3, np.int32)]
    weights = [np.full((2, 2), 3.0, np.float32), np.full(3, 100, np.int32)]
    assert update_norm(weights, reference) == pytest.approx(6.0)  # sqrt(4 * 9); integer layers do not count


def test_partial_uploads_are_bounded_by_the_participants_and_die_with_the_round():
    """Only a participant's chunks are kept while its update is incomplete; anyone else's are refused at once."""
    c = collector(participants=("a", "b"))
    for i in range(200):  # 200 would-be senders, one partial upload each
        c.offer_record(records(node_id=f"x{i}")[0])
    a_records = records("a")
    for record in a_records[:-1]:  # "a" never sends its last chunk
        assert c.offer_record(record) is None
    assert c.partial_uploads == 1 and c.rejected == {"not_participant": 200}
    assert not c.done() and "a" not in c.completed
    following = collector(participants=("a", "b"))  # the next round starts from nothing
    assert following.partial_uploads == 0
    assert following.offer_record(a_records[-1]) is None and following.partial_uploads == 1


def test_a_node_cannot_claim_more_samples_than_it_declared_at_connect():
    c = collector(signed=True, declared_samples={"a": 5, "b": 5})
    for record in signed("a", num_samples=2**40):
        c.offer_record(record)
    assert dict(c.rejected) == {"samples_exceed_declared": 1} and c.failed == {"a": "samples_exceed_declared"}
    assert [u for u in map(c.offer_record, signed("b", num_samples=3)) if u is not None]  # fewer is fine
