"""The coordinator's side of ``--aggregators K``: tell the workers about rounds, take their verdicts and partials.

The results topic is read by ``kafka_io.UpdateConsumer``'s thread: MACs are checked, JSON parsed and sum
records decoded and assembled there, never on the event loop. Verdicts go through the coordinator's inbox
(bounded, like update records); assignments and partials are kept here under a lock (bounded: only the round
being closed, one assembler per partition and worker).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np

from common.ratelog import RateLimitedLog
from common.transport import kafka_io
from common.wire.assembly import WeightAssembler
from common.wire.codec import ArraySpec
from common.wire.errors import ProtocolError
from common.wire.protocol import RawRecord, decode_chunk
from fl_server.aggregator.messages import (
    AggregationKey,
    Assignment,
    PartialHeader,
    RoundClose,
    RoundOpen,
    Verdict,
    control_topic,
    results_topic,
)
from fl_server.aggregator.partial import Partial, add_partials, check_partials
from fl_server.aggregator.worker import FETCH_CONFIG
from fl_server.collector import RoundCollector
from fl_server.inbox import Inbox
from fl_server.rounds import RoundState
from fl_server.strategies import Strategy

logger = logging.getLogger(__name__)
results_log = RateLimitedLog(logger)

READY_LOG_S = 10.0
SEND_TIMEOUT_S = 60.0
VERDICT_BYTES = 512


def partition_count(bootstrap: str, topic: str, config: kafka_io.ClientConfig | None = None,
                    timeout_s: float = 30.0) -> int:
    """How many partitions ``topic`` has (it exists: ``ensure_topics`` ran)."""
    consumer = kafka_io.make_consumer(bootstrap, "fl-server-partitions", config)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                return len(partitions)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions after {timeout_s:.0f}s")
            consumer.poll(timeout_ms=200)
    finally:
        consumer.close()


class AggregatorLink:
    """Control messages out, verdicts, assignments and partials in (see the module docstring)."""

    def __init__(self, *, kafka: str, updates_topic: str, num_partitions: int, key: AggregationKey,
                 session_id: str, round_timeout_s: float, config: kafka_io.ClientConfig | None = None) -> None:
        self.kafka = kafka
        self.updates_topic = updates_topic
        self.num_partitions = num_partitions
        self.key = key
        self.session_id = session_id
        self.round_timeout_s = round_timeout_s
        self.config = config or {}
        self._producer: Any = None
        self._consumer: kafka_io.UpdateConsumer | None = None
        self._inbox: Inbox | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._changed = asyncio.Event()
        self._assignments: dict[str, Assignment] = {}
        self._open: RoundOpen | None = None
        self._closing: tuple[int, tuple[ArraySpec, ...]] | None = None  # round being closed, sum layout
        self._assemblers: dict[tuple[int, str], WeightAssembler] = {}  # (partition, worker) -> sum chunks
        self._partials: dict[int, Partial] = {}
        self._conflicts: list[str] = []
        self._previous_to: dict[int, int] = {}
        self.refused: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self, producer: Any, inbox: Inbox) -> None:
        """Read the results topic (from its end: workers repeat their assignment every few seconds)."""
        self._producer, self._inbox = producer, inbox
        self._loop = asyncio.get_running_loop()
        self._consumer = kafka_io.UpdateConsumer(self.kafka, results_topic(self.updates_topic), self._on_result,
                                                 config={**self.config, **FETCH_CONFIG})  # one partition, big sums
        await self._loop.run_in_executor(None, self._consumer.start)
        logger.info("aggregation by fl-aggregator workers over %d partition(s) of %s; control on %s",
                    self.num_partitions, self.updates_topic, control_topic(self.updates_topic))

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._consumer.stop)
            self._consumer = None

    # ------------------------------------------------------------ the round loop's calls

    def owners(self) -> dict[int, list[str]]:
        with self._lock:
            owners: dict[int, list[str]] = {}
            for assignment in self._assignments.values():
                for partition in assignment.partitions:
                    owners.setdefault(partition, []).append(assignment.aggregator)
            return owners

    async def wait_ready(self) -> None:
        """Until every partition of the updates topic has an owner (a worker said so)."""
        started = time.monotonic()
        while True:
            owners = self.owners()
            missing = sorted(set(range(self.num_partitions)) - set(owners))
            if not missing:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), READY_LOG_S)
            except TimeoutError:
                logger.warning("waiting %.0fs for fl-aggregator workers: partition(s) %s of %s have no owner",
                               time.monotonic() - started, missing, self.updates_topic)

    async def open_round(self, collector: RoundCollector, *, sample_cap: int | None, max_record_bytes: int) -> None:
        message = RoundOpen(self.session_id, collector.server_round, dict(collector.declared_samples),
                            tuple(collector.expected_specs), self.num_partitions, sample_cap, max_record_bytes)
        with self._lock:
            self._open = message
            self._closing = None
            self._partials, self._assemblers, self._conflicts = {}, {}, []
        await self._send(message.kind, message.to_value())

    def take_verdict(self, state: RoundState, verdict: Verdict) -> None:
        """A worker's verdict on one update (from the inbox, on the round loop)."""
        if verdict.session_id != self.session_id or verdict.server_round != state.server_round:
            return
        collector = state.collector
        taken = collector.take_verdict(verdict.node_id, accepted=verdict.accepted, num_samples=verdict.num_samples,
                                       sha256=verdict.sha256, reason=verdict.reason, records=verdict.records)
        if not taken:
            return
        if verdict.accepted:
            if verdict.weight < verdict.num_samples:
                state.capped[verdict.node_id] = verdict.num_samples
            state.last_delivery_s = time.perf_counter() - state.t0
            logger.info("round %d: update from %s accepted by aggregator %s (%d samples)", state.server_round,
                        verdict.node_id, verdict.aggregator, verdict.num_samples)
        else:
            logger.warning("round %d: update from %s rejected by aggregator %s (%s)", state.server_round,
                           verdict.node_id, verdict.aggregator, verdict.reason)

    async def close_round(self, state: RoundState, strategy: Strategy) -> str | None:
        """Ask for the partials, check them, add them into ``strategy``; the round's failure, or None."""
        collector = state.collector
        specs = tuple(ArraySpec("float64", s.shape) for s in collector.expected_specs)
        with self._lock:
            self._closing = (state.server_round, specs)
            self._open = None
        accepted = {u.node_id: u.sha256 for u in collector.accepted_updates}
        await self._send(RoundClose.kind, RoundClose(self.session_id, state.server_round, accepted).to_value())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.round_timeout_s
        while True:
            with self._lock:
                partials, conflicts = dict(self._partials), list(self._conflicts)
            if conflicts:
                return "; ".join(conflicts)
            if set(range(self.num_partitions)) <= set(partials) or loop.time() >= deadline:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, min(1.0, deadline - loop.time())))
            except TimeoutError:
                pass
        with self._lock:
            self._closing = None
            self._assemblers = {}
        problems = check_partials(partials, num_partitions=self.num_partitions, participants=collector.participants,
                                  accepted=accepted, specs=collector.expected_specs, previous_to=self._previous_to)
        if problems:
            return "aggregators' partials refused: " + "; ".join(problems[:5])
        for partition, partial in sorted(partials.items()):
            header = partial.header
            collector.add_counts(header.rejected, duplicates=header.duplicates, ignored=header.ignored)
            for node, (weight, sha256) in sorted(header.nodes.items()):
                collector.take_verdict(node, accepted=True, num_samples=weight, sha256=sha256)  # folded, no verdict yet
            state.offsets[partition] = header.to_offset
            state.offsets_from.setdefault(partition, header.from_offset)
            self._previous_to[partition] = header.to_offset
        sums, weight = await loop.run_in_executor(None, add_partials, list(partials.values()))
        if sums is not None:
            await loop.run_in_executor(None, strategy.add_partial_sum, sums, weight)
        state.aggregation = {**state.aggregation, "partials": {
            str(p): {"aggregator": q.header.aggregator, "nodes": sorted(q.header.nodes),
                     "weight": q.header.total_weight, "offsets": [q.header.from_offset, q.header.to_offset]}
            for p, q in sorted(partials.items())}}
        logger.info("round %d: added %d partial(s) from %d aggregator(s): %d update(s), weight %d",
                    state.server_round, len(partials), len({q.header.aggregator for q in partials.values()}),
                    sum(len(q.header.nodes) for q in partials.values()), weight)
        return None

    async def _send(self, kind: str, value: bytes) -> None:
        key = b"coordinator"
        headers = self.key.headers(kind, key, value)

        def send() -> None:
            self._producer.send(control_topic(self.updates_topic), key=key, value=value, headers=headers)
            self._producer.flush(timeout=SEND_TIMEOUT_S)

        await asyncio.get_running_loop().run_in_executor(None, send)

    # ------------------------------------------------------------ the results consumer's thread

    def _on_result(self, record: RawRecord) -> None:
        try:
            kind = self.key.verify(record.key, record.header_map(), record.value)
            if kind == Assignment.kind:
                self._take_assignment(Assignment.from_value(record.value))
            elif kind == Verdict.kind:
                verdict = Verdict.from_value(record.value)
                if verdict.session_id == self.session_id and self._inbox is not None:
                    self._inbox.put_from_thread(verdict, VERDICT_BYTES, self._stopping)
            elif kind == "sum":
                self._take_sum(record)
            elif kind == PartialHeader.kind:
                self._take_partial(PartialHeader.from_value(record.value), record)
            else:
                raise ProtocolError("bad_schema", f"unknown aggregation record type {kind[:20]!r}")
        except ProtocolError as exc:
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            results_log.warning(exc.reason, "refused an aggregation record at offset %d: %s", record.offset, exc)

    def _notify(self) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._changed.set)
            except RuntimeError:  # the loop is closed: the session is over
                pass

    def _take_assignment(self, assignment: Assignment) -> None:
        with self._lock:
            known = self._assignments.get(assignment.aggregator)
            if known is not None and known.seq > assignment.seq:
                return
            new = known is None or known.partitions != assignment.partitions
            self._assignments[assignment.aggregator] = assignment
            repeat = self._open if new else None
        if new:
            logger.info("aggregator %s owns partition(s) %s of %s", assignment.aggregator,
                        list(assignment.partitions), self.updates_topic)
        if repeat is not None and self._producer is not None:  # a worker that joined mid-round learns the round
            key = b"coordinator"
            value = repeat.to_value()
            self._producer.send(control_topic(self.updates_topic), key=key, value=value,
                                headers=self.key.headers(repeat.kind, key, value))
        self._notify()

    def _sum_key(self, record: RawRecord) -> tuple[int, str, Any] | None:
        chunk = decode_chunk(record.value)
        if chunk.session_id != self.session_id or not chunk.node_id.startswith("partition-"):
            return None
        try:
            partition = int(chunk.node_id.removeprefix("partition-"))
        except ValueError:
            return None
        return partition, (record.key or b"").decode("ascii", "replace"), chunk

    def _take_sum(self, record: RawRecord) -> None:
        found = self._sum_key(record)
        if found is None:
            return
        partition, worker, chunk = found
        with self._lock:
            if self._closing is None or chunk.server_round != self._closing[0] or partition >= self.num_partitions:
                return  # only the round being closed is kept (bounded memory)
            assembler = self._assemblers.get((partition, worker))
            if assembler is None:
                if len(self._assemblers) >= 2 * self.num_partitions:
                    raise ProtocolError("too_many_partials", "more partial sums than partitions allow")
                assembler = self._assemblers[(partition, worker)] = WeightAssembler(self._closing[1])
        assembler.add(chunk)

    def _take_partial(self, header: PartialHeader, record: RawRecord) -> None:
        worker = (record.key or b"").decode("ascii", "replace")
        if header.session_id != self.session_id or worker != header.aggregator:
            return
        with self._lock:
            if self._closing is None or header.server_round != self._closing[0]:
                return
            assembler = self._assemblers.pop((header.partition, worker), None)
        sums: list[np.ndarray] = []
        if header.num_chunks:
            if assembler is None or not assembler.complete:
                raise ProtocolError("incomplete_partial", f"round {header.server_round}: the sum of partition "
                                                          f"{header.partition} from {worker} is incomplete")
            sums = assembler.result()
        partial = Partial(header, sums)
        with self._lock:
            known = self._partials.get(header.partition)
            if known is None:
                self._partials[header.partition] = partial
            elif (known.header.nodes, known.header.sum_sha256) != (header.nodes, header.sum_sha256):
                self._conflicts.append(
                    f"partition {header.partition}: different partials from {known.header.aggregator} and {worker} "
                    "(the consumer group rebalanced during the round's close); the round fails, the next one "
                    "re-reads from the committed offsets")
        self._notify()
