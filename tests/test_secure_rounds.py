"""Secure aggregation through the real round loop: the real ``Coordinator`` and, as nodes, the real
``NodeSecureRound`` (real X25519, Shamir, AES-GCM, masks), joined by a fake transport (no network, no Keras).

The nodes behave as scripted per node: complete the round, drop after sharing keys, drop after publishing the
masked vector, sign their advert with the wrong key, or publish their masked vector twice."""

import asyncio
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.cli import UsageError
from common.privacy.local import privatize_update
from common.secagg.crypto import HmacAdvertVerifier
from common.secagg.messages import AdvertBroadcast, KeyAdvert, SecAggConfig, ShareDelivery, SharePackage, UnmaskRequest
from common.secagg.protocol import SecAggServer
from common.secagg.round import SecureRoundSpec
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
from fl_node.secure import SERVER_EVENTS, NodeSecureRound, check_spec
from fl_server.audit.replay import unmask_round
from fl_server.config import ServerConfig
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory
from fl_server.plan import check_secure_aggregation
from fl_server.privacy.aggregation import DPAggregation
from fl_server.privacy.ledger import PrivacyLedger, PrivacySettings
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.secure_round import SecAggInput, SecureAggregationSettings
from fl_server.strategies import FedAvg
from tests.test_privacy_session import library_epsilon

INITIAL = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
KEYS = {f"n{i}": bytes([i]) * 32 for i in range(1, 8)}


def trained_weights(node_id: str, server_round: int) -> list[np.ndarray]:
    """What node ``node_id`` "trained" in a round: a distinct, known delta per node and round."""
    factor = int(node_id[1:]) * 0.01 + server_round * 0.001
    return [np.full((2, 3), factor, np.float32), np.arange(3, dtype=np.float32) * factor]


def samples_of(node_id: str) -> int:
    return 10 * int(node_id[1:])


class SecureFederation:
    """Fake transport plus nodes that run the real node side of secure aggregation."""

    def __init__(self, behaviour: dict[str, str]) -> None:
        self.behaviour = behaviour
        self.coordinator: Coordinator | None = None
        self.rounds: dict[str, NodeSecureRound] = {}
        self.starts: dict[str, StartRound] = {}
        self.global_weights: list[np.ndarray] = [w.copy() for w in INITIAL]
        self.node_refusals: dict[str, str] = {}
        self.published: dict[str, list[np.ndarray]] = {}  # what each node masked: its update after local DP
        self.masked: dict[str, np.ndarray] = {}  # the masked vectors as published

    async def publish_model(self, server_round, weights, model_sha256):
        self.global_weights = [np.array(w, copy=True) for w in weights]
        return ModelRef("models", 0, server_round, server_round, 1)

    def _send(self, node_id, message):
        self.coordinator.on_secagg(SecAggInput(node_id, message))

    async def emit(self, event, data, sid):
        node_id = sid
        mode = self.behaviour.get(node_id, "ok")
        if event == "start_round":
            start = StartRound.from_wire(data)
            spec = SecureRoundSpec.from_wire(start.secure_aggregation)
            check_spec(spec, node_id=node_id, session_id=start.session_id, server_round=start.server_round)
            key = KEYS[node_id] if mode != "wrong_key" else b"\xee" * 32
            secure = NodeSecureRound(spec, node_id, key)
            self.rounds[node_id], self.starts[node_id] = secure, start
            self._send(node_id, secure.advertise())
            return
        if event not in SERVER_EVENTS or node_id not in self.rounds:
            return
        message = SERVER_EVENTS[event].from_wire(data)
        secure, start = self.rounds[node_id], self.starts[node_id]
        if isinstance(message, AdvertBroadcast):
            self._send(node_id, secure.share_keys(message))
        elif isinstance(message, ShareDelivery):
            if mode == "drop_after_shares":
                return
            secure.deliver(message)
            self._publish_masked(node_id, secure, message, start)
        elif isinstance(message, UnmaskRequest):
            if mode == "drop_after_masked":
                return
            self._send(node_id, secure.unmask(message))

    def _publish_masked(self, node_id, secure, delivery, start):
        trained = trained_weights(node_id, start.server_round)
        if start.config.dp_clip_norm > 0:  # as FederatedNode does: clip and noise before masking
            trained, _ = privatize_update(self.global_weights, trained, clip_norm=start.config.dp_clip_norm,
                                          noise_stddev=start.config.dp_noise_stddev)
        self.published[node_id] = [np.asarray(w) for w in trained]
        vector = secure.masked_update(delivery, self.global_weights, trained, samples_of(node_id))
        self.masked[node_id] = vector
        records = []
        for chunk in split_weights([vector], kind=KIND_UPDATE, session_id=start.session_id,
                                   server_round=start.server_round, node_id=node_id, num_samples=samples_of(node_id),
                                   chunk_bytes=16):
            value = encode_chunk(chunk)
            records.append(RawRecord(value, key=node_id.encode(), headers=tuple(signed_headers(KEYS[node_id], chunk,
                                                                                                 value))))
        copies = 2 if self.behaviour.get(node_id) == "replay" else 1
        for _ in range(copies):
            for record in records:
                self.coordinator.on_record(record)
        self.coordinator.on_ack(UpdateAck(start.session_id, start.server_round, node_id, samples_of(node_id),
                                          len(records), {"loss": 0.5}, {"train": 0.01}))


