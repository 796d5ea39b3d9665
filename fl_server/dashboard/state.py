"""The session as the dashboard shows it (pure: no I/O, no event loop): a ``SessionObserver`` that keeps what a
page needs (the session, the nodes' state this round, the round table, rejections and refusals by reason) and
turns it into one JSON-ready snapshot, numbered by ``version`` so that pushers send only what changed.

Everything is bounded: the round table keeps the last ``MAX_ROUNDS`` rounds, the node list the first
``MAX_NODES`` connected nodes, reasons ``MAX_REASONS`` distinct keys (a hostile client cannot grow them).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fl_server.observe import RoundView, SessionObserver
from fl_server.records import RoundRecord

MAX_ROUNDS = 2000
MAX_NODES = 500
MAX_REASONS = 64
MAX_TEXT = 200

# A node's state in the current round, in the order a round moves them along.
IDLE, TRAINING, UPLOADED, ACCEPTED, REJECTED, REFUSED, LATE, DROPPED = (
    "idle", "training", "uploaded", "accepted", "rejected", "refused", "late", "dropped")


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _bounded_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """The first ``MAX_REASONS`` reasons (sorted), their text cut to ``MAX_TEXT``."""
    return {str(k)[:MAX_TEXT]: int(v) for k, v in sorted(counts.items())[:MAX_REASONS]}


def round_row(record: RoundRecord) -> dict[str, Any]:
    """One row of the round table (and one point of the curves)."""
    return {
        "round": record.server_round,
        "status": record.status,
        "participants": len(record.participants),
        "accepted": len(record.accepted),
        "rejected": record.rejected_updates,
        "train_loss": _finite(record.train_loss),
        "holdout_loss": _finite(record.holdout.get("loss")),
        "holdout_accuracy": _finite(record.holdout.get("accuracy")),
        "total_s": _finite(record.timings.total),
        "epsilon": _finite((record.privacy or {}).get("epsilon")),
        "timed_out": record.timed_out,
        "failure": (record.failure_reason or "")[:MAX_TEXT] or None,
    }


class LiveSession(SessionObserver):
    """The live state of one session; ``snapshot()`` is what the page renders."""

    def __init__(self, *, session_id: str, strategy: str, rounds: int, model: str = "", dataset: str = "") -> None:
        self.session_id = session_id
        self.strategy = strategy
        self.rounds = rounds
        self.model = model
        self.dataset = dataset
        self.status = "waiting_for_nodes"
        self.current_round = 0
        self.round_open = False
        self.connected: list[str] = []
        self.nodes: dict[str, dict[str, Any]] = {}  # node -> {"state": ..., "reason": ...} this round
        self.table: deque[dict[str, Any]] = deque(maxlen=MAX_ROUNDS)
        self.rejected_by_reason: dict[str, int] = {}  # closed rounds' totals, plus the open round's so far
        self._closed_rejections: dict[str, int] = {}
        self.refused_connections: dict[str, int] = {}
        self.links: dict[str, bool] = {"history": False, "model": False}
        self.version = 0
        self.listeners: list[Callable[[], None]] = []  # called after every change (the pusher wakes its clients)

    # ------------------------------------------------------------ changes

    def _changed(self) -> None:
        self.version += 1
        for listener in self.listeners:
            listener()

    def session_started(self, session_id: str, rounds: int, first_round: int) -> None:
        self.status = "running"
        self.rounds = rounds
        self.current_round = max(first_round - 1, 0)
        self._changed()

    def round_opened(self, server_round: int, participants: Sequence[str], connected: int) -> None:
        self.current_round, self.round_open = server_round, True
        chosen = set(participants)
        self.nodes = {node: {"state": TRAINING if node in chosen else IDLE, "reason": None}
                      for node in sorted(set(self.connected) | chosen)[:MAX_NODES]}
        self._changed()

    def round_progress(self, server_round: int, round_view: RoundView) -> None:
        if server_round != self.current_round:
            return
        changed = False
        for node in round_view.participants:
            if node not in self.nodes:
                continue
            state, reason = self._participant_state(node, round_view)
            if (state, reason) != (self.nodes[node]["state"], self.nodes[node]["reason"]):
                self.nodes[node] = {"state": state, "reason": reason}
                changed = True
        open_rejections = _bounded_counts(_merged(self._closed_rejections, round_view.rejected))
        if open_rejections != self.rejected_by_reason:
            self.rejected_by_reason = open_rejections
            changed = True
        if changed:
            self._changed()

    @staticmethod
    def _participant_state(node: str, view: RoundView) -> tuple[str, str | None]:
        if node in view.refused:
            return REFUSED, str(view.refused[node])[:MAX_TEXT]
        if node in view.failed:
            return REJECTED, str(view.failed[node])[:MAX_TEXT]
        if node in view.completed:
            return ACCEPTED, None
        if node in view.acks:
            return UPLOADED, None
        return TRAINING, None

    def round_closed(self, record: RoundRecord) -> None:
        self.table.append(round_row(record))
        self._closed_rejections = _merged(self._closed_rejections, record.rejected_by_reason)
        self.rejected_by_reason = _bounded_counts(self._closed_rejections)
        if record.server_round == self.current_round:
            self.round_open = False
            accepted, refused = set(record.accepted), record.refused_nodes
            for node in record.participants:
                entry = self.nodes.get(node)
                if entry is None or node in accepted or entry["state"] in (REJECTED, REFUSED):
                    continue
                if node in refused:
                    self.nodes[node] = {"state": REFUSED, "reason": str(refused[node])[:MAX_TEXT]}
                elif node in self.connected:
                    self.nodes[node] = {"state": LATE, "reason": "timed out" if record.timed_out else None}
                else:
                    self.nodes[node] = {"state": DROPPED, "reason": "disconnected"}
        self.links["history"] = True
        self._changed()

    def session_ended(self, status: str) -> None:
        self.status = status
        self.round_open = False
        self._changed()

    def set_connected(self, nodes: Iterable[str], refused_connections: Mapping[str, int]) -> None:
        """Who is connected now, and the connections refused so far (polled from the frontend)."""
        connected = sorted(nodes)[:MAX_NODES]
        refused = _bounded_counts(refused_connections)
        if connected == self.connected and refused == self.refused_connections:
            return
        gone = set(self.connected) - set(connected)
        self.connected, self.refused_connections = connected, refused
        for node in connected:
            if node not in self.nodes and len(self.nodes) < MAX_NODES:
                self.nodes[node] = {"state": IDLE, "reason": None}
        for node in gone:
            entry = self.nodes.get(node)
            if entry is None:
                continue
            if self.round_open and entry["state"] in (TRAINING, UPLOADED):
                entry.update(state=DROPPED, reason="disconnected")
            elif entry["state"] == IDLE:
                del self.nodes[node]
        self._changed()

    def set_link(self, name: str, available: bool) -> None:
        if self.links.get(name) != available:
            self.links[name] = available
            self._changed()

    # ------------------------------------------------------------ the view

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "session": {"id": self.session_id, "strategy": self.strategy, "model": self.model,
                        "dataset": self.dataset, "round": self.current_round, "rounds": self.rounds,
                        "status": self.status, "round_open": self.round_open},
            "nodes": [{"id": node, "connected": node in self.connected, **entry}
                      for node, entry in sorted(self.nodes.items())],
            "rounds": list(self.table),
            "rejected_by_reason": dict(self.rejected_by_reason),
            "refused_connections_by_reason": dict(self.refused_connections),
            "links": dict(self.links),
        }


def _merged(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, value in b.items():
        if key in out or len(out) < MAX_REASONS:
            out[key] = out.get(key, 0) + int(value)
    return out
