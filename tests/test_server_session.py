"""ServerSession, the composition root, wired with fakes for the broker, TensorFlow, data and the nodes.

The Socket.IO frontend is the real one (bound to a free port); the nodes are played in-process by
``FakeFederation`` from the coordinator tests, whose records go through the session's own inspection
and inbox, as the Kafka plane's would."""

import asyncio
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from common.cli import UsageError
from common.data.dataspec import DataSpec
from fl_server.config import ServerConfig
from fl_server.coordinator import GlobalModel
from fl_server.data import ServerData
from fl_server.history import load_history
from fl_server.plan import plan_session
from fl_server.registry import NodeInfo
from fl_server.session import ServerSession, SessionModel
from tests.test_coordinator import INITIAL, FakeFederation
from tests.waiting import wait_until


class FakeKafka:
    def __init__(self, fake_nodes: FakeFederation) -> None:
        self.nodes = fake_nodes
        self.commits: list[dict[int, int]] = []
        self.started = self.stopped = 0

    async def start(self, inbox, inspect):
        self.started += 1
        return {0: 0}

    def commit(self, offsets):
        self.commits.append(offsets)

    async def publish_model(self, server_round, weights, model_sha256):
        return await self.nodes.publish_model(server_round, weights, model_sha256)

    async def stop(self):
        self.stopped += 1


class FakeRuntime:
    def __init__(self, broker_error: Exception | None = None) -> None:
        self.nodes = FakeFederation({"n1": "ok", "n3": "ok"})
        self.kafka_plane = FakeKafka(self.nodes)
        self.broker_error = broker_error
        self.tensorflow_loaded = False
        self.saved: list[tuple[list[np.ndarray], Path]] = []

    def check_broker(self, bootstrap):
        if self.broker_error is not None:
            raise self.broker_error

    def load_tensorflow(self, threads):
        self.tensorflow_loaded = True

    def kafka(self, endpoints, session_id, client_config, start_offsets):
        return self.kafka_plane

    async def server_data(self, config, checkpoint, gather):
        return ServerData(DataSpec.image((3,), 2), np.zeros((4, 3)), np.zeros(4), "fake")

    def build_model(self, config, data, checkpoint):
        return SessionModel(GlobalModel("{}", {}, INITIAL, data.spec.to_wire()),
                            lambda r, w: {"loss": float(np.sum(w[0]))},
                            lambda weights, path: self.saved.append((list(weights), path)), 3)


def config(tmp_path: Path, **changes) -> ServerConfig:
    settings = {"rounds": 2, "min_nodes": 2, "port": 0, "allow_unauthenticated": True, "history_dir": tmp_path,
                "session_id": "unit", "round_timeout": 5.0, "end_grace": 0.1, **changes}
    return ServerConfig(**settings)


def play_nodes(session: ServerSession, nodes: FakeFederation) -> None:
    """Route the session's start_round messages to the fake nodes (who answer through its coordinator)."""

    async def emit(event, data, sid):
        nodes.coordinator = session.frontend.coordinator
        await nodes.emit(event, data, sid)

    async def broadcast(event, data, sids):
        for sid in sids:
            await emit(event, data, sid)

    session.frontend.emit = emit  # type: ignore[method-assign]
    session.frontend.broadcast = broadcast  # type: ignore[method-assign]


async def run_with_nodes(session: ServerSession, runtime: FakeRuntime) -> Path:
    """Run the session with the fake nodes n1 and n3 connected; the history's path."""
    play_nodes(session, runtime.nodes)
    async with session:
        for node_id in ("n1", "n3"):
            await session.registry.add(NodeInfo(node_id, node_id, int(node_id[1:])))
        return await asyncio.wait_for(session.run(), 30)


async def test_a_session_runs_end_to_end_with_fake_parts(tmp_path):
    runtime = FakeRuntime()
    session = ServerSession(plan_session(config(tmp_path)), runtime)
    path = await run_with_nodes(session, runtime)
    document = load_history(path)
    assert document["status"] == "completed" and [r["round"] for r in document["rounds"]] == [1, 2]
    # round 2: n1 sends 2.0 with 1 sample, n3 sends 6.0 with 3 samples -> (2 + 18) / 4 = 5
    (final_weights, model_path), = runtime.saved
    np.testing.assert_allclose(final_weights[0], [5.0] * 3)
    assert document["final_model"] == str(model_path) == str(path.with_suffix(".keras"))
    assert runtime.tensorflow_loaded and len(runtime.kafka_plane.commits) == 2
    assert runtime.kafka_plane.started == runtime.kafka_plane.stopped == 1
    assert document["config"]["data_source"] == "fake" and document["config"]["num_parameters"] == 3
    assert document["rejected_updates_total"] == {} and "backpressure_waits" in document["inbox"]


