"""The ``fl-aggregator`` process: a Kafka consumer-group member that validates and folds its partitions' updates.

Blocking kafka-python calls run in this process's main thread (the worker has no event loop); the control
topic is read by ``kafka_io.UpdateConsumer``'s thread and handed over through a bounded queue. One loop:

1. apply control messages (``open`` a round, ``close`` it: publish a partial per owned partition, then commit
   the partitions' offsets under the group, so a partition's next owner starts where this round's partial
   ended);
2. poll the updates topic, ``inspect_record`` each record (the server's own function: size, HMAC, JSON, strict
   base64, headers), hold a record of a round not opened yet (seek back and pause the partitions, still
   polling so the group's membership holds; up to ``OPEN_WAIT_S`` once some round is known), then let
   ``AggregatorCore`` judge and fold it; publish the verdicts;
3. after a rebalance, and every ``HEARTBEAT_S``, publish which partitions it owns (the coordinator waits until
   every partition has an owner before it opens a round).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from common.ratelog import RateLimitedLog
from common.transport import kafka_io
from common.wire.errors import ProtocolError
from common.wire.integrity import KeyRegistry
from common.wire.protocol import DEFAULT_CHUNK_BYTES, KIND_UPDATE, RawRecord, encode_chunk, split_weights
from fl_server.aggregator.core import AggregatorCore, Outgoing, PartialOut
from fl_server.aggregator.messages import (
    AggregationKey,
    Assignment,
    RoundClose,
    RoundOpen,
    control_topic,
    results_topic,
)
from fl_server.collector import InspectedRecord, inspect_record

logger = logging.getLogger(__name__)
control_log = RateLimitedLog(logger)

OPEN_WAIT_S = 30.0  # how long a record of an unannounced round is held before it is judged as it stands
HEARTBEAT_S = 5.0
CONTROL_QUEUE_ITEMS = 64
SEND_TIMEOUT_S = 120.0
# A worker reads few partitions: with kafka-python's 1 MiB per partition per fetch it would wait one round trip
# per ~700 KB record. Fetch up to 16 MiB per partition instead (bounded: the poll holds at most that).
FETCH_CONFIG = {"max_partition_fetch_bytes": 16 * 1024 * 1024, "fetch_max_bytes": 64 * 1024 * 1024}


def sum_partition_id(partition: int) -> str:
    """The sender id of a partial's sum records (a node id in form: the update codec carries them)."""
    return f"partition-{partition}"


@dataclass(frozen=True)
class WorkerSettings:
    kafka: str
    updates_topic: str
    aggregator_id: str
    group_id: str
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_record_bytes: int = 4 * 1024 * 1024


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python ships no type hints
    def __init__(self, worker: AggregatorWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked}
        if partitions:
            logger.warning("partitions %s revoked (consumer-group rebalance); their open round is left to their "
                           "next owner, who re-reads them from the last committed offset", sorted(partitions))
        self.worker.core.revoke(partitions)
        self.worker.assignment_changed = True

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        partitions = {tp.partition for tp in assigned}
        self.worker.core.assign(partitions)
        self.worker.newly_assigned |= partitions
        self.worker.assignment_changed = True


