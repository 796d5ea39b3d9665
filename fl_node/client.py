"""The node process: ``FederatedNode`` answers the server's Socket.IO events (rounds, statistics, the end of the
session). ``fl_node.connection`` gets it in, ``fl_node.kafka.NodeKafka`` moves the weights, and a worker thread
runs pandas and TensorFlow."""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import socketio

from common.data.dataspec import DataSpec
from common.data.tabular import SchemaError
from common.metrics_format import format_metrics
from common.ml.model_budget import ModelTooLarge
from common.ml.personal import shared_part, with_personal
from common.paillier.keys import PaillierPublic
from common.privacy.local import privatize_update, strictest_local_dp
from common.secagg.messages import AdvertBroadcast, ShareDelivery
from common.secagg.round import SecureRoundSpec
from common.transport.tls import CertificateProblem, async_client_options, check_server_certificate
from common.wire.integrity import connect_proof
from common.wire.protocol import (
    KIND_UPDATE,
    EndSession,
    Hello,
    LocalEvaluation,
    ModelMessage,
    NodeRefusal,
    ProtocolError,
    StartRound,
    TrainConfig,
    UpdateAck,
    WeightChunk,
    split_weights,
)
from common.wire.server_key import ServerPublicKey, UntrustedModel
from fl_node.attacks import apply_attack
from fl_node.connection import (
    FIRST_BACKOFF_S,
    MODEL_SPEC_EVENT,
    NON_HEALING_REFUSALS,
    ModelSpecCache,
    ServerRefused,
    backoff_pause_s,
    describe_refusal,
    fetch_challenge,
    new_client,
    retry_after_of,
)
from fl_node.data import LocalData
from fl_node.kafka import NodeKafka
from fl_node.local_eval import split_local_test
from fl_node.metrics import NodeMetrics
from fl_node.secure import (
    SERVER_EVENTS,
    NodePaillierRound,
    NodeSecureRound,
    check_paillier_spec,
    check_spec,
    parse_server_message,
)
from fl_node.testing import dump_clear_update, test_exit_point
from fl_node.trainer import LocalTrainer, TrainResult

logger = logging.getLogger(__name__)
Result = TypeVar("Result")


@dataclass(frozen=True)
class NodeSettings:
    node_id: str
    server_url: str
    kafka: str
    updates_topic: str
    out_dir: Path
    chunk_bytes: int
    fetch_timeout_s: float = 120.0
    ack_timeout_s: float = 60.0
    publish_timeout_s: float = 300.0
    attack: str = "none"  # robustness experiments only: see fl_node.attacks
    attack_scale: float = 1.0
    key: bytes | None = field(default=None, repr=False)  # signs connect proofs and update records
    kafka_config: dict[str, Any] = field(default_factory=dict, repr=False)  # SSL/SASL settings for kafka-python
    ssl_context: ssl.SSLContext | None = None  # TLS to the server (https://)
    max_idle_s: float = 1800.0  # exit after this long without session traffic
    dp_clip_norm: float = 0.0  # this node's own local-DP floor: it never publishes a delta clipped less ...
    dp_noise_stddev: float = 0.0  # ... or noised less than this, whatever the round asks
    server_public_key: ServerPublicKey | None = None  # when set: train only on models the server signed
    paillier_public: PaillierPublic | None = None  # --paillier-public-key: the only key Paillier rounds encrypt with
    local_test_fraction: float = 0.0  # rows held out from training, for federated evaluation
    local_test_seed: int = 0  # which rows: the same every round
    finetune_epochs: int = 0  # local epochs on the final global model before saving it (it never leaves the node)


EXIT_IDLE = 3
MAX_SECURE_ROUNDS = 4  # secure rounds a node keeps state for at once (the server runs one at a time)


