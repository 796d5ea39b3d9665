"""The server key: signed model records, nodes that refuse any other model, the round that goes on without them,
``fl-keys create --server``, and the canonical JSON the round chain hashes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from common.data.dataspec import DataSpec
from common.transport.kafka_io import fetch_weights
from common.wire.codec import ArraySpec, weights_digest
from common.wire.protocol import (
    KIND_MODEL,
    ModelMessage,
    ModelRef,
    NodeRefusal,
    StartRound,
    TrainConfig,
    encode_chunk,
    split_weights,
)
from common.wire.server_key import ServerPublicKey, ServerSigner, UntrustedModel
from fl_node.client import LocalFailure
from fl_node.kafka import NodeKafka
from fl_server.chain import canonical_json, genesis_digest, round_digest
from fl_server.collector import RoundCollector
from fl_server.keys_cli import main as keys_main
from tests.test_model_fetch import FakeConsumer
from tests.test_node_client import FakeTrainer, make_node, refusals

MODEL = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(4, np.float32)]
SERVER = ServerSigner.generate()
OTHER = ServerSigner.generate()


def model_records(signer: ServerSigner | None, weights=MODEL, first_offset: int = 100) -> list[SimpleNamespace]:
    out = []
    for i, chunk in enumerate(split_weights(weights, kind=KIND_MODEL, session_id="s", server_round=3,
                                            node_id="server", num_samples=0, chunk_bytes=16)):
        value = encode_chunk(chunk)
        headers = signer.model_headers(chunk, value) if signer else chunk.headers()
        out.append(SimpleNamespace(offset=first_offset + i, value=value, key=b"server", headers=headers))
    return out


class SignedConsumer(FakeConsumer):
    def __init__(self, records: list[SimpleNamespace]) -> None:  # keeps key and headers, unlike FakeConsumer's
        self.records, self._next = records, 0

    def close(self) -> None:
        pass


def reference(records: list[SimpleNamespace], weights=MODEL) -> ModelRef:
    return ModelRef("models", 0, records[0].offset, records[-1].offset, len(records),
                    tuple(hashlib.sha256(r.value).hexdigest() for r in records), weights_digest(weights))


def fetch(records: list[SimpleNamespace], ref: ModelRef, key: ServerPublicKey | None = SERVER.public):
    return fetch_weights(SignedConsumer(records), ref, session_id="s", server_round=3, timeout_s=10, server_key=key)


def tampered(record: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(**{**record.__dict__, "value": record.value.replace(b'"data":"', b'"data":"AAAA', 1)})


def test_a_signed_model_is_taken_and_forgeries_in_its_range_are_skipped():
    genuine = model_records(SERVER)
    ref = reference(genuine)
    forged = [tampered(r) for r in genuine] + model_records(OTHER, first_offset=200) + model_records(None, [
        w + 1 for w in MODEL], first_offset=300)
    mixed = [SimpleNamespace(**{**r.__dict__, "offset": 100 + i}) for i, r in enumerate(forged + genuine)]
    ref = ModelRef("models", 0, 100, 100 + len(mixed) - 1, len(genuine), ref.record_digests, ref.model_sha256)
    for got, want in zip(fetch(mixed, ref), MODEL, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("records", "reason"), [
    (model_records(None), "unsigned_model"),
    (model_records(OTHER), "wrong_server_key"),
    ([tampered(r) for r in model_records(SERVER)], "bad_model_signature"),
])
def test_a_model_the_server_did_not_sign_is_refused_with_its_reason(records, reason):
    with pytest.raises(UntrustedModel) as caught:
        fetch(records, reference(records) if reason != "bad_model_signature" else reference(model_records(SERVER)))
    assert caught.value.reason == reason


def test_a_signed_model_that_is_not_the_one_the_reference_names_is_refused():
    genuine = model_records(SERVER)
    ref = reference(genuine)
    wrong = ModelRef(ref.topic, ref.partition, ref.start_offset, ref.end_offset, ref.num_records, ref.record_digests,
                     "0" * 64)
    with pytest.raises(UntrustedModel) as caught:
        fetch(genuine, wrong)
    assert caught.value.reason == "model_digest_mismatch"


def test_the_signature_covers_the_record_key_and_every_byte():
    record = model_records(SERVER)[0]
    headers = dict(record.headers)
    SERVER.public.verify_model_record(b"server", headers, record.value)
    for key, value in ((b"n0", record.value), (b"server", record.value + b" ")):
        with pytest.raises(UntrustedModel.__mro__[1]) as caught:  # ProtocolError
            SERVER.public.verify_model_record(key, headers, value)
        assert caught.value.reason == "bad_model_signature"


async def test_a_node_refuses_a_forged_model_with_untrusted_model_and_the_round_goes_on(tmp_path):
    forged = model_records(OTHER)
    node = make_node(tmp_path, FakeTrainer())
    kafka = NodeKafka("127.0.0.1:1", node_id="n1", updates_topic="u", server_key=SERVER.public)
    await kafka.start()
    kafka._consumer = SignedConsumer(forged)
    node.kafka = kafka
    model = ModelMessage("{}", {}, reference(forged), DataSpec.image((4,), 2).to_wire())
    start = StartRound("s", 3, TrainConfig(1, 8, 0.1), model)
    await asyncio.wait_for(node._run_round(start), 10)
    (refusal,) = refusals(node)
    assert refusal["reason"] == "untrusted_model" and "wrong_server_key" in refusal["detail"]
    assert not node._finished.is_set()  # it stays for the next rounds
    await kafka.stop()
    await node.close()

    # The server stops waiting for it; the other participant's update completes the round.
    collector = RoundCollector(session_id="s", server_round=3, participants=["n0", "n1"],
                               expected_specs=[ArraySpec.of(w) for w in MODEL])
    collector.offer_refusal(NodeRefusal.from_wire(refusal))
    assert collector.failed == {"n1": "untrusted_model"} and not collector.all_updates_in()
    collector.completed["n0"] = None  # type: ignore[assignment]  # n0 delivered (bookkeeping only)
    assert collector.all_updates_in()


def test_an_untrusted_model_is_its_own_refusal_reason():
    with pytest.raises(LocalFailure) as caught, LocalFailure.stage("fetch_failed"):
        raise UntrustedModel("unsigned_model", "no signature")
    assert caught.value.reason == "untrusted_model"


def test_fl_keys_creates_the_server_key_pair(tmp_path):
    assert keys_main(["create", "--server", "--out-dir", str(tmp_path), "--registry", str(tmp_path / "r.json")]) == 0
    private, public = tmp_path / "server.key", tmp_path / "server.pub"
    if os.name == "posix":
        assert private.stat().st_mode & 0o077 == 0
    signer, key = ServerSigner.load(private), ServerPublicKey.load(public)
    assert signer.key_id == key.key_id and ServerPublicKey.load(private).key_id == key.key_id
    assert key.verify_round("ab" * 32, signer.sign_round("ab" * 32))
    assert not (tmp_path / "r.json").exists()  # --server alone issues no node keys
    assert keys_main(["create", "--server", "--out-dir", str(tmp_path)]) == 2  # never overwritten without --rotate
    assert ServerSigner.load(private).key_id == signer.key_id
    assert keys_main(["create", "--server", "--rotate", "--out-dir", str(tmp_path)]) == 0
    assert ServerSigner.load(private).key_id != signer.key_id
    assert keys_main(["create", "--out-dir", str(tmp_path)]) == 2  # neither nodes nor --server


def test_a_key_file_that_is_not_an_ed25519_key_is_refused(tmp_path):
    path = tmp_path / "server.pub"
    path.write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM public key"):
        ServerPublicKey.load(path)


def test_canonical_json_ignores_layout_and_key_order_and_writes_non_finite_as_null():
    a = {"b": [1, 2.5, {"y": None, "x": "é"}], "a": 0.1, "c": math.nan}
    text = json.dumps(a, indent=4, allow_nan=True)
    assert canonical_json(a) == canonical_json(json.loads(text.replace("NaN", "null")))
    assert canonical_json(a) == b'{"a":0.1,"b":[1,2.5,{"x":"\\u00e9","y":null}],"c":null}'


def test_the_round_digest_leaves_out_only_itself_and_its_signature():
    record = {"round": 1, "holdout": {"accuracy": 0.5}, "prev_round_digest": "00"}
    digest = round_digest(record)
    assert round_digest({**record, "round_digest": "x", "server_signature": "y"}) == digest
    assert round_digest({**record, "holdout": {"accuracy": 0.51}}) != digest
    assert genesis_digest("s", {"strategy": "fedavg"}) != genesis_digest("s", {"strategy": "median"})
