"""``fl-node``'s exit codes and error lines (common/cli.py's convention), with a stand-in for the node."""

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from socketio.exceptions import ConnectionError as SocketIOConnectionError

import fl_node.cli as node_cli
from fl_node.client import EXIT_IDLE, ServerRefused


class StandInNode:
    """What ``run`` reads of a FederatedNode: ``run()``'s result and the ``refused``/``idle_timed_out`` flags."""

    def __init__(self, outcome: object = None, *, refused: str | None = None, idle: bool = False) -> None:
        self.outcome, self.refused, self.idle_timed_out = outcome, refused, idle

    async def run(self) -> Path | None:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome  # type: ignore[return-value]


@pytest.fixture
def node_main(monkeypatch):
    monkeypatch.setattr(node_cli, "load_local_data", lambda args: SimpleNamespace(num_rows=6))

    def main(node: StandInNode, *argv: str) -> int:
        monkeypatch.setattr(node_cli, "build_node", lambda setup: node)
        return node_cli.main(["--node-id", "n1", "--server", "http://127.0.0.1:9", *argv])

    return main


@pytest.mark.parametrize(("node", "code", "says"), [
    (StandInNode(ServerRefused("server refused node n1: unknown_node")), 2,
     "fl-node: error: server refused node n1: unknown_node\n"),
    (StandInNode(refused="the server refuses this node: bad_signature"), 2,
     "fl-node: error: node n1 could not take part: the server refuses this node: bad_signature\n"),
    (StandInNode(SocketIOConnectionError("Connection refused")), 1,
     "fl-node: error: node n1 could not connect to http://127.0.0.1:9: Connection refused\n"),
    (StandInNode(TimeoutError("model for round 2 not complete after 120s")), 1,
     "fl-node: error: model for round 2 not complete after 120s\n"),
    (StandInNode(idle=True), EXIT_IDLE, ""),
    (StandInNode(None), 1, ""),  # the session ended but the final model could not be saved (logged)
    (StandInNode(asyncio.CancelledError()), 130, re.compile(r".* WARNING +common\.cli: fl-node stopped by signal\n")),
])
def test_every_way_a_node_ends_has_its_exit_code_and_one_error_line(node_main, capsys, node, code, says):
    assert node_main(node, "--quiet") == code
    captured = capsys.readouterr()
    assert (says.fullmatch(captured.err) if isinstance(says, re.Pattern) else captured.err == says), captured.err
    assert captured.out == ""


def test_a_finished_session_prints_the_final_models_path(node_main, capsys, tmp_path):
    assert node_main(StandInNode(tmp_path / "s-n1.keras"), "--quiet") == 0
    assert capsys.readouterr().out == f"{tmp_path / 's-n1.keras'}\n"


@pytest.mark.parametrize(("argv", "says"), [
    (["--node-id", "no spaces"], "bad_node_id"),
    (["--key-file", "/nonexistent/n1.key"], "/nonexistent/n1.key"),
    (["--dp-noise-stddev", "0.1"], "--dp-noise-stddev needs --dp-clip"),
])
def test_a_bad_setting_is_a_usage_error_before_the_node_starts(node_main, capsys, argv, says):
    started = StandInNode(AssertionError("the node must not start"))
    assert node_main(started, *argv, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("fl-node: error: ") and says in err and err.count("\n") == 1


def test_metrics_port_serves_the_nodes_metrics_while_it_runs_and_stops_after(node_main, capsys, tmp_path):
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    scraped: list[str] = []

    class Scraped(StandInNode):
        async def run(self) -> Path | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                scraped.append(response.read().decode())
            return tmp_path / "m.keras"

    assert node_main(Scraped(None), "--quiet", "--metrics-port", str(port)) == 0
    assert 'fl_node_info{node_id="n1"} 1.0' in scraped[0] and "fl_node_reconnects_total 0.0" in scraped[0]
    with socket.socket() as sock:  # no longer listening once the node ended (TIME_WAIT aside)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_metrics_port_out_of_range_is_a_usage_error(node_main, capsys, port):
    assert node_main(StandInNode(None), "--quiet", "--metrics-port", port) == 2
    assert "--metrics-port" in capsys.readouterr().err
