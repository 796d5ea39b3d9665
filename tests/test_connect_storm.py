"""Admission control during connect storms (issue 19): past ``max_pending`` handshakes in flight, a connection is
told ``server_busy`` with a retry-after it can act on (not a timeout), and nodes back off with jitter."""

import random

import engineio
import pytest
import socketio

from common.wire.protocol import Hello
from fl_node.connection import MAX_BACKOFF_S, MAX_RETRY_AFTER_S, backoff_pause_s, describe_refusal, retry_after_of
from fl_server.admission import MAX_RETRY_AFTER_S as SERVER_MAX_RETRY_AFTER_S
from fl_server.admission import Admission, retry_after_s
from fl_server.registry import NodeRegistry
from fl_server.transport.socketio import SocketIOFrontend, serve_socketio
from tests.waiting import wait_until


def test_past_max_pending_sessions_are_let_open_busy_then_shed():
    admission = Admission(max_pending_per_address=100, max_pending=2, max_busy=2, fd_limit=10_000)
    assert [admission.open(f"s{i}", f"10.0.0.{i}", 0) for i in range(5)] == [None] * 4 + ["too_many_pending"]
    assert [admission.is_busy(f"s{i}") for i in range(4)] == [False, False, True, True]
    admission.admitted("s0")  # a handshake completes: room for one more real one
    assert admission.open("s5", "10.0.0.5", 0) is None and not admission.is_busy("s5")
    admission.closed("s2")  # a busy one was refused and closed: room for one more busy one
    assert admission.open("s6", "10.0.0.6", 0) is None and admission.is_busy("s6")
    assert dict(admission.shed_by_reason) == {"too_many_pending": 1}


@pytest.mark.parametrize(("waiting", "max_pending", "expected"), [
    (0, 512, 1.0), (512, 512, 2.0), (1024, 512, 4.0), (100_000, 512, SERVER_MAX_RETRY_AFTER_S), (5, 0, 10.0)])
def test_retry_after_grows_with_the_queue_within_bounds(waiting, max_pending, expected):
    assert retry_after_s(waiting, max_pending) == expected


def test_backoff_is_jittered_exponential_and_honours_retry_after():
    rng = random.Random(7)
    delay, pauses = 0.5, []
    for _ in range(8):
        pause, delay = backoff_pause_s(delay, rng=rng)
        pauses.append(pause)
    assert delay == MAX_BACKOFF_S
    bases = [min(0.5 * 2 ** i, MAX_BACKOFF_S) for i in range(8)]
    assert all(0.5 * b <= p < 1.5 * b for p, b in zip(pauses, bases, strict=True))
    assert len(set(pauses)) == len(pauses)  # jittered: no two nodes (draws) wait alike
    busy = [backoff_pause_s(1.0, retry_after_s=4.0, rng=rng) for _ in range(50)]
    assert all(4.0 <= p < 8.0 and d == 1.0 for p, d in busy)  # spread over [R, 2R), the delay unchanged


@pytest.mark.parametrize(("data", "expected"), [
    ({"message": "server_busy", "data": {"retry_after_s": 3.5}}, 3.5),
    ({"message": "server_busy", "data": {"retry_after_s": 1e9}}, MAX_RETRY_AFTER_S),  # untrusted: capped
    ({"message": "server_busy", "data": {"retry_after_s": float("nan")}}, None),
    ({"message": "server_busy", "data": {"retry_after_s": True}}, None),
    ({"message": "server_busy", "data": {"retry_after_s": -1}}, None),
    ({"message": "server_busy"}, None),
    ("Connection error", None),
])
def test_retry_after_of_a_refusal(data, expected):
    assert retry_after_of(data) == expected


@pytest.mark.timeout(60)
async def test_a_connection_past_the_handshake_bound_is_told_server_busy_with_a_retry_after():
    frontend = SocketIOFrontend(NodeRegistry(), admission=Admission(max_pending=2, max_busy=4),
                                handshake_timeout_s=30.0)
    runner = await serve_socketio(frontend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    half_open = [engineio.AsyncClient() for _ in range(2)]  # two handshakes in flight that never say hello
    refusals: list = []
    node = socketio.AsyncClient(reconnection=False, handle_sigint=False)
    node.on("connect_error", refusals.append)
    try:
        for client in half_open:
            await client.connect(url, transports=["websocket"], engineio_path="socket.io")
        await wait_until(lambda: frontend.admission.pending == 2, what="two pending handshakes")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await node.connect(url, auth=Hello("n1", 10).to_wire(), transports=["websocket"], wait_timeout=10)
        assert describe_refusal(refusals[0], now=0)[0] == "server_busy"
        assert retry_after_of(refusals[0]) == 3.0  # three waiting for a queue of two: 2 s per full queue
        assert frontend.refused_by_reason == {"server_busy": 1} and len(frontend.registry) == 0
        for client in half_open:  # the storm passes: the node gets in
            await client.disconnect()
        await wait_until(lambda: frontend.admission.pending == 0, what="the half-open sessions closed")
        await node.connect(url, auth=Hello("n1", 10).to_wire(), transports=["websocket"], wait_timeout=10)
        assert [n.node_id for n in frontend.registry.snapshot()] == ["n1"]
    finally:
        await node.disconnect()
        for client in half_open:
            await client.disconnect()
        await frontend.sio.shutdown()
        await runner.cleanup()