async def run_secure_session(tmp_path, behaviour, *, nodes=5, rounds=1, threshold=3, protocol="secagg",
                             neighbours=None, stage_timeout_s=0.5, strategy=None, privacy=None):
    registry = NodeRegistry()
    node_ids = [f"n{i}" for i in range(1, nodes + 1)]
    for node_id in node_ids:
        await registry.add(NodeInfo(node_id, node_id, samples_of(node_id)))
    fake = SecureFederation(behaviour)
    secure = SecureAggregationSettings(protocol=protocol, threshold=threshold, neighbours=neighbours,
                                       stage_timeout_s=stage_timeout_s, clip=1.0, bits=16)
    settings = SessionSettings("s", rounds, nodes, 2.0, TrainConfig(1, 8, 0.1), end_grace_s=0.1, secure=secure)
    coordinator = Coordinator(settings=settings, registry=registry, strategy=strategy or FedAvg(), privacy=privacy,
                              model=GlobalModel("{}", {}, INITIAL, {}), evaluate=lambda r, w: {"loss": 0.0},
                              publish_model=fake.publish_model, emit=fake.emit,
                              history=SessionHistory.create(tmp_path, "s", {}),
                              keys=KeyRegistry({n: KEYS[n] for n in node_ids}))
    fake.coordinator = coordinator
    weights = await asyncio.wait_for(coordinator.run(), 30)
    return weights, coordinator.history.document, fake


def plain_fedavg(node_ids, server_round, reference):
    total = sum(samples_of(n) for n in node_ids)
    return [r + sum(samples_of(n) * (t - r) for n, t in ((n, trained_weights(n, server_round)[i]) for n in node_ids))
            / total for i, r in enumerate(reference)]


def assert_close_to(weights, expected, record):
    bound = record["secure_aggregation"]["quantization_error_bound"]
    assert 0 < bound < 1e-3
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=bound + 1e-7, rtol=0)


async def test_all_nodes_the_sum_is_fedavg_within_the_quantization_bound(tmp_path):
    weights, history, _ = await run_secure_session(tmp_path, {}, rounds=2)
    record = history["rounds"][-1]
    survivors = [f"n{i}" for i in range(1, 6)]
    round1 = plain_fedavg(survivors, 1, INITIAL)
    assert_close_to(weights, plain_fedavg(survivors, 2, round1), record)
    secure = record["secure_aggregation"]
    assert secure["survivors"] == survivors and secure["dropped_by_stage"] == {}
    assert secure["protocol"] == "secagg" and secure["threshold"] == 3 and secure["neighbours"] is None
    assert secure["num_samples_total"] == sum(samples_of(n) for n in survivors)
    assert set(secure["timings_s"]) >= {"advertise", "share_keys", "masked_input", "unmask"}
    assert record["accepted"] == survivors and record["num_samples"] == {}  # no per-node counts in the clear


