"""A node takes exactly the server's model records from a range anyone who can write the topic may have added to."""

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from common.transport.kafka_io import fetch_weights
from common.wire.codec import weights_digest
from common.wire.protocol import KIND_MODEL, ModelRef, ProtocolError, encode_chunk, split_weights

MODEL = [np.arange(40, dtype=np.float32).reshape(5, 8), np.ones(8, np.float32)]


def values(weights, **changes) -> list[bytes]:
    chunks = split_weights(weights, kind=KIND_MODEL, session_id="s", server_round=3, node_id="server",
                           num_samples=0, chunk_bytes=64)
    out = []
    for chunk in chunks:
        obj = json.loads(encode_chunk(chunk))
        obj.update(changes)
        out.append(json.dumps(obj, separators=(",", ":")).encode())
    return out


class FakeConsumer:
    """Plays one partition of the models topic (assign, seek, poll, position) from a list of values."""

    def __init__(self, records: list[bytes], first_offset: int = 100) -> None:
        self.records = [SimpleNamespace(offset=first_offset + i, value=v) for i, v in enumerate(records)]
        self._next = 0

    def assign(self, partitions):
        pass

    def seek(self, partition, offset):
        self._next = next(i for i, r in enumerate(self.records) if r.offset >= offset)

    def poll(self, timeout_ms=0):
        batch, self._next = self.records[self._next:self._next + 3], self._next + 3
        return {"tp": batch} if batch else {}

    def position(self, partition):
        return self.records[min(self._next, len(self.records) - 1)].offset + (self._next >= len(self.records))


def flooded() -> tuple[list[bytes], list[bytes]]:
    genuine = values(MODEL)
    forged = values([w + 1000 for w in MODEL])  # same session, round, layers, chunks: conflicts with every chunk
    records = []
    for real, fake in zip(genuine, forged, strict=True):
        records += [fake, b"not json at all", real, real]  # a forgery first, garbage, the record, a redelivery
    return genuine, records


def ref(genuine: list[bytes], records: list[bytes], with_digests: bool) -> ModelRef:
    digests = tuple(hashlib.sha256(v).hexdigest() for v in genuine) if with_digests else ()
    return ModelRef("models", 0, 100, 100 + len(records) - 1, len(genuine), digests,
                    weights_digest(MODEL) if with_digests else "")


def test_foreign_records_inside_the_range_are_skipped_not_fatal():
    genuine, records = flooded()
    weights = fetch_weights(FakeConsumer(records), ref(genuine, records, True), session_id="s", server_round=3,
                            timeout_s=10)
    for got, want in zip(weights, MODEL, strict=True):
        np.testing.assert_array_equal(got, want)


def test_without_the_listed_digests_a_forgery_in_the_range_fails_the_fetch():
    """What happened before (and still does for a reference without digests): the forged chunk comes first."""
    genuine, records = flooded()
    with pytest.raises(ProtocolError):
        fetch_weights(FakeConsumer(records), ref(genuine, records, False), session_id="s", server_round=3,
                      timeout_s=10)


def test_a_model_that_is_not_the_announced_one_is_refused():
    genuine = values(MODEL)
    announced = ModelRef("models", 0, 100, 100 + len(genuine) - 1, len(genuine),
                         tuple(hashlib.sha256(v).hexdigest() for v in genuine), "0" * 64)
    with pytest.raises(ProtocolError, match="not the one announced"):
        fetch_weights(FakeConsumer(genuine), announced, session_id="s", server_round=3, timeout_s=10)


def test_the_reference_round_trips_and_refuses_bad_digests():
    genuine, records = flooded()
    good = ref(genuine, records, True)
    assert ModelRef.from_wire(good.to_wire()) == good
    with pytest.raises(ProtocolError):
        ModelRef.from_wire({**good.to_wire(), "record_digests": ["xyz"] * len(genuine)})
    with pytest.raises(ProtocolError):
        ModelRef.from_wire({**good.to_wire(), "record_digests": good.to_wire()["record_digests"][:-1]})
