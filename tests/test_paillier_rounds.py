"""Paillier rounds: the decryptor's refusals (pure), key files, config refusals, and a whole in-process session
whose decryptor is the real decision logic over the records the nodes published."""

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.cli import UsageError
from common.paillier.keys import PaillierPrivate, PaillierPublic
from common.paillier.messages import DecryptedSum, DecryptRequest
from common.secagg.round import SecureRoundSpec
from common.wire.codec import ArraySpec
from common.wire.integrity import KeyRegistry, signed_headers
from common.wire.protocol import (
    KIND_UPDATE,
    ModelRef,
    RawRecord,
    StartRound,
    TrainConfig,
    UpdateAck,
    encode_chunk,
    split_weights,
)
from fl_node.secure import NodePaillierRound, check_paillier_spec
from fl_server.audit.replay import paillier_round_mean
from fl_server.config import ServerConfig
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.decryptor import Refusal, check_request, decrypt, judge_sum, topic_sum
from fl_server.history import SessionHistory
from fl_server.paillier_round import PaillierFailure, PaillierRound, PaillierSettings
from fl_server.plan import check_secure_aggregation
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.strategies import FedAvg

KEY = PaillierPrivate.generate(1024)  # tests only: small and fast
OTHER_KEY = PaillierPrivate.generate(1024)
PUBLIC = KEY.public
NODE_KEYS = {f"n{i}": bytes([i]) * 32 for i in range(1, 6)}
INITIAL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


def samples_of(node_id: str) -> int:
    return 10 * int(node_id[1:])


def trained_weights(node_id: str, server_round: int) -> list[np.ndarray]:
    factor = int(node_id[1:]) * 0.01 - server_round * 0.02  # negative deltas too
    return [np.full((3, 2), factor, np.float32), np.arange(2, dtype=np.float32) * factor]


def signed_records(node_id: str, layer: np.ndarray, server_round: int, key: bytes | None = None) -> list[RawRecord]:
    records = []
    for chunk in split_weights([layer], kind=KIND_UPDATE, session_id="s", server_round=server_round, node_id=node_id,
                               num_samples=samples_of(node_id), chunk_bytes=100):
        value = encode_chunk(chunk)
        records.append(RawRecord(value, node_id.encode(), tuple(signed_headers(key or NODE_KEYS[node_id], chunk,
                                                                               value))))
    return records


def paillier_round(nodes: list[str], server_round: int = 1, specs: list[ArraySpec] | None = None) -> PaillierRound:
    return PaillierRound(PaillierSettings(public=PUBLIC, decryptor_url="http://decryptor"), session_id="s",
                         server_round=server_round, participants=nodes,
                         declared_samples={n: samples_of(n) for n in nodes}, specs=specs or [])


# ------------------------------------------------------------------ the decryptor's decisions

def encrypted_round(nodes: list[str]) -> tuple[PaillierRound, dict[str, list[RawRecord]], dict[str, np.ndarray]]:
    """A round of ``nodes`` (the model: one 2-entry vector): each node's ciphertext layer and its signed records,
    summed at the server."""
    server = PaillierRound(PaillierSettings(public=PUBLIC, decryptor_url="http://d"), session_id="s", server_round=1,
                           participants=nodes, declared_samples={n: samples_of(n) for n in nodes},
                           specs=[ArraySpec.of(INITIAL[1])])
    published, layers = {}, {}
    for node in nodes:
        layers[node] = NodePaillierRound(server.spec, PUBLIC).encrypted_update(
            [INITIAL[1]], [trained_weights(node, 1)[1]], samples_of(node))
        published[node] = signed_records(node, layers[node], 1)
        server.take_encrypted(node, layers[node])
    return server, published, layers


def decide(request: DecryptRequest, records: list[RawRecord], decrypted: set | None = None) -> DecryptedSum:
    check_request(request, key_id=PUBLIC.key_id, min_updates=2, decrypted=decrypted or set())
    total = topic_sum(request, records, public_key=PUBLIC.public_key, keys=KeyRegistry(NODE_KEYS), max_records=100)
    judge_sum(request, total)
    return decrypt(request, KEY.private_key).signed_by(KEY.signer)