async def test_a_cancelled_session_is_recorded_as_interrupted_and_stops_once(tmp_path):
    runtime = FakeRuntime()
    session = ServerSession(plan_session(config(tmp_path)), runtime)

    async def run() -> None:
        async with session:
            await session.run()  # waits for two nodes that never come

    task = asyncio.create_task(run())
    await wait_until(lambda: session.history is not None and session.history.path.exists())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await session.stop()  # idempotent
    assert runtime.kafka_plane.stopped == 1
    assert json.loads(session.history.path.read_text())["status"] == "interrupted"


async def test_an_unreachable_broker_stops_before_tensorflow_and_frees_the_port(tmp_path):
    runtime = FakeRuntime(broker_error=OSError("no Kafka broker answers"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = ServerSession(plan_session(config(tmp_path, port=port)), runtime)
    with pytest.raises(OSError, match="no Kafka broker"):
        await session.start()
    assert not runtime.tensorflow_loaded and session.history is None and not list(tmp_path.iterdir())
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # the session let go of its port


@pytest.mark.parametrize(("changes", "says"), [
    ({"allow_unauthenticated": False}, "no --node-keys"),
    ({"tls_cert": Path("cert.pem")}, "--tls-cert and --tls-key go together"),
    ({"session_id": "../escape"}, "must match"),
    ({"holdout": Path("h.csv")}, "--holdout needs --target"),
    ({"resume": Path("missing.json")}, "cannot resume"),
])
def test_the_plan_refuses_settings_that_cannot_work(tmp_path, changes, says):
    with pytest.raises(UsageError, match=says):
        plan_session(config(tmp_path, **changes))


async def test_dp_sgd_asks_every_node_for_dp_sgd_and_aggregates_as_usual(tmp_path):
    plan = plan_session(config(tmp_path, dp="sgd", dp_clip="1.5", dp_noise_multiplier=1.1, dp_delta=1e-6))
    assert type(plan.strategy).__name__ == "FedAvg"  # no DPAggregation: no server clipping or noise
    runtime = FakeRuntime()
    session = ServerSession(plan, runtime)
    path = await run_with_nodes(session, runtime)
    document = load_history(path)
    assert document["status"] == "completed" and [r["round"] for r in document["rounds"]] == [1, 2]
    assert {(c.dp_sgd_clip, c.dp_sgd_noise_multiplier, c.dp_delta, c.dp_clip_norm) for c in runtime.nodes.configs} == {
        (1.5, 1.1, 1e-6, 0.0)}
    (final_weights, _), = runtime.saved
    np.testing.assert_allclose(final_weights[0], [5.0] * 3)  # sample-weighted FedAvg, as without --dp
    assert all(r.get("privacy") is None for r in document["rounds"]) and "privacy_accountant" not in document


async def test_a_resumed_dp_session_continues_the_privacy_books(tmp_path):
    """Stop a DP session after round 2 (its checkpoint as it was then), resume it: round 3's epsilon is that of
    three rounds, not one (the books come back from the checkpoint, they do not start again at zero)."""
    from tests.test_privacy_session import library_epsilon

    dp = {"dp": "central", "dp_clip": "1.0", "dp_noise_multiplier": 1.0, "rounds": 3}
    runtime = FakeRuntime()
    saved: dict[Path, bytes] = {}

    def commit(offsets):  # after each persisted round: keep round 2's checkpoint files
        runtime.kafka_plane.commits.append(offsets)
        if len(runtime.kafka_plane.commits) == 2:
            saved.update({f: f.read_bytes() for f in (tmp_path / "checkpoints").iterdir()})

    runtime.kafka_plane.commit = commit
    session = ServerSession(plan_session(config(tmp_path, **dp)), runtime)
    path = await run_with_nodes(session, runtime)
    for f in (tmp_path / "checkpoints").iterdir():
        f.unlink()
    for f, content in saved.items():
        f.write_bytes(content)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "status": "interrupted", "rounds": document["rounds"][:2]}))

    again = FakeRuntime()
    resumed = ServerSession(plan_session(config(tmp_path, resume=path, rounds=9)), again)
    await run_with_nodes(resumed, again)
    rounds = load_history(path)["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and sorted({r for _, r in again.nodes.starts}) == [3]
    assert [r["privacy"]["epsilon"] for r in rounds] == pytest.approx(
        [library_epsilon(1.0, t) for t in (1, 2, 3)], rel=1e-9)
