"""``start_round`` is built and encoded once per round, whatever the number of participants, and carries the
model spec by digest; the spec travels once per session (issue 19). Real Socket.IO server and clients on
loopback; the round loop with fake nodes."""

import asyncio
from collections import Counter

import numpy as np
import pytest
import socketio

from common.wire import safe_json
from common.wire.protocol import Hello, ModelMessage, ModelRef, ModelSpec, StartRound, TrainConfig
from fl_node.connection import MODEL_SPEC_EVENT, ModelSpecCache
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.strategies import FedAvg
from fl_server.transport.socketio import SocketIOFrontend, serve_socketio
from tests.waiting import wait_until

SPEC = ModelSpec('{"class_name": "Sequential"}', {"loss": "sparse_categorical_crossentropy"}, {"kind": "image"})
REF = ModelRef("fl.models", 0, 10, 12, 3)


def start_wire(server_round: int) -> dict:
    return StartRound("s1", server_round, TrainConfig(1, 8, 0.1),
                      ModelMessage("", {}, REF, {}, SPEC.digest)).to_wire()


class SpecOnlyCoordinator:
    """What the frontend asks the round loop for here: the session's model spec."""

    def model_spec(self) -> dict:
        return SPEC.to_wire()

    def pending_start(self, node_id: str) -> None:
        return None


@pytest.fixture
def encodings(monkeypatch) -> Counter:
    """Every JSON encoding python-socketio makes, by the event it carries."""
    counts: Counter = Counter()
    real = safe_json.SocketIOJson.dumps

    def counting(obj, **kwargs):
        if isinstance(obj, list) and obj and isinstance(obj[0], str):
            counts[obj[0]] += 1
        return real(obj, **kwargs)

    monkeypatch.setattr(safe_json.SocketIOJson, "dumps", staticmethod(counting))
    return counts


async def connect_nodes(url: str, count: int) -> tuple[list[socketio.AsyncClient], dict[str, list]]:
    received: dict[str, list] = {}
    clients = []
    for i in range(count):
        node_id = f"n{i}"
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        received[node_id] = []
        client.on("start_round", lambda data, node_id=node_id: received[node_id].append(data))
        await client.connect(url, auth=Hello(node_id, 10).to_wire(), transports=["websocket"], wait_timeout=10)
        clients.append(client)
    return clients, received


@pytest.mark.timeout(120)
@pytest.mark.parametrize("participants", [3, 40])
async def test_one_start_round_encoding_per_round_whatever_the_number_of_participants(participants, encodings):
    frontend = SocketIOFrontend(NodeRegistry())
    runner = await serve_socketio(frontend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    clients, received = await connect_nodes(url, participants + 2)  # two connected nodes sit this round out
    try:
        await wait_until(lambda: len(frontend.registry) == participants + 2, what="all nodes registered")
        chosen = [node.sid for node in frontend.registry.snapshot()][:participants]
        for server_round in (1, 2):
            await frontend.broadcast("start_round", start_wire(server_round), chosen)
            await wait_until(lambda r=server_round: sum(len(v) for v in received.values()) == participants * r,
                             what="every participant got start_round")
        assert encodings["start_round"] == 2  # one per round, not one per node
        got = {node: [m["round"] for m in messages] for node, messages in received.items()}
        assert sorted(got.values()) == [[]] * 2 + [[1, 2]] * participants
        wire = next(m for v in received.values() for m in v)
        assert set(wire["model"]) == {"weights", "spec_sha256"}  # no architecture or schema every round
        assert frontend.sio.manager.rooms["/"].keys() - {None} == {c.get_sid() for c in clients}  # rooms closed
    finally:
        for client in clients:
            await client.disconnect()
        await frontend.sio.shutdown()
        await runner.cleanup()
    assert frontend.sio.manager._rooms_of == {}  # the room index forgets disconnected clients


@pytest.mark.timeout(60)
async def test_a_node_without_the_spec_asks_for_it_once_and_completes_start_round():
    frontend = SocketIOFrontend(NodeRegistry())
    frontend.coordinator = SpecOnlyCoordinator()  # type: ignore[assignment]
    runner = await serve_socketio(frontend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    clients, _ = await connect_nodes(url, 1)
    asked: Counter = Counter()
    real = frontend.on_model_spec

    async def counting(sid, data=None, *extra):
        asked[sid] += 1
        return await real(sid, data, *extra)

    frontend.sio.on(MODEL_SPEC_EVENT, counting)
    cache = ModelSpecCache()
    try:
        slim = StartRound.from_wire(start_wire(1)).model
        assert slim.is_slim and slim.spec_sha256 == SPEC.digest
        full = await cache.complete(slim, clients[0], timeout_s=10)
        again = await cache.complete(StartRound.from_wire(start_wire(2)).model, clients[0], timeout_s=10)
        assert (full.architecture, full.compile, full.data, full.weights) == (SPEC.architecture, SPEC.compile,
                                                                              SPEC.data, REF)
        assert again == full and sum(asked.values()) == 1  # asked once, then from the cache
        other = ModelMessage("", {}, REF, {}, "ab" * 32)  # names a spec the server does not have
        with pytest.raises(Exception, match="does not match"):
            await cache.complete(other, clients[0], timeout_s=10)
    finally:
        await clients[0].disconnect()
        await frontend.sio.shutdown()
        await runner.cleanup()


async def test_the_round_loop_broadcasts_start_round_once_and_the_spec_once_per_session(tmp_path):
    registry = NodeRegistry()
    nodes = [f"n{i}" for i in range(1, 7)]
    for node_id in nodes:
        registry.register(NodeInfo(node_id, f"sid-{node_id}", 1))
    sent: list[tuple[str, dict, list[str]]] = []
    coordinator: Coordinator

    async def broadcast(event, data, sids):
        sent.append((event, data, list(sids)))
        if event == "start_round":  # every participant refuses: the round ends at once
            from common.wire.protocol import NodeRefusal

            for sid in sids:
                coordinator.on_refusal(NodeRefusal("s", data["round"], sid[4:], "train_failed", "x"))

    async def emit(event, data, sid):
        raise AssertionError("nothing is sent node by node")

    async def publish_model(server_round, weights, digest):
        return ModelRef("m", 0, server_round, server_round, 1)

    coordinator = Coordinator(
        settings=SessionSettings("s", 3, len(nodes), 10.0, TrainConfig(1, 8, 0.1), end_grace_s=0.01),
        registry=registry, strategy=FedAvg(), model=GlobalModel(SPEC.architecture, SPEC.compile,
                                                                [np.zeros(3, np.float32)], SPEC.data),
        evaluate=lambda r, w: {}, publish_model=publish_model, emit=emit, broadcast=broadcast,
        history=SessionHistory.create(tmp_path, "s", {}))
    await asyncio.wait_for(coordinator.run(), 30)
    events = [event for event, _, _ in sent]
    assert events == ["fl_model_spec", "start_round", "start_round", "start_round", "end_session"]
    assert ModelSpec.from_wire(sent[0][1]) == SPEC
    for _event, data, sids in sent[1:4]:
        assert sorted(sids) == [f"sid-{n}" for n in nodes]
        assert data["model"]["spec_sha256"] == SPEC.digest and "architecture" not in data["model"]
    assert sent[4][1]["model"]["architecture"] == SPEC.architecture  # end_session: the full model, once
