"""Collects one round's node updates from raw Kafka records (pure: no I/O).

The work is split in three, so that nothing proportional to a model runs on the event loop:

* ``inspect_record`` (stateless, thread-safe; the Kafka consumer's thread calls it): size,
  signature, JSON and field checks, signed headers. It returns an ``InspectedRecord``: the decoded
  chunk, or the reason it was rejected.
* ``RoundCollector.offer`` (the round loop, cheap): round, layout, participant, de-duplication;
  when a node's last chunk arrives it returns a ``PendingUpdate``.
* ``assemble_update`` (pure, in a worker): joins the chunks, rebuilds the arrays and checks their
  values; ``RoundCollector.conclude`` then records the outcome on the round loop.

``offer_record`` does all three in a row (tests and in-process callers), ``offer_inspected`` the last two (an
``fl-aggregator`` worker, in its own process). With ``fl-server --aggregators`` the coordinator's collector
learns each update's outcome from the workers' verdicts instead (``take_verdict``, ``add_counts``).

Every record is untrusted. The collector checks it in a fixed order, cheapest and most
fundamental first, and counts what it refuses by reason:

  size (``oversize``) -> signature when keys are configured (``unsigned``, ``unknown_node``,
  ``bad_signature``) -> JSON and field checks (``not_json``, ``bad_schema``, ``bad_base64``,
  ``bad_dtype``, ...) -> signed headers agree with the value (``header_mismatch``) ->
  session (other sessions are ignored, not judged) -> round (``replayed`` if these exact
  bytes were taken before, ``late_update`` for an earlier round, ``wrong_round`` for a later
  one) -> layer count, dtype and shape (``dtype_mismatch``, ``shape_mismatch``) -> participant
  (``not_participant``)
  -> chunk consistency -> values (``non_finite``, ``norm_exceeded``).

At-least-once deliveries of the same chunk count once (``duplicates``), keyed on session,
round, node, layer and chunk. When records are signed, a participant whose own signed record
fails a check forfeits the round (it is faulty or compromised); the round stops waiting for it.
Unsigned records are never held against a participant: anyone could have written them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from common.ratelog import RateLimitedLog
from common.wire.assembly import WeightAssembler
from common.wire.codec import ArraySpec, weights_digest
from common.wire.integrity import KeyRegistry, check_headers_match, value_digest
from common.wire.protocol import (
    KIND_UPDATE,
    MAX_RECORD_BYTES,
    NodeRefusal,
    ProtocolError,
    RawRecord,
    UpdateAck,
    WeightChunk,
    decode_chunk,
)

logger = logging.getLogger(__name__)
rejections_log = RateLimitedLog(logger)  # one per process: a flood of bad records is a few lines and a count


@dataclass(frozen=True)
class CompletedUpdate:
    node_id: str
    num_samples: int
    weights: list[np.ndarray]
    sha256: str = ""  # weights_digest of the update, for the history (fl-audit re-reads it from Kafka)


@dataclass(frozen=True)
class AcceptedUpdate:
    """An update the round took, as the history records it: which records made it and what they added up to."""

    node_id: str
    num_samples: int
    sha256: str
    records: tuple[tuple[int, int], ...]  # (partition, offset) of each chunk taken, in the order taken

    def to_wire(self) -> dict[str, object]:
        return {"node": self.node_id, "num_samples": self.num_samples, "sha256": self.sha256,
                "records": [list(position) for position in self.records]}


def update_norm(weights: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """L2 norm of ``weights - reference`` over every floating-point layer (in float64)."""
    total = 0.0
    for w, r in zip(weights, reference, strict=True):
        if np.issubdtype(np.asarray(w).dtype, np.floating):
            delta = np.asarray(w, dtype=np.float64) - np.asarray(r, dtype=np.float64)
            total += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(total)


@dataclass(frozen=True)
class InspectedRecord:
    """What ``inspect_record`` learnt from one Kafka record: its chunk, or why it was rejected.

    ``signer`` is the node whose key signed the record (None when unsigned or when keys are off);
    ``partition``/``offset`` are the consumer's bookkeeping, for the offsets a checkpoint records."""

    partition: int = -1
    offset: int = -1
    chunk: WeightChunk | None = None
    signer: str | None = None
    digest: bytes = b""
    rejection: tuple[str, str] | None = None

    @property
    def size_bytes(self) -> int:
        """Memory this item holds while it waits in the inbox (roughly)."""
        return (len(self.chunk.data) if self.chunk is not None else 0) + 256


