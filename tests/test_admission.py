"""Nobody keeps the server's connections by failing to prove who they are: refused and half-open sessions are
closed, and a burst from one address is shed before its handshake (issue: what a determined outsider gets)."""

import logging

import engineio
import pytest
import socketio

from common.wire.integrity import ConnectVerifier, KeyRegistry, connect_proof
from common.wire.protocol import Hello
from fl_server.admission import Admission
from fl_server.registry import NodeRegistry
from fl_server.transport.socketio import SocketIOFrontend, serve_socketio
from tests.waiting import wait_until

KEY = b"a" * 32
TIMEOUT_S = 20.0


def test_admission_caps_pending_sessions_per_address_overall_and_near_the_fd_limit():
    admission = Admission(max_pending_per_address=2, max_pending=3, fd_limit=100, fd_headroom=10, max_busy=0)
    assert [admission.open(f"s{i}", "10.0.0.1", 0) for i in range(3)] == [None, None, "too_many_pending_from_address"]
    assert admission.open("t1", "10.0.0.2", 0) is None
    assert admission.open("t2", "10.0.0.3", 0) == "too_many_pending"
    admission.admitted("s0")
    assert admission.open("s3", "10.0.0.1", 0) is None  # an admitted session no longer counts
    admission.closed("t1")
    assert admission.open("u1", "10.0.0.4", 90) == "fd_limit"
    assert dict(admission.shed_by_reason) == {"too_many_pending_from_address": 1, "too_many_pending": 1, "fd_limit": 1}


def fresh_proof(frontend: SocketIOFrontend) -> dict:
    """A proof over a challenge this server issued (what a node gets from GET /fl/challenge)."""
    challenge = frontend.verifier.issue_challenge()
    return connect_proof(KEY, "alice", challenge=challenge["challenge"], server_id=challenge["server_id"])


async def close_all(clients: list, frontend: SocketIOFrontend, runner) -> None:
    for client in clients:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - closing whatever state each client is in
            pass
    await frontend.sio.shutdown()
    await runner.cleanup()


@pytest.mark.timeout(120)
async def test_refused_and_half_open_sessions_are_closed_and_a_real_node_still_gets_in(caplog):
    frontend = SocketIOFrontend(NodeRegistry(), ConnectVerifier(KeyRegistry({"alice": KEY})),
                                admission=Admission(max_pending_per_address=4), handshake_timeout_s=1.0)
    runner = await serve_socketio(frontend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    open_sessions = lambda: len(frontend.sio.eio.sockets)  # noqa: E731
    clients: list = []
    try:
        with caplog.at_level(logging.WARNING, logger="fl_server.app"):
            # 30 refused hellos in a row: each session is closed by the server, none accumulates.
            for _ in range(30):
                client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
                clients.append(client)
                with pytest.raises(socketio.exceptions.ConnectionError):
                    await client.connect(url, auth=Hello("alice", 10).to_wire(), transports=["websocket"],
                                         wait_timeout=TIMEOUT_S)
            await wait_until(lambda: open_sessions() == 0)
            # Engine.IO sessions that never say hello: past 4 from this address they are shed at once, and the
            # first 4 are closed when their handshake times out.
            raw = [engineio.AsyncClient() for _ in range(6)]
            clients.extend(raw)
            outcomes = []
            for client in raw:
                try:
                    await client.connect(url, transports=["websocket"], engineio_path="socket.io")
                    outcomes.append("open")
                except engineio.exceptions.ConnectionError:
                    outcomes.append("shed")
            assert outcomes == ["open"] * 4 + ["shed"] * 2
            await wait_until(lambda: open_sessions() == 0)
        # Then a real node gets in.
        alice = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        clients.append(alice)
        await alice.connect(url, auth=Hello("alice", 10, proof=fresh_proof(frontend)).to_wire(),
                            transports=["websocket"], wait_timeout=TIMEOUT_S)
        assert [n.node_id for n in frontend.registry.snapshot()] == ["alice"]
        assert frontend.refused_by_reason == {"unauthenticated": 30, "too_many_pending_from_address": 2,
                                              "handshake_timeout": 4}
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) <= 5 * 3  # rate-limited: a few lines per reason, not one per attempt
    finally:
        await close_all(clients, frontend, runner)


@pytest.mark.timeout(120)
async def test_a_key_holder_cannot_evict_a_live_node_but_a_dead_connection_is_replaced():
    frontend = SocketIOFrontend(NodeRegistry(), ConnectVerifier(KeyRegistry({"alice": KEY})), liveness_timeout_s=0.5)
    runner = await serve_socketio(frontend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    clients: list[socketio.AsyncClient] = []
    replaced: list[dict] = []

    async def client(instance: str, *, answers_pings: bool) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        clients.append(sio)
        if answers_pings:
            sio.on("fl_ping", lambda data=None: {"alive": True})
        sio.on("fl_replaced", replaced.append)
        await sio.connect(url, transports=["websocket"], wait_timeout=TIMEOUT_S,
                          auth=Hello("alice", 10, proof=fresh_proof(frontend), instance=instance).to_wire())
        return sio

    def registered() -> str | None:
        info = frontend.registry.info("alice")
        return info.sid if info is not None else None

    try:
        alice = await client("instance-a", answers_pings=True)
        with pytest.raises(socketio.exceptions.ConnectionError):  # another holder of the key, while alice answers
            await client("instance-x", answers_pings=True)
        assert registered() == alice.get_sid("/") and frontend.refused_by_reason == {"node_id_in_use": 1}
        again = await client("instance-a", answers_pings=True)  # the same process reconnecting: replaces at once
        await wait_until(lambda: registered() == again.get_sid("/"))
        assert not replaced
        await again.disconnect()
        await wait_until(lambda: registered() is None)
        mute = await client("instance-m", answers_pings=False)  # a connection that no longer answers...
        successor = await client("instance-n", answers_pings=True)  # ...is replaced once its ping times out
        await wait_until(lambda: registered() == successor.get_sid("/"))
        await wait_until(lambda: len(replaced) == 1)  # and the replaced one was told why
        assert "did not answer" in replaced[0]["reason"]
        await wait_until(lambda: not mute.connected)
    finally:
        await close_all(clients, frontend, runner)