class LocalFailure(RuntimeError):
    """A round failed at this node; ``reason`` (``fetch_failed``, ``train_failed``, ``publish_failed``) is what
    the server records for the refusal."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    @staticmethod
    @contextmanager
    def stage(reason: str) -> Iterator[None]:
        """Turn any exception of this stage into a ``LocalFailure(reason)`` that keeps the original as cause."""
        try:
            yield
        except (SchemaError, LocalFailure):
            raise
        except ModelTooLarge as exc:
            raise LocalFailure("model_too_large", str(exc)) from exc
        except UntrustedModel as exc:
            raise LocalFailure("untrusted_model", str(exc)) from exc
        except Exception as exc:
            raise LocalFailure(reason, f"{type(exc).__name__}: {exc}"[:500]) from exc


def settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs; if it failed, take its exception (it was not wanted: no warning)."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def node_kafka(settings: NodeSettings) -> NodeKafka:
    """The node's Kafka clients as its settings describe them."""
    return NodeKafka(settings.kafka, node_id=settings.node_id, updates_topic=settings.updates_topic,
                     fetch_timeout_s=settings.fetch_timeout_s, publish_timeout_s=settings.publish_timeout_s,
                     key=settings.key, config=settings.kafka_config, server_key=settings.server_public_key)


