"""One round's working state, shared by the round loop's open, collect, aggregate and close steps, and the
history record made of it when the round closes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fl_server.collector import RoundCollector
from fl_server.federated_eval import federated_record
from fl_server.history import utc_now
from fl_server.paillier_round import PaillierRound
from fl_server.records import RoundRecord, RoundTimings
from fl_server.secure_round import SecureRound

Weights = list[np.ndarray]


@dataclass
class RoundState:
    """One round from its start to its close: what the open, collect, aggregate and close steps share."""

    server_round: int
    started_at: str
    t0: float
    connected: int
    participants: list[str]
    required: int
    start_digest: str
    collector: RoundCollector
    sample_cap: int | None = None  # --max-node-weight x the participants' declared samples
    capped: dict[str, int] = field(default_factory=dict)  # node -> the samples it claimed, where capped
    timed_out: bool = False
    missing_acks: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    collect_s: float = 0.0
    updates_s: float = 0.0  # of collect_s, spent waiting for the updates (after secure aggregation's key stages)
    secure: SecureRound | None = None  # --secure-aggregation: this round's stages
    paillier: PaillierRound | None = None  # --secure-aggregation paillier: this round's encrypted sum
    away_since: dict[str, float] = field(default_factory=dict)  # secure rounds: participants not connected now
    gone: set[str] = field(default_factory=set)  # secure rounds: away past the grace; later stages skip them
    last_delivery_s: float = 0.0  # when the last update or acknowledgement that counted arrived
    aggregate_s: float = 0.0
    total_s: float = 0.0
    failure: str | None = None
    aggregation: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None  # what the round's release cost (differential privacy)
    privacy_state: dict[str, Any] | None = None  # the accountant after it
    # Frozen at aggregation, for the close (which runs while the next round changes these):
    weights: Weights = field(default_factory=list)
    model_digest: str = ""
    strategy_state: dict[str, list[np.ndarray]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    # Set once the round's model is published: where it is, and the update offsets the round reads from.
    start_model_ref: dict[str, Any] = field(default_factory=dict)
    offsets_from: dict[int, int] = field(default_factory=dict)


def round_record(state: RoundState, holdout: dict[str, float], evaluate_s: float) -> RoundRecord:
    """The history's record of a closed round."""
    collector = state.collector
    accepted = collector.completed
    acks = {node_id: collector.acks[node_id] for node_id in accepted if node_id in collector.acks}
    per_node = {node_id: dict(ack.metrics) for node_id, ack in acks.items()}
    weighted = [(loss, accepted[n].num_samples) for n, m in per_node.items() if (loss := m.get("loss")) is not None]
    train_loss = sum(loss * n for loss, n in weighted) / sum(n for _, n in weighted) if weighted else None
    train_s = max((ack.timings_s.get("train") or 0.0 for ack in acks.values()), default=0.0)
    failed = state.failure is not None
    return RoundRecord(
        server_round=state.server_round,
        status="failed" if failed else "completed",
        started_at=state.started_at,
        ended_at=utc_now(),
        participants=state.participants,
        accepted=sorted(accepted),
        # Secure rounds: the records carry what nodes declared at connect; the true counts are inside the sum.
        num_samples={} if state.secure is not None or state.paillier is not None else {
            n: accepted[n].num_samples for n in sorted(accepted)},
        train_loss=train_loss,
        train_per_node=per_node,
        holdout=holdout,
        federated_eval=federated_record({n: ack.evaluation for n, ack in acks.items() if ack.evaluation}),
        timings=RoundTimings(
            train=train_s,
            transport=max(state.last_delivery_s - train_s, 0.0),
            waiting=max(state.collect_s - state.last_delivery_s, 0.0),
            aggregate=state.aggregate_s,
            evaluate=evaluate_s,
            total=state.total_s,
        ),
        timed_out=state.timed_out,
        missing_acks=state.missing_acks,
        incomplete_updates=state.incomplete,
        rejected_by_reason=dict(collector.rejected),
        duplicates=collector.duplicates,
        refused_nodes=dict(collector.refused),
        failure_reason=state.failure,
        aggregation={} if failed else state.aggregation,
        connected=state.connected,
        required_updates=state.required,
        start_model_sha256=state.start_digest,
        model_sha256=state.model_digest,
        ignored_records=collector.ignored,
        capped_weights={n: {"claimed": c, "used": state.sample_cap} for n, c in sorted(state.capped.items())},
        privacy=state.privacy,
        secure_aggregation=state.secure.record() if state.secure is not None else (
            state.paillier.record() if state.paillier is not None else None),
        accepted_updates=[_with_weight(u.to_wire(), state) for u in collector.accepted_updates],
        declared_samples=dict(sorted(collector.declared_samples.items())),
        update_offsets={"from": _offsets_wire(state.offsets_from), "to": _offsets_wire(state.offsets)},
        start_model_ref=state.start_model_ref,
    )


def _with_weight(update: dict[str, Any], state: RoundState) -> dict[str, Any]:
    """The weight the strategy gave the update: its samples, or ``--max-node-weight``'s cap where it was capped."""
    capped = update["node"] in state.capped and state.sample_cap is not None
    return {**update, "weight": state.sample_cap if capped else update["num_samples"]}


def _offsets_wire(offsets: dict[int, int]) -> dict[str, int]:
    return {str(partition): offset for partition, offset in sorted(offsets.items())}

