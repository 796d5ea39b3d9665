"""What the round loop tells onlookers (the dashboard, the Prometheus metrics): a small observer interface.

The coordinator calls a ``SessionObserver`` at a handful of points (a round opened, a record taken, the round's
progress after each input, a round closed); ``session.py`` adds the session's start and end. Observers only
read: they get values and read-only views, never a way back into the round loop. ``Observers`` fans out to
several and keeps a failing observer from ever breaking a round (it is logged, rate-limited, and skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from common.ratelog import RateLimitedLog
from fl_server.records import RoundRecord

logger = logging.getLogger(__name__)


class RoundView(Protocol):
    """The parts of a round's ``RoundCollector`` an observer may read (node id -> what happened)."""

    @property
    def participants(self) -> Collection[str]: ...

    @property
    def completed(self) -> Mapping[str, object]: ...

    @property
    def acks(self) -> Mapping[str, object]: ...

    @property
    def failed(self) -> Mapping[str, str]: ...

    @property
    def refused(self) -> Mapping[str, str]: ...

    @property
    def rejected(self) -> Mapping[str, int]: ...


class SessionObserver:
    """Every hook does nothing: subclasses override what they need. Hooks run on the event loop and must be
    quick (no I/O, no waiting)."""

    def session_started(self, session_id: str, rounds: int, first_round: int) -> None:
        """The round loop is about to start (``first_round`` > 1 on --resume)."""

    def round_opened(self, server_round: int, participants: Sequence[str], connected: int) -> None:
        """``start_round`` is going out to ``participants`` (sampled among ``connected`` nodes)."""

    def record_taken(self, server_round: int, size_bytes: int) -> None:
        """The round loop took one update record from Kafka."""

    def round_progress(self, server_round: int, round_view: RoundView) -> None:
        """After each input of the open round (a record, an acknowledgement, a refusal)."""

    def round_closed(self, record: RoundRecord) -> None:
        """A round's history record, as written to the history."""

    def session_ended(self, status: str) -> None:
        """The session's final status (completed, failed, interrupted, budget_exhausted)."""


class Observers(SessionObserver):
    """Fans every hook out to ``observers``; an observer that raises is logged and the others still run."""

    def __init__(self, *observers: SessionObserver) -> None:
        self.observers = list(observers)
        self._log = RateLimitedLog(logger)

    def _each(self, hook: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception as exc:  # noqa: BLE001 - an onlooker's bug must never stop a round
                self._log.warning(f"{type(observer).__name__}.{hook}", "observer %s failed in %s: %r",
                                  type(observer).__name__, hook, exc)

    def session_started(self, session_id: str, rounds: int, first_round: int) -> None:
        self._each("session_started", session_id, rounds, first_round)

    def round_opened(self, server_round: int, participants: Sequence[str], connected: int) -> None:
        self._each("round_opened", server_round, participants, connected)

    def record_taken(self, server_round: int, size_bytes: int) -> None:
        self._each("record_taken", server_round, size_bytes)

    def round_progress(self, server_round: int, round_view: RoundView) -> None:
        self._each("round_progress", server_round, round_view)

    def round_closed(self, record: RoundRecord) -> None:
        self._each("round_closed", record)

    def session_ended(self, status: str) -> None:
        self._each("session_ended", status)