class FederatedNode:
    """Connects, trains when told, publishes updates, saves the final model on ``end_session``."""

    def __init__(self, settings: NodeSettings, data: LocalData, trainer: LocalTrainer,
                 kafka: NodeKafka | None = None, metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.data = data
        self.trainer = trainer
        self.kafka = kafka if kafka is not None else node_kafka(settings)
        self.metrics = metrics or NodeMetrics(settings.node_id)  # served with fl-node --metrics-port
        self.refused: str | None = None
        self.connect_error: str | None = None
        self.connect_error_reason: str | None = None
        self.retry_after_s: float | None = None  # of the last server_busy refusal
        self.final_model_path: Path | None = None
        self._in_progress: set[tuple[str, int]] = set()
        self._acks: dict[tuple[str, int], UpdateAck] = {}
        self._secure: dict[tuple[str, int], NodeSecureRound] = {}  # rounds with secure aggregation, in progress
        self._personal: dict[str, tuple[list[int], list[Any]]] = {}  # session -> its personal layers (FedPer)
        self._last_start: dict[str, StartRound] = {}  # session -> the last round this node took part in
        self._specs = ModelSpecCache()  # the sessions' architecture and data spec, sent once (start_round names it)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fl-node-worker")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finished = asyncio.Event()
        self._last_activity = time.monotonic()  # of session traffic: start_round, fl_stats, end_session
        self.instance = secrets.token_hex(8)  # tells the server a reconnect of this process from a second node
        self._ever_connected = False
        self.idle_timed_out = False
        self.sio = self._new_client()

    def _new_client(self, **options: Any) -> socketio.AsyncClient:
        """A Socket.IO client with this node's handlers."""
        sio = new_client(**options)
        sio.on("connect", self._on_connect)
        sio.on("connect_error", self._on_connect_error)
        sio.on("disconnect", self._on_disconnect)
        sio.on("start_round", self._on_start_round)
        sio.on(MODEL_SPEC_EVENT, self._on_model_spec)
        sio.on("end_session", self._on_end_session)
        sio.on("fl_stats", self._on_stats)
        sio.on("fl_ping", self._on_ping)
        sio.on("fl_replaced", self._on_replaced)
        for event in SERVER_EVENTS:
            sio.on(event, partial(self._on_secagg, event))
        return sio

    # ------------------------------------------------------------ lifecycle

    async def _hello(self) -> dict[str, Any]:
        """Connect auth, made afresh for every (re)connection over a challenge fetched from the server just
        before (python-socketio awaits this at each attempt): a proof is good once, and only at that server."""
        key, node_id = self.settings.key, self.settings.node_id
        proof = None
        if key is not None:
            challenge = await fetch_challenge(self.settings.server_url, self.settings.ssl_context)
            if challenge is not None:  # else the server refuses with no_challenge and the client tries again
                proof = connect_proof(key, node_id, challenge=challenge["challenge"],
                                      server_id=challenge["server_id"])
        return Hello(node_id, max(self.data.num_rows, 1), proof=proof, instance=self.instance).to_wire()

    async def run(self) -> Path | None:
        """Connect (retrying until the server answers) and serve rounds until ``end_session``.

        Raises ``ServerRefused`` if the server answers but will not let this node in."""
        async with async_client_options(self.settings.ssl_context) as options:
            if options:  # TLS: the client's HTTP session must be made inside the event loop
                self.sio = self._new_client(**options)
            try:
                await self.kafka.start()
                await self._connect()
                self._spawn(self._watch_idle())
                await self._finished.wait()
            finally:
                await self.close()
        return self.final_model_path

    async def _watch_idle(self) -> None:
        """Leave after ``max_idle_s`` without any session traffic (a server gone for good, a missed end_session)."""
        while not self._finished.is_set():
            idle_s = time.monotonic() - self._last_activity
            if idle_s >= self.settings.max_idle_s:
                self.idle_timed_out = True
                logger.error("node %s: no session for %.0f s (--max-idle); exiting", self.settings.node_id, idle_s)
                self._finished.set()
                return
            await asyncio.sleep(min(self.settings.max_idle_s - idle_s, 10.0) + 0.01)  # the timer itself

    async def _connect(self) -> None:
        """First connection: retry with jittered backoff (0.5 s doubling to 5 s) while the server is not there;
        stop at once if it answers with a refusal or a certificate we cannot verify. Once connected, the
        Socket.IO client's own reconnection takes over."""
        delay = FIRST_BACKOFF_S
        while True:
            await self._check_server_certificate()
            self.retry_after_s = None
            try:
                await self.sio.connect(self.settings.server_url, auth=self._hello, transports=["websocket"],
                                       wait_timeout=10)
                return
            except socketio.exceptions.ConnectionError as exc:
                if self.connect_error is not None and self.connect_error_reason in NON_HEALING_REFUSALS:
                    raise ServerRefused(f"server refused node {self.settings.node_id}: "
                                        f"{self.connect_error}") from exc
                self.connect_error = None  # a refusal a new attempt can heal (e.g. an expired challenge)
            pause, delay = backoff_pause_s(delay, self.retry_after_s)
            logger.warning("node %s: cannot %s %s; retrying in %.1fs", self.settings.node_id,
                           "get into (server busy)" if self.retry_after_s is not None else "reach",
                           self.settings.server_url, pause)
            await asyncio.sleep(pause)  # the backoff itself, not a wait for an event

    async def _check_server_certificate(self) -> None:
        """An https:// server whose certificate we cannot verify is a configuration error, not an outage:
        say what is wrong plainly instead of retrying forever (the client library only says "Connection error")."""
        try:
            await check_server_certificate(self.settings.server_url, self.settings.ssl_context)
        except CertificateProblem as exc:
            raise ServerRefused(str(exc)) from None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.sio.connected:
            await self.sio.disconnect()
        # engine.io leaves the HTTP session it made itself open after a failed connect; ours it never closes.
        http = getattr(self.sio.eio, "http", None)
        if http is not None and not getattr(self.sio.eio, "external_http", False) and not http.closed:
            await http.close()
        await self.kafka.stop()
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_connect(self) -> None:
        if self._ever_connected:
            self.metrics.reconnected()
        self._ever_connected = True
        self._last_activity = time.monotonic()
        logger.info("node %s connected to %s", self.settings.node_id, self.settings.server_url)

    async def _on_connect_error(self, data: Any = None) -> None:
        refusal = describe_refusal(data, now=time.time())
        if refusal is None:  # the server is not there (yet): the connect loop or the client's reconnection retries
            logger.debug("node %s: connection to %s failed (%s)", self.settings.node_id, self.settings.server_url,
                         data)
            return
        self.connect_error_reason, self.connect_error = refusal
        if self.connect_error_reason == "server_busy":  # healing: the connect loop waits as long as it was told
            self.retry_after_s = retry_after_of(data)
            logger.warning("node %s: server busy; told to retry after %ss", self.settings.node_id, self.retry_after_s)
            return
        logger.error("node %s: the server refused the connection: %s", self.settings.node_id, self.connect_error)
        if self.connect_error_reason in NON_HEALING_REFUSALS and self.sio.connected is False and self._ever_connected:
            # Retrying cannot help (the Socket.IO client would retry forever): stop with the reason.
            self.refused = f"the server refuses this node: {self.connect_error}"
            self._finished.set()

    async def _on_ping(self, data: Any = None) -> dict[str, Any]:
        """The server asks whether this connection is alive (another connection claims this node's id)."""
        return {"alive": True}

    async def _on_replaced(self, data: Any = None) -> None:
        """Another connection with this node's id and key took this one's place while it did not answer."""
        reason = str(data.get("reason"))[:200] if isinstance(data, dict) else "no reason given"
        self.refused = f"the server replaced this node's connection with another one using its key: {reason}"
        logger.error("node %s: %s", self.settings.node_id, self.refused)
        self._finished.set()

    async def _on_disconnect(self, reason: Any = None) -> None:
        if not self._finished.is_set():
            logger.warning("node %s lost the server (%s); reconnecting", self.settings.node_id, reason)

    # ------------------------------------------------------------ events

    async def _on_start_round(self, data: Any = None) -> None:
        self._last_activity = time.monotonic()
        try:
            start = StartRound.from_wire(data)
        except ProtocolError as exc:
            logger.error("ignored malformed start_round: %s", exc)
            return
        key = (start.session_id, start.server_round)
        if key in self._acks:  # asked again after a reconnect: the update is already in Kafka
            self._spawn(self._send_ack(self._acks[key]))
            return
        if key in self._in_progress:
            return
        self._in_progress.add(key)
        self._spawn(self._complete_and_run(start))

    async def _on_model_spec(self, data: Any = None) -> None:
        """The session's architecture, compile settings and data spec (sent once; start_round names it)."""
        self._last_activity = time.monotonic()
        self._specs.remember(data)

    async def _complete_and_run(self, start: StartRound) -> None:
        """Complete a slim start_round with the session's model spec (asked for once if this node has not got
        it), then run the round."""
        try:
            start = replace(start, model=await self._specs.complete(start.model, self.sio,
                                                                     self.settings.ack_timeout_s))
        except ProtocolError as exc:
            self._in_progress.discard((start.session_id, start.server_round))
            await self._refuse(start, "fetch_failed", str(exc), leave=False)
            return
        self._last_start[start.session_id] = start  # the compile spec and batch settings a fine-tune reuses
        await self._run_round(start)

    async def _refuse(self, start: StartRound, reason: str, detail: str, *, leave: bool) -> None:
        """Tell the server this node cannot deliver the round, so it stops waiting for us at once.

        ``leave``: the failure cannot heal (our data does not fit the federation's schema), so the node
        leaves and the session goes on without it; otherwise it stays for the next rounds."""
        if leave:
            self.refused = detail
        logger.error("node %s refuses round %d (%s): %s", self.settings.node_id, start.server_round, reason, detail)
        refusal = NodeRefusal(start.session_id, start.server_round, self.settings.node_id, reason, detail[:500])
        try:
            await self.sio.call("fl_refuse", refusal.to_wire(), timeout=self.settings.ack_timeout_s)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError) as send_error:
            logger.warning("node %s: refusal not confirmed (%s)", self.settings.node_id, send_error)
        finally:
            if leave:
                self._finished.set()

    async def _on_stats(self, data: Any = None) -> dict[str, Any]:
        """Column statistics for the federation's schema: counts, sums, value counts; never rows."""
        self._last_activity = time.monotonic()
        if not isinstance(data, dict) or not isinstance(data.get("target"), str):
            return {"error": "fl_stats needs a target column name"}
        categorical = data.get("categorical") or []
        exclude = data.get("exclude") or []
        k = data.get("min_category_count")
        for names in (categorical, exclude):
            if not isinstance(names, list) or len(names) > 10_000 or not all(isinstance(c, str) for c in names):
                return {"error": "categorical and exclude must be lists of column names"}
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1_000_000):
            return {"error": "min_category_count must be an integer from 1 to 1,000,000"}
        try:
            stats = await self._in_worker(partial(  # O(rows) pandas work: in the worker, not on the event loop
                self.data.statistics, data["target"], categorical, min_category_count=k, exclude=exclude))
        except SchemaError as exc:
            logger.error("node %s cannot share statistics: %s", self.settings.node_id, exc)
            return {"error": str(exc)}
        logger.info("node %s shared statistics of %d column(s)", self.settings.node_id, len(stats["columns"]))
        return stats

    async def _on_end_session(self, data: Any = None) -> None:
        self._last_activity = time.monotonic()
        try:
            end = EndSession.from_wire(data)
        except ProtocolError as exc:
            logger.error("ignored malformed end_session: %s", exc)
            return
        self._spawn(self._finish(end))

    # ------------------------------------------------------------ work

    async def _run_round(self, start: StartRound) -> None:
        secure: NodeSecureRound | NodePaillierRound | None = None
        if start.secure_aggregation is not None:
            try:
                secure = self._join_secure_round(start)
            except ProtocolError as exc:
                self._in_progress.discard((start.session_id, start.server_round))
                await self._refuse(start, f"secagg_{exc.reason}", str(exc), leave=False)
                return
            # The keys go out at once: the key stages run while this node trains.
            if isinstance(secure, NodeSecureRound):
                self._spawn(self._send_secagg("secagg_advert", secure.advertise().to_wire(), start.server_round))
        try:
            ack = await self._train_and_publish(start, secure)
        except SchemaError as exc:
            await self._refuse(start, "schema_mismatch", str(exc), leave=True)
            return
        except LocalFailure as exc:
            logger.error("node %s: round %d failed", self.settings.node_id, start.server_round, exc_info=exc.__cause__)
            await self._refuse(start, exc.reason, str(exc), leave=False)
            return
        finally:
            self._in_progress.discard((start.session_id, start.server_round))
        self._acks[(start.session_id, start.server_round)] = ack
        await self._send_ack(ack)

    async def _send_ack(self, ack: UpdateAck) -> None:
        try:
            reply = await self.sio.call("fl_update", ack.to_wire(), timeout=self.settings.ack_timeout_s)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError) as exc:
            logger.warning("node %s: acknowledgement of round %d not confirmed (%s)", self.settings.node_id,
                           ack.server_round, exc)
            return
        if not isinstance(reply, dict) or not reply.get("accepted"):
            logger.warning("node %s: server refused acknowledgement of round %d: %s", self.settings.node_id,
                           ack.server_round, reply)

    def _join_secure_round(self, start: StartRound) -> NodeSecureRound | NodePaillierRound:
        """This node's state for a secure-aggregation round (``ProtocolError`` if it cannot or will not take part)."""
        spec = SecureRoundSpec.from_wire(start.secure_aggregation)
        if spec.protocol == "paillier":
            check_paillier_spec(spec, self.settings.paillier_public, node_id=self.settings.node_id,
                                session_id=start.session_id, server_round=start.server_round)
            assert self.settings.paillier_public is not None
            return NodePaillierRound(spec, self.settings.paillier_public)
        if self.settings.key is None:
            raise ProtocolError("no_key", "secure aggregation needs this node's key (--key-file) to sign its adverts")
        check_spec(spec, node_id=self.settings.node_id, session_id=start.session_id, server_round=start.server_round)
        secure = NodeSecureRound(spec, self.settings.node_id, self.settings.key)
        while len(self._secure) >= MAX_SECURE_ROUNDS:  # rounds the server never finished: forget the oldest
            del self._secure[next(iter(self._secure))]
        self._secure[(start.session_id, start.server_round)] = secure
        return secure

    async def _send_secagg(self, event: str, payload: dict[str, Any], server_round: int) -> bool:
        try:
            reply = await self.sio.call(event, payload, timeout=self.settings.ack_timeout_s)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError) as exc:
            logger.warning("node %s round %d: %s not confirmed (%s)", self.settings.node_id, server_round, event, exc)
            return False
        if not isinstance(reply, dict) or not reply.get("accepted"):
            logger.warning("node %s round %d: the server refused %s: %.200s", self.settings.node_id, server_round,
                           event, reply)
            return False
        return True

    async def _on_secagg(self, event: str, data: Any = None) -> None:
        """The server's advert broadcast, share delivery or unmask request for a secure round in progress."""
        self._last_activity = time.monotonic()
        try:
            message = parse_server_message(event, data)
        except ProtocolError as exc:
            logger.error("node %s: ignored malformed %s: %s", self.settings.node_id, event, exc)
            return
        key = (message.session_id, message.server_round)
        secure = self._secure.get(key)
        if secure is None:
            logger.warning("node %s: ignored %s for round %d (no secure round of this node)", self.settings.node_id,
                           event, message.server_round)
            return
        try:
            if isinstance(message, AdvertBroadcast):
                # Shamir splits and one encryption per neighbour: off the loop, and not on the (busy) training thread.
                package = await asyncio.get_running_loop().run_in_executor(None, secure.share_keys, message)
                if await self._send_secagg("secagg_shares", package.to_wire(), message.server_round):
                    test_exit_point("shares")
            elif isinstance(message, ShareDelivery):
                secure.deliver(message)
            else:
                response = secure.unmask(message)
                self._secure.pop(key, None)
                await self._send_secagg("secagg_unmasked", response.to_wire(), message.server_round)
        except ProtocolError as exc:  # the server (or someone in its place) broke the protocol: this node drops out
            logger.error("node %s round %d: secure aggregation stopped (%s): %s", self.settings.node_id,
                         message.server_round, exc.reason, exc)
            self._secure.pop(key, None)
            if not secure.delivery.done():
                secure.delivery.set_exception(exc)

    async def _train_and_publish(self, start: StartRound,
                                 secure: NodeSecureRound | NodePaillierRound | None = None) -> UpdateAck:
        """Prepare the data, fetch the global model, train, publish the update; returns the acknowledgement.
        Raises ``SchemaError`` if our data does not fit, ``LocalFailure`` for any other failure."""
        t0 = time.perf_counter()
        # The global model comes from Kafka on the fetch thread while the worker thread prepares the data.
        fetching = asyncio.ensure_future(self._fetch_model(start.model, start.session_id, start.server_round))
        try:
            await self._in_worker(partial(self._prepare_data, start.model))
            with LocalFailure.stage("fetch_failed"):
                weights = await fetching
        finally:
            settle(fetching)  # when preparing failed: the model is not wanted any more
        fetch_s = time.perf_counter() - t0
        personal, own = [], weights  # FedPer: the positions of the personal arrays; the model this node trains
        if start.config.personal_layers:
            with LocalFailure.stage("train_failed"):
                personal = await self._in_worker(partial(
                    self.trainer.personal_indices, start.model.architecture, start.config.personal_layers))
            kept = self._personal.get(start.session_id)
            if kept is not None and kept[0] == personal:
                own = with_personal(weights, personal, kept[1])
        evaluation = None
        if start.config.federated_eval and self.trainer.num_test_samples > 0:
            evaluation = await self._evaluate(start, weights, own if personal else None)
        with LocalFailure.stage("train_failed"):
            result = await self._in_worker(partial(
                self.trainer.train, start.model.architecture, start.model.compile, own, start.config,
                server_round=start.server_round, session_id=start.session_id))
        if personal:  # the personal layers stay here; only the shared ones are published
            self._personal[start.session_id] = (personal, [result.weights[i] for i in personal])
            weights = shared_part(weights, personal)
            result = TrainResult(shared_part(result.weights, personal), result.metrics, result.train_s)
        delivery = None
        if isinstance(secure, NodeSecureRound):
            try:  # the key stages end well before training usually does
                delivery = await asyncio.wait_for(asyncio.shield(secure.delivery), self.settings.publish_timeout_s)
            except ProtocolError as exc:
                raise LocalFailure(f"secagg_{exc.reason}", str(exc)) from exc
            except TimeoutError as exc:
                raise LocalFailure("secagg_no_shares", "the server sent no shares for this node") from exc
        with LocalFailure.stage("publish_failed"):
            return await self._publish(start, weights, result, fetch_s, secure, delivery, evaluation)

    async def _evaluate(self, start: StartRound, weights: list[Any], own: list[Any] | None) -> LocalEvaluation:
        """Federated evaluation: the round's global model (and this node's personalized one) on the local test
        rows, before training."""
        model, rate = start.model, start.config.learning_rate
        with LocalFailure.stage("train_failed"):
            scores = await self._in_worker(partial(self.trainer.evaluate, model.architecture, model.compile,
                                                   weights, rate))
            mine = await self._in_worker(partial(self.trainer.evaluate, model.architecture, model.compile, own,
                                                 rate)) if own is not None else {}
        logger.info("node %s round %d: global model on %d local test rows: %s%s", self.settings.node_id,
                    start.server_round, self.trainer.num_test_samples, format_metrics(scores),
                    f"; personalized: {format_metrics(mine)}" if mine else "")
        return LocalEvaluation(self.trainer.num_test_samples, scores, personalized=mine)

    def _prepare_data(self, model: ModelMessage) -> None:
        """Worker thread: encode the local data under the federation's data spec (O(rows))."""
        x, y = self.data.prepare(DataSpec.from_wire(model.data))
        if self.settings.local_test_fraction > 0:
            x, y, x_test, y_test = split_local_test(x, y, self.settings.local_test_fraction,
                                                    seed=self.settings.local_test_seed)
            self.trainer.set_test_data(x_test, y_test)
        self.trainer.set_data(x, y)

    async def _publish(self, start: StartRound, weights: list[Any], result: TrainResult, fetch_s: float,
                       secure: NodeSecureRound | NodePaillierRound | None = None,
                       delivery: ShareDelivery | None = None,
                       evaluation: LocalEvaluation | None = None) -> UpdateAck:
        t1 = time.perf_counter()
        chunks = await self._in_worker(partial(self._update_chunks, start, weights, result, secure, delivery))
        await self.kafka.publish_update(chunks, server_round=start.server_round)
        publish_s = time.perf_counter() - t1
        self.metrics.update_published(result.train_s, len(chunks))
        if secure is not None:
            test_exit_point("masked")
        logger.info("node %s round %d: fetched in %.2fs, trained in %.2fs, published %d records in %.2fs (%s)",
                    self.settings.node_id, start.server_round, fetch_s, result.train_s, len(chunks), publish_s,
                    format_metrics(result.metrics))
        return UpdateAck(
            session_id=start.session_id,
            server_round=start.server_round,
            node_id=self.settings.node_id,
            num_samples=self._reported_samples(secure),
            num_records=len(chunks),
            metrics=dict(result.metrics),
            timings_s={"fetch": round(fetch_s, 4), "train": round(result.train_s, 4),
                       "publish": round(publish_s, 4),
                       **({"encrypt": round(secure.encrypt_s, 4)} if isinstance(secure, NodePaillierRound) else {})},
            evaluation=evaluation,
        )

    def _reported_samples(self, secure: NodeSecureRound | NodePaillierRound | None) -> int:
        """Secure rounds: what the hello declared (the true count travels inside the masked sum only)."""
        return max(self.data.num_rows, 1) if secure is not None else self.trainer.num_samples

    def _update_chunks(self, start: StartRound, weights: list[Any], result: TrainResult,
                       secure: NodeSecureRound | NodePaillierRound | None = None,
                       delivery: ShareDelivery | None = None) -> list[WeightChunk]:
        """Worker thread: the trained weights (poisoned in robustness experiments) cut into Kafka records."""
        published = apply_attack(self.settings.attack, weights, result.weights, scale=self.settings.attack_scale)
        if self.settings.attack != "none":
            logger.warning("node %s round %d: ATTACK %s x%g applied to the published update (robustness experiment)",
                           self.settings.node_id, start.server_round, self.settings.attack, self.settings.attack_scale)
        config, settings = start.config, self.settings
        clip, stddev = strictest_local_dp(server_clip=config.dp_clip_norm, server_stddev=config.dp_noise_stddev,
                                          own_clip=settings.dp_clip_norm, own_stddev=settings.dp_noise_stddev)
        if clip > 0:
            published, norm = privatize_update(weights, published, clip_norm=clip, noise_stddev=stddev)
            logger.info("node %s round %d: local DP applied: delta norm %.4g clipped to %.4g, Gaussian noise stddev "
                        "%.4g (the round asked for %.4g and %.4g)", settings.node_id, start.server_round, norm, clip,
                        stddev, config.dp_clip_norm, config.dp_noise_stddev)
        if isinstance(secure, NodeSecureRound) and delivery is not None:
            dump_clear_update(settings.node_id, start.server_round, weights, published, self.trainer.num_samples)
            try:  # a share that does not decrypt (tampered, moved) stops this node's round: it sends nothing
                published = [secure.masked_update(delivery, weights, published, self.trainer.num_samples)]
            except ProtocolError as exc:
                raise LocalFailure(f"secagg_{exc.reason}", str(exc)) from exc
        elif isinstance(secure, NodePaillierRound):
            dump_clear_update(settings.node_id, start.server_round, weights, published, self.trainer.num_samples)
            try:
                published = [secure.encrypted_update(weights, published, self.trainer.num_samples)]
            except ProtocolError as exc:
                raise LocalFailure(f"paillier_{exc.reason}", str(exc)) from exc
            logger.info("node %s round %d: encrypted the update in %.3fs", settings.node_id, start.server_round,
                        secure.encrypt_s)
        return list(split_weights(published, kind=KIND_UPDATE, session_id=start.session_id,
                                  server_round=start.server_round, node_id=self.settings.node_id,
                                  num_samples=self._reported_samples(secure), chunk_bytes=self.settings.chunk_bytes))

    async def _fetch_model(self, model: ModelMessage, session_id: str, server_round: int) -> list[Any]:
        return await self.kafka.fetch_model(model.weights, session_id=session_id, server_round=server_round,
                                            max_elements=self.trainer.max_model_params)

    async def _in_worker(self, call: Callable[[], Result]) -> Result:
        """Run blocking work (pandas, TensorFlow) on the worker thread, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, call)

    async def _finetune(self, end: EndSession, weights: list[Any]) -> list[Any]:
        """``--finetune-epochs``: a few local epochs on the final model (plain training: the result stays here)."""
        epochs, start = self.settings.finetune_epochs, self._last_start.pop(end.session_id, None)
        if epochs <= 0:
            return weights
        if start is None:
            logger.warning("node %s: no round of session %s trained here; the final model is saved without "
                           "fine-tuning", self.settings.node_id, end.session_id)
            return weights
        config = TrainConfig(epochs, start.config.batch_size, start.config.learning_rate)
        result = await self._in_worker(partial(
            self.trainer.train, end.model.architecture, start.model.compile, weights, config,
            server_round=end.rounds_completed + 1, session_id=end.session_id))
        logger.info("node %s: fine-tuned the final model for %d local epoch(s) (%s)", self.settings.node_id, epochs,
                    format_metrics(result.metrics))
        return list(result.weights)

    async def _finish(self, end: EndSession) -> None:
        path = self.settings.out_dir / f"{end.session_id}-{self.settings.node_id}.keras"
        try:
            weights = await self._fetch_model(end.model, end.session_id, end.rounds_completed + 1)
            kept = self._personal.pop(end.session_id, None)
            if kept is not None:  # FedPer: this node's personalized model
                weights = with_personal(weights, kept[0], kept[1])
                logger.info("node %s: the saved model has this node's own personal layers", self.settings.node_id)
            weights = await self._finetune(end, weights)
            await self._in_worker(partial(self.trainer.save, end.model.architecture, weights, path))
            self.final_model_path = path
            logger.info("node %s: session %s ended after %d rounds; final model saved to %s", self.settings.node_id,
                        end.session_id, end.rounds_completed, path)
        except Exception:
            logger.exception("node %s: could not save the final model", self.settings.node_id)
        finally:
            self._finished.set()
