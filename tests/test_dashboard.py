"""The dashboard's pure parts (live state, token rule, past sessions) and its routes on a real aiohttp server:
read-only, token-guarded, bounded."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web

from fl_server.dashboard import routes as routes_module
from fl_server.dashboard.access import BAD_TOKEN, TOKEN_REQUIRED, is_loopback, presented_token, refusal
from fl_server.dashboard.routes import ConnectionsPoller, Dashboard
from fl_server.dashboard.runs import MAX_RUN_BYTES, PastRuns
from fl_server.dashboard.state import MAX_REASONS, LiveSession
from fl_server.history import SessionHistory
from fl_server.metrics import ServerMetrics
from fl_server.observe import Observers, SessionObserver
from fl_server.records import RoundRecord, RoundTimings
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.transport.socketio import SocketIOFrontend, serve_socketio
from tests.waiting import wait_until


@dataclass
class View:
    """A round as the collector shows it to observers (the ``RoundView`` protocol)."""

    participants: set[str]
    completed: dict[str, object] = field(default_factory=dict)
    acks: dict[str, object] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)


def record(server_round: int, *, participants: list[str], accepted: list[str], accuracy: float = 0.5,
           loss: float = 1.0, rejected: dict[str, int] | None = None, refused: dict[str, str] | None = None,
           status: str = "completed", timed_out: bool = False, epsilon: float | None = None) -> RoundRecord:
    return RoundRecord(
        server_round=server_round, status=status, started_at="t0", ended_at="t1", participants=participants,
        accepted=accepted, num_samples={n: 10 for n in accepted}, train_loss=0.7, train_per_node={},
        holdout={"loss": loss, "accuracy": accuracy},
        timings=RoundTimings(train=1.5, transport=0.25, waiting=0.0, aggregate=0.01, evaluate=0.2, total=2.0),
        timed_out=timed_out, rejected_by_reason=dict(rejected or {}), refused_nodes=dict(refused or {}),
        privacy={"epsilon": epsilon} if epsilon is not None else None)


# ---------------------------------------------------------------- the token rule (pure)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("203.0.113.7", False),
    ("example.org", False), ("", False), (None, False), ("::ffff:10.0.0.1", False),
])
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("listen_host", "peer", "token", "presented", "expected"), [
    ("127.0.0.1", "127.0.0.1", None, None, None),  # loopback server: open by default
    ("0.0.0.0", "127.0.0.1", None, None, None),  # beyond loopback, without a token: this machine only
    ("0.0.0.0", "203.0.113.7", None, None, TOKEN_REQUIRED),
    ("0.0.0.0", "203.0.113.7", None, "anything", TOKEN_REQUIRED),  # no token configured: nothing opens it
    ("0.0.0.0", None, None, None, TOKEN_REQUIRED),
    ("0.0.0.0", "203.0.113.7", "s3cret", None, TOKEN_REQUIRED),
    ("0.0.0.0", "203.0.113.7", "s3cret", "s3cret", None),
    ("0.0.0.0", "203.0.113.7", "s3cret", "s3cre", BAD_TOKEN),
    ("0.0.0.0", "203.0.113.7", "s3cret", "x" * 10_000, BAD_TOKEN),
    ("127.0.0.1", "127.0.0.1", "s3cret", None, TOKEN_REQUIRED),  # a configured token applies to everyone
    ("127.0.0.1", "127.0.0.1", "s3cret", "s3cret", None),
])
def test_token_rule(listen_host: str, peer: str | None, token: str | None, presented: str | None,
                    expected: str | None) -> None:
    assert refusal(listen_host=listen_host, peer=peer, token=token, presented=presented) == expected


@pytest.mark.parametrize(("authorization", "query", "expected"), [
    ("Bearer abc", None, "abc"), ("bearer  abc ", "zzz", "abc"), (None, "q", "q"), ("Basic abc", None, None),
    ("Bearer ", "q", "q"), (None, "", None),
])
def test_presented_token(authorization: str | None, query: str | None, expected: str | None) -> None:
    assert presented_token(authorization, query) == expected


# ---------------------------------------------------------------- the live state (pure)


def test_live_session_follows_a_round_node_by_node() -> None:
    live = LiveSession(session_id="s1", strategy="fedavg", rounds=3)
    versions = []
    live.listeners.append(lambda: versions.append(live.version))
    live.set_connected(["a", "b", "c", "d"], {"bad_proof": 2})
    live.session_started("s1", 3, 1)
    live.round_opened(1, ["a", "b", "c"], 4)
    states = {n["id"]: n["state"] for n in live.snapshot()["nodes"]}
    assert states == {"a": "training", "b": "training", "c": "training", "d": "idle"}
    view = View({"a", "b", "c"}, completed={"a": 1}, acks={"b": 1}, failed={"c": "shape_mismatch"},
                rejected={"shape_mismatch": 1})
    live.round_progress(1, view)
    nodes = {n["id"]: (n["state"], n["reason"]) for n in live.snapshot()["nodes"]}
    assert nodes == {"a": ("accepted", None), "b": ("uploaded", None), "c": ("rejected", "shape_mismatch"),
                     "d": ("idle", None)}
    assert live.snapshot()["rejected_by_reason"] == {"shape_mismatch": 1}
    version = live.version
    live.round_progress(1, view)  # nothing new: no new version, nothing pushed
    assert live.version == version
    live.set_connected(["a", "c", "d"], {"bad_proof": 2})  # b leaves while its update is still awaited
    live.round_closed(record(1, participants=["a", "b", "c"], accepted=["a"], rejected={"shape_mismatch": 1},
                             timed_out=True))
    snap = live.snapshot()
    assert {n["id"]: n["state"] for n in snap["nodes"]} == {"a": "accepted", "b": "dropped", "c": "rejected",
                                                           "d": "idle"}
    assert snap["rounds"] == [{"round": 1, "status": "completed", "participants": 3, "accepted": 1, "rejected": 1,
                               "train_loss": 0.7, "holdout_loss": 1.0, "holdout_accuracy": 0.5, "total_s": 2.0,
                               "epsilon": None, "timed_out": True, "failure": None}]
    assert snap["rejected_by_reason"] == {"shape_mismatch": 1}  # counted once, not again at the close
    assert snap["refused_connections_by_reason"] == {"bad_proof": 2}
    assert snap["session"] | {} == {"id": "s1", "strategy": "fedavg", "model": "", "dataset": "", "round": 1,
                                    "rounds": 3, "status": "running", "round_open": False}
    live.session_ended("completed")
    assert live.snapshot()["session"]["status"] == "completed"
    assert versions == sorted(versions) and len(versions) == live.version  # every change told the listeners
    json.dumps(live.snapshot(), allow_nan=False)


def test_live_session_late_refused_and_non_finite_numbers() -> None:
    live = LiveSession(session_id="s", strategy="fedavg", rounds=2)
    live.set_connected(["a", "b"], {})
    live.round_opened(1, ["a", "b"], 2)
    live.round_closed(record(1, participants=["a", "b"], accepted=[], refused={"a": "schema_mismatch: no column"},
                             loss=float("nan"), timed_out=True, status="failed"))
    nodes = {n["id"]: (n["state"], n["reason"]) for n in live.snapshot()["nodes"]}
    assert nodes == {"a": ("refused", "schema_mismatch: no column"), "b": ("late", "timed out")}
    assert live.snapshot()["rounds"][0]["holdout_loss"] is None  # NaN never reaches the page's JSON
    json.dumps(live.snapshot(), allow_nan=False)


def test_live_session_bounds_what_the_outside_can_grow() -> None:
    live = LiveSession(session_id="s", strategy="fedavg", rounds=1)
    live.set_connected([], {f"reason{i}": 1 for i in range(500)})
    assert len(live.snapshot()["refused_connections_by_reason"]) == MAX_REASONS
    live.round_opened(1, ["a"], 1)
    live.round_progress(1, View({"a"}, rejected={f"r{i}": 1 for i in range(500)}))
    assert len(live.snapshot()["rejected_by_reason"]) <= MAX_REASONS


def test_a_failing_observer_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(SessionObserver):
        def round_opened(self, server_round: int, participants: Any, connected: int) -> None:
            raise RuntimeError("bug in an onlooker")

    live = LiveSession(session_id="s", strategy="fedavg", rounds=1)
    Observers(Broken(), live).round_opened(1, ["a"], 1)
    assert live.current_round == 1
    assert "bug in an onlooker" in caplog.text


# ---------------------------------------------------------------- past sessions (hostile files)


def write_history(directory: Path, session_id: str, accuracies: list[float]) -> Path:
    history = SessionHistory.create(directory, session_id, {"strategy": "fedavg"})
    for index, accuracy in enumerate(accuracies, start=1):
        history.add_round(record(index, participants=["a"], accepted=["a"], accuracy=accuracy, loss=1 - accuracy))
    history.finish("completed")
    return history.path


def test_past_sessions_listed_and_hostile_files_refused(tmp_path: Path) -> None:
    write_history(tmp_path, "good", [0.5, 0.75])
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else", "rounds": []}))
    (tmp_path / "typed.json").write_text(json.dumps({"format": "fl-history/1", "rounds": [{"round": "one"}]}))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    write_history(tmp_path.parent, f"{tmp_path.name}-outside", [0.9])
    os.symlink(outside, tmp_path / "link.json")
    with open(tmp_path / "huge.json", "wb") as handle:
        handle.truncate(MAX_RUN_BYTES + 1)
    runs = PastRuns(tmp_path)
    rows = {row["name"]: row for row in runs.listing()}
    assert "link.json" not in rows  # a link may point anywhere: not followed
    good = rows.pop("good.json")
    assert good["session_id"] == "good" and good["rounds"] == 2 and good["final_accuracy"] == 0.75
    assert set(rows) == {"garbage.json", "other.json", "typed.json", "deep.json", "huge.json"}
    assert all(row.get("error") for row in rows.values())
    assert str(tmp_path) not in json.dumps(list(rows.values()))  # no server paths shown to the page
    assert runs.curve("good.json") == {"name": "good.json", "session_id": "good", "points": [
        {"round": 1.0, "accuracy": 0.5, "loss": 0.5}, {"round": 2.0, "accuracy": 0.75, "loss": 0.25}]}
    for name in ("garbage.json", "link.json", "../x.json", f"../{outside.name}", "good", ".hidden.json", "a/b.json"):
        assert runs.curve(name) is None, name


# ---------------------------------------------------------------- metrics (pure, own registries)


def test_server_metrics_count_what_the_round_records_say() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics, other = ServerMetrics(), ServerMetrics()  # two servers in one process: no clash
    metrics.describe_session(session_id="s1", strategy="fedavg", rounds=3)
    metrics.round_opened(1, ["a", "b"], 3)
    metrics.record_taken(1, 100)
    metrics.record_taken(1, 50)
    metrics.round_closed(record(1, participants=["a", "b"], accepted=["a"], rejected={"bad_mac": 2},
                                refused={"b": "schema_mismatch: x"}, accuracy=0.8, loss=0.4, epsilon=1.5))
    metrics.round_closed(record(2, participants=["a"], accepted=[], status="failed", rejected={"bad_mac": 1,
                                                                                              "replayed": 1}))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for s in family.samples}
    assert samples[("fl_updates_accepted_total", ())] == 1
    assert samples[("fl_updates_rejected_total", (("reason", "bad_mac"),))] == 3
    assert samples[("fl_updates_rejected_total", (("reason", "replayed"),))] == 1
    assert samples[("fl_rounds_total", (("status", "completed"),))] == 1
    assert samples[("fl_rounds_total", (("status", "failed"),))] == 1
    assert samples[("fl_node_refusals_total", (("reason", "schema_mismatch"),))] == 1
    assert samples[("fl_kafka_consumed_records_total", ())] == 2
    assert samples[("fl_kafka_consumed_bytes_total", ())] == 150
    assert samples[("fl_round", ())] == 1 and samples[("fl_round_participants", ())] == 2
    assert samples[("fl_rounds_planned", ())] == 3
    assert samples[("fl_holdout_accuracy", ())] == 0.5 and samples[("fl_holdout_loss", ())] == 1.0  # the latest
    assert samples[("fl_privacy_epsilon", ())] == 1.5
    assert samples[("fl_round_duration_seconds_count", (("stage", "train"),))] == 2
    assert samples[("fl_round_duration_seconds_sum", (("stage", "train"),))] == 3.0
    assert samples[("fl_session_info", (("session_id", "s1"), ("strategy", "fedavg")))] == 1
    assert b"fl_updates_accepted_total 0.0" in other.exposition()
    assert b"fl_privacy_epsilon" not in other.exposition()  # no DP, no epsilon (not a misleading 0)


def test_node_metrics_served_and_counted() -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from fl_node.metrics import NodeMetrics

    metrics = NodeMetrics("n0")
    metrics.update_published(2.5, 7)
    metrics.update_published(0.5, 3)
    metrics.reconnected()
    port = metrics.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        metrics.stop()
        metrics.stop()  # idempotent
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert values["fl_node_published_records_total"] == 10
    assert values["fl_node_updates_published_total"] == 2
    assert values["fl_node_reconnects_total"] == 1
    assert values["fl_node_train_seconds_sum"] == 3.0 and values["fl_node_train_seconds_count"] == 2


# ---------------------------------------------------------------- the routes on a real server


class RecordingInputs:
    """The round loop's inputs as the frontend sees them: records whatever reaches it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def on_ack(self, ack: Any) -> None:
        self.calls.append(ack)

    def on_refusal(self, refusal: Any) -> None:
        self.calls.append(refusal)

    def pending_start(self, node_id: str) -> None:
        return None


