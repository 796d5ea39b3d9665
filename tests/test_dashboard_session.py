"""The dashboard and /metrics wired into a ServerSession (fake broker, TensorFlow and nodes; the real frontend on
a free port): what they show equals the history, and --linger keeps them up until a signal, which ends it
cleanly."""

import asyncio
from collections import Counter

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from common.transport.kafka_security import Secret
from fl_server.config import ServerConfig, json_ready
from fl_server.history import load_history
from fl_server.plan import plan_session
from fl_server.registry import NodeInfo
from fl_server.session import ServerSession
from tests.test_server_session import FakeRuntime, config, play_nodes
from tests.waiting import wait_until


async def test_the_dashboard_and_metrics_show_the_session_and_linger_until_a_signal(tmp_path):
    runtime = FakeRuntime()
    session = ServerSession(plan_session(config(tmp_path, linger=600.0)), runtime)
    play_nodes(session, runtime.nodes)

    async def run() -> object:
        async with session:
            for node_id in ("n1", "n3"):
                await session.registry.add(NodeInfo(node_id, node_id, int(node_id[1:])))
            path = await session.run()
            await session.linger()
            return path

    task = asyncio.create_task(run())
    await wait_until(lambda: session.onlookers.live.status == "completed", 30, "the session to end")
    port = session._runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/dashboard/api/state") as response:
            state = await response.json()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    document = load_history(session.history.path)
    assert document["status"] == "completed"  # written before the linger, not at the exit
    assert [r["round"] for r in state["rounds"]] == [r["round"] for r in document["rounds"]] == [1, 2]
    assert [r["holdout_loss"] for r in state["rounds"]] == [r["holdout"]["loss"] for r in document["rounds"]]
    assert state["session"] | {} == {"id": "unit", "strategy": "fedavg", "model": "mlp", "dataset": "digits",
                                     "round": 2, "rounds": 2, "status": "completed", "round_open": False}
    assert state["links"] == {"history": True, "model": True}
    samples = {(s.name, tuple(s.labels.items())): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}
    assert samples[("fl_updates_accepted_total", ())] == sum(len(r["accepted"]) for r in document["rounds"]) == 4
    assert samples[("fl_rounds_total", (("status", "completed"),))] == 2
    assert samples[("fl_nodes_connected", ())] == len(session.registry)
    rejected = Counter()
    for r in document["rounds"]:
        rejected.update(r.get("rejected_updates_by_reason", {}))
    assert {k[1][0][1]: v for k, v in samples.items() if k[0] == "fl_updates_rejected_total"} == dict(rejected)
    assert not task.done()  # lingering
    task.cancel()  # what SIGTERM does (common.cli.run_until_signal)
    assert await asyncio.wait_for(task, 30) == session.history.path  # ends the linger, not the session
    assert load_history(session.history.path)["status"] == "completed"
    assert runtime.kafka_plane.stopped == 1


def test_the_dashboard_token_is_a_secret_never_recorded(monkeypatch):
    from fl_server.cli import build_parser

    monkeypatch.setenv("FL_DASHBOARD_TOKEN", "tok-123")
    args = build_parser().parse_args(["--allow-unauthenticated"])
    server_config = ServerConfig.from_args(args)
    assert isinstance(server_config.dashboard_token, Secret) and server_config.dashboard_token.reveal() == "tok-123"
    assert "tok-123" not in repr(server_config) and "tok-123" not in str(json_ready(
        server_config.history_settings()))
    assert "dashboard_token" not in server_config.history_settings()
