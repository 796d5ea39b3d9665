"""Hostile Kafka records: no value in a record may crash the decoder or the collector, and none may change
what the genuine records alone would give (issue: no record or message ends a session)."""

import json
import re

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from common.wire.codec import ArraySpec
from common.wire.integrity import KeyRegistry, signed_headers
from common.wire.protocol import (
    KIND_UPDATE,
    ProtocolError,
    RawRecord,
    UpdateAck,
    decode_chunk,
    encode_chunk,
    split_weights,
)
from fl_server.collector import RoundCollector
from fl_server.strategies import FedAvg

MODEL = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
KEYS = {"a": b"a" * 32, "b": b"b" * 32, "c": b"c" * 32, "outsider": b"o" * 32}
NUMERIC_FIELDS = ("v", "round", "num_samples", "layer", "num_layers", "chunk", "num_chunks")


def genuine(node_id="a", factor=1.0, num_samples=5, server_round=2, key=None):
    weights = [w + factor for w in MODEL]
    out = []
    for chunk in split_weights(weights, kind=KIND_UPDATE, session_id="s", server_round=server_round, node_id=node_id,
                               num_samples=num_samples, chunk_bytes=16):
        value = encode_chunk(chunk)
        headers = signed_headers(key, chunk, value) if key else chunk.headers()
        out.append(RawRecord(value, node_id.encode(), tuple(headers)))
    return out


def with_value_text(text: str, node_id="outsider", signed=True) -> RawRecord:
    """A record whose value is ``text``, signed (so it reaches the JSON checks) by a registered non-participant."""
    value = text.encode("utf-8", "surrogatepass")
    template = next(split_weights(MODEL, kind=KIND_UPDATE, session_id="s", server_round=2, node_id=node_id,
                                  num_samples=1))
    headers = signed_headers(KEYS[node_id], template, value) if signed else template.headers()
    return RawRecord(value, node_id.encode(), tuple(headers))


def replace_field(value: bytes, name: str, literal: str) -> str:
    text = value.decode()
    return re.sub(rf'"{name}":(-?\d+|\[[^\]]*\])', f'"{name}":{literal}', text, count=1)


HUGE_INT = "9" * 5000
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("field", [*NUMERIC_FIELDS, "shape"])
@pytest.mark.parametrize(("literal", "reason"), [
    (HUGE_INT, "bad_number"),
    ("-" + HUGE_INT, "bad_number"),
    ("1e999", "bad_number"),
    (str(2**70), "bad_schema"),  # a parseable int out of every field's range
    ("1.5", "bad_schema"),
    (DEEP, "too_deep"),
])
def test_a_hostile_number_in_any_field_is_rejected_by_reason(field, literal, reason):
    value = replace_field(genuine()[0].value, field, literal)
    with pytest.raises(ProtocolError) as info:
        decode_chunk(value.encode())
    want = {"bad_schema", "bad_version", "bad_shape", "bad_dtype"} if reason == "bad_schema" else {reason}
    assert info.value.reason in want, info.value


@pytest.mark.parametrize(("text", "reason"), [
    ('{"v": 1, "round": ' + HUGE_INT + "}", "bad_number"),
    (DEEP, "too_deep"),
    ('{"v": 1, "num_samples": 1e999}', "bad_number"),
])
def test_the_collector_counts_hostile_json_and_the_signer_forfeits(text, reason):
    c = RoundCollector(session_id="s", server_round=2, participants=["a", "outsider"],
                       expected_specs=[ArraySpec.of(w) for w in MODEL], keys=KeyRegistry(KEYS))
    assert c.offer_record(with_value_text(text)) is None
    assert dict(c.rejected) == {reason: 1}
    assert c.failed == {"outsider": reason}  # a key holder that signs garbage forfeits the round
    assert [u for u in map(c.offer_record, genuine(key=KEYS["a"])) if u is not None]  # the session goes on


# --------------------------------------------------------------------- fuzzing the decoder and the collector

JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30) | st.floats()
               | st.text(max_size=12) | st.just(HUGE_INT) | st.just("1e999"))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=6), children, max_size=3), max_leaves=12)
FIELDS = st.sampled_from([*NUMERIC_FIELDS, "shape", "dtype", "data", "kind", "session_id", "node_id"])


@st.composite
def mutated_records(draw) -> str:
    """A genuine record's JSON with some fields replaced by arbitrary JSON-shaped values (or raw literals)."""
    obj = json.loads(genuine()[0].value)
    for name in draw(st.lists(FIELDS, min_size=1, max_size=4, unique=True)):
        obj[name] = draw(JSON_VALUES)
    text = json.dumps(obj)
    for literal in (HUGE_INT, "1e999"):  # json.dumps quoted them: let some through as bare numbers
        if draw(st.booleans()):
            text = text.replace(f'"{literal}"', literal)
    return text