async def test_dropouts_after_key_sharing_and_after_the_masked_input(tmp_path):
    """n2 never sends its masked input (its masks are rebuilt from its key shares); n4 sends it and then never
    answers the unmask request: its update still counts."""
    weights, history, _ = await run_secure_session(tmp_path, {"n2": "drop_after_shares", "n4": "drop_after_masked"})
    record = history["rounds"][0]
    secure = record["secure_aggregation"]
    assert secure["survivors"] == ["n1", "n3", "n4", "n5"]
    assert secure["dropped_by_stage"] == {"masked_input": ["n2"], "unmask": ["n4"]}
    assert secure["unmasked_dropped"] == ["n2"]
    assert record["status"] == "completed" and record["accepted"] == ["n1", "n3", "n4", "n5"]
    assert_close_to(weights, plain_fedavg(["n1", "n3", "n4", "n5"], 1, INITIAL), record)


async def test_below_the_threshold_the_round_fails_and_the_model_stays(tmp_path):
    behaviour = {"n1": "drop_after_shares", "n2": "drop_after_shares", "n3": "drop_after_shares"}
    weights, history, _ = await run_secure_session(tmp_path, behaviour, threshold=3)
    record = history["rounds"][0]
    assert record["status"] == "failed" and "too_few_nodes" in record["failure_reason"]
    assert record["secure_aggregation"]["failure"] == "too_few_nodes"
    for got, initial in zip(weights, INITIAL, strict=True):
        np.testing.assert_array_equal(got, initial)


async def test_an_advert_signed_with_the_wrong_key_is_refused_and_the_node_drops_out(tmp_path):
    weights, history, _ = await run_secure_session(tmp_path, {"n3": "wrong_key"})
    record = history["rounds"][0]
    secure = record["secure_aggregation"]
    assert secure["rejected_by_reason"] == {"bad_signature": 1}
    assert secure["dropped_by_stage"] == {"advertise": ["n3"]}
    assert record["accepted"] == ["n1", "n2", "n4", "n5"]
    assert_close_to(weights, plain_fedavg(["n1", "n2", "n4", "n5"], 1, INITIAL), record)


async def test_a_replayed_masked_vector_counts_once(tmp_path):
    weights, history, _ = await run_secure_session(tmp_path, {"n1": "replay"})
    record = history["rounds"][0]
    assert record["duplicates"] > 0
    assert_close_to(weights, plain_fedavg([f"n{i}" for i in range(1, 6)], 1, INITIAL), record)


async def test_secagg_plus_with_neighbours(tmp_path):
    weights, history, _ = await run_secure_session(tmp_path, {"n5": "drop_after_shares"}, nodes=7, threshold=3,
                                                   protocol="secagg+", neighbours=4)
    record = history["rounds"][0]
    assert record["secure_aggregation"]["neighbours"] == 4
    assert_close_to(weights, plain_fedavg(["n1", "n2", "n3", "n4", "n6", "n7"], 1, INITIAL), record)


@pytest.mark.parametrize(("nodes", "threshold"), [(1, None), (3, 4)])
async def test_too_few_participants_for_the_threshold_fail_the_round_before_it_starts(tmp_path, nodes, threshold):
    _weights, history, fake = await run_secure_session(tmp_path, {}, nodes=nodes, threshold=threshold)
    record = history["rounds"][0]
    assert record["status"] == "failed" and "secure aggregation cannot run" in record["failure_reason"]
    assert fake.starts == {}  # no node was asked to train


async def test_distributed_dp_nodes_noise_their_share_and_the_server_accounts_the_sum(tmp_path):
    """--dp local with secure aggregation: every node clips its delta and adds N(0, (zC)^2/n) before masking; the
    server unmasks the equal-weight mean (the noise of the sum is z*C) and books epsilon as the accountant does."""
    clip, z = 0.05, 1.0
    ledger = PrivacyLedger(PrivacySettings("local", z, 1e-5, None, clip_norm=clip))
    weights, history, fake = await run_secure_session(
        tmp_path, {}, strategy=DPAggregation(FedAvg(), mode="local", clip_norm=clip, noise_multiplier=z),
        privacy=ledger)
    record = history["rounds"][0]
    assert record["secure_aggregation"]["weighting"] == "equal"
    assert record["privacy"]["epsilon"] == pytest.approx(library_epsilon(z, 1), rel=1e-9)
    assert fake.starts["n1"].config.dp_noise_stddev == pytest.approx(z * clip / np.sqrt(5))
    equal_mean = [np.mean([fake.published[n][i] for n in sorted(fake.published)], axis=0) for i in range(2)]
    assert_close_to(weights, equal_mean, record)