def inspect_record(record: RawRecord, *, keys: KeyRegistry | None,
                   max_record_bytes: int = MAX_RECORD_BYTES) -> InspectedRecord:
    """The stateless checks of one record, in the collector's order: size, signature, JSON and fields, headers.

    Pure and thread-safe: the Kafka consumer's thread runs it, so parsing, base64 and HMAC over a record
    never run on the event loop."""
    value = record.value
    at = partial(InspectedRecord, record.partition, record.offset)
    if value is not None and len(value) > max_record_bytes:
        return at(rejection=("oversize", f"record of {len(value)} bytes exceeds "
                                                               f"{max_record_bytes}"))
    signer: str | None = None
    mac = b""
    headers = record.header_map()
    if keys is not None:
        try:
            signer, mac = keys.verify_record_mac(record.key, headers, value or b"")
        except ProtocolError as exc:
            return at(rejection=(exc.reason, str(exc)))
    try:
        chunk = decode_chunk(value, max_record_bytes=max_record_bytes)
        if signer is not None:
            check_headers_match(headers, chunk)
    except ProtocolError as exc:
        return at(signer=signer, rejection=(exc.reason, str(exc)))
    assert value is not None  # decode_chunk refuses None
    # The record's identity for replay detection: its verified MAC when signed (computed anyway), else a digest.
    return at(chunk=chunk, signer=signer, digest=b"mac:" + mac if mac else value_digest(value))


@dataclass(frozen=True)
class PendingUpdate:
    """A node's update whose chunks are all in, waiting for ``assemble_update``."""

    node_id: str
    num_samples: int
    assembler: WeightAssembler = field(repr=False)


@dataclass(frozen=True)
class AssembledUpdate:
    """The outcome of ``assemble_update``: the update, or the (reason, detail) that voids it."""

    update: CompletedUpdate | None
    problem: tuple[str, str] | None = None


def assemble_update(pending: PendingUpdate, *, reference: Sequence[np.ndarray] | None = None,
                    max_update_norm: float | None = None) -> AssembledUpdate:
    """Join the chunks, rebuild the layers and check their values (pure; O(model): run it in a worker)."""
    try:
        weights = pending.assembler.result()
    except ProtocolError as exc:
        return AssembledUpdate(None, (exc.reason, str(exc)))
    for index, layer in enumerate(weights):
        if np.issubdtype(layer.dtype, np.floating) and not np.isfinite(layer).all():
            return AssembledUpdate(None, ("non_finite", f"layer {index} has NaN or Inf"))
    if max_update_norm is not None:
        if reference is None:
            raise ValueError("max_update_norm needs the reference (global) weights")
        norm = update_norm(weights, reference)
        if norm > max_update_norm:
            return AssembledUpdate(None, ("norm_exceeded", f"update norm {norm:.4g} exceeds --max-update-norm "
                                                           f"{max_update_norm:g}"))
    return AssembledUpdate(CompletedUpdate(pending.node_id, pending.num_samples, weights, weights_digest(weights)))