@given(st.one_of(mutated_records(), JSON_VALUES.map(json.dumps), st.text(max_size=300)))
@example('{"v": 1, "round": ' + HUGE_INT + "}")
@example(DEEP)
@example('{"v": 1, "kind": "update", "node_id": "a", "num_layers": 1, "num_chunks": 1, "dtype": "float32", '
         '"shape": [' + "9" * 400 + '], "data": ""}')  # a shape int that overflows math.prod's float check
def test_decode_chunk_raises_only_protocol_error(text):
    try:
        decode_chunk(text.encode("utf-8", "surrogatepass"))
    except ProtocolError:
        pass


@given(st.lists(st.one_of(mutated_records(), st.text(max_size=100)), max_size=8))
def test_the_collector_never_raises_on_hostile_records(texts):
    c = RoundCollector(session_id="s", server_round=2, participants=["a", "outsider"],
                       expected_specs=[ArraySpec.of(w) for w in MODEL], keys=KeyRegistry(KEYS))
    for text in texts:
        c.offer_record(with_value_text(text))
        c.offer_record(with_value_text(text, signed=False))
    assert "a" not in c.failed  # nothing signed by "a" was among them


# --------------------------------------------------------------------- hostile records change nothing

GENUINE = {"a": (1.0, 3), "b": (5.0, 7), "c": (-2.0, 11)}


def hostile_records() -> st.SearchStrategy[RawRecord]:
    """Records anyone (or a registered non-participant) could write: none carries a participant's valid key."""
    replay = st.sampled_from([r for node in GENUINE for r in genuine(node, *GENUINE[node], key=KEYS[node])])
    return st.one_of(
        mutated_records().map(with_value_text),  # signed by a non-participant: forfeits only itself
        mutated_records().map(lambda t: with_value_text(t, signed=False)),
        st.builds(lambda node, f: genuine(node, f, key=b"z" * 32)[0], st.sampled_from(sorted(GENUINE)),
                  st.floats(-1e3, 1e3)),  # forged in a participant's name with the wrong key
        st.builds(lambda node, f: genuine(node, f)[0], st.sampled_from(sorted(GENUINE)), st.floats(-1e3, 1e3)),
        st.builds(lambda f, r: genuine("outsider", f, server_round=r, key=KEYS["outsider"])[0],
                  st.floats(-1e3, 1e3), st.integers(0, 5)),
        replay,  # at-least-once redelivery of a genuine record
        st.binary(max_size=64).map(lambda b: RawRecord(b, b"x", ())),
    )


def aggregate(records: list[RawRecord]) -> tuple[dict[str, int], list[np.ndarray]]:
    c = RoundCollector(session_id="s", server_round=2, participants=sorted(GENUINE),
                       expected_specs=[ArraySpec.of(w) for w in MODEL], keys=KeyRegistry(KEYS))
    strategy = FedAvg()
    strategy.begin_round(2, MODEL)
    for record in records:
        update = c.offer_record(record)
        if update is not None:
            strategy.accumulate(update.node_id, update.weights, update.num_samples)
    for node in GENUINE:
        c.offer_ack(UpdateAck("s", 2, node, GENUINE[node][1], 1, {}, {}))
    assert c.done()
    return {n: u.num_samples for n, u in c.completed.items()}, strategy.aggregate()


GENUINE_RECORDS = [r for node in GENUINE for r in genuine(node, *GENUINE[node], key=KEYS[node])]
EXPECTED = aggregate(GENUINE_RECORDS)


@given(st.lists(st.tuples(st.integers(0, len(GENUINE_RECORDS)), hostile_records()), max_size=12))
def test_hostile_records_interleaved_with_genuine_ones_change_nothing(insertions):
    records = list(GENUINE_RECORDS)
    for position, record in sorted(insertions, key=lambda item: -item[0]):
        records.insert(position, record)
    accepted, weights = aggregate(records)
    assert accepted == EXPECTED[0] == {"a": 3, "b": 7, "c": 11}
    for got, want in zip(weights, EXPECTED[1], strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_genuine_aggregate_is_the_hand_computed_fedavg():
    assert EXPECTED[0] == {"a": 3, "b": 7, "c": 11}
    np.testing.assert_allclose(EXPECTED[1][0], np.full((4, 3), (1.0 * 3 + 5.0 * 7 - 2.0 * 11) / 21), rtol=1e-6)
