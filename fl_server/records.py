"""What the history document holds, as typed records: one round, one resume, the session's totals.

These are the schema of ``history/<session>.json`` (``fl-history/1``, described field by field in
docs/protocol.md). ``fl_server.history.SessionHistory`` is the only writer of the document; every
producer of a round (the coordinator, ``fl-baseline``) builds a ``RoundRecord`` and hands it over.
``to_wire`` gives the JSON-ready dict; ``from_wire`` reads one back (missing optional fields take
their defaults, so older files and baseline runs read too).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

TIMING_DIGITS = 4


@dataclass(frozen=True)
class RoundTimings:
    """Seconds spent in a round's phases (``timings_s``).

    ``transport`` is moving bytes (and the fastest nodes' idle time) until the last delivery; ``waiting`` is
    the time after it, spent on nodes that never delivered (a timeout) or on missing acknowledgements;
    ``evaluate`` runs concurrently with the next round, so it is not part of ``total``."""

    train: float = 0.0
    transport: float = 0.0
    waiting: float = 0.0
    aggregate: float = 0.0
    evaluate: float = 0.0
    total: float = 0.0

    def to_wire(self) -> dict[str, float]:
        return {f.name: round(getattr(self, f.name), TIMING_DIGITS) for f in fields(self)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RoundTimings:
        return cls(**{f.name: float(data.get(f.name) or 0.0) for f in fields(cls)})


@dataclass(frozen=True)
class RoundRecord:
    """One round of a session, from ``start_round`` to its evaluation."""

    server_round: int
    status: str  # "completed" or "failed" (the global model then stayed)
    started_at: str
    ended_at: str
    participants: list[str]
    accepted: list[str]
    num_samples: dict[str, int]
    train_loss: float | None
    train_per_node: dict[str, dict[str, Any]]
    holdout: dict[str, Any]
    timings: RoundTimings
    timed_out: bool = False
    missing_acks: list[str] = field(default_factory=list)
    incomplete_updates: list[str] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    refused_nodes: dict[str, str] = field(default_factory=dict)  # participant -> why it did not deliver this round
    failure_reason: str | None = None
    aggregation: dict[str, Any] = field(default_factory=dict)
    connected: int = 0
    required_updates: int = 0
    start_model_sha256: str = ""
    model_sha256: str = ""
    ignored_records: int = 0
    capped_weights: dict[str, dict[str, int | None]] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None  # epsilon, delta, noise_multiplier, clip, sampling_rate, mechanism
    secure_aggregation: dict[str, Any] | None = None  # protocol, threshold, survivors, dropped_by_stage, timings
    # What fl-audit replays the round from (the hash chain's fields are added by SessionHistory.add_round):
    strategy: dict[str, Any] = field(default_factory=dict)  # {"name": ..., "params": {...}}
    accepted_updates: list[dict[str, Any]] = field(default_factory=list)  # in the order the strategy folded them
    declared_samples: dict[str, int] = field(default_factory=dict)  # participant -> samples declared at connect
    update_offsets: dict[str, dict[str, int]] = field(default_factory=dict)  # {"from"/"to": {partition: offset}}
    start_model_ref: dict[str, Any] = field(default_factory=dict)  # where the round's start model is in Kafka
    prev_round_digest: str = ""
    # --federated-eval: the nodes' evaluations of the model this round started from (fl_server.federated_eval)
    federated_eval: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected_updates(self) -> int:
        return sum(self.rejected_by_reason.values())

    def to_wire(self) -> dict[str, Any]:
        return {
            "round": self.server_round,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "participants": list(self.participants),
            "accepted": list(self.accepted),
            "num_samples": dict(self.num_samples),
            "timed_out": self.timed_out,
            "missing_acks": list(self.missing_acks),
            "incomplete_updates": list(self.incomplete_updates),
            "train": {"loss": self.train_loss, "per_node": self.train_per_node},
            "holdout": dict(self.holdout),
            "timings_s": self.timings.to_wire(),
            "rejected_updates": self.rejected_updates,
            "rejected_updates_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "duplicates": self.duplicates,
            "refused_nodes": dict(self.refused_nodes),
            "failure_reason": self.failure_reason,
            "aggregation": dict(self.aggregation),
            "connected": self.connected,
            "required_updates": self.required_updates,
            "start_model_sha256": self.start_model_sha256,
            "model_sha256": self.model_sha256,
            "ignored_records": self.ignored_records,
            "capped_weights": dict(self.capped_weights),
            "privacy": self.privacy,
            "secure_aggregation": self.secure_aggregation,
            "strategy": dict(self.strategy),
            "accepted_updates": list(self.accepted_updates),
            "declared_samples": dict(self.declared_samples),
            "update_offsets": dict(self.update_offsets),
            "start_model_ref": dict(self.start_model_ref),
            "prev_round_digest": self.prev_round_digest,
            **({"federated_eval": dict(self.federated_eval)} if self.federated_eval else {}),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RoundRecord:
        """A round read back from a history document that ``fl_server.history.history_problem`` accepted."""
        train = data.get("train") or {}
        return cls(
            server_round=int(data["round"]),
            status=str(data.get("status", "completed")),
            started_at=str(data.get("started_at", "")),
            ended_at=str(data.get("ended_at", "")),
            participants=list(data.get("participants", [])),
            accepted=list(data.get("accepted", [])),
            num_samples=dict(data.get("num_samples", {})),
            train_loss=train.get("loss"),
            train_per_node=dict(train.get("per_node", {})),
            holdout=dict(data.get("holdout", {})),
            timings=RoundTimings.from_wire(data.get("timings_s") or {}),
            timed_out=bool(data.get("timed_out", False)),
            missing_acks=list(data.get("missing_acks", [])),
            incomplete_updates=list(data.get("incomplete_updates", [])),
            rejected_by_reason=dict(data.get("rejected_updates_by_reason", {})),
            duplicates=int(data.get("duplicates", 0)),
            refused_nodes=dict(data.get("refused_nodes", {})),
            failure_reason=data.get("failure_reason"),
            aggregation=dict(data.get("aggregation", {})),
            connected=int(data.get("connected", 0)),
            required_updates=int(data.get("required_updates", 0)),
            start_model_sha256=str(data.get("start_model_sha256", "")),
            model_sha256=str(data.get("model_sha256", "")),
            ignored_records=int(data.get("ignored_records", 0)),
            capped_weights=dict(data.get("capped_weights", {})),
            privacy=data.get("privacy"),
            secure_aggregation=data.get("secure_aggregation"),
            strategy=dict(data.get("strategy") or {}),
            accepted_updates=list(data.get("accepted_updates") or []),
            declared_samples=dict(data.get("declared_samples") or {}),
            update_offsets=dict(data.get("update_offsets") or {}),
            start_model_ref=dict(data.get("start_model_ref") or {}),
            prev_round_digest=str(data.get("prev_round_digest", "")),
            federated_eval=dict(data.get("federated_eval") or {}),
        )


@dataclass(frozen=True)
class ResumeMark:
    """Where a resumed run picked the session up (``resumes``), and the operational settings it ran with."""

    at: str
    after_round: int
    model_sha256: str
    config: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"at": self.at, "after_round": self.after_round, "model_sha256": self.model_sha256,
                "config": self.config}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ResumeMark:
        return cls(str(data["at"]), int(data["after_round"]), str(data["model_sha256"]), dict(data["config"]))


@dataclass(frozen=True)
class SessionSummary:
    """The session's totals, written when it ends (however it ends)."""

    rejected_updates_total: dict[str, int]
    refused_connections_by_reason: dict[str, int]
    node_refusals: dict[str, str]  # node -> the last reason it gave for not taking part (fl_refuse, statistics)
    malformed_packets_by_reason: dict[str, int]
    inbox: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "rejected_updates_total": dict(sorted(self.rejected_updates_total.items())),
            "refused_connections": sum(self.refused_connections_by_reason.values()),
            "refused_connections_by_reason": dict(self.refused_connections_by_reason),
            "node_refusals": dict(self.node_refusals),
            "malformed_packets_by_reason": dict(sorted(self.malformed_packets_by_reason.items())),
            "inbox": dict(self.inbox),
        }
