"""The audit's read-only view of Kafka: records of one partition by offset range (assign + seek, no group)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from common.transport import kafka_io
from common.wire.protocol import RawRecord
from fl_server.audit.audit import MissingRecords

logger = logging.getLogger(__name__)


class KafkaSource:
    """Reads ranges of records with one consumer that never joins a group and never commits: the audit needs
    only read access to the topics (Kafka ACL ``Read`` and ``Describe``)."""

    def __init__(self, bootstrap: str, *, config: kafka_io.ClientConfig | None = None,
                 poll_timeout_s: float = 60.0) -> None:
        self._consumer: Any = KafkaConsumer(bootstrap_servers=bootstrap, client_id="fl-audit", group_id=None,
                                            enable_auto_commit=False, auto_offset_reset="earliest",
                                            fetch_max_wait_ms=100, **(config or {}))
        self.poll_timeout_s = poll_timeout_s
        self.records_read = 0
        self.bytes_read = 0

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def end_offset(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        return int(self._consumer.end_offsets([tp])[tp])

    def records(self, topic: str, partition: int, start: int, end: int) -> Iterator[RawRecord]:
        if end <= start:
            return
        tp = TopicPartition(topic, partition)
        if tp.partition not in (self._consumer.partitions_for_topic(topic) or set()):
            raise MissingRecords(f"topic {topic} has no partition {partition}")
        first = int(self._consumer.beginning_offsets([tp])[tp])
        if first > start:
            raise MissingRecords(f"{topic}[{partition}] offsets {start}..{min(first, end) - 1} are gone (retention "
                                 "deleted them; keep the topics for the session's life, see the README)")
        available = self.end_offset(topic, partition)
        if available < end:
            raise MissingRecords(f"{topic}[{partition}] ends at offset {available}, the history names records up "
                                 f"to {end - 1}")
        self._consumer.assign([tp])
        self._consumer.seek(tp, start)
        position, deadline = start, time.monotonic() + self.poll_timeout_s
        while position < end:
            if time.monotonic() > deadline:
                raise MissingRecords(f"{topic}[{partition}]: no record past offset {position} within "
                                     f"{self.poll_timeout_s:.0f}s")
            for batch in self._consumer.poll(timeout_ms=500).values():
                for record in batch:
                    if record.offset >= end:
                        break
                    position = record.offset + 1
                    self.records_read += 1
                    self.bytes_read += len(record.value or b"")
                    deadline = time.monotonic() + self.poll_timeout_s
                    yield RawRecord(record.value, record.key, tuple(record.headers or ()), record.partition,
                                    record.offset)
            position = max(position, min(end, int(self._consumer.position(tp))))
