"""Collects one round's node updates from raw Kafka records (pure: no I/O).

Every record is untrusted. The collector decodes it, checks it belongs to this session,
this round and a participant, de-duplicates at-least-once deliveries, reassembles chunked
layers, and hands back a node's complete update once. What it refuses is counted by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from common.assembly import WeightAssembler
from common.codec import ArraySpec
from common.protocol import KIND_UPDATE, NodeRefusal, ProtocolError, UpdateAck, decode_chunk

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletedUpdate:
    node_id: str
    num_samples: int
    weights: list[np.ndarray]


class RoundCollector:
    """State of one round's update collection."""

    def __init__(
        self,
        *,
        session_id: str,
        server_round: int,
        participants: Iterable[str],
        expected_specs: Sequence[ArraySpec],
    ) -> None:
        self.session_id = session_id
        self.server_round = server_round
        self.participants = frozenset(participants)
        self._expected = list(expected_specs)
        self._assemblers: dict[str, WeightAssembler] = {}
        self.completed: dict[str, CompletedUpdate] = {}  # bookkeeping only: weights=[]
        self.failed: dict[str, str] = {}
        self.acks: dict[str, UpdateAck] = {}
        self.refused: dict[str, str] = {}
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.ignored = 0
        self._counted: set[tuple[str, str, int]] = set()

    def reject(self, reason: str, detail: str, *, update_key: tuple[str, int] | None = None) -> None:
        """Count a rejection. Records that belong to one identifiable update (node, round) count once."""
        if update_key is not None:
            if (reason, *update_key) in self._counted:
                return
            self._counted.add((reason, *update_key))
        self.rejected[reason] += 1
        logger.warning("round %d: rejected update record (%s): %s", self.server_round, reason, detail)

    def offer_record(self, value: bytes | None) -> CompletedUpdate | None:
        """Feed one raw record; returns the node's update when this record completes it."""
        try:
            chunk = decode_chunk(value)
        except ProtocolError as exc:
            self.reject(exc.reason, str(exc))
            return None
        if chunk.kind != KIND_UPDATE or chunk.session_id != self.session_id:
            self.ignored += 1  # another session's or the model topic's traffic: not ours to judge
            return None
        # Checks that do not depend on timing come first, so a record is judged the same whenever it arrives.
        expected = self._expected[chunk.layer_index] if chunk.layer_index < len(self._expected) else None
        if chunk.num_layers != len(self._expected) or chunk.spec != expected:
            shown = f"{chunk.spec.dtype}{list(chunk.spec.shape)} of {chunk.num_layers} layers"
            self.reject("shape_mismatch", f"node {chunk.node_id} layer {chunk.layer_index}: {shown} does not fit",
                        update_key=(chunk.node_id, chunk.server_round))
            return None
        node_id = chunk.node_id
        update_key = (node_id, chunk.server_round)
        if node_id not in self.participants:
            self.reject("unknown_node", f"{node_id!r} is not a participant of round {self.server_round}",
                        update_key=update_key)
            return None
        if chunk.server_round < self.server_round:
            self.reject("stale_round", f"node {node_id} sent round {chunk.server_round}", update_key=update_key)
            return None
        if chunk.server_round > self.server_round:
            self.reject("future_round", f"node {node_id} sent round {chunk.server_round}", update_key=update_key)
            return None
        if node_id in self.completed or node_id in self.failed:
            self.duplicates += 1
            return None
        assembler = self._assemblers.setdefault(node_id, WeightAssembler(self._expected))
        try:
            if not assembler.add(chunk):
                self.duplicates += 1
                return None
            if not assembler.complete:
                return None
            weights = assembler.result()
        except ProtocolError as exc:
            self.reject(exc.reason, f"node {node_id}: {exc}")
            return None
        del self._assemblers[node_id]
        for index, layer in enumerate(weights):
            if np.issubdtype(layer.dtype, np.floating) and not np.isfinite(layer).all():
                self.failed[node_id] = "non_finite"
                self.reject("non_finite", f"node {node_id}: layer {index} has NaN or Inf")
                return None
        # The weights go to the caller (the strategy folds them in); the collector keeps only the bookkeeping,
        # so a round does not hold one model per node.
        self.completed[node_id] = CompletedUpdate(node_id=node_id, num_samples=assembler.num_samples, weights=[])
        return CompletedUpdate(node_id=node_id, num_samples=assembler.num_samples, weights=weights)

    def offer_ack(self, ack: UpdateAck) -> str | None:
        """Record a node's acknowledgement; returns a refusal reason or None."""
        if ack.session_id != self.session_id or ack.server_round != self.server_round:
            return "stale_round"
        if ack.node_id not in self.participants:
            return "unknown_node"
        self.acks[ack.node_id] = ack
        return None

    def offer_refusal(self, refusal: NodeRefusal) -> None:
        """A participant said its data cannot take part: stop waiting for it this round."""
        if refusal.session_id != self.session_id or refusal.node_id not in self.participants:
            return
        if refusal.node_id not in self.completed:
            self.failed[refusal.node_id] = refusal.reason
            self.refused[refusal.node_id] = f"{refusal.reason}: {refusal.detail}"
            logger.warning("round %d: node %s refused to take part (%s): %s", self.server_round, refusal.node_id,
                           refusal.reason, refusal.detail)

    def done(self) -> bool:
        """True when every participant has a complete acknowledged update or has failed."""
        return all(
            node_id in self.failed or (node_id in self.completed and node_id in self.acks)
            for node_id in self.participants
        )
