"""Partial FedAvg sums: one partition's running sum, and the coordinator's checks before it adds them (pure numpy).

FedAvg's new model is ``sum_k n_k w_k / sum_k n_k``. Both sums split over any partition of the nodes, so each
aggregator folds the updates of its partitions into ``sum n_k w_k`` (float64) and ``sum n_k``, and the
coordinator adds one partial per partition and divides: the same float64 arithmetic as the in-process
``FedAvg`` (up to the order of the additions).

Before it adds them, ``check_partials`` makes sure the partials describe the round the coordinator knows: one
partial per partition of the updates topic, no node in two partials, only participants, every update the
coordinator holds an accepted verdict for covered with the same digest, weights that add up, sums that have
the model's layout, and offsets that leave no gap after the previous round's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.wire.codec import ArraySpec, weights_digest
from fl_server.aggregator.messages import PartialHeader
from fl_server.strategies.fedavg import add_scaled


def expected_partition(node_id: str, num_partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key, as kafka-python and the Java client hash)
    puts a record keyed ``node_id`` on: every chunk of a node's update lands there."""
    from kafka.partitioner.default import murmur2

    return int((murmur2(node_id.encode()) & 0x7FFFFFFF) % num_partitions)


@dataclass
class PartitionSum:
    """The running ``sum weight * update`` (float64) of the updates folded from one partition in one round."""

    specs: Sequence[ArraySpec]
    sums: list[np.ndarray] | None = None
    total_weight: int = 0
    nodes: dict[str, tuple[int, str]] = field(default_factory=dict)  # node -> (weight, sha256)

    def fold(self, node_id: str, weights: Sequence[np.ndarray], weight: int, sha256: str) -> None:
        if weight <= 0:
            raise ValueError(f"node {node_id}: a weight must be positive, got {weight}")
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} is already in this partial")
        if self.sums is None:
            self.sums = [np.zeros(spec.shape, dtype=np.float64) for spec in self.specs]
        for acc, layer in zip(self.sums, weights, strict=True):
            add_scaled(acc, layer, float(weight))
        self.total_weight += weight
        self.nodes[node_id] = (weight, sha256)

    def arrays(self) -> list[np.ndarray]:
        """The sum arrays (empty when nothing was folded)."""
        return list(self.sums) if self.sums is not None else []


@dataclass(frozen=True)
class Partial:
    """A verified partial: its header and its assembled float64 sum arrays."""

    header: PartialHeader
    sums: list[np.ndarray]


def check_partials(partials: Mapping[int, Partial], *, num_partitions: int, participants: frozenset[str] | set[str],
                   accepted: Mapping[str, str], specs: Sequence[ArraySpec],
                   previous_to: Mapping[int, int] | None = None) -> list[str]:
    """What is wrong with this round's partials (empty: they can be added). ``accepted``: node -> sha256 of the
    updates the coordinator has accepted verdicts for; ``previous_to``: each partition's end offset last round."""
    problems: list[str] = []
    missing = sorted(set(range(num_partitions)) - set(partials))
    if missing:
        problems.append(f"no partial for partition(s) {missing}")
    extra = sorted(set(partials) - set(range(num_partitions)))
    if extra:
        problems.append(f"partials for unknown partition(s) {extra}")
    owner: dict[str, int] = {}
    want = [(np.dtype(np.float64).name, tuple(spec.shape)) for spec in specs]
    for partition, partial in sorted(partials.items()):
        header = partial.header
        for node in sorted(header.nodes):
            if node in owner:
                problems.append(f"node {node} is in the partials of partitions {owner[node]} and {partition}")
            owner.setdefault(node, partition)
            if node not in participants:
                problems.append(f"partition {partition}: {node} is not a participant of the round")
        if sum(weight for weight, _ in header.nodes.values()) != header.total_weight:
            problems.append(f"partition {partition}: node weights do not add up to {header.total_weight}")
        if header.nodes:
            got = [(a.dtype.name, tuple(a.shape)) for a in partial.sums]
            if got != want:
                problems.append(f"partition {partition}: the sum's layout {got[:3]}... is not the model's")
            elif weights_digest(partial.sums) != header.sum_sha256:
                problems.append(f"partition {partition}: the sum does not match its announced digest")
        elif partial.sums:
            problems.append(f"partition {partition}: a sum without nodes")
        if header.to_offset < header.from_offset:
            problems.append(f"partition {partition}: offsets {header.from_offset}..{header.to_offset} go backwards")
        if previous_to is not None and partition in previous_to and header.from_offset > previous_to[partition]:
            problems.append(f"partition {partition}: records {previous_to[partition]}..{header.from_offset} were "
                            "judged by no aggregator (a consumer-group member started past them)")
    for node, sha256 in sorted(accepted.items()):
        if node not in owner:
            problems.append(f"the accepted update of {node} is in no partial")
        elif partials[owner[node]].header.nodes[node][1] != sha256:
            problems.append(f"the partial of partition {owner[node]} holds another update of {node} than its "
                            "verdict announced")
    return problems


def add_partials(partials: Sequence[Partial]) -> tuple[list[np.ndarray] | None, int]:
    """``sum`` of the partials' sums and weights (None when no partial folded a node)."""
    total: list[np.ndarray] | None = None
    weight = 0
    for partial in partials:
        if not partial.header.nodes:
            continue
        if total is None:
            total = [np.array(s, dtype=np.float64, copy=True) for s in partial.sums]
        else:
            for acc, s in zip(total, partial.sums, strict=True):
                acc += s
        weight += partial.header.total_weight
    return total, weight