@dataclass
class Served:
    url: str
    live: LiveSession
    dashboard: Dashboard
    frontend: SocketIOFrontend
    registry: NodeRegistry


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Socket.IO and the dashboard on one real aiohttp server on loopback; the parameters (if any) say which
    address the dashboard believes it listens on, its token, and a peer address to pretend requests come from."""
    listen_host, token, spoofed_peer = getattr(request, "param", ("127.0.0.1", None, None))
    write_history(tmp_path, "past", [0.25, 0.5, 0.75])
    registry = NodeRegistry()
    frontend = SocketIOFrontend(registry, None)
    frontend.coordinator = RecordingInputs()
    live = LiveSession(session_id="live", strategy="fedavg", rounds=3)
    metrics = ServerMetrics()
    dashboard = Dashboard(live, metrics, listen_host=listen_host, token=token, history_dir=tmp_path,
                          files=lambda: {"history": tmp_path / "past.json", "model": None})
    poller = ConnectionsPoller(live, nodes=lambda: [n.node_id for n in registry.snapshot()],
                               refused=lambda: frontend.refused_by_reason, wait_changed=registry.wait_changed)

    def add_routes(app: web.Application) -> None:
        if spoofed_peer is not None:
            @web.middleware
            async def spoof(request: web.Request, handler: Any) -> web.StreamResponse:
                return await handler(request.clone(remote=spoofed_peer))

            app.middlewares.append(spoof)
        dashboard.add_routes(app)
        poller.add_to(app)

    runner = await serve_socketio(frontend, "127.0.0.1", 0, routes=add_routes)
    port = runner.addresses[0][1]
    try:
        yield Served(f"http://127.0.0.1:{port}", live, dashboard, frontend, registry)
    finally:
        await runner.cleanup()


async def read_event(stream: aiohttp.StreamReader) -> dict[str, Any]:
    """The next ``state`` event of a server-sent event stream."""
    event: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(stream.readline(), 20)).decode().rstrip("\n")
        if not line:
            if event.get("event") == "state":
                return json.loads(event["data"])
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = value


async def test_page_assets_state_and_past_sessions(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(served.url + "/", allow_redirects=True) as response:
            assert response.status == 200 and str(response.url).endswith("/dashboard/")
            page = await response.text()
            assert 'src="static/app.js"' in page and "http" not in page.split("<body>")[0].replace(
                'http-equiv', '')  # nothing fetched from elsewhere (no CDN)
        for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with http.get(served.url + "/dashboard/static/" + asset) as response:
                assert response.status == 200 and response.content_type == kind
        async with http.get(served.url + "/dashboard/static/..%2Fstate.py") as response:
            assert response.status == 404
        async with http.get(served.url + "/dashboard/api/state") as response:
            assert (await response.json())["session"]["id"] == "live"
        async with http.get(served.url + "/dashboard/api/runs") as response:
            runs = (await response.json())["runs"]
            assert [(r["name"], r["rounds"], r["final_accuracy"]) for r in runs] == [("past.json", 3, 0.75)]
        async with http.get(served.url + "/dashboard/api/runs/past.json") as response:
            assert [p["accuracy"] for p in (await response.json())["points"]] == [0.25, 0.5, 0.75]
        async with http.get(served.url + "/dashboard/api/runs/..%2F..%2Fetc%2Fpasswd") as response:
            assert response.status == 404
        async with http.get(served.url + "/dashboard/files/history") as response:
            assert response.status == 200 and (await response.json())["session_id"] == "past"
        async with http.get(served.url + "/dashboard/files/model") as response:
            assert response.status == 404  # not saved yet
        async with http.get(served.url + "/metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            assert "fl_updates_accepted_total 0.0" in await response.text()


async def test_stream_pushes_each_change_and_connections(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stream notices a client that left when it next writes: keep-alives often, so this test need not wait.
    monkeypatch.setattr(routes_module, "KEEPALIVE_S", 0.2)
    async with aiohttp.ClientSession() as http, http.get(served.url + "/dashboard/events") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        first = await read_event(response.content)
        assert first["session"]["round"] == 0 and first["nodes"] == []
        await served.registry.add(NodeInfo("n0", "sid0", 10))  # a node connects: the poller sees it
        state = await read_event(response.content)
        while [n["id"] for n in state["nodes"]] != ["n0"]:
            state = await read_event(response.content)
        served.live.round_opened(1, ["n0"], 1)
        served.live.round_closed(record(1, participants=["n0"], accepted=["n0"], accuracy=0.9))
        while not state["rounds"]:
            state = await read_event(response.content)
        assert state["rounds"][0]["holdout_accuracy"] == 0.9 and state["version"] > first["version"]
    await wait_until(lambda: served.dashboard.streams == 0, what="the closed stream forgotten")


async def test_streams_are_capped(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_module, "MAX_STREAMS", 2)
    async with aiohttp.ClientSession() as http:
        open_streams = [await http.get(served.url + "/dashboard/events") for _ in range(2)]
        await wait_until(lambda: served.dashboard.streams == 2, what="two streams open")
        async with http.get(served.url + "/dashboard/events") as response:
            assert response.status == 503
        for stream in open_streams:
            stream.close()


async def test_the_dashboard_channel_is_read_only(served: Served) -> None:
    """Nothing sent to the dashboard reaches the round loop: its routes take GET only, and there is no
    Socket.IO namespace a dashboard client could emit node events on."""
    ack = {"session_id": "s", "server_round": 1, "node_id": "n0", "num_samples": 10, "num_records": 1}
    async with aiohttp.ClientSession() as http:
        for path in ("/dashboard/events", "/dashboard/api/state", "/dashboard/", "/metrics",
                     "/dashboard/api/runs/past.json"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                async with http.request(method, served.url + path, json={"event": "fl_update", "data": ack}) as r:
                    assert r.status == 405, (method, path)
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(served.url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=10)
    await client.disconnect()
    assert served.frontend.coordinator.calls == []  # type: ignore[union-attr]
    assert len(served.registry) == 0


@pytest.mark.parametrize("served", [("0.0.0.0", None, "203.0.113.7")], indirect=True)
async def test_beyond_loopback_without_a_token_a_remote_peer_is_refused(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/dashboard/api/state", "/dashboard/events", "/dashboard/api/runs",
                     "/dashboard/files/history"):
            async with http.get(served.url + path, headers={"Authorization": "Bearer guess"}) as response:
                assert response.status == 403, path
                assert (await response.json())["error"] == TOKEN_REQUIRED
    assert served.dashboard.refused_by_reason == {TOKEN_REQUIRED: 5}


@pytest.mark.parametrize("served", [("0.0.0.0", None, None)], indirect=True)
async def test_beyond_loopback_without_a_token_this_machine_may_read(served: Served) -> None:
    async with aiohttp.ClientSession() as http, http.get(served.url + "/metrics") as response:
        assert response.status == 200


@pytest.mark.parametrize("served", [("0.0.0.0", "s3cret-token", "203.0.113.7")], indirect=True)
async def test_with_a_token_the_remote_peer_must_present_it(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(served.url + "/metrics") as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(served.url + "/metrics", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401 and (await response.json())["error"] == BAD_TOKEN
        async with http.get(served.url + "/metrics", headers={"Authorization": "Bearer s3cret-token"}) as response:
            assert response.status == 200
        async with http.get(served.url + "/dashboard/events?token=s3cret-token") as response:
            assert (await read_event(response.content))["session"]["id"] == "live"
        async with http.get(served.url + "/dashboard/") as response:
            assert response.status == 200  # the page itself holds no data; what it fetches is guarded


def test_a_resumed_session_shows_its_earlier_rounds(tmp_path: Path) -> None:
    from fl_server.config import ServerConfig
    from fl_server.dashboard.onlookers import make_onlookers
    from fl_server.inbox import Inbox

    registry = NodeRegistry()
    onlookers = make_onlookers(ServerConfig(rounds=5), "resumed", registry=registry,
                               frontend=SocketIOFrontend(registry), inbox=Inbox(), files=dict)
    onlookers.replay([record(1, participants=["a"], accepted=["a"], accuracy=0.5),
                      record(2, participants=["a"], accepted=["a"], accuracy=0.6)])
    onlookers.observer.session_started("resumed", 5, 3)
    snap = onlookers.live.snapshot()
    assert [r["holdout_accuracy"] for r in snap["rounds"]] == [0.5, 0.6]
    assert snap["session"]["round"] == 2 and snap["session"]["rounds"] == 5
    assert b"fl_updates_accepted_total 0.0" in onlookers.metrics.exposition()  # this process has counted nothing
