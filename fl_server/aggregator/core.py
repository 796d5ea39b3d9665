"""One ``fl-aggregator`` worker's state (pure: no Kafka; ``worker.py`` drives it).

Per partition it owns and per round, the worker runs the server's own collector (``RoundCollector``: round,
layout, participant, de-duplication, replay, chunk and value checks, in the same order and with the same
reasons) and folds each accepted update into that partition's float64 ``PartitionSum``. It answers with
messages to publish: a ``Verdict`` per update judged, and at the round's close one ``PartialHeader`` plus
its sum arrays per partition.

State is per partition so that a consumer-group rebalance is simple and honest: a revoked partition's state
for the open round is dropped, and its new owner re-reads it from the offset committed at the end of the
previous round (workers commit only after they published a round's partials). The coordinator takes one
partial per partition; a node's verdict repeated by the new owner changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from common.wire.codec import weights_digest
from common.wire.integrity import KeyRegistry
from common.wire.protocol import KIND_UPDATE
from fl_server.aggregator.messages import PartialHeader, RoundClose, RoundOpen, Verdict
from fl_server.aggregator.partial import PartitionSum, expected_partition
from fl_server.collector import InspectedRecord, RoundCollector

logger = logging.getLogger(__name__)


@dataclass
class PartitionRound:
    """One partition's share of the open round."""

    collector: RoundCollector
    total: PartitionSum
    from_offset: int
    reported: set[str] = field(default_factory=set)  # nodes whose verdict was published


@dataclass(frozen=True)
class PartialOut:
    """A partial to publish: header, then the sum arrays as ``sum`` records."""

    header: PartialHeader
    sums: list[np.ndarray]


Outgoing = Verdict | PartialOut