class AggregatorWorker:
    """One worker process's Kafka side around an ``AggregatorCore``."""

    def __init__(self, settings: WorkerSettings, *, keys: KeyRegistry | None, key: AggregationKey,
                 config: kafka_io.ClientConfig | None = None) -> None:
        self.settings = settings
        self.keys = keys
        self.key = key
        self.config = config or {}
        self.core = AggregatorCore(settings.aggregator_id, keys=keys)
        self.assignment_changed = False
        self.newly_assigned: set[int] = set()  # to position at their committed offset before reading them
        self._control: queue.Queue[RoundOpen | RoundClose] = queue.Queue(CONTROL_QUEUE_ITEMS)
        self._producer: KafkaProducer | None = None
        self._seq = 0
        self._next_heartbeat = 0.0
        self._stop = threading.Event()
        self._paused = False  # holding a record until its round is announced (see _take_batch)
        self._hold: tuple[int, int] | None = None
        self._hold_deadline: float | None = None
        self.published_partials = 0

    # ------------------------------------------------------------ control topic (its consumer's thread)

    def _on_control(self, record: RawRecord) -> None:
        try:
            kind = self.key.verify(record.key, record.header_map(), record.value)
            message: RoundOpen | RoundClose
            if kind == RoundOpen.kind:
                message = RoundOpen.from_value(record.value)
            elif kind == RoundClose.kind:
                message = RoundClose.from_value(record.value)
            else:
                raise ProtocolError("bad_schema", f"unknown control message {kind[:20]!r}")
        except ProtocolError as exc:
            control_log.warning(exc.reason, "refused a control record at offset %d: %s", record.offset, exc)
            return
        try:
            self._control.put(message, timeout=10)
        except queue.Full:
            control_log.warning("control_full", "control queue full: dropped a %s message", message.kind)

    # ------------------------------------------------------------ the loop (main thread)

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        kafka_io.ensure_topics(s.kafka, {control_topic(s.updates_topic): 1, results_topic(s.updates_topic): 1},
                               self.config)
        self._producer = kafka_io.make_producer(s.kafka, f"fl-aggregator-{s.aggregator_id}", self.config)
        control = kafka_io.UpdateConsumer(s.kafka, control_topic(s.updates_topic), self._on_control,
                                          config=self.config)
        control.start()
        # Never create the updates topic by asking for it: fl-server creates it with one partition per worker.
        consumer = kafka_io.make_consumer(s.kafka, f"fl-aggregator-{s.aggregator_id}",
                                          {**self.config, **FETCH_CONFIG, "allow_auto_create_topics": False},
                                          s.group_id)
        if not self._wait_for_topic(consumer, stop):
            control.stop()
            consumer.close()
            return
        consumer.subscribe([s.updates_topic], listener=_Rebalance(self))
        logger.info("aggregator %s: group %s on %s; control on %s", s.aggregator_id, s.group_id, s.updates_topic,
                    control_topic(s.updates_topic))
        self._stop = stop
        try:
            while not stop.is_set():
                applied = self._apply_control(consumer, block_s=0.0)
                if self._paused and (applied or (self._hold_deadline is not None
                                                 and time.monotonic() >= self._hold_deadline)):
                    consumer.resume(*consumer.paused())
                    self._paused = False
                batch = consumer.poll(timeout_ms=200)
                repositioned = self._reposition(consumer, batch)
                self._heartbeat(consumer)
                self._take_batch(consumer, [(tp, records) for tp, records in batch.items()
                                            if tp.partition not in repositioned])  # those: read again
        finally:
            control.stop()
            consumer.close()
            self._producer.close(timeout=10)

    def _wait_for_topic(self, consumer: KafkaConsumer, stop: threading.Event) -> bool:
        started = time.monotonic()
        logged = started
        while not stop.is_set():
            if consumer.partitions_for_topic(self.settings.updates_topic):
                return True
            if time.monotonic() - logged >= 10:
                logged = time.monotonic()
                logger.warning("waited %.0fs for topic %s (fl-server --aggregators creates it)",
                               logged - started, self.settings.updates_topic)
            stop.wait(0.5)
        return False

    def _take_batch(self, consumer: KafkaConsumer, batch: list[tuple[TopicPartition, list[Any]]]) -> None:
        """Judge a polled batch; at a record of a round not announced yet, seek back, pause and return: the loop
        keeps polling (group membership, heartbeats) until a control message comes, then reads it again."""
        for index, (tp, records) in enumerate(batch):
            for record in records:
                if self._stop.is_set() or tp.partition not in self.core.owned:
                    break  # stopping, or revoked by a rebalance inside this batch: its next owner reads it
                raw = RawRecord(record.value, record.key, tuple(record.headers or ()), tp.partition, record.offset)
                item = inspect_record(raw, keys=self.keys, max_record_bytes=self.settings.max_record_bytes)
                if self._should_hold(item, tp.partition, record.offset):
                    consumer.seek(tp, record.offset)
                    for later, rest in batch[index + 1:]:
                        if rest and later.partition in self.core.owned:
                            consumer.seek(later, rest[0].offset)
                    consumer.pause(*consumer.assignment())
                    self._paused = True
                    return
                self._publish(self.core.take(tp.partition, record.offset, item))

    def _should_hold(self, item: InspectedRecord, partition: int, offset: int) -> bool:
        """Hold a record of a round not announced yet: before any round until one opens (there is nothing to judge
        it against); otherwise OPEN_WAIT_S, then it is judged as it stands (a later round: wrong_round)."""
        if not self.core.waiting_for_open(item):
            return False
        if self.core.round is None:
            self._hold, self._hold_deadline = (partition, offset), None
            return True
        if self._hold != (partition, offset) or self._hold_deadline is None:
            self._hold, self._hold_deadline = (partition, offset), time.monotonic() + OPEN_WAIT_S
        return time.monotonic() < self._hold_deadline

    def _heartbeat(self, consumer: KafkaConsumer) -> None:
        if self.assignment_changed or time.monotonic() >= self._next_heartbeat:
            self._announce()
            self._next_heartbeat = time.monotonic() + HEARTBEAT_S

    def _reposition(self, consumer: KafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> set[int]:
        """Partitions assigned by the last poll start at their committed offset: where the previous owner's last
        partial ended (a partition with none yet starts where this worker first reads it, committed at once).
        Their records in ``batch`` are dropped: the next poll reads them again from there."""
        fresh, self.newly_assigned = self.newly_assigned & self.core.owned, set()
        if not fresh:
            return set()
        starts = {tp.partition: records[0].offset for tp, records in batch.items() if records}
        uncommitted = []
        for partition in sorted(fresh):
            tp = TopicPartition(self.settings.updates_topic, partition)
            committed = consumer.committed(tp)
            if committed is None:
                committed = starts.get(partition, consumer.position(tp))
                uncommitted.append(partition)
            consumer.seek(tp, committed)
            self.core.next_offset[partition] = committed
        if uncommitted:  # so that a later owner does not skip ahead to the end
            self._commit(consumer, uncommitted)
        return fresh

    def _apply_control(self, consumer: KafkaConsumer, *, block_s: float) -> int:
        """Apply the control messages waiting; returns how many."""
        try:
            message = self._control.get(timeout=block_s) if block_s > 0 else self._control.get_nowait()
        except queue.Empty:
            return 0
        applied = 0
        while True:
            applied += 1
            if isinstance(message, RoundOpen):
                self.core.open(message)
            else:
                partials = self.core.close(message)
                if partials:
                    self._publish(partials)
                    self._commit(consumer)
            try:
                message = self._control.get_nowait()
            except queue.Empty:
                return applied

    def _announce(self) -> None:
        """Say which partitions this worker owns (the coordinator opens no round before each has an owner)."""
        if self.assignment_changed:
            self.assignment_changed = False
            self._seq += 1
            logger.info("aggregator %s owns partitions %s (from offsets %s)", self.settings.aggregator_id,
                        sorted(self.core.owned), {p: self.core.next_offset.get(p) for p in sorted(self.core.owned)})
        message = Assignment(self.settings.aggregator_id, self._seq, tuple(sorted(self.core.owned)))
        self._send(message.kind, message.to_value())

    def _commit(self, consumer: KafkaConsumer, partitions: Sequence[int] | None = None) -> None:
        owned = sorted(self.core.owned if partitions is None else partitions)
        offsets = {TopicPartition(self.settings.updates_topic, p): OffsetAndMetadata(self.core.next_offset[p], "", -1)
                   for p in owned if p in self.core.next_offset}
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance in between: the next owner re-reads, the coordinator detects it
            logger.warning("could not commit offsets %s: %r", {tp.partition: o.offset for tp, o in offsets.items()},
                           exc)

    # ------------------------------------------------------------ results topic

    def _send(self, kind: str, value: bytes) -> None:
        assert self._producer is not None
        key = self.settings.aggregator_id.encode()
        self._producer.send(results_topic(self.settings.updates_topic), key=key, value=value,
                            headers=self.key.headers(kind, key, value))

    def _publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        for message in messages:
            if isinstance(message, PartialOut):
                self._publish_partial(message)
            else:
                self._send(message.kind, message.to_value())
        assert self._producer is not None
        self._producer.flush(timeout=SEND_TIMEOUT_S)

    def _publish_partial(self, partial: PartialOut) -> None:
        """The sum's records first, then the header that names them: once the coordinator has the header, it
        has every record before it (one partition, in order)."""
        header = partial.header
        chunks = list(split_weights(partial.sums, kind=KIND_UPDATE, session_id=header.session_id,
                                    server_round=header.server_round, node_id=sum_partition_id(header.partition),
                                    num_samples=max(header.total_weight, 1), chunk_bytes=self.settings.chunk_bytes)
                      ) if partial.sums else []
        for chunk in chunks:
            self._send("sum", encode_chunk(chunk))
        header = replace(header, num_chunks=len(chunks))
        self._send(header.kind, header.to_value())
        self.published_partials += 1
        logger.info("round %d: partial of partition %d published: %d update(s), weight %d, offsets %d..%d",
                    header.server_round, header.partition, len(header.nodes), header.total_weight,
                    header.from_offset, header.to_offset)
