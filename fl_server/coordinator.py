"""The round loop: waits for nodes, runs rounds, aggregates, evaluates, records history.

It owns no sockets and no Kafka clients. Transport is injected (``publish_model``, ``emit``
and ``commit``), records and acknowledgements arrive through ``on_record`` / ``on_ack``, and
holdout evaluation is a plain callable, so tests can drive it with fakes.

After every round it persists, in this order: the checkpoint (weights, strategy state, the
update-topic offsets consumed so far, the history), the history JSON, and only then asks the
Kafka consumer to commit those offsets. A crash at any point therefore resumes from the last
persisted round and re-reads every record the interrupted round had seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.metrics_format import format_metrics
from common.ml.personal import shared_part, with_shared
from common.paillier.messages import DecryptedSum, DecryptRequest
from common.secagg.crypto import HmacAdvertVerifier
from common.secagg.protocol import SecAggFailure
from common.wire.codec import ArraySpec, weights_digest
from common.wire.errors import ProtocolError
from common.wire.integrity import KeyRegistry
from common.wire.protocol import (
    EndSession,
    ModelMessage,
    ModelRef,
    ModelSpec,
    NodeRefusal,
    RawRecord,
    StartRound,
    TrainConfig,
    UpdateAck,
)
from fl_server.aggregator.link import AggregatorLink
from fl_server.aggregator.messages import Verdict
from fl_server.checkpoint import Checkpoint, save_checkpoint
from fl_server.collector import (
    AssembledUpdate,
    InspectedRecord,
    PendingUpdate,
    RoundCollector,
    assemble_update,
    inspect_record,
)
from fl_server.config import DEFAULTS, ServerConfig
from fl_server.history import SessionHistory, utc_now
from fl_server.inbox import Inbox
from fl_server.observe import SessionObserver
from fl_server.paillier_client import DecryptFn, post_decrypt
from fl_server.paillier_round import PaillierFailure, PaillierRound, PaillierSettings
from fl_server.privacy.ledger import PrivacyLedger
from fl_server.registry import NodeRegistry
from fl_server.rounds import RoundState, round_record
from fl_server.sampling import required_updates, sample_participants
from fl_server.secure_round import SecAggInput, SecureAggregationSettings, SecureRound
from fl_server.secure_stages import DROPOUT_POLL_S, SECURE_SUM_ID, SecureStages
from fl_server.strategies import AggregationError, Strategy

logger = logging.getLogger(__name__)

Weights = list[np.ndarray]
ACK_GRACE_S = 5.0  # how long a round whose updates are all in waits for missing acknowledgements
EvaluateFn = Callable[[int, Sequence[np.ndarray]], dict[str, float]]
PublishModelFn = Callable[[int, Sequence[np.ndarray], str], Awaitable[ModelRef]]  # round, weights, their digest
EmitFn = Callable[[str, dict[str, Any], str], Awaitable[None]]
BroadcastFn = Callable[[str, dict[str, Any], Sequence[str]], Awaitable[None]]  # one encoding, many recipients
CommitFn = Callable[[dict[int, int]], None]


@dataclass(frozen=True)
class SessionSettings:
    session_id: str
    rounds: int
    min_nodes: int
    round_timeout_s: float
    train: TrainConfig
    end_grace_s: float = DEFAULTS.end_grace
    fraction_fit: float = DEFAULTS.fraction_fit
    min_fit: int = DEFAULTS.min_fit
    min_fit_fraction: float = DEFAULTS.min_fit_fraction
    seed: int = DEFAULTS.seed
    max_update_norm: float | None = DEFAULTS.max_update_norm
    max_record_bytes: int = DEFAULTS.max_record_bytes
    min_round_nodes: int = 1  # connected nodes each round needs to start (ServerConfig: --min-nodes when unset)
    max_node_weight: float | None = DEFAULTS.max_node_weight  # cap on a node's samples, as a share of the round's
    secure: SecureAggregationSettings | None = None  # --secure-aggregation: the server sees only the sum
    paillier: PaillierSettings | None = None  # --secure-aggregation paillier: the server sums ciphertexts

    @classmethod
    def from_config(cls, config: ServerConfig, session_id: str) -> SessionSettings:
        return cls(session_id=session_id, rounds=config.rounds, min_nodes=config.min_nodes,
                   round_timeout_s=config.round_timeout, train=config.train, end_grace_s=config.end_grace,
                   fraction_fit=config.fraction_fit, min_fit=config.min_fit, min_fit_fraction=config.min_fit_fraction,
                   seed=config.seed, max_update_norm=config.max_update_norm, max_record_bytes=config.max_record_bytes,
                   min_round_nodes=config.effective_min_round_nodes, max_node_weight=config.max_node_weight,
                   secure=config.secure_settings(), paillier=config.paillier_settings())


@dataclass(frozen=True)
class GlobalModel:
    architecture: str
    compile: dict[str, Any]
    weights: Weights
    data: dict[str, Any]
    personal: tuple[int, ...] = ()  # --personal-layers: positions of the arrays that stay on the nodes


class Coordinator(SecureStages):
    """Drives one federated session from first round to ``end_session``."""

    def __init__(
        self,
        *,
        settings: SessionSettings,
        registry: NodeRegistry,
        strategy: Strategy,
        model: GlobalModel,
        evaluate: EvaluateFn,
        publish_model: PublishModelFn,
        emit: EmitFn,
        history: SessionHistory,
        broadcast: BroadcastFn | None = None,
        keys: KeyRegistry | None = None,
        checkpoint_file: Path | None = None,
        commit: CommitFn | None = None,
        resume: Checkpoint | None = None,
        offsets: dict[int, int] | None = None,
        inbox: Inbox | None = None,
        privacy: PrivacyLedger | None = None,
        observer: SessionObserver | None = None,
        decrypt: DecryptFn = post_decrypt,
        aggregation: AggregatorLink | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.strategy = strategy
        self.model = model
        self.weights: Weights = [np.array(w, copy=True) for w in model.weights]
        self.first_round = 1
        if resume is not None:
            self.weights = [np.array(w, copy=True) for w in resume.weights]
            self.first_round = resume.completed_round + 1
            strategy.load_state(resume.strategy_state)
        self._specs = [ArraySpec.of(w) for w in self.weights]
        self._digest = ""  # of the global weights, kept in step with them (computed off the loop in run())
        if [ArraySpec.of(w) for w in model.weights] != self._specs:
            raise ValueError("the checkpoint's weights do not fit the model")
        self._specs = shared_part(self._specs, model.personal)  # what an update carries
        self._keys = keys
        if (settings.secure is not None or settings.paillier is not None) and keys is None:
            raise ValueError("secure aggregation needs node keys: the nodes sign their key adverts")
        self._advert_verifier = HmacAdvertVerifier(
            {node: key for node in keys.node_ids() if (key := keys.key_of(node)) is not None}) if keys else None
        self._checkpoint_file = checkpoint_file
        self._commit = commit
        self.offsets: dict[int, int] = dict(offsets or {})  # partition -> next offset, as consumed by rounds
        self._seen: dict[bytes, int] = {}  # digests of records taken -> round, for replay detection (pruned)
        self._evaluate = evaluate
        self._decrypt = decrypt  # --secure-aggregation paillier: asks the decryptor for the round's sum
        self._publish_model = publish_model
        self._emit = emit
        self._broadcast = broadcast
        # Architecture, compile settings and data spec: sent once per session (fl_model_spec); start_round names
        # them by digest, so a round's message is a few hundred bytes whatever the model (issue 19).
        self._spec = ModelSpec(model.architecture, model.compile, model.data)
        self._spec_wire = self._spec.to_wire()
        self.history = history
        self.inbox = inbox or Inbox()
        self.privacy = privacy
        self.observer = observer or SessionObserver()  # the dashboard and metrics (read-only onlookers)
        self.stop_reason: str | None = None  # "budget_exhausted" when the privacy budget ended the session early
        self._current: tuple[StartRound, RoundCollector] | None = None
        self._aggregation = aggregation  # --aggregators: fl-aggregator workers judge and fold the updates

    # ------------------------------------------------------------ inputs (event-loop thread)

    def on_record(self, record: RawRecord) -> None:
        """A record handed over on the event loop (in-process transports, tests); the Kafka plane instead
        inspects records on its consumer thread and puts the ``InspectedRecord`` in the inbox itself."""
        self.inbox.put_nowait(inspect_record(record, keys=self._keys, max_record_bytes=self.settings.max_record_bytes))

    def on_ack(self, ack: UpdateAck) -> None:
        if not self.inbox.put_nowait(ack):
            logger.warning("inbox full: dropped the acknowledgement of %s for round %d", ack.node_id,
                           ack.server_round)

    def on_refusal(self, refusal: NodeRefusal) -> None:
        if not self.inbox.put_nowait(refusal):
            logger.warning("inbox full: dropped the refusal of %s for round %d", refusal.node_id,
                           refusal.server_round)

    def on_secagg(self, item: SecAggInput) -> None:
        if not self.inbox.put_nowait(item):
            logger.warning("inbox full: dropped a secure-aggregation message from %s", item.node_id)

    def pending_start(self, node_id: str) -> StartRound | None:
        """The open round's ``start_round`` if ``node_id`` takes part and has not delivered yet (for reconnects)."""
        if self._current is None:
            return None
        start, collector = self._current
        if node_id in collector.participants and node_id not in collector.acks and node_id not in collector.failed:
            return start  # also when its update is in: the node then only repeats its acknowledgement
        return None

    def model_spec(self) -> dict[str, Any]:
        """The session's ``fl_model_spec`` (a node that connected late, or lost it, asks for it)."""
        return self._spec_wire

    async def _send_to(self, event: str, wire: dict[str, Any], sids: Sequence[str]) -> None:
        """One message to many nodes: encoded once and sent to a room with ``broadcast``, else node by node."""
        if self._broadcast is not None:
            await self._broadcast(event, wire, sids)
            return
        for sid in sids:
            await self._emit(event, wire, sid)

    # ------------------------------------------------------------ the session

    async def run(self) -> Weights:
        settings = self.settings
        loop = asyncio.get_running_loop()
        self._digest = await loop.run_in_executor(None, weights_digest, self.weights)
        self.observer.session_started(settings.session_id, settings.rounds, self.first_round)
        if self.first_round == 1:
            initial = await loop.run_in_executor(None, self._evaluate, 0, self.weights)
            self.history.set_initial_holdout(initial)
            logger.info("session %s: initial holdout %s", settings.session_id, format_metrics(initial))
        else:
            logger.info("session %s: resuming at round %d of %d from model %s", settings.session_id,
                        self.first_round, settings.rounds, self._digest[:16])
        await self._send_to("fl_model_spec", self._spec_wire, [n.sid for n in self.registry.snapshot()])
        # The round boundary is pipelined: once round r's aggregate exists, round r+1 starts while round r's
        # evaluation, history record and checkpoint are finished by a task of their own. Records stay in
        # order: a round's close waits for the previous one.
        closing: asyncio.Task[None] | None = None
        try:
            for server_round in range(self.first_round, settings.rounds + 1):
                if self.privacy is not None and not self.privacy.may_run_next_round():
                    self.stop_reason = "budget_exhausted"
                    logger.warning("round %d not started: it would take epsilon past the budget (epsilon %.4g "
                                   "spent); the session ends here", server_round, self.privacy.epsilon)
                    break
                await self._wait_for_nodes(server_round)
                state = await self._open_round(server_round)
                await self._collect(state)
                await self._aggregate(state)
                closing = asyncio.create_task(self._close_round(state, previous=closing))
            if closing is not None:
                await closing
        finally:
            if closing is not None and not closing.done():
                closing.cancel()
        await self._end_session()
        return self.weights

    async def _wait_for_nodes(self, server_round: int) -> None:
        settings = self.settings
        gate = settings.min_nodes if server_round == self.first_round else settings.min_round_nodes
        needed = max(gate, settings.min_fit, 1)
        if len(self.registry) < needed:
            logger.warning("round %d waits: %d of %d node(s) connected", server_round, len(self.registry), needed)
            await self.registry.wait_for_logged(needed)
        if self._aggregation is not None:
            await self._aggregation.wait_ready()

    async def _open_round(self, server_round: int) -> RoundState:
        """Sample the participants, publish the global model and send them ``start_round``."""
        settings = self.settings
        started_at, t0 = utc_now(), time.perf_counter()
        connected = self.registry.snapshot()
        chosen = set(sample_participants([n.node_id for n in connected], fraction=settings.fraction_fit,
                                         min_count=settings.min_fit, seed=settings.seed, server_round=server_round))
        participants = [n for n in connected if n.node_id in chosen]
        # Replays of rounds before the last are late anyway: their digests need not be kept (bounded memory).
        self._seen = {digest: r for digest, r in self._seen.items() if r >= server_round - 1}
        collector = RoundCollector(
            session_id=settings.session_id,
            server_round=server_round,
            participants=[n.node_id for n in participants],
            expected_specs=self._specs,
            keys=self._keys,
            reference=shared_part(self.weights, self.model.personal) if settings.max_update_norm is not None else None,
            max_update_norm=settings.max_update_norm,
            max_record_bytes=settings.max_record_bytes,
            seen=self._seen,
            declared_samples={n.node_id: n.num_samples for n in participants},
        )
        state = RoundState(server_round, started_at, t0, len(connected), sorted(n.node_id for n in participants),
                           required_updates(len(participants), min_fit=settings.min_fit,
                                            min_fit_fraction=settings.min_fit_fraction),
                           self._digest, collector)
        if settings.secure is not None:
            assert self._advert_verifier is not None  # the constructor refuses secure aggregation without keys
            try:
                state.secure = SecureRound(settings.secure, session_id=settings.session_id, server_round=server_round,
                                           participants=state.participants, declared_samples=collector.declared_samples,
                                           specs=self._specs, verifier=self._advert_verifier,
                                           equal_weights=self.privacy is not None
                                           and self.privacy.settings.mode == "local")  # DP-FedAvg's mean
            except ProtocolError as exc:  # e.g. fewer participants than the threshold
                state.failure = f"secure aggregation cannot run with {len(participants)} node(s): {exc}"
                logger.error("round %d: %s", server_round, state.failure)
                return state
            collector.expect_specs([state.secure.vector_spec])
        elif settings.paillier is not None:
            try:
                state.paillier = PaillierRound(settings.paillier, session_id=settings.session_id,
                                               server_round=server_round, participants=state.participants,
                                               declared_samples=collector.declared_samples, specs=self._specs,
                                               equal_weights=self.privacy is not None
                                               and self.privacy.settings.mode == "local")
            except ProtocolError as exc:  # e.g. a single participant, or too many for the key's packing
                state.failure = f"paillier aggregation cannot run with {len(participants)} node(s): {exc}"
                logger.error("round %d: %s", server_round, state.failure)
                return state
            collector.expect_specs([state.paillier.vector_spec])
        if settings.max_node_weight is not None:
            declared = sum(n.num_samples for n in participants)
            state.sample_cap = max(1, int(settings.max_node_weight * declared))
        self.strategy.begin_round(server_round, shared_part(self.weights, self.model.personal))
        if self._aggregation is not None:
            await self._aggregation.open_round(collector, sample_cap=state.sample_cap,
                                               max_record_bytes=settings.max_record_bytes)
        ref = await self._publish_model(server_round, self.weights, self._digest)
        state.start_model_ref, state.offsets_from = ref.to_wire(), dict(self.offsets)  # for fl-audit
        private: dict[str, Any] = self.privacy.node_config(len(participants)) if self.privacy is not None else {}
        train = replace(self.settings.train, **self.strategy.train_config(server_round), **private)
        secure_spec = state.secure.spec if state.secure is not None else (
            state.paillier.spec if state.paillier is not None else None)
        start = StartRound(self.settings.session_id, server_round, train, self._message(ref, slim=True),
                           secure_aggregation=secure_spec.to_wire() if secure_spec is not None else None)
        logger.info("round %d: started with %d of %d connected node(s): %s", server_round, len(participants),
                    len(connected), ", ".join(state.participants))
        self._current = (start, collector)
        self.observer.round_opened(server_round, state.participants, len(connected))
        await self._send_to("start_round", start.to_wire(), [n.sid for n in participants])  # built once
        return state

    async def _collect(self, state: RoundState) -> None:
        """Take inbox items until every participant delivered or refused, or the round times out (after the key
        stages of secure aggregation, which may fail the round first)."""
        collector, server_round = state.collector, state.server_round
        if state.failure is None and (state.secure is None or await self._secure_key_stages(state)):
            t_updates = time.perf_counter()
            await self._collect_updates(state)
            state.updates_s = time.perf_counter() - t_updates
        state.collect_s = time.perf_counter() - state.t0
        state.timed_out = state.failure is None and not collector.all_updates_in()
        state.missing_acks = sorted(set(collector.completed) - set(collector.acks))
        state.incomplete = collector.incomplete()  # their partial chunks are dropped with the collector
        self._current = None
        state.offsets = dict(self.offsets)  # what a checkpoint of this round resumes from
        if state.timed_out:
            missing = sorted(collector.participants - set(collector.completed) - set(collector.failed))
            logger.warning("round %d: timed out after %.1fs; missing updates from %s", server_round,
                           self.settings.round_timeout_s, ", ".join(missing))
        elif state.missing_acks:
            logger.warning("round %d: every update is in; closed without the acknowledgement of %s", server_round,
                           ", ".join(state.missing_acks))

    async def _collect_updates(self, state: RoundState) -> None:
        loop = asyncio.get_running_loop()
        collector = state.collector
        deadline = loop.time() + self.settings.round_timeout_s
        ack_deadline: float | None = None
        while not collector.done():
            if ack_deadline is None and collector.all_updates_in():
                # Every update is in; only acknowledgements are missing (a node may have sent its ack to a server
                # that died since, and will not resend it): wait for them a little, not for the round's timeout.
                ack_deadline = loop.time() + ACK_GRACE_S
                deadline = min(deadline, ack_deadline)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if state.secure is not None:  # who is gone: not waited for now, nor at the unmask stage
                self._drop_disconnected(state, collector.participants - set(collector.failed) - set(collector.acks))
                remaining = min(remaining, DROPOUT_POLL_S)
            try:
                item = await asyncio.wait_for(self.inbox.get(), remaining)
            except TimeoutError:
                continue
            await self._dispatch(state, item)

    async def _dispatch(self, state: RoundState, item: object) -> None:
        """One inbox item, whatever stage the round is at."""
        collector = state.collector
        match item:
            case NodeRefusal():
                collector.offer_refusal(item)
            case UpdateAck():
                reason = collector.offer_ack(item)
                if not reason:
                    state.last_delivery_s = time.perf_counter() - state.t0
                else:
                    logger.warning("round %d: ignored acknowledgement from %s (%s)", state.server_round, item.node_id,
                                   reason)
            case InspectedRecord():
                await self._take_record(state, item)
            case SecAggInput():
                self._take_secure(state, item)
            case Verdict() if self._aggregation is not None:
                self._aggregation.take_verdict(state, item)
        self.observer.round_progress(state.server_round, collector)

    async def _take_record(self, state: RoundState, item: InspectedRecord) -> None:
        self.observer.record_taken(state.server_round, item.size_bytes)
        if item.partition >= 0:
            self.offsets[item.partition] = max(self.offsets.get(item.partition, 0), item.offset + 1)
        pending = state.collector.offer(item)
        if pending is None:
            return
        t_acc = time.perf_counter()
        outcome = await asyncio.get_running_loop().run_in_executor(None, self._assemble_and_fold, state,
                                                                   pending)
        state.aggregate_s += time.perf_counter() - t_acc
        update = state.collector.conclude(pending, outcome)
        if update is not None:
            state.last_delivery_s = time.perf_counter() - state.t0
            logger.info("round %d: update from %s accepted (%d samples)", state.server_round, update.node_id,
                        update.num_samples)

    async def _aggregate(self, state: RoundState) -> None:
        """The round's new global model, or the reason it has none (the model then stays)."""
        t_agg = time.perf_counter()
        if state.failure is None and self._aggregation is not None:  # the workers' partials, into the strategy
            state.failure = await self._aggregation.close_round(state, self.strategy)
        accepted = len(state.collector.completed)
        if state.failure is None and accepted < state.required:
            state.failure = f"{accepted} update(s) accepted, the round needs {state.required} (--min-fit)"
        if state.failure is None and state.secure is not None:
            await self._secure_unmask(state)
        if state.failure is None and state.paillier is not None:
            await self._paillier_decrypt(state)
        if state.failure is None:
            try:
                new_weights, new_digest = await asyncio.get_running_loop().run_in_executor(
                    None, self._aggregate_and_digest)
            except AggregationError as exc:  # e.g. too few updates for Krum: the round fails, the session goes on
                state.failure = str(exc)
            else:
                if new_weights is None:
                    state.failure = "no update accepted"
                else:
                    self.weights, self._digest = new_weights, new_digest
                    state.aggregation = {**state.aggregation, **self.strategy.last_round_info()}  # + partials
                    self._account(state)
        if state.failure is not None:
            logger.error("round %d: failed (%s); global model unchanged", state.server_round, state.failure)
        state.aggregate_s += time.perf_counter() - t_agg
        state.total_s = time.perf_counter() - state.t0
        # What the close persists, frozen now: the next round changes the strategy's state and the offsets.
        state.weights, state.model_digest = self.weights, self._digest
        state.strategy_state = {k: [np.array(a, copy=True) for a in v] for k, v in self.strategy.state().items()}

    def _account(self, state: RoundState) -> None:
        """A new model was released: what it cost in privacy (the ledger's books, frozen for the close)."""
        if self.privacy is None:
            return
        dp = state.aggregation.get("dp", {})
        state.privacy = self.privacy.record_round(clip_norm=dp.get("clip_norm", self.privacy.settings.clip_norm),
                                                  delivered=len(state.collector.completed),
                                                  asked=len(state.participants))
        state.privacy_state = self.privacy.state()
        logger.info("round %d: epsilon %.4g at delta %g after %d round(s)", state.server_round,
                    state.privacy["epsilon"], self.privacy.settings.delta, state.privacy["rounds_accounted"])

    async def _close_round(self, state: RoundState, previous: asyncio.Task[None] | None) -> None:
        """Evaluate, record and persist one round (concurrently with the next round's training)."""
        loop = asyncio.get_running_loop()
        t_eval = time.perf_counter()
        holdout = await loop.run_in_executor(None, self._evaluate, state.server_round, state.weights)
        evaluate_s = time.perf_counter() - t_eval
        if previous is not None:
            await previous  # the history stays in round order
        record = round_record(state, holdout, evaluate_s)
        self.history.add_round(record)
        self.observer.round_closed(record)
        if state.privacy_state is not None:
            self.history.set_privacy_state(state.privacy_state)
        await loop.run_in_executor(None, self._persist, state)
        if self._commit is not None:
            self._commit(state.offsets)
        logger.info("round %d: %s, %d/%d updates, holdout %s, %.2fs", state.server_round, record.status,
                    len(state.collector.completed), len(state.participants), format_metrics(holdout), state.total_s)
        if record.federated_eval:
            logger.info("round %d: federated evaluation of its start model on %d local test rows: %s",
                        state.server_round, record.federated_eval["num_samples"],
                        format_metrics(record.federated_eval["weighted"]))

    def _assemble_and_fold(self, state: RoundState, pending: PendingUpdate) -> AssembledUpdate:
        """Worker thread: rebuild and check a node's update, and fold it into the strategy if it passes."""
        collector = state.collector
        outcome = assemble_update(pending, reference=collector.reference, max_update_norm=collector.max_update_norm)
        if outcome.update is not None and state.secure is not None:
            try:
                state.secure.take_masked(outcome.update.node_id, outcome.update.weights[0])
            except (ProtocolError, SecAggFailure) as exc:
                reason = exc.reason if isinstance(exc, ProtocolError) else "round_failed"
                return AssembledUpdate(None, (f"secagg_{reason}", str(exc)))
            outcome = AssembledUpdate(replace(outcome.update, weights=[]))
        elif outcome.update is not None and state.paillier is not None:
            try:
                state.paillier.take_encrypted(outcome.update.node_id, outcome.update.weights[0])
            except ProtocolError as exc:
                return AssembledUpdate(None, (f"paillier_{exc.reason}", str(exc)))
            outcome = AssembledUpdate(replace(outcome.update, weights=[]))
        elif outcome.update is not None:
            update = outcome.update
            weight = update.num_samples
            if state.sample_cap is not None and weight > state.sample_cap:
                state.capped[update.node_id] = weight
                weight = state.sample_cap  # --max-node-weight: no node outweighs its share of the round
            self.strategy.accumulate(update.node_id, update.weights, weight)
            outcome = AssembledUpdate(replace(update, weights=[]))  # the strategy has them; do not keep a copy
        return outcome

    async def _paillier_decrypt(self, state: RoundState) -> None:
        """Ask the decryptor for the sum of the accepted ciphertexts; fold the checked, decoded mean."""
        paillier = state.paillier
        assert paillier is not None and self.settings.paillier is not None
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            request = paillier.request(state.offsets_from, self.offsets)
            payload = await loop.run_in_executor(None, paillier.request_wire, request)
            answer = await self._decrypt(self.settings.paillier.decryptor_url, payload,
                                         self.settings.paillier.decrypt_timeout_s)
            paillier.timings_s["decrypt"] = round(time.perf_counter() - t0, 4)
            await loop.run_in_executor(None, self._paillier_fold, paillier, request, answer)
        except PaillierFailure as failure:
            state.failure = paillier.fail(failure)
            return
        encrypt = [t for ack in state.collector.acks.values() if (t := ack.timings_s.get("encrypt")) is not None]
        paillier.timings_s["encrypt_max"] = max(encrypt, default=0.0)

    def _paillier_fold(self, paillier: PaillierRound, request: DecryptRequest, answer: DecryptedSum) -> None:
        """Worker thread: check and decode the decrypted sum; the strategy gets the FedAvg as the round's update."""
        weights, num_samples = paillier.finish(request, answer, self.weights)
        self.strategy.accumulate(SECURE_SUM_ID, weights, num_samples)

    def _aggregate_and_digest(self) -> tuple[Weights | None, str]:
        """Worker thread: the round's aggregate (None if nothing to aggregate) and its digest."""
        weights = self.strategy.aggregate()
        if weights is not None and self.model.personal:  # the personal layers keep the server's initial values
            weights = with_shared(self.weights, self.model.personal, weights)
        return weights, weights_digest(weights) if weights is not None else self._digest

    def _persist(self, state: RoundState) -> None:
        """The round's detail (appended), the checkpoint, then the history's summary: the checkpoint is never older
        than the history, and never names a round whose detail is not written."""
        self.history.flush_detail()
        if self._checkpoint_file is not None:
            save_checkpoint(self._checkpoint_file, Checkpoint(
                session_id=self.settings.session_id,
                completed_round=state.server_round,
                weights=state.weights,
                model={"architecture": self.model.architecture, "compile": self.model.compile,
                       "data": self.model.data},
                history=self.history.summary_document(),
                strategy_state=state.strategy_state,
                offsets=state.offsets,
            ))
        self.history.save()

    def _message(self, ref: ModelRef, *, slim: bool = False) -> ModelMessage:
        """The model announcement; ``slim``: the weights reference and the spec's digest only (``start_round``)."""
        if slim:
            return ModelMessage("", {}, ref, {}, self._spec.digest)
        return ModelMessage(self.model.architecture, self.model.compile, ref, self.model.data, self._spec.digest)

    async def _end_session(self) -> None:
        rounds = self.settings.rounds
        ref = await self._publish_model(rounds + 1, self.weights, self._digest)
        end = EndSession(self.settings.session_id, rounds, self._message(ref))
        self.history.set_final_model_ref(ref.to_wire())
        nodes = self.registry.snapshot()
        await self._send_to("end_session", end.to_wire(), [n.sid for n in nodes])
        logger.info("session %s: end_session sent to %d node(s)", self.settings.session_id, len(nodes))
        if not await self._wait_until_nodes_leave(self.settings.end_grace_s):
            logger.warning("%d node(s) still connected after %.0fs; closing anyway", len(self.registry),
                           self.settings.end_grace_s)

    async def _wait_until_nodes_leave(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.registry) > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await self.registry.wait_changed(remaining)
        return True