class AggregatorCore:
    """What one worker knows: the open round, its partitions, and their partial sums."""

    def __init__(self, aggregator_id: str, *, keys: KeyRegistry | None) -> None:
        self.aggregator_id = aggregator_id
        self.keys = keys
        self.round: RoundOpen | None = None
        self.closed = False  # the open round was closed: its records are late from now on
        self.owned: set[int] = set()
        self.next_offset: dict[int, int] = {}  # partition -> next offset to judge
        self._partitions: dict[int, PartitionRound] = {}
        self._seen: dict[int, dict[bytes, int]] = {}  # per partition: digests of records taken -> round
        self._carry: Counter[str] = Counter()  # rejections of records of a closed round, for the next partial
        self._last_to: dict[int, int] = {}  # partition -> where its last partial ended: the next one starts there

    # ------------------------------------------------------------ membership

    def assign(self, partitions: set[int]) -> None:
        self.owned |= partitions

    def revoke(self, partitions: set[int]) -> None:
        """Forget the open round's state of partitions another worker now owns (it re-reads them)."""
        for partition in partitions:
            self._partitions.pop(partition, None)
            self._seen.pop(partition, None)
            self.next_offset.pop(partition, None)
            self._last_to.pop(partition, None)
        self.owned -= partitions

    # ------------------------------------------------------------ control

    def open(self, message: RoundOpen) -> bool:
        """A round opens; False if it is not newer than the one this worker knows (a repeat, or stale)."""
        current = self.round
        if current is not None and current.session_id == message.session_id \
                and message.server_round <= current.server_round:
            return False
        self.round, self.closed = message, False
        self._partitions.clear()
        if current is None or current.session_id != message.session_id:
            self._seen.clear()
        for seen in self._seen.values():  # replays of rounds before the last are late anyway (bounded memory)
            for digest in [d for d, r in seen.items() if r < message.server_round - 1]:
                del seen[digest]
        logger.info("round %d of session %s opened: %d participant(s)", message.server_round, message.session_id,
                    len(message.declared_samples))
        return True

    def waiting_for_open(self, item: InspectedRecord) -> bool:
        """True if ``item`` belongs to a round this worker has not been told about yet (hold it for a while)."""
        chunk = item.chunk
        if chunk is None or chunk.kind != KIND_UPDATE:
            return False
        if self.round is None:
            return True
        return chunk.session_id == self.round.session_id and chunk.server_round > self.round.server_round

    def close(self, message: RoundClose) -> list[PartialOut]:
        """The round's partials, one per owned partition (also the empty ones: they say the partition was read)."""
        current = self.round
        if current is None or self.closed or (message.session_id, message.server_round) != (
                current.session_id, current.server_round):
            return []
        self.closed = True
        out: list[PartialOut] = []
        for partition in sorted(self.owned):
            state = self._state(partition)
            collector, total = state.collector, state.total
            rejected = Counter(collector.rejected)
            if not out:
                rejected.update(self._carry)
            header = PartialHeader(
                current.session_id, current.server_round, self.aggregator_id, partition, state.from_offset,
                self.next_offset.get(partition, state.from_offset), dict(total.nodes), total.total_weight,
                _digest(total.arrays()), 0, dict(rejected), collector.duplicates, collector.ignored)
            out.append(PartialOut(header, total.arrays()))
            self._last_to[partition] = header.to_offset
        self._carry.clear()
        missing = sorted(set(message.accepted) - {n for p in out for n in p.header.nodes})
        logger.info("round %d closed: %d partial(s), %d update(s) folded%s", current.server_round, len(out),
                    sum(len(p.header.nodes) for p in out),
                    f"; accepted elsewhere: {', '.join(missing)}" if missing else "")
        self._partitions.clear()
        return out

    # ------------------------------------------------------------ records

    def take(self, partition: int, offset: int, item: InspectedRecord) -> list[Outgoing]:
        """Judge one record of an owned partition with the server's collector; the verdicts it settles."""
        before = self.next_offset.get(partition, offset)
        self.next_offset[partition] = max(before, offset + 1)
        current = self.round
        if current is None:
            return []  # nobody asked for a round: nothing to judge against (counted nowhere)
        chunk = item.chunk
        if self.closed:
            if chunk is not None and chunk.kind == KIND_UPDATE and chunk.session_id == current.session_id:
                self._carry["late_update" if chunk.server_round <= current.server_round else "wrong_round"] += 1
            return []
        state = self._state(partition, start=min(before, offset))
        collector = state.collector
        if chunk is not None and chunk.kind == KIND_UPDATE and chunk.session_id == current.session_id \
                and expected_partition(chunk.node_id, current.num_partitions) != partition:
            # A node's records are keyed by its id, so they all land on one partition; a copy written to another
            # would be judged by a second worker: refuse it (never held against the node: anyone could copy it).
            collector.reject("wrong_partition", f"record of node {chunk.node_id} on partition {partition}",
                             update_key=(chunk.node_id, chunk.server_round))
            return []
        update = collector.offer_inspected(item)
        out: list[Outgoing] = []
        if update is not None:
            weight = update.num_samples
            if current.sample_cap is not None:
                weight = min(weight, current.sample_cap)
            state.total.fold(update.node_id, update.weights, weight, update.sha256)
            accepted = collector.accepted_updates[-1]
            state.reported.add(update.node_id)
            out.append(Verdict(current.session_id, current.server_round, self.aggregator_id, partition,
                               update.node_id, update.num_samples, weight, update.sha256, True,
                               records=accepted.records))
        for node_id, reason in collector.failed.items():
            if node_id not in state.reported:
                state.reported.add(node_id)
                out.append(Verdict(current.session_id, current.server_round, self.aggregator_id, partition, node_id,
                                   0, 0, "", False, reason))
        return out

    def _state(self, partition: int, start: int | None = None) -> PartitionRound:
        """The partition's share of the open round; it covers the records from ``start`` (default: the next
        offset to judge, as the consumer reported it)."""
        state = self._partitions.get(partition)
        if state is None:
            current = self.round
            assert current is not None
            if start is None:
                start = self.next_offset.get(partition, 0)
            # Records judged between two rounds (late ones, counted in the next partial) belong to the next range.
            start = min(start, self._last_to.get(partition, start))
            collector = RoundCollector(
                session_id=current.session_id, server_round=current.server_round,
                participants=current.declared_samples, expected_specs=current.specs, keys=self.keys,
                max_record_bytes=current.max_record_bytes, seen=self._seen.setdefault(partition, {}),
                declared_samples=current.declared_samples)
            state = PartitionRound(collector, PartitionSum(current.specs), start)
            self._partitions[partition] = state
        return state


def _digest(arrays: list[np.ndarray]) -> str:
    return weights_digest(arrays) if arrays else ""
