"""``FederatedNode``'s Socket.IO handlers driven directly, with a fake ``NodeKafka`` (``AsyncMock``), a fake trainer
and a mocked Socket.IO client: what the node fetches, publishes, acknowledges, refuses and saves."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock

import numpy as np
import pytest
import socketio

from common.data.dataspec import DataSpec
from common.data.tabular import SchemaError
from common.ml.model_budget import ModelTooLarge
from common.privacy.clipping import global_l2_norm
from common.privacy.local import strictest_local_dp
from common.wire.assembly import WeightAssembler
from common.wire.protocol import (
    KIND_UPDATE,
    EndSession,
    ModelMessage,
    ModelRef,
    StartRound,
    TrainConfig,
    split_weights,
)
from fl_node.client import FederatedNode, NodeSettings, ServerRefused
from fl_node.data import LocalData
from fl_node.kafka import NodeKafka
from fl_node.trainer import TrainResult
from tests.waiting import wait_until

GLOBAL = [np.zeros(3, np.float32), np.ones((2, 2), np.float32)]
REF = ModelRef("models", 0, 10, 11, 2)
MODEL = ModelMessage('{"class_name": "Sequential"}', {}, REF, DataSpec.image((4,), 2).to_wire())
START = StartRound("s", 3, TrainConfig(1, 8, 0.1), MODEL)
END = EndSession("s", 3, MODEL)


class FakeTrainer:
    """Adds 1 to every weight; ``release`` cleared holds training until the test sets it."""

    max_model_params = 1000
    num_samples = 6

    def __init__(self, train_error: Exception | None = None) -> None:
        self.train_error = train_error
        self.training = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.trained: list[int] = []
        self.saved: list[tuple[str, list[np.ndarray], Path]] = []

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        pass

    def train(self, architecture: str, compile_spec: dict, weights: list[np.ndarray], config: TrainConfig, *,
              server_round: int, session_id: str = "") -> TrainResult:
        self.training.set()
        assert self.release.wait(20), "the test never released training"
        self.trained.append(server_round)
        if self.train_error is not None:
            raise self.train_error
        return TrainResult(weights=[w + 1 for w in weights], metrics={"loss": 0.5}, train_s=0.01)

    def save(self, architecture: str, weights: list[np.ndarray], path: Path) -> None:
        self.saved.append((architecture, weights, path))


class FakeData:
    """Column statistics without pandas; records what it was asked and on which thread."""

    num_rows = 6

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.asked: list[tuple[Any, ...]] = []

    def statistics(self, target: str, categorical: list[str], *, min_category_count: int | None,
                   exclude: list[str]) -> dict[str, Any]:
        self.asked.append((target, categorical, min_category_count, exclude, threading.current_thread().name))
        if self.error is not None:
            raise self.error
        return {"columns": {"age": {"count": 6}}}


def make_node(tmp_path: Path, trainer: FakeTrainer | None = None, data: Any = None) -> FederatedNode:
    settings = NodeSettings(node_id="n1", server_url="http://127.0.0.1:1", kafka="127.0.0.1:1", updates_topic="u",
                            out_dir=tmp_path, chunk_bytes=8, max_idle_s=600)
    kafka = AsyncMock(spec=NodeKafka)
    kafka.fetch_model.return_value = GLOBAL
    kafka.publish_update.return_value = [(0, 20), (0, 21)]
    data = data if data is not None else LocalData(x=np.zeros((6, 4), np.float32), y=np.array([0, 1] * 3))
    node = FederatedNode(settings, data, trainer or FakeTrainer(), kafka)  # type: ignore[arg-type]
    node.sio = AsyncMock()
    node.sio.call.return_value = {"accepted": True}
    return node


@pytest.fixture
async def node(tmp_path):
    node = make_node(tmp_path)
    yield node
    await node.close()


def sent(node: FederatedNode, event: str) -> list[dict[str, Any]]:
    return [call.args[1] for call in node.sio.call.await_args_list if call.args[0] == event]


async def settled(node: FederatedNode) -> None:
    """Every task the node started is done."""
    await wait_until(lambda: not node._tasks, what="the node's tasks to finish")


async def test_a_round_trains_on_the_announced_model_publishes_the_update_and_acknowledges_it(node):
    await node._on_start_round(START.to_wire())
    (ack,) = await wait_until(lambda: sent(node, "fl_update"), what="the acknowledgement")

    node.kafka.fetch_model.assert_awaited_once_with(REF, session_id="s", server_round=3, max_elements=1000)
    expected = list(split_weights([w + 1 for w in GLOBAL], kind=KIND_UPDATE, session_id="s", server_round=3,
                                  node_id="n1", num_samples=6, chunk_bytes=8))
    node.kafka.publish_update.assert_awaited_once_with(expected, server_round=3)
    assert len(expected) > 2  # chunk_bytes=8 cuts the 4-float layers
    node.sio.call.assert_awaited_once_with("fl_update", ack, timeout=60.0)
    assert {k: v for k, v in ack.items() if k != "timings_s"} == {
        "session_id": "s", "round": 3, "node_id": "n1", "num_samples": 6, "num_records": len(expected),
        "metrics": {"loss": 0.5}}
    assert set(ack["timings_s"]) == {"fetch", "train", "publish"}


async def test_a_round_asked_again_after_its_update_is_in_kafka_is_acknowledged_again_not_retrained(node):
    await node._on_start_round(START.to_wire())
    await wait_until(lambda: sent(node, "fl_update"), what="the acknowledgement")
    await node._on_start_round(START.to_wire())  # e.g. the server lost the acknowledgement in a reconnect
    first, again = await wait_until(lambda: len(sent(node, "fl_update")) == 2 and sent(node, "fl_update"))
    assert again == first
    node.kafka.fetch_model.assert_awaited_once()
    node.kafka.publish_update.assert_awaited_once()
    assert node.trainer.trained == [3]


async def test_a_round_asked_again_while_it_trains_is_not_started_twice(tmp_path):
    trainer = FakeTrainer()
    trainer.release.clear()
    node = make_node(tmp_path, trainer)
    await node._on_start_round(START.to_wire())
    await wait_until(trainer.training.is_set, what="training to start")
    await node._on_start_round(START.to_wire())
    trainer.release.set()
    await settled(node)
    assert trainer.trained == [3] and len(sent(node, "fl_update")) == 1
    node.kafka.fetch_model.assert_awaited_once()
    await node.close()


@pytest.mark.parametrize("data", [None, {"session_id": "s", "round": 0}, {**START.to_wire(), "model": "x"}])
async def test_a_malformed_start_round_is_ignored(node, data):
    await node._on_start_round(data)
    await settled(node)
    node.kafka.fetch_model.assert_not_awaited()
    node.sio.call.assert_not_awaited()


@pytest.mark.parametrize(("fetch_error", "train_error", "reason", "detail"), [
    (TimeoutError("model for round 3 not complete after 120s"), None, "fetch_failed",
     "TimeoutError: model for round 3 not complete after 120s"),
    (ModelTooLarge("the global model's weights: 5000 parameters, more than --max-model-params 1000"), None,
     "model_too_large", "the global model's weights: 5000 parameters, more than --max-model-params 1000"),
    (None, ModelTooLarge("the server's architecture: 9999 parameters"), "model_too_large",
     "the server's architecture: 9999 parameters"),
])
async def test_a_model_that_cannot_be_had_is_refused_with_its_reason_and_the_node_stays(
        tmp_path, fetch_error, train_error, reason, detail):
    node = make_node(tmp_path, FakeTrainer(train_error))
    node.kafka.fetch_model.side_effect = fetch_error
    await node._on_start_round(START.to_wire())
    await settled(node)

    refusal = {"session_id": "s", "round": 3, "node_id": "n1", "reason": reason, "detail": detail}
    node.sio.call.assert_awaited_once_with("fl_refuse", refusal, timeout=60.0)
    node.kafka.publish_update.assert_not_awaited()
    assert node.trainer.trained == ([] if fetch_error else [3])
    assert node.refused is None and not node._finished.is_set()

    node.kafka.fetch_model.side_effect = None  # the next attempt at the round goes through
    node.trainer.train_error = None
    await node._on_start_round(START.to_wire())
    await wait_until(lambda: sent(node, "fl_update"), what="the acknowledgement of the retried round")
    await node.close()


async def test_data_that_does_not_fit_leaves_the_session_even_if_the_refusal_is_not_confirmed(tmp_path):
    node = make_node(tmp_path)
    node.sio.call.side_effect = socketio.exceptions.TimeoutError()
    mismatched = StartRound("s", 3, START.config, ModelMessage(MODEL.architecture, {}, REF,
                                                                DataSpec.image((9,), 2).to_wire()))
    await node._on_start_round(mismatched.to_wire())
    await settled(node)
    ((event, refusal), _), = node.sio.call.await_args_list
    assert event == "fl_refuse" and refusal["reason"] == "schema_mismatch"
    assert node._finished.is_set() and node.refused == refusal["detail"]
    node.kafka.publish_update.assert_not_awaited()
    await node.close()


async def test_end_session_saves_the_final_model_under_the_session_and_node_names(node, tmp_path):
    await node._on_end_session(END.to_wire())
    await wait_until(node._finished.is_set, what="the node to finish")
    node.kafka.fetch_model.assert_awaited_once_with(REF, session_id="s", server_round=4, max_elements=1000)
    ((architecture, weights, path),) = node.trainer.saved
    assert architecture == MODEL.architecture and weights is GLOBAL and path == tmp_path / "s-n1.keras"
    assert node.final_model_path == path


async def test_a_final_model_that_cannot_be_fetched_ends_the_node_without_a_path(node):
    node.kafka.fetch_model.side_effect = TimeoutError("model for round 4 not complete after 120s")
    await node._on_end_session(END.to_wire())
    await wait_until(node._finished.is_set, what="the node to finish")
    assert node.final_model_path is None and node.trainer.saved == []


async def test_a_malformed_end_session_is_ignored(node):
    await node._on_end_session({"session_id": "s", "rounds": -1})
    await settled(node)
    assert not node._finished.is_set()
    node.kafka.fetch_model.assert_not_awaited()


async def test_statistics_are_computed_on_the_worker_thread_with_the_requests_settings(tmp_path):
    data = FakeData()
    node = make_node(tmp_path, data=data)
    reply = await node._on_stats({"target": "y", "categorical": ["sex"], "exclude": ["id"], "min_category_count": 5})
    assert reply == {"columns": {"age": {"count": 6}}}
    ((target, categorical, k, exclude, thread),) = data.asked
    assert (target, categorical, k, exclude) == ("y", ["sex"], 5, ["id"]) and thread.startswith("fl-node-worker")
    await node.close()


@pytest.mark.parametrize(("request_", "says"), [
    ("y", "needs a target"),
    ({"target": 3}, "needs a target"),
    ({"target": "y", "exclude": "id"}, "lists of column names"),
    ({"target": "y", "categorical": [1]}, "lists of column names"),
    ({"target": "y", "min_category_count": 0}, "from 1 to 1,000,000"),
    ({"target": "y", "min_category_count": True}, "from 1 to 1,000,000"),
])
async def test_a_bad_statistics_request_gets_an_error_and_touches_no_data(tmp_path, request_, says):
    data = FakeData()
    node = make_node(tmp_path, data=data)
    reply = await node._on_stats(request_)
    assert says in reply["error"] and data.asked == []
    await node.close()


async def test_statistics_that_the_data_cannot_give_are_an_error_reply(tmp_path):
    node = make_node(tmp_path, data=FakeData(SchemaError("column 'y' is missing")))
    assert await node._on_stats({"target": "y"}) == {"error": "column 'y' is missing"}
    await node.close()


async def test_ping_says_the_connection_is_alive(node):
    assert await node._on_ping({"nonce": 1}) == {"alive": True}


async def test_a_replaced_connection_stops_the_node_with_the_servers_reason(node):
    await node._on_replaced({"reason": "another connection answered for n1"})
    assert node._finished.is_set()
    assert node.refused == ("the server replaced this node's connection with another one using its key: "
                            "another connection answered for n1")


async def test_a_refusing_server_stops_the_first_connection_and_kafka_is_started_and_stopped_once(node):
    async def refused_connect(*args: Any, **kwargs: Any) -> None:
        await node._on_connect_error({"message": "bad_signature", "data": {"detail": "wrong key"}})
        raise socketio.exceptions.ConnectionError("One or more namespaces failed to connect")

    node.sio.connect.side_effect = refused_connect
    with pytest.raises(ServerRefused, match=r"server refused node n1: bad_signature \(wrong key\)"):
        await node.run()
    node.kafka.start.assert_awaited_once_with()
    node.kafka.stop.assert_awaited_once_with()
    node.sio.connect.assert_awaited_once()


async def test_a_node_with_its_own_dp_floor_publishes_a_clipped_delta_when_the_server_asks_for_none(tmp_path):
    node = make_node(tmp_path)
    node.settings = replace(node.settings, dp_clip_norm=0.5)
    await node._on_start_round(START.to_wire())  # the round asks for no local DP
    await wait_until(lambda: sent(node, "fl_update"), what="the acknowledgement")
    (chunks,), _ = node.kafka.publish_update.await_args
    assembler = WeightAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    delta = [w - g for w, g in zip(assembler.result(), GLOBAL, strict=True)]  # FakeTrainer added 1 to 7 weights
    assert global_l2_norm(delta) == pytest.approx(0.5, rel=1e-6)
    await node.close()


@pytest.mark.parametrize(("server", "own", "applied"), [
    ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0)),
    ((1.0, 0.2), (0.0, 0.0), (1.0, 0.2)),
    ((1.0, 0.2), (0.5, 0.1), (0.5, 0.2)),
    ((0.0, 0.0), (0.5, 0.3), (0.5, 0.3)),
    ((2.0, 0.0), (0.0, 0.4), (2.0, 0.4)),
])
def test_the_node_applies_the_stricter_of_its_own_and_the_rounds_local_dp(server, own, applied):
    assert strictest_local_dp(server_clip=server[0], server_stddev=server[1], own_clip=own[0],
                              own_stddev=own[1]) == applied