def test_an_honest_sum_is_decrypted_signed_and_decodes_to_fedavg() -> None:
    server, published, _ = encrypted_round(["n1", "n2", "n3"])
    request = server.request({}, {})
    answer = decide(request, [r for records in published.values() for r in records])
    assert answer.verify(PUBLIC.decryptor) and answer.nodes == ("n1", "n2", "n3")
    (weights,), total = server.finish(request, answer, [INITIAL[1]])
    assert total == 60
    want = sum(samples_of(n) * trained_weights(n, 1)[1].astype(np.float64) for n in ("n1", "n2", "n3")) / 60
    np.testing.assert_allclose(weights, want, atol=server.spec.error_bound(3, 60) + 1e-7, rtol=0)


def test_one_nodes_ciphertext_is_never_decrypted() -> None:
    _, published, layers = encrypted_round(["n1", "n2"])
    alone = paillier_round(["n1", "n2"], specs=[ArraySpec.of(INITIAL[1])])
    alone.take_encrypted("n1", layers["n1"])  # exactly n1's ciphertexts, as n1 published them
    with pytest.raises(Refusal) as refused:
        decide(alone.request({}, {}), published["n1"])
    assert refused.value.reason == "too_few_updates"


@pytest.mark.parametrize(("tamper", "reason"), [
    ("sum_of_one_named_two", "sum_mismatch"),     # the server names n1 and n2 but sends n1's ciphertexts alone
    ("forged_record", "missing_update"),         # n2's record is not signed with n2's key
    ("names_absent_node", "missing_update"),      # n3 published nothing in this round
    ("other_key", "wrong_key"),
    ("twice", "already_decrypted"),
])
def test_the_decryptor_refuses_what_is_not_the_topics_sum(tamper: str, reason: str) -> None:
    server, published, layers = encrypted_round(["n1", "n2"])
    request = server.request({}, {})
    records = published["n1"] + published["n2"]
    decrypted: set = set()
    if tamper == "sum_of_one_named_two":
        alone = paillier_round(["n1", "n2"], specs=[ArraySpec.of(INITIAL[1])])
        alone.take_encrypted("n1", layers["n1"])
        request = DecryptRequest("s", 1, PUBLIC.key_id, ("n1", "n2"), {}, alone.request({}, {}).ciphertexts)
    elif tamper == "forged_record":
        layer = NodePaillierRound(server.spec, PUBLIC).encrypted_update([INITIAL[1]], [INITIAL[1]], 1)
        records = published["n1"] + signed_records("n2", layer, 1, key=b"\xee" * 32)
    elif tamper == "names_absent_node":
        request = DecryptRequest("s", 1, PUBLIC.key_id, ("n1", "n2", "n3"), {}, request.ciphertexts)
    elif tamper == "other_key":
        request = DecryptRequest("s", 1, OTHER_KEY.public.key_id, request.nodes, {}, request.ciphertexts)
    else:
        decrypted = {("s", 1)}
    with pytest.raises(Refusal) as refused:
        decide(request, records, decrypted)
    assert refused.value.reason == reason


def test_the_server_checks_the_decryptors_signature_and_what_it_answered() -> None:
    server, published, _ = encrypted_round(["n1", "n2"])
    request = server.request({}, {})
    answer = decide(request, published["n1"] + published["n2"])
    forged = DecryptedSum(*[getattr(answer, f) for f in ("session_id", "server_round", "key_id", "nodes")],
                          plaintexts=answer.plaintexts).signed_by(OTHER_KEY.signer)
    with pytest.raises(PaillierFailure, match="not signed by the decryptor"):
        server.finish(request, forged, [INITIAL[1]])
    other_round = DecryptedSum("s", 2, answer.key_id, answer.nodes, answer.plaintexts).signed_by(KEY.signer)
    with pytest.raises(PaillierFailure, match="another round"):
        server.finish(request, other_round, [INITIAL[1]])
    assert DecryptedSum.from_wire(answer.to_wire()) == answer
    assert DecryptRequest.from_wire(server.request_wire(request)) == request


# ------------------------------------------------------------------ key files and the node's checks

