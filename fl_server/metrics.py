"""The server's Prometheus metrics (``GET /metrics``), with ``prometheus-client`` and a registry of their own.

``ServerMetrics`` is a ``SessionObserver``: the round loop's events move its counters, gauges and the
round-duration histogram; what the frontend and the inbox count themselves (connected nodes, refused
connections, malformed packets, bytes waiting) is read when Prometheus scrapes, by a collector of ours.
Counters of closed rounds are taken from the round's history record, so they always agree with the history.
Label values are bounded (``MAX_LABEL_VALUES`` per metric, the rest counted as ``other``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeGuard

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from fl_server.observe import SessionObserver
from fl_server.records import RoundRecord

__all__ = ["CONTENT_TYPE_LATEST", "MAX_LABEL_VALUES", "ServerMetrics", "bounded_label"]

MAX_LABEL_VALUES = 32
STAGES = ("train", "transport", "waiting", "aggregate", "evaluate", "total")
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


def bounded_label(value: str, seen: set[str], limit: int = MAX_LABEL_VALUES) -> str:
    """``value`` as a label value, or ``other`` once ``limit`` distinct values are in use (bounded series)."""
    value = str(value)[:64] or "unknown"
    if value in seen:
        return value
    if len(seen) >= limit:
        return "other"
    seen.add(value)
    return value


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LiveCounts(Collector):
    """What the frontend and the inbox count themselves, read at scrape time (on the event loop)."""

    def __init__(self, *, connected: Callable[[], int], refused: Callable[[], Mapping[str, int]],
                 malformed: Callable[[], Mapping[str, int]], inbox_bytes: Callable[[], int]) -> None:
        self._connected, self._refused, self._malformed, self._inbox_bytes = connected, refused, malformed, inbox_bytes

    def describe(self) -> list[Metric]:
        return list(self._families(read=False))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(read=True)

    def _families(self, *, read: bool) -> Iterator[Metric]:
        connected = GaugeMetricFamily("fl_nodes_connected", "Nodes connected to the server now")
        refused = CounterMetricFamily("fl_connections_refused", "Connections refused, by reason", labels=["reason"])
        malformed = CounterMetricFamily("fl_malformed_packets", "Socket.IO packets dropped as malformed, by reason",
                                        labels=["reason"])
        waiting = GaugeMetricFamily("fl_inbox_kafka_bytes", "Bytes of update records waiting for the round loop")
        if read:
            connected.add_metric([], self._connected())
            for family, counts in ((refused, self._refused()), (malformed, self._malformed())):
                for reason, count in sorted(counts.items())[:MAX_LABEL_VALUES]:
                    family.add_metric([str(reason)[:64]], count)
            waiting.add_metric([], self._inbox_bytes())
        yield from (connected, refused, malformed, waiting)


class ServerMetrics(SessionObserver):
    """The session's metrics in their own ``CollectorRegistry`` (several servers in one process never clash)."""

    def __init__(self, *, live: LiveCounts | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.session = Info("fl_session", "The session this server runs", registry=r)
        self.round = Gauge("fl_round", "The current (latest opened) round", registry=r)
        self.rounds_planned = Gauge("fl_rounds_planned", "Rounds the session is configured to run", registry=r)
        self.rounds = Counter("fl_rounds", "Rounds closed, by status (completed, failed)", ["status"], registry=r)
        self.participants = Gauge("fl_round_participants", "Nodes sampled for the current round", registry=r)
        self.duration = Histogram("fl_round_duration_seconds", "Round durations by stage (train, transport, waiting, "
                                  "aggregate, evaluate, total)", ["stage"], buckets=DURATION_BUCKETS_S, registry=r)
        self.accepted = Counter("fl_updates_accepted", "Updates accepted into an aggregate", registry=r)
        self.rejected = Counter("fl_updates_rejected", "Update records rejected, by reason", ["reason"], registry=r)
        self.node_refusals = Counter("fl_node_refusals", "Rounds a sampled node refused, by reason", ["reason"],
                                     registry=r)
        self.records = Counter("fl_kafka_consumed_records", "Update records the round loop took from Kafka",
                               registry=r)
        self.record_bytes = Counter("fl_kafka_consumed_bytes", "Bytes of update records the round loop took from "
                                    "Kafka", registry=r)
        self.holdout_loss = Gauge("fl_holdout_loss", "Holdout loss of the latest closed round", registry=r)
        self.holdout_accuracy = Gauge("fl_holdout_accuracy", "Holdout accuracy of the latest closed round",
                                      registry=r)
        self.epsilon: Gauge | None = None  # registered with the first round that spends privacy (absent without DP)
        self._reasons: dict[str, set[str]] = {"rejected": set(), "refusals": set()}
        for status in ("completed", "failed"):
            self.rounds.labels(status=status)  # both series exist from the start (0, not absent)
        if live is not None:
            r.register(live)

    def describe_session(self, *, session_id: str, strategy: str, rounds: int) -> None:
        self.session.info({"session_id": session_id[:128], "strategy": strategy[:128]})
        self.rounds_planned.set(rounds)

    def session_started(self, session_id: str, rounds: int, first_round: int) -> None:
        self.rounds_planned.set(rounds)

    def round_opened(self, server_round: int, participants: Sequence[str], connected: int) -> None:
        self.round.set(server_round)
        self.participants.set(len(participants))

    def record_taken(self, server_round: int, size_bytes: int) -> None:
        self.records.inc()
        self.record_bytes.inc(size_bytes)

    def round_closed(self, record: RoundRecord) -> None:
        self.rounds.labels(status="failed" if record.status == "failed" else "completed").inc()
        self.accepted.inc(len(record.accepted))
        for reason, count in record.rejected_by_reason.items():
            self.rejected.labels(reason=bounded_label(reason, self._reasons["rejected"])).inc(count)
        for said in record.refused_nodes.values():
            reason = str(said).split(":", 1)[0]
            self.node_refusals.labels(reason=bounded_label(reason, self._reasons["refusals"])).inc()
        timings = record.timings
        for stage in STAGES:
            value = getattr(timings, stage, None)
            if isinstance(value, (int, float)) and value >= 0:
                self.duration.labels(stage=stage).observe(value)
        for gauge, value in ((self.holdout_loss, record.holdout.get("loss")),
                             (self.holdout_accuracy, record.holdout.get("accuracy"))):
            if _is_number(value):
                gauge.set(value)
        epsilon = (record.privacy or {}).get("epsilon")
        if _is_number(epsilon):
            if self.epsilon is None:
                self.epsilon = Gauge("fl_privacy_epsilon", "Differential privacy: epsilon spent so far",
                                     registry=self.registry)
            self.epsilon.set(epsilon)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
