"""The server's Socket.IO control plane (python-socketio on aiohttp): hello and admission, acknowledgements,
refusals, statistics requests. Handlers validate and hand over to the round loop (``RoundInputs``); they hold
no training logic.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NoReturn, Protocol

import socketio
from aiohttp import web

from common.ratelog import RateLimitedLog
from common.wire.integrity import ConnectVerifier
from common.wire.protocol import Hello, NodeRefusal, ProtocolError, StartRound, UpdateAck
from common.wire.safe_json import MALFORMED_EVENT, SocketIOJson
from fl_server.admission import DEFAULT_HANDSHAKE_TIMEOUT_S, Admission
from fl_server.registry import NodeInfo, NodeRegistry
from fl_server.secure_round import NODE_EVENTS, SecAggInput

logger = logging.getLogger(__name__)
REFUSED_CLOSE_DELAY_S = 0.5
CHALLENGE_PATH = "/fl/challenge"
LIVENESS_TIMEOUT_S = 5.0  # a connected node that does not answer fl_ping in this long may be replaced


class RoundInputs(Protocol):
    """What the frontend hands to the round loop (``fl_server.coordinator.Coordinator`` implements it)."""

    def on_ack(self, ack: UpdateAck) -> None: ...

    def on_refusal(self, refusal: NodeRefusal) -> None: ...

    def pending_start(self, node_id: str) -> StartRound | None: ...

    def on_secagg(self, item: SecAggInput) -> None: ...

    def model_spec(self) -> dict[str, Any]: ...


def peer_address(environ: Any) -> str:
    """The client's address (python-engineio's aiohttp driver puts a fixed 127.0.0.1 in REMOTE_ADDR)."""
    if isinstance(environ, dict):
        request = environ.get("aiohttp.request")
        remote = getattr(request, "remote", None)
        if isinstance(remote, str):
            return remote
        return str(environ.get("REMOTE_ADDR", "?"))
    return "?"


class IndexedRoomsManager(socketio.AsyncManager):
    """python-socketio's client manager with an index of each client's rooms.

    The stock manager finds a disconnecting client's rooms by scanning every room of the namespace, and every
    client has a room of its own: a disconnect costs O(clients), a wave of k disconnects O(k * N) (issue 19: at
    8,000 nodes the server missed heartbeats). With the index a disconnect costs O(rooms the client is in)."""

    def __init__(self) -> None:
        super().__init__()
        self._rooms_of: dict[tuple[str, str], set[Any]] = {}  # (namespace, sid) -> the rooms it is in

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self._rooms_of.pop((namespace, sid), None)
        # The rest as the stock manager does it (callbacks, pending lists): O(1) or O(pending), not O(clients).
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if namespace in pending and sid in pending[namespace]:
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]


class GuardedAsyncServer(socketio.AsyncServer):
    """python-socketio's server with admission control at the Engine.IO level (``fl_server.admission``):
    a session is refused before any handshake when its address or the server has too many pending ones."""

    def __init__(self, frontend: SocketIOFrontend, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._frontend = frontend

    async def _handle_eio_connect(self, eio_sid: str, environ: Any) -> Any:
        if not self._frontend.admit_transport(eio_sid, environ):
            return False  # python-engineio answers 401 and keeps nothing
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_connect(self, eio_sid: str, namespace: Any, data: Any) -> None:
        if eio_sid not in self.environ:  # closed (handshake timeout, shutdown) while its CONNECT was on the way
            self._frontend.refused_by_reason["closed_before_hello"] += 1
            return  # python-socketio would raise KeyError from its environ map: a traceback per connection
        await super()._handle_connect(eio_sid, namespace, data)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        self._frontend.admission.closed(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)


class SocketIOFrontend:
    """Socket.IO event handlers: connect (hello), disconnect, fl_update; anything else is logged and dropped.

    With a ``verifier`` every connect must carry a fresh proof of the node's key (``common.wire.integrity``);
    without one (``--allow-unauthenticated``) any well-formed hello is let in."""

    def __init__(self, registry: NodeRegistry, verifier: ConnectVerifier | None = None, *,
                 admission: Admission | None = None,
                 handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
                 liveness_timeout_s: float = LIVENESS_TIMEOUT_S) -> None:
        self.registry = registry
        self.liveness_timeout_s = liveness_timeout_s
        self.admission = admission or Admission()
        self.handshake_timeout_s = handshake_timeout_s
        self.verifier = verifier
        self.coordinator: RoundInputs | None = None
        self.refused_by_reason: Counter[str] = Counter()
        self.refusals: dict[str, str] = {}
        self.malformed_by_reason: Counter[str] = Counter()  # packets whose JSON was unfit (common.wire.safe_json)
        self._tasks: set[Any] = set()  # background emits, referenced until done
        self._log = RateLimitedLog(logger)  # anything a client can repeat is logged through this
        # Every packet's JSON is parsed by SocketIOJson: size, depth and number limits, never an exception.
        self.sio = GuardedAsyncServer(self, async_mode="aiohttp", logger=False, engineio_logger=False,
                                      json=SocketIOJson, max_http_buffer_size=SocketIOJson.max_bytes,
                                      client_manager=IndexedRoomsManager())
        self._broadcasts = 0  # rooms made for one message each (their names)
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("fl_update", self.on_update)
        self.sio.on("fl_refuse", self.on_refuse)
        self.sio.on("fl_model_spec", self.on_model_spec)
        for event in NODE_EVENTS:
            self.sio.on(event, partial(self.on_secagg, event))
        self.sio.on(MALFORMED_EVENT, self.on_malformed)
        self.sio.on("*", self.on_unknown)

    @property
    def refused(self) -> int:
        return sum(self.refused_by_reason.values())

    async def challenge(self, request: web.Request) -> web.Response:
        """``GET /fl/challenge``: a single-use challenge a node's next connect proof must cover."""
        if self.verifier is None:  # --allow-unauthenticated: proofs are not checked
            return web.json_response({"challenge": None, "server_id": None})
        return web.json_response(self.verifier.issue_challenge())

    def admit_transport(self, eio_sid: str, environ: Any) -> bool:
        """A new Engine.IO session: may it start a handshake? Pending ones are closed after the handshake timeout."""
        address = peer_address(environ)
        reason = self.admission.open(eio_sid, address, len(self.sio.eio.sockets))
        if reason is not None:
            self.refused_by_reason[reason] += 1
            self._log.warning(f"shed:{reason}", "shed a connection from %s before its handshake (%s; %d pending)",
                              address, reason, self.admission.pending)
            return False
        asyncio.get_running_loop().call_later(self.handshake_timeout_s, self._expire_handshake, eio_sid)
        return True

    def _expire_handshake(self, eio_sid: str) -> None:
        if self.admission.is_pending(eio_sid):
            self.refused_by_reason["handshake_timeout"] += 1
            self._log.warning("handshake_timeout", "closed a connection that did not complete its hello within %.0fs",
                              self.handshake_timeout_s)
            self._close_transport(eio_sid, delay_s=0.0)

    def _close_transport(self, eio_sid: str, delay_s: float) -> None:
        """Close an Engine.IO session (after ``delay_s``, so that a refusal reaches the client first)."""
        self.admission.closed(eio_sid)

        async def close() -> None:
            if delay_s:
                await asyncio.sleep(delay_s)  # lets the CONNECT_ERROR packet go out before the socket closes
            await self.sio.eio.disconnect(eio_sid)

        task = asyncio.get_running_loop().create_task(close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _eio_sid(self, sid: str) -> str | None:
        try:
            return self.sio.manager.eio_sid_from_sid(sid, "/")
        except (KeyError, TypeError):
            return None

    def _lifecycle_event_from_client(self, event: str, sid: str) -> bool:
        """True if a connected client emitted an event named ``connect``/``disconnect``.

        python-socketio routes such events to the lifecycle handlers; during a real connect or
        disconnect the session is still pending, so it does not count as connected yet (or any more;
        this relies on the server's default ``always_connect=False``)."""
        if not self.sio.manager.is_connected(sid, "/"):
            return False
        node = self.registry.node_for_sid(sid) or sid
        self._log.warning("lifecycle_event", "ignored a %r event from %s", event, node)
        return True

    async def on_connect(self, sid: str, environ: Any = None, auth: Any = None, *_extra: Any) -> None:
        if self._lifecycle_event_from_client("connect", sid):
            return
        eio_sid = self._eio_sid(sid)
        if eio_sid is not None and self.admission.is_busy(eio_sid):  # past the bound on handshakes in flight
            retry_after = self.admission.retry_after_s()
            self._refuse(sid, environ, "server_busy", ProtocolError(
                "server_busy", f"{self.admission.pending} connections are completing their handshake; retry after "
                f"{retry_after:.0f}s"), retry_after_s=retry_after)
        try:
            hello = Hello.from_wire(auth)
            if self.verifier is not None:
                self.verifier.verify(hello.node_id, hello.proof or {})
        except ProtocolError as exc:
            self._refuse(sid, environ, exc.reason, exc)
        except (TypeError, ValueError, ArithmeticError) as exc:
            # The verifier hashes and compares untrusted text: a non-ASCII mac, a nonce with lone
            # surrogates or an out-of-range ts fail there as plain errors; they are still bad proofs.
            self._refuse(sid, environ, "bad_proof", exc)
        current = self.registry.info(hello.node_id)
        if current is not None and not await self._may_replace(current, hello):
            self._refuse(sid, environ, "node_id_in_use", ProtocolError(
                "node_id_in_use", f"node {hello.node_id} is connected and answers; a second connection with its id "
                "is not let in"))
        if eio_sid is not None:
            self.admission.admitted(eio_sid)
        previous = self.registry.register(NodeInfo(hello.node_id, sid, hello.num_samples, instance=hello.instance))
        if previous is not None:
            logger.info("node %s reconnected (replacing connection %s)", hello.node_id, previous.sid)
            if previous.instance != hello.instance:
                await self.emit("fl_replaced", {"reason": "another connection proved this node's key while this one "
                                                          "did not answer"}, previous.sid)
            await self.sio.disconnect(previous.sid)
        logger.info("node %s connected with %d samples (%d connected)", hello.node_id, hello.num_samples,
                    len(self.registry))
        if self.coordinator is not None:
            pending = self.coordinator.pending_start(hello.node_id)
            if pending is not None:
                # A participant that lost its connection mid-round gets the round again.
                task = self.sio.start_background_task(self.emit, "start_round", pending.to_wire(), sid)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _may_replace(self, current: NodeInfo, hello: Hello) -> bool:
        """A second connection with a connected node's id replaces the first only if it is the same node process
        (same ``instance``) or the first no longer answers: a key holder cannot evict a live node."""
        if hello.instance and hello.instance == current.instance:
            return True
        if not self.sio.manager.is_connected(current.sid, "/"):
            return True
        try:
            reply = await self.sio.call("fl_ping", {}, to=current.sid, timeout=self.liveness_timeout_s)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.SocketIOError, KeyError):
            return True
        return not (isinstance(reply, dict) and reply.get("alive") is True)

    def _refuse(self, sid: str, environ: Any, reason: str, exc: Exception,
                retry_after_s: float | None = None) -> NoReturn:
        """Refuse the hello, and close its connection right after the refusal went out: a refused client
        must not keep a session (and a file descriptor) open by answering pings. ``retry_after_s``: when the
        node may try again (``server_busy``)."""
        self.refused_by_reason[reason] += 1
        self._log.warning(f"refused:{reason}", "refused connection %s from %s: %s", sid, peer_address(environ), exc)
        eio_sid = self._eio_sid(sid)
        if eio_sid is not None:
            self._close_transport(eio_sid, delay_s=REFUSED_CLOSE_DELAY_S)
        # The detail and the server's clock go with the reason: a node can say what is wrong (and by how much its
        # clock is off, for stale_proof) instead of only a tag.
        details: dict[str, Any] = {"detail": str(exc)[:300], "server_time": time.time()}
        if retry_after_s is not None:
            details["retry_after_s"] = retry_after_s
        raise socketio.exceptions.ConnectionRefusedError(reason, details) from None

    async def on_disconnect(self, sid: str, reason: Any = None, *_extra: Any) -> None:
        if self._lifecycle_event_from_client("disconnect", sid):
            return
        info = self.registry.unregister_sid(sid)
        if info is not None:
            logger.info("node %s disconnected (%s); %d connected", info.node_id, reason, len(self.registry))

    def _sender(self, sid: str, extra: tuple[Any, ...]) -> tuple[str | None, dict[str, Any] | None]:
        """The registered node behind ``sid``, or the reply that refuses the message (unknown sender, extra args)."""
        node_id = self.registry.node_for_sid(sid)
        if node_id is None:
            return None, {"accepted": False, "reason": "not_registered"}
        if extra:
            return None, {"accepted": False, "reason": "bad_schema"}
        return node_id, None

    async def on_update(self, sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
        node_id, refused = self._sender(sid, extra)
        if node_id is None:
            return refused or {}
        try:
            ack = UpdateAck.from_wire(data)
        except ProtocolError as exc:
            self._log.warning("bad_fl_update", "bad fl_update from %s: %s", node_id, exc)
            return {"accepted": False, "reason": exc.reason}
        if ack.node_id != node_id:
            self._log.warning("node_mismatch", "fl_update from %s names node %s; dropped", node_id, ack.node_id)
            return {"accepted": False, "reason": "node_mismatch"}
        if self.coordinator is None:
            return {"accepted": False, "reason": "no_session"}
        self.coordinator.on_ack(ack)
        return {"accepted": True}

    async def on_refuse(self, sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
        node_id = self.registry.node_for_sid(sid)
        if extra:
            return {"received": False}
        try:
            refusal = NodeRefusal.from_wire(data)
        except ProtocolError as exc:
            self._log.warning("bad_fl_refuse", "bad fl_refuse from %s: %s", node_id or sid, exc)
            return {"received": False}
        if node_id is None or refusal.node_id != node_id:
            self._log.warning("node_mismatch", "fl_refuse from %s names node %s; dropped", node_id or sid,
                              refusal.node_id)
            return {"received": False}
        logger.warning("node %s refused to take part (%s): %s", node_id, refusal.reason, refusal.detail)
        self.refusals[node_id] = f"{refusal.reason}: {refusal.detail}"
        if self.coordinator is not None:
            self.coordinator.on_refusal(refusal)
        return {"received": True}

    async def on_secagg(self, event: str, sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
        """A secure-aggregation message (key advert, encrypted shares, unmask shares) from a registered node."""
        node_id, refused = self._sender(sid, extra)
        if node_id is None:
            return refused or {}
        try:
            message = NODE_EVENTS[event].from_wire(data)
        except ProtocolError as exc:
            self._log.warning(f"bad_{event}", "bad %s from %s: %s", event, node_id, exc)
            return {"accepted": False, "reason": exc.reason}
        if self.coordinator is None:
            return {"accepted": False, "reason": "no_session"}
        self.coordinator.on_secagg(SecAggInput(node_id, message))  # the round loop checks it names this node
        return {"accepted": True}

    async def gather_statistics(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Ask every connected node for its column statistics (``fl_stats``); failures are logged and skipped."""
        nodes = self.registry.snapshot()
        replies = await asyncio.gather(
            *(self.sio.call("fl_stats", request, to=node.sid, timeout=timeout_s) for node in nodes),
            return_exceptions=True,
        )
        collected: dict[str, Any] = {}
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, BaseException):
                timed_out = isinstance(reply, (TimeoutError, socketio.exceptions.TimeoutError))
                said = f"no answer within {timeout_s:.0f}s" if timed_out else repr(reply)
                logger.warning("node %s gave no statistics (%s)", node.node_id, said)
            elif isinstance(reply, dict) and "error" in reply:
                logger.warning("node %s cannot share statistics: %.300s", node.node_id, reply["error"])
                self.refusals[node.node_id] = f"statistics: {reply['error']!s:.300}"
            else:
                collected[node.node_id] = reply
        return collected

    async def on_unknown(self, event: Any, sid: Any = None, *_args: Any) -> None:
        # An event literally named "*" comes without its name, so (sid, data...) shift left: trust only a str sid.
        node_id = self.registry.node_for_sid(sid) if isinstance(sid, str) else None
        self._log.warning("unknown_event", "ignored unknown event %.40r from %.40s", event, node_id or sid)

    async def on_malformed(self, sid: Any = None, reason: Any = None, *_args: Any) -> None:
        """A packet whose JSON ``SocketIOJson`` refused (or a client emitting the marker event itself)."""
        reason = reason if isinstance(reason, str) and len(reason) <= 32 else "malformed"
        self.malformed_by_reason[reason] += 1
        node_id = self.registry.node_for_sid(sid) if isinstance(sid, str) else None
        self._log.warning(f"malformed:{reason}", "dropped a malformed Socket.IO packet (%s) from %.40s", reason,
                          node_id or sid)

    async def on_model_spec(self, sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
        """A node asks for the session's model spec (``start_round`` names it by digest; it connected late)."""
        node_id, refused = self._sender(sid, extra)
        if node_id is None:
            return refused or {}
        if self.coordinator is None:
            return {"accepted": False, "reason": "no_session"}
        return self.coordinator.model_spec()

    async def emit(self, event: str, data: dict[str, Any], sid: str) -> None:
        await self.sio.emit(event, data, to=sid)

    async def broadcast(self, event: str, data: dict[str, Any], sids: Sequence[str]) -> None:
        """One message to many nodes (``start_round`` to a round's participants): the recipients join a room made
        for it, and python-socketio encodes the packet once for the room, not once per node."""
        self._broadcasts += 1
        room = f"fl-broadcast-{self._broadcasts}"
        manager = self.sio.manager
        for sid in sids:
            if manager.is_connected(sid, "/"):
                manager.basic_enter_room(sid, "/", room)  # what sio.enter_room does, without a coroutine per node
        try:
            await self.sio.emit(event, data, room=room)
        finally:
            manager.basic_close_room(room, "/")


async def serve_socketio(frontend: SocketIOFrontend, host: str, port: int,
                         ssl_context: ssl.SSLContext | None = None,
                         routes: Callable[[web.Application], None] | None = None) -> web.AppRunner:
    """Serve Socket.IO (and ``routes``' own, e.g. the dashboard's) on ``host:port``."""
    app = web.Application()
    app.router.add_get(CHALLENGE_PATH, frontend.challenge)
    if routes is not None:
        routes(app)
    frontend.sio.attach(app)
    # A short shutdown: open websockets must not hold an exiting server for aiohttp's default minute.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc} (another fl-server? "
                                 "choose another --port)") from None
    bound = runner.addresses[0][1] if runner.addresses else port  # the real port, also with --port 0
    logger.info("Socket.IO listening on %s://%s:%d", "https" if ssl_context else "http", host, bound)
    return runner