def test_key_files_round_trip_and_only_the_private_one_is_secret(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "paillier.key.json", tmp_path / "paillier.pub.json"
    KEY.save(private_path, public_path)
    assert private_path.stat().st_mode & 0o777 == 0o600
    assert '"p"' not in public_path.read_text() and "PRIVATE" not in public_path.read_text()
    assert PaillierPublic.load(public_path).key_id == PUBLIC.key_id
    loaded = PaillierPrivate.load(private_path)
    assert loaded.private_key.raw_decrypt(PUBLIC.public_key.raw_encrypt(42)) == 42
    public_path.write_text(public_path.read_text().replace(PUBLIC.key_id, "0" * 16))
    with pytest.raises(ValueError, match="key_id does not match"):
        PaillierPublic.load(public_path)


def test_a_node_encrypts_only_with_its_own_federation_key() -> None:
    spec = paillier_round(["n1", "n2"]).spec
    check_paillier_spec(spec, PUBLIC, node_id="n1", session_id="s", server_round=1)
    for public, node, says in ((OTHER_KEY.public, "n1", "wrong_paillier_key"), (None, "n1", "no_paillier_key"),
                               (PUBLIC, "n9", "not_participant")):
        with pytest.raises(Exception, match=says) as refused:
            check_paillier_spec(spec, public, node_id=node, session_id="s", server_round=1)
        assert getattr(refused.value, "reason", None) == says


PAILLIER = {"secure_aggregation": "paillier", "node_keys": Path("keys/registry.json"),
            "paillier_decryptor": "http://127.0.0.1:8470"}


@pytest.mark.parametrize(("settings", "says"), [
    ({"strategy": "median"}, "--strategy median cannot run with --secure-aggregation"),
    ({"dp": "central", "dp_clip": "1.0"}, "--dp central cannot run with --secure-aggregation"),
    ({"max_update_norm": 5.0}, "zero-knowledge"),
    ({"paillier_public_key": None}, "needs --paillier-public-key"),
    ({"paillier_decryptor": None}, "needs --paillier-decryptor"),
    ({"paillier_decryptor": "decryptor:8470"}, "must be an http(s):// URL"),
    ({"secagg_threshold": 3}, "--secagg-threshold is for secagg"),
    ({"secure_aggregation": "secagg"}, "--paillier-public-key needs --secure-aggregation paillier"),
    ({"paillier_public_key": Path("/nonexistent.json")}, "cannot read"),
])
def test_what_paillier_aggregation_refuses_and_why(tmp_path: Path, settings: dict, says: str) -> None:
    KEY.save(tmp_path / "k.json", tmp_path / "p.json")
    with pytest.raises(UsageError, match=re.escape(says)):
        check_secure_aggregation(ServerConfig(**{**PAILLIER, "paillier_public_key": tmp_path / "p.json", **settings}))


# ------------------------------------------------------------------ a whole session, in process

class PaillierFederation:
    """Fake transport; nodes run the real node side (encrypt), the decryptor the real decision logic."""

    def __init__(self) -> None:
        self.coordinator: Coordinator | None = None
        self.global_weights = [w.copy() for w in INITIAL]
        self.records: list[RawRecord] = []
        self.requests: list[DecryptRequest] = []

    async def publish_model(self, server_round, weights, model_sha256):
        self.global_weights = [np.array(w, copy=True) for w in weights]
        return ModelRef("models", 0, server_round, server_round, 1)

    async def emit(self, event, data, sid):
        if event != "start_round":
            return
        start = StartRound.from_wire(data)
        spec = SecureRoundSpec.from_wire(start.secure_aggregation)
        check_paillier_spec(spec, PUBLIC, node_id=sid, session_id=start.session_id, server_round=start.server_round)
        layer = NodePaillierRound(spec, PUBLIC).encrypted_update(self.global_weights,
                                                                 trained_weights(sid, start.server_round),
                                                                 samples_of(sid))
        records = signed_records(sid, layer, start.server_round)
        self.records += records
        for record in records:
            self.coordinator.on_record(record)
        self.coordinator.on_ack(UpdateAck("s", start.server_round, sid, samples_of(sid), len(records), {},
                                          {"train": 0.01, "encrypt": 0.02}))

    async def decrypt(self, url: str, payload: dict, timeout_s: float) -> DecryptedSum:
        request = DecryptRequest.from_wire(payload)
        self.requests.append(request)
        try:
            return decide(request, self.records, {("s", r.server_round) for r in self.requests[:-1]})
        except Refusal as refusal:
            raise PaillierFailure(f"decryptor_refused_{refusal.reason}", str(refusal)) from None


async def test_a_paillier_session_publishes_plain_fedavg_and_records_what_it_cost(tmp_path: Path) -> None:
    registry = NodeRegistry()
    nodes = ["n1", "n2", "n3"]
    for node in nodes:
        await registry.add(NodeInfo(node, node, samples_of(node)))
    fake = PaillierFederation()
    settings = SessionSettings("s", 2, 3, 5.0, TrainConfig(1, 8, 0.1), end_grace_s=0.1,
                               paillier=PaillierSettings(public=PUBLIC, decryptor_url="http://decryptor"))
    coordinator = Coordinator(settings=settings, registry=registry, strategy=FedAvg(),
                              model=GlobalModel("{}", {}, INITIAL, {}), evaluate=lambda r, w: {"loss": 0.0},
                              publish_model=fake.publish_model, emit=fake.emit,
                              history=SessionHistory.create(tmp_path, "s", {}),
                              keys=KeyRegistry(NODE_KEYS), decrypt=fake.decrypt)
    fake.coordinator = coordinator
    weights = await asyncio.wait_for(coordinator.run(), 60)
    history = coordinator.history.document
    first, second = history["rounds"]
    assert first["status"] == second["status"] == "completed" and first["num_samples"] == {}
    secure = second["secure_aggregation"]
    assert secure["protocol"] == "paillier" and secure["key_bits"] == 1024 and secure["survivors"] == nodes
    assert secure["packing"]["headroom_bits"] == 2 and secure["ciphertexts_per_update"] == 1
    assert secure["timings_s"]["encrypt_max"] == 0.02 and secure["timings_s"]["decrypt"] >= 0
    assert [r.nodes for r in fake.requests] == [tuple(nodes)] * 2
    reference = [w.astype(np.float64) for w in INITIAL]
    for server_round in (1, 2):
        reference = [sum(samples_of(n) * trained_weights(n, server_round)[i].astype(np.float64) for n in nodes) / 60
                     for i in range(2)]  # the nodes' trained weights are absolute: FedAvg is their weighted mean
    for got, want in zip(weights, reference, strict=True):
        np.testing.assert_allclose(got, want, atol=secure["quantization_error_bound"] + 1e-6, rtol=0)

    # What fl-audit re-checks from the record: the decryptor's signature, the round, the accepted nodes.
    start = [np.asarray(w) for w in fake.global_weights]  # a reference of the model's layout (decoding adds to it)
    audited, total = paillier_round_mean(secure, start, nodes, session_id="s", server_round=2)
    assert total == 60 and len(audited) == 2
    tampered = json.loads(json.dumps(secure))
    tampered["decryption"]["plaintexts"][0] = format(int(tampered["decryption"]["plaintexts"][0], 16) + 1, "x")
    for record, accepted, says in ((tampered, nodes, "signature does not verify"),
                                   (secure, ["n1", "n2"], "the round accepted"),
                                   ({**secure, "decryptor_public_key": OTHER_KEY.signer.public.to_pem()}, nodes,
                                    "signature does not verify")):
        with pytest.raises(ValueError, match=says):
            paillier_round_mean(record, start, accepted, session_id="s", server_round=2)


# ------------------------------------------------------------------ the decryptor's HTTP service, before Kafka

async def test_the_decryptor_service_answers_malformed_oversized_and_single_requests_with_reasons() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from fl_server.decryptor_cli import Decryptor, DecryptorPlan

    plan = DecryptorPlan(KEY, KeyRegistry(NODE_KEYS), "127.0.0.1", 0, "127.0.0.1:1", {}, "updates", 2, 100, 20_000,
                         1 << 20)
    service = Decryptor(plan)
    single = DecryptRequest("s", 1, PUBLIC.key_id, ("n1",), {0: (0, 3)}, (PUBLIC.public_key.raw_encrypt(1),))
    async with TestClient(TestServer(service.app())) as client:
        health = await (await client.get("/health")).json()
        assert health["key_id"] == PUBLIC.key_id
        answers = []
        for body in (b"{not json", b"[" * 3000 + b"]" * 3000, b"x" * 30_000,
                     json.dumps(single.to_wire(256)).encode()):
            response = await client.post("/decrypt", data=body)
            answers.append((response.status, (await response.json())["reason"]))
    assert answers == [(400, "not_json"), (400, "too_deep"), (413, "too_large"), (409, "too_few_updates")]
    assert service.decrypted == set()


def test_the_rounds_decrypted_survive_a_restart_and_a_damaged_record_of_them_stops_the_start(tmp_path: Path) -> None:
    from fl_server.decryptor_cli import load_state, save_state

    state = tmp_path / "decrypted.json"
    assert load_state(state) == set()
    save_state(state, {("s", 1), ("s", 2)})
    assert load_state(state) == {("s", 1), ("s", 2)}
    state.write_text('{"decrypted": [["s"]]}')
    with pytest.raises(UsageError, match="refusing to start"):
        load_state(state)