class RoundCollector:
    """State of one round's update collection (event-loop only: every method is cheap)."""

    def __init__(
        self,
        *,
        session_id: str,
        server_round: int,
        participants: Iterable[str],
        expected_specs: Sequence[ArraySpec],
        keys: KeyRegistry | None = None,
        reference: Sequence[np.ndarray] | None = None,
        max_update_norm: float | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
        seen: dict[bytes, int] | None = None,
        declared_samples: dict[str, int] | None = None,
    ) -> None:
        if max_update_norm is not None and reference is None:
            raise ValueError("max_update_norm needs the reference (global) weights")
        self.session_id = session_id
        self.server_round = server_round
        self.participants = frozenset(participants)
        self._expected = list(expected_specs)
        self._keys = keys
        self.reference = reference
        self.max_update_norm = max_update_norm
        self._max_record_bytes = max_record_bytes
        self.seen: dict[bytes, int] = seen if seen is not None else {}  # digest of a record taken -> its round
        self.declared_samples = declared_samples or {}  # what each participant said at connect
        self._assemblers: dict[str, WeightAssembler] = {}  # partial uploads: one per participant at most
        self._assembling: set[str] = set()  # complete, handed to assemble_update, not concluded yet
        self.completed: dict[str, CompletedUpdate] = {}  # bookkeeping only: weights=[]
        self.failed: dict[str, str] = {}
        self.acks: dict[str, UpdateAck] = {}
        self.refused: dict[str, str] = {}
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.ignored = 0
        self._counted: set[tuple[str, str, int]] = set()
        self._positions: dict[str, list[tuple[int, int]]] = {}  # node -> (partition, offset) of chunks taken
        self.accepted_updates: list[AcceptedUpdate] = []  # in the order concluded (the strategy's fold order)

    def expect_specs(self, specs: Sequence[ArraySpec]) -> None:
        """The layout updates must have (before any record is offered): secure rounds take one masked vector."""
        self._expected = list(specs)

    @property
    def expected_specs(self) -> list[ArraySpec]:
        return list(self._expected)

    @property
    def partial_uploads(self) -> int:
        """Participants with some, but not all, of their chunks in (bounded by the participants)."""
        return len(self._assemblers)

    def incomplete(self) -> list[str]:
        """Participants whose update was still partial (some chunks in) when the round stopped collecting."""
        return sorted(self._assemblers)

    def reject(self, reason: str, detail: str, *, update_key: tuple[str, int] | None = None,
               forfeit: str | None = None) -> None:
        """Count a rejection. Records that belong to one identifiable update (node, round) count once.
        ``forfeit`` names an authenticated participant that loses this round because of it."""
        if forfeit is not None and forfeit in self.participants and forfeit not in self.completed:
            self.failed.setdefault(forfeit, reason)
            self._assemblers.pop(forfeit, None)
        if update_key is not None:
            if (reason, *update_key) in self._counted:
                return
            self._counted.add((reason, *update_key))
        self.rejected[reason] += 1
        rejections_log.warning(reason, "round %d: rejected update record (%s): %s", self.server_round, reason, detail)

    def offer_record(self, record: RawRecord) -> CompletedUpdate | None:
        """Inspect, offer, assemble and conclude one raw record in a row; returns the update it completes."""
        return self.offer_inspected(inspect_record(record, keys=self._keys, max_record_bytes=self._max_record_bytes))

    def offer_inspected(self, item: InspectedRecord) -> CompletedUpdate | None:
        """Offer, assemble and conclude one inspected record in a row (an ``fl-aggregator`` worker's own process
        does this for its partitions); returns the update it completes, weights included."""
        pending = self.offer(item)
        if pending is None:
            return None
        outcome = assemble_update(pending, reference=self.reference, max_update_norm=self.max_update_norm)
        return self.conclude(pending, outcome)

    def offer(self, item: InspectedRecord) -> PendingUpdate | None:
        """Judge one inspected record against the round; returns a node's update once all its chunks are in."""
        if item.rejection is not None:
            self._reject_signed(*item.rejection, item.signer)
            return None
        chunk = item.chunk
        assert chunk is not None
        if chunk.kind != KIND_UPDATE or chunk.session_id != self.session_id:
            self.ignored += 1  # another session's or the model topic's traffic: not ours to judge
            return None
        if not self._fits_round(chunk, item):
            return None
        return self._add_chunk(chunk, item)

    def _fits_round(self, chunk: WeightChunk, item: InspectedRecord) -> bool:
        """The fixed-order checks of a chunk against this round; False (counted, logged) if it does not fit."""
        node_id, signer = chunk.node_id, item.signer
        update_key = (node_id, chunk.server_round)
        # Timing-independent checks first, so a record is judged the same whenever it arrives.
        if chunk.server_round < self.server_round:
            reason = "replayed" if item.digest in self.seen else "late_update"
            self.reject(reason, f"node {node_id} sent round {chunk.server_round}", update_key=update_key)
            return False
        if chunk.server_round > self.server_round:
            self._reject_signed("wrong_round", f"node {node_id} sent round {chunk.server_round}", signer,
                                update_key=update_key)
            return False
        expected = self._expected[chunk.layer_index] if chunk.layer_index < len(self._expected) else None
        if chunk.num_layers != len(self._expected) or chunk.spec != expected:
            wrong = "dtype" if expected is not None and chunk.spec.shape == expected.shape else "shape"
            shown = f"{chunk.spec.dtype}{list(chunk.spec.shape)} of {chunk.num_layers} layers"
            self._reject_signed(f"{wrong}_mismatch", f"node {node_id} layer {chunk.layer_index}: {shown} does not fit",
                                signer, update_key=update_key)
            return False
        if node_id not in self.participants:
            self.reject("not_participant", f"{node_id!r} is not a participant of round {self.server_round}",
                        update_key=update_key)
            return False
        declared = self.declared_samples.get(node_id)
        if declared is not None and chunk.num_samples > declared:
            # A node may train on fewer rows than it has (rows with unknown classes), never on more: a claim over
            # what it declared at connect would buy it a larger share of the average.
            self._reject_signed("samples_exceed_declared", f"node {node_id} claims {chunk.num_samples} samples, "
                                f"declared {declared} at connect", signer, update_key=update_key)
            return False
        if node_id in self.completed or node_id in self.failed or node_id in self._assembling:
            self.duplicates += 1
            return False
        return True

    def _add_chunk(self, chunk: WeightChunk, item: InspectedRecord) -> PendingUpdate | None:
        """Add a fitting chunk to its node's update; the update once all its chunks are in."""
        node_id = chunk.node_id
        assembler = self._assemblers.setdefault(node_id, WeightAssembler(self._expected))
        try:
            if not assembler.add(chunk):
                self.duplicates += 1
                return None
        except ProtocolError as exc:
            # Chunks that contradict each other: mixing them could build a layer from two different
            # updates, so the node's update for this round is void.
            self.failed[node_id] = exc.reason
            self._assemblers.pop(node_id, None)
            self.reject(exc.reason, f"node {node_id}: {exc}", update_key=(node_id, chunk.server_round))
            return None
        self.seen[item.digest] = self.server_round
        self._positions.setdefault(node_id, []).append((item.partition, item.offset))
        if not assembler.complete:
            return None
        del self._assemblers[node_id]
        self._assembling.add(node_id)
        return PendingUpdate(node_id, assembler.num_samples, assembler)

    def conclude(self, pending: PendingUpdate, outcome: AssembledUpdate) -> CompletedUpdate | None:
        """Record what ``assemble_update`` found; returns the update to aggregate, or None if it is void."""
        node_id = pending.node_id
        self._assembling.discard(node_id)
        if outcome.update is None:
            reason, detail = outcome.problem or ("bad_length", "update could not be assembled")
            self.failed[node_id] = reason
            self.reject(reason, f"node {node_id}: {detail}", update_key=(node_id, self.server_round))
            return None
        # The weights go to the caller (the strategy folds them in); the collector keeps only the bookkeeping,
        # so a round does not hold one model per node.
        self.completed[node_id] = CompletedUpdate(node_id=node_id, num_samples=pending.num_samples, weights=[])
        self.accepted_updates.append(AcceptedUpdate(node_id, pending.num_samples, outcome.update.sha256,
                                                    tuple(self._positions.pop(node_id, ()))))
        return outcome.update

    def _reject_signed(self, reason: str, detail: str, signer: str | None,
                       update_key: tuple[str, int] | None = None) -> None:
        self.reject(reason, detail, update_key=update_key, forfeit=signer)

    def take_verdict(self, node_id: str, *, accepted: bool, num_samples: int, sha256: str, reason: str = "",
                     records: Sequence[tuple[int, int]] = ()) -> bool:
        """An ``fl-aggregator`` worker judged ``node_id``'s update with this same collector code: record the
        outcome (its rejection counts arrive with the partition's partial). False if it changes nothing: not a
        participant, or already decided (a worker that took over a partition repeats the verdicts)."""
        if node_id not in self.participants or node_id in self.completed or node_id in self.failed:
            return False
        if accepted:
            self.completed[node_id] = CompletedUpdate(node_id=node_id, num_samples=num_samples, weights=[],
                                                      sha256=sha256)
            self.accepted_updates.append(AcceptedUpdate(node_id, num_samples, sha256, tuple(records)))
        else:
            self.failed[node_id] = reason or "rejected"
        return True

    def add_counts(self, rejected: dict[str, int], *, duplicates: int = 0, ignored: int = 0) -> None:
        """Rejections, duplicates and ignored records a worker counted for this round."""
        self.rejected.update(rejected)
        self.duplicates += duplicates
        self.ignored += ignored

    def offer_ack(self, ack: UpdateAck) -> str | None:
        """Record a node's acknowledgement; returns a refusal reason or None."""
        if ack.session_id != self.session_id or ack.server_round != self.server_round:
            return "late_update" if ack.server_round < self.server_round else "wrong_round"
        if ack.node_id not in self.participants:
            return "not_participant"
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

    def all_updates_in(self) -> bool:
        """True when every participant's update is in (or it failed), acknowledged or not."""
        if len(self.failed) + len(self.completed) < len(self.participants):
            return False  # O(1) answer while the round fills up: the round loop asks after every input
        return all(node_id in self.failed or node_id in self.completed for node_id in self.participants)

    def done(self) -> bool:
        """True when every participant has a complete acknowledged update or has failed."""
        if len(self.failed) + min(len(self.completed), len(self.acks)) < len(self.participants):
            return False  # O(1) while the round fills up (asked after every input: O(N^2) a round otherwise)
        return all(
            node_id in self.failed or (node_id in self.completed and node_id in self.acks)
            for node_id in self.participants
        )
