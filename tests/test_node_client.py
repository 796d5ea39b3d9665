"""The node's round handling with fakes (no server, no Kafka, no TensorFlow): a local failure becomes a refusal."""

import asyncio
import threading
from pathlib import Path
from unittest.mock import AsyncMock

import numpy as np
import pytest

from common.data.dataspec import DataSpec
from common.wire.protocol import ModelMessage, ModelRef, StartRound, TrainConfig
from fl_node.client import FederatedNode, NodeSettings
from fl_node.connection import describe_refusal
from fl_node.data import LocalData
from fl_node.kafka import NodeKafka
from fl_node.trainer import TrainResult

IMAGES = np.zeros((6, 4), np.float32), np.array([0, 1, 0, 1, 0, 1])


class FakeTrainer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.num_samples = 6
        self.max_model_params = 1000
        self.threads: list[str] = []

    def set_data(self, x, y):
        self.threads.append(threading.current_thread().name)

    def train(self, architecture, compile_spec, weights, config, *, server_round, session_id=""):
        if self.error is not None:
            raise self.error
        return TrainResult(weights=weights, metrics={"loss": 0.5}, train_s=0.01)


def start_round(input_shape=(4,)) -> StartRound:
    model = ModelMessage("{}", {}, ModelRef("models", 0, 0, 0, 1), DataSpec.image(input_shape, 2).to_wire())
    return StartRound("s", 3, TrainConfig(1, 8, 0.1), model)


def make_node(tmp_path: Path, trainer: FakeTrainer) -> FederatedNode:
    settings = NodeSettings(node_id="n1", server_url="http://127.0.0.1:1", kafka="127.0.0.1:1", updates_topic="u",
                            out_dir=tmp_path, chunk_bytes=1024)
    kafka = AsyncMock(spec=NodeKafka)
    kafka.fetch_model.return_value = [np.zeros(3, np.float32)]
    kafka.publish_update.return_value = [(0, 7)]
    node = FederatedNode(settings, LocalData(x=IMAGES[0], y=IMAGES[1]), trainer, kafka)  # type: ignore[arg-type]
    node.sio = AsyncMock()
    node.sio.call.return_value = {"received": True}
    return node


def refusals(node: FederatedNode) -> list[dict]:
    return [call.args[1] for call in node.sio.call.await_args_list if call.args[0] == "fl_refuse"]


async def test_training_that_raises_is_refused_at_once_and_the_node_stays(tmp_path):
    node = make_node(tmp_path, FakeTrainer(RuntimeError("out of memory")))
    await asyncio.wait_for(node._run_round(start_round()), 10)
    (refusal,) = refusals(node)
    assert refusal["reason"] == "train_failed" and refusal["round"] == 3 and refusal["node_id"] == "n1"
    assert "RuntimeError: out of memory" in refusal["detail"]
    assert not node._finished.is_set() and node.refused is None  # it takes part in the next rounds
    await node.close()


async def test_data_that_does_not_fit_the_schema_is_refused_and_the_node_leaves(tmp_path):
    node = make_node(tmp_path, FakeTrainer())
    await asyncio.wait_for(node._run_round(start_round(input_shape=(9,))), 10)
    (refusal,) = refusals(node)
    assert refusal["reason"] == "schema_mismatch"
    assert node._finished.is_set() and node.refused
    await node.close()


@pytest.mark.parametrize(("stage", "reason"), [("fetch", "fetch_failed"), ("publish", "publish_failed")])
async def test_every_local_stage_failure_names_its_stage(tmp_path, stage, reason):
    node = make_node(tmp_path, FakeTrainer())

    failing = node.kafka.fetch_model if stage == "fetch" else node.kafka.publish_update
    failing.side_effect = OSError(f"{stage} broke")
    await asyncio.wait_for(node._run_round(start_round()), 10)
    assert [r["reason"] for r in refusals(node)] == [reason]
    await node.close()


async def test_data_is_prepared_on_the_worker_thread_not_the_event_loop(tmp_path):
    trainer = FakeTrainer(RuntimeError("stop after preparing"))
    node = make_node(tmp_path, trainer)
    await asyncio.wait_for(node._run_round(start_round()), 10)
    assert trainer.threads and all(name.startswith("fl-node-worker") for name in trainer.threads)
    await node.close()


