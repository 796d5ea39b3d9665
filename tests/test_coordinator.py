"""Round-loop logic with fake transport and fake nodes (no network, no TensorFlow)."""

import asyncio

import numpy as np

from common.protocol import KIND_UPDATE, ModelRef, StartRound, TrainConfig, UpdateAck, encode_chunk, split_weights
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.strategies import FedAvg

INITIAL = [np.zeros(3, np.float32)]


class FakeFederation:
    """Plays the nodes: answers start_round with an update (weights = round number * node factor)."""

    def __init__(self, behaviour):
        self.behaviour = behaviour  # node_id -> "ok" | "silent"
        self.coordinator: Coordinator | None = None
        self.starts: list[tuple[str, int]] = []
        self.configs: list[TrainConfig] = []  # every start_round config the nodes were sent

    async def publish_model(self, server_round, weights):
        return ModelRef("models", 0, server_round, server_round, 1)

    async def emit(self, event, data, sid):
        if event != "start_round":
            return
        start = StartRound.from_wire(data)
        self.starts.append((sid, start.server_round))
        self.configs.append(start.config)
        behaviour = self.behaviour.get(sid)
        if behaviour == "late":  # answers after the round's timeout has passed
            asyncio.get_running_loop().call_later(0.5, self._answer, start, sid)
        elif behaviour == "ok":
            self._answer(start, sid)

    def _answer(self, start, sid):
        factor = float(sid[1:])
        weights = [np.full(3, factor * start.server_round, np.float32)]
        for chunk in split_weights(weights, kind=KIND_UPDATE, session_id=start.session_id,
                                   server_round=start.server_round, node_id=sid, num_samples=int(factor),
                                   chunk_bytes=4):
            self.coordinator.on_record(encode_chunk(chunk))
        self.coordinator.on_ack(UpdateAck(start.session_id, start.server_round, sid, int(factor), 3,
                                          {"loss": factor}, {"train": 0.01}))


async def run_session(tmp_path, behaviour, rounds=2, timeout_s=0.3, connect=("n1", "n3"), strategy=None):
    registry = NodeRegistry()
    for node_id in connect:
        await registry.add(NodeInfo(node_id, node_id, 1))
    fake = FakeFederation(behaviour)
    settings = SessionSettings("s", rounds, len(connect), timeout_s, TrainConfig(1, 8, 0.1), end_grace_s=0.1)
    coordinator = Coordinator(
        settings=settings, registry=registry, strategy=strategy or FedAvg(), model=GlobalModel("{}", {}, INITIAL, {}),
        evaluate=lambda r, w: {"loss": float(np.sum(w[0]))}, publish_model=fake.publish_model, emit=fake.emit,
        history=SessionHistory(tmp_path, "s", {}),
    )
    fake.coordinator = coordinator
    weights = await asyncio.wait_for(coordinator.run(), 10)
    return weights, coordinator.history.document, fake


async def test_all_nodes_answer_weighted_average_and_full_history(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "ok"})
    # round 2: n1 sends 2.0 with 1 sample, n3 sends 6.0 with 3 samples -> (2 + 18) / 4 = 5
    np.testing.assert_allclose(weights[0], [5.0] * 3)
    last = history["rounds"][-1]
    assert last["accepted"] == ["n1", "n3"] and not last["timed_out"]
    assert last["train"]["loss"] == (1 * 1 + 3 * 3) / 4
    assert last["num_samples"] == {"n1": 1, "n3": 3}


async def test_silent_node_round_closes_at_timeout_with_the_rest(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "silent"})
    np.testing.assert_allclose(weights[0], [2.0] * 3)
    assert all(r["timed_out"] and r["accepted"] == ["n1"] for r in history["rounds"])


async def test_round_without_updates_fails_and_keeps_the_model(tmp_path):
    weights, history, _ = await run_session(tmp_path, {}, rounds=1)
    np.testing.assert_array_equal(weights[0], INITIAL[0])
    assert history["rounds"][0]["status"] == "failed"


async def test_late_updates_are_refused_as_stale_in_the_next_round(tmp_path):
    weights, history, _ = await run_session(tmp_path, {"n1": "ok", "n3": "late"}, rounds=2, timeout_s=0.3)
    first, second = history["rounds"]
    assert first["accepted"] == ["n1"] and first["timed_out"]
    assert second["rejected_updates_by_reason"] == {"stale_round": 1}  # n3's round-1 record, judged in round 2
    np.testing.assert_allclose(weights[0], [2.0] * 3)  # only n1's round-2 update made it in