async def test_the_recorded_transcript_redoes_the_unmasking_and_catches_tampering(tmp_path):
    """What fl-audit does with a secure round: the masked vectors and the history's transcript give the model the
    server computed, bit for bit; a changed share, a forged advert or a missing vector do not."""
    weights, history, fake = await run_secure_session(tmp_path, {"n2": "drop_after_shares", "n4": "drop_after_masked"})
    secure = history["rounds"][0]["secure_aggregation"]
    survivors = {n: fake.masked[n] for n in secure["survivors"]}
    keys = KeyRegistry({n: KEYS[n] for n in fake.rounds})
    mean, total = unmask_round(secure, INITIAL, survivors, keys=keys)
    assert total == secure["num_samples_total"]
    for got, want in zip(mean, weights, strict=True):
        np.testing.assert_array_equal(got, want)  # FedAvg of one update (the mean) is the mean itself

    def tampered(change):
        copy = json.loads(json.dumps(secure))
        change(copy["transcript"])
        return copy

    def flip_share(transcript):
        shares = transcript["responses"][0]["seed_shares"]
        owner = sorted(shares)[0]
        raw = bytearray(base64.b64decode(shares[owner]))
        raw[0] ^= 1
        shares[owner] = base64.b64encode(bytes(raw)).decode()

    def forge_advert(transcript):
        transcript["adverts"][0]["signature"] = base64.b64encode(b"\x00" * 32).decode()

    for change, says in ((flip_share, "cannot produce|combine"), (forge_advert, "does not verify")):
        with pytest.raises(ValueError, match=says):
            unmask_round(tampered(change), INITIAL, survivors, keys=keys)
    with pytest.raises(ValueError, match="survivors"):
        unmask_round(secure, INITIAL, {n: v for n, v in survivors.items() if n != "n4"}, keys=keys)


# ------------------------------------------------------------------ the node process's side (FederatedNode)


def node_under_test(tmp_path):
    """A real ``FederatedNode`` n1 (fake trainer, Kafka and Socket.IO client) in a 3-node secure round."""
    from unittest.mock import AsyncMock

    from common.data.dataspec import DataSpec
    from common.wire.protocol import ModelMessage
    from fl_node.client import FederatedNode, NodeSettings
    from fl_node.data import LocalData
    from fl_node.kafka import NodeKafka
    from tests.test_node_client import IMAGES, FakeTrainer

    settings = NodeSettings(node_id="n1", server_url="http://127.0.0.1:1", kafka="127.0.0.1:1", updates_topic="u",
                            out_dir=tmp_path, chunk_bytes=1 << 20, key=KEYS["n1"])
    kafka = AsyncMock(spec=NodeKafka)
    kafka.fetch_model.return_value = [np.zeros(3, np.float32)]
    kafka.publish_update.return_value = [(0, 7)]
    trainer = FakeTrainer()
    trainer.num_samples = 5  # trained on fewer rows than it declared (6): only the masked sum carries the 5
    node = FederatedNode(settings, LocalData(x=IMAGES[0], y=IMAGES[1]), trainer, kafka)
    node.sio = AsyncMock()
    node.sio.call.return_value = {"accepted": True, "received": True}
    config = SecAggConfig(session_id="s", server_round=3, node_ids=("n1", "n2", "n3"), threshold=2,
                          vector_length=4)
    spec = SecureRoundSpec(protocol="secagg", config=config, clip=1.0, bits=16, max_examples=100)
    model = ModelMessage("{}", {}, ModelRef("models", 0, 0, 0, 1), DataSpec.image((4,), 2).to_wire())
    start = StartRound("s", 3, TrainConfig(1, 8, 0.1), model, secure_aggregation=spec.to_wire())
    return node, spec, start


def sent(node, event):
    return [call.args[1] for call in node.sio.call.await_args_list if call.args[0] == event]