async def test_a_node_without_session_traffic_for_max_idle_exits_with_its_code(tmp_path):
    node = make_node(tmp_path, FakeTrainer())
    node.settings = type(node.settings)(**{**node.settings.__dict__, "max_idle_s": 0.3})
    await asyncio.wait_for(node.run(), 20)
    assert node.idle_timed_out and node.refused is None


@pytest.mark.parametrize(("data", "says"), [
    ({"message": "unknown_node", "data": {"detail": "node 'n1' is not in the key registry"}},
     "unknown_node (node 'n1' is not in the key registry)"),
    ({"message": "stale_proof", "data": {"detail": "proof is 400s old", "server_time": 1_000.0}},
     "s off the server's"),
])
async def test_a_refusal_that_retrying_cannot_heal_stops_a_reconnecting_node(tmp_path, data, says):
    node = make_node(tmp_path, FakeTrainer())
    node._ever_connected, node.sio.connected = True, False  # it was in, lost the server, and reconnects
    await node._on_connect_error(data)
    assert node._finished.is_set() and says in node.refused


async def test_a_server_that_is_not_there_yet_is_not_a_refusal(tmp_path):
    node = make_node(tmp_path, FakeTrainer())
    node._ever_connected, node.sio.connected = True, False
    await node._on_connect_error("Connection refused by the OS")
    assert not node._finished.is_set() and node.refused is None


@pytest.mark.parametrize(("data", "expected"), [
    ("Connection refused by the OS", None),
    ({"message": "unknown_challenge"}, ("unknown_challenge", "unknown_challenge")),
    ({"message": "bad_proof", "data": {"detail": "x" * 300}}, ("bad_proof", f"bad_proof ({'x' * 200})")),
    ({"message": "stale_proof", "data": {"server_time": 1_000.0}},
     ("stale_proof", "stale_proof; this node's clock is -400 s off the server's")),
    ({"message": "stale_proof", "data": {"server_time": True}}, ("stale_proof", "stale_proof")),
])
def test_a_connect_error_is_a_refusal_only_when_the_server_answered(data, expected):
    assert describe_refusal(data, now=600.0) == expected


class RecordingTrainer(FakeTrainer):
    """Training adds 1 to every weight; saving records what was saved."""

    def __init__(self) -> None:
        super().__init__()
        self.configs: list = []
        self.saved: list = []

    def train(self, architecture, compile_spec, weights, config, *, server_round, session_id=""):
        self.configs.append(config)
        return TrainResult(weights=[np.asarray(w) + 1 for w in weights], metrics={"loss": 0.5}, train_s=0.01)

    def save(self, architecture, weights, path):
        self.saved.append([np.asarray(w) for w in weights])


@pytest.mark.parametrize("epochs", [0, 3])
async def test_finetune_epochs_train_the_final_model_locally_before_saving(tmp_path, epochs):
    from dataclasses import replace

    from common.wire.protocol import EndSession

    trainer = RecordingTrainer()
    node = make_node(tmp_path, trainer)
    node.settings = replace(node.settings, finetune_epochs=epochs)
    start = start_round()
    node._in_progress.discard((start.session_id, start.server_round))
    await node._on_start_round(start.to_wire())  # a round of this session trains here
    await asyncio.wait_for(asyncio.gather(*node._tasks), 10)
    node.kafka.fetch_model.return_value = [np.full(3, 5.0, np.float32)]
    await asyncio.wait_for(node._finish(EndSession("s", 3, start.model)), 10)
    (saved,) = trainer.saved
    np.testing.assert_array_equal(saved[0], np.full(3, 5.0 + (1 if epochs else 0)))
    if epochs:
        finetune = trainer.configs[-1]
        assert (finetune.epochs, finetune.batch_size, finetune.learning_rate) == (3, 8, 0.1)
        assert len(trainer.configs) == 2  # the round, then the fine-tune
    else:
        assert len(trainer.configs) == 1
    node.kafka.publish_update.assert_awaited_once()  # the round's update only: nothing of the fine-tune is sent
    await node.close()