async def wait_sent(node, event):
    for _ in range(500):
        if sent(node, event):
            return sent(node, event)[-1]
        await asyncio.sleep(0.01)  # polls the mock's calls, made by the node's own tasks
    raise AssertionError(f"the node never sent {event}")


@pytest.mark.parametrize("tamper", [False, True])
async def test_the_node_masks_after_the_key_stages_and_refuses_a_tampered_share(tmp_path, tamper):
    node, spec, start = node_under_test(tmp_path)
    server = SecAggServer(spec.config, verifier=HmacAdvertVerifier(KEYS))
    peers = {n: NodeSecureRound(spec, n, KEYS[n]) for n in ("n2", "n3")}
    round_task = asyncio.create_task(node._run_round(start))
    server.receive_advert(KeyAdvert.from_wire(await wait_sent(node, "secagg_advert")))
    for peer in peers.values():
        server.receive_advert(peer.advertise())
    broadcasts = server.close_adverts()
    await node._on_secagg("secagg_adverts", broadcasts["n1"].to_wire())
    server.receive_shares(SharePackage.from_wire(await wait_sent(node, "secagg_shares")))
    for node_id, peer in peers.items():
        server.receive_shares(peer.share_keys(broadcasts[node_id]))
    delivery = server.close_shares()["n1"]
    if tamper:  # the server (or someone in its place) flips one bit of n2's ciphertext to n1
        raw = bytearray(delivery.ciphertexts["n2"])
        raw[-1] ^= 1
        delivery = ShareDelivery("s", 3, "n1", {**delivery.ciphertexts, "n2": bytes(raw)})
    await node._on_secagg("secagg_delivery", delivery.to_wire())
    await asyncio.wait_for(round_task, 10)
    if tamper:
        (refusal,) = sent(node, "fl_refuse")
        assert refusal["reason"] == "secagg_bad_ciphertext"
        node.kafka.publish_update.assert_not_awaited()  # nothing left the node
    else:
        assert not sent(node, "fl_refuse")
        chunks = node.kafka.publish_update.await_args.args[0]
        assert {(c.spec.dtype, c.spec.shape) for c in chunks} == {("uint32", (4,))}
        assert sent(node, "fl_update")[0]["num_samples"] == 6  # declared, not trained, samples
    await node.close()


# ------------------------------------------------------------------ what cannot run on masked updates

SECURE = {"secure_aggregation": "secagg", "node_keys": Path("keys/registry.json")}


@pytest.mark.parametrize(("settings", "says"), [
    ({"strategy": "median"}, "--strategy median cannot run with --secure-aggregation"),
    ({"strategy": "krum"}, "--strategy krum cannot run"),
    ({"dp": "central", "dp_clip": "1.0"}, "--dp central cannot run with --secure-aggregation"),
    ({"max_update_norm": 5.0}, "zero-knowledge"),
    ({"max_node_weight": 0.5}, "does not see a node's weight"),
    ({"node_keys": None, "allow_unauthenticated": True}, "needs --node-keys"),
    ({"secagg_neighbours": 4}, "needs --secure-aggregation secagg+"),
    ({"secure_aggregation": "secagg+", "secagg_neighbours": 3}, "must be even"),
    ({"secagg_bits": 30}, "--secagg-bits must be in 1..24"),
    ({"secure_aggregation": "off", "secagg_threshold": 3}, "--secagg-threshold needs --secure-aggregation"),
])
def test_what_secure_aggregation_refuses_and_why(settings, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        check_secure_aggregation(ServerConfig(**{**SECURE, **settings}))


@pytest.mark.parametrize("settings", [{}, {"strategy": "fedadam"}, {"dp": "local", "dp_clip": "0.1"},
                                      {"secure_aggregation": "secagg+", "secagg_neighbours": 4}])
def test_what_runs_with_secure_aggregation(settings):
    check_secure_aggregation(ServerConfig(**{**SECURE, **settings}))


@pytest.mark.parametrize(("nodes", "expected"), [(3, (None, 2)), (5, (None, 4)), (20, (10, 8)), (100, (14, 10))])
def test_secagg_plus_defaults_to_log_neighbours_and_a_two_thirds_threshold(nodes, expected):
    assert SecureAggregationSettings(protocol="secagg+").plan(nodes) == expected
