"""Admission control for connections that have not proven who they are yet (pure: no sockets).

A client that opens a connection and then never completes the Socket.IO connect, or keeps connections
whose connect was refused, must not be able to hold the server's file descriptors. Every Engine.IO
session is *pending* from its first request until its hello is accepted; the server refuses a new
session (before any Socket.IO handshake) when one address already has ``max_pending_per_address``
pending sessions, when ``max_pending`` are pending in all, or when the open sessions come within
``fd_headroom`` of the process's file-descriptor limit. Pending sessions are closed after
``handshake_timeout_s``, refused ones at once.

During a connect storm (thousands of nodes at once) the handshakes in flight are bounded by ``max_pending``;
up to ``max_busy`` more sessions are let open only to be told ``server_busy`` with a ``retry_after_s``
(``retry_after_s``: longer the longer the queue) at their hello, and closed: a websocket client cannot read an
HTTP 401's body, so a refusal it can act on has to be a Socket.IO one. Past that they are shed before any
handshake. Nodes back off with jitter (``fl_node.connection.backoff_pause_s``), so the storm spreads out
instead of feeding itself with timeouts and retries.

At start-up the server raises its soft ``RLIMIT_NOFILE`` to the hard limit (``plan_fd_limit`` decides,
``raise_fd_limit`` applies it): with the common default soft limit of 1024 a coordinator would stop at about
1,000 nodes. When even the hard limit cannot hold ``--min-nodes`` plus ``FD_MARGIN`` descriptors, it refuses to
start with one clear line rather than flood its log with "Too many open files" later.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_PER_ADDRESS = 32
DEFAULT_MAX_PENDING = 512
DEFAULT_MAX_BUSY = 512  # sessions let open to be told server_busy (each closed half a second later)
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 30.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 15.0
FD_HEADROOM = 64  # descriptors kept for Kafka connections, files and the listening socket


# Descriptors a server needs beyond one per node: FD_HEADROOM, pending handshakes, the dashboard's clients.
FD_MARGIN = 256
FD_TARGET_WHEN_UNLIMITED = 1 << 20  # the soft limit asked for when the hard one is RLIM_INFINITY (Linux's nr_open)


def soft_fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class FdLimitPlan:
    """What to do with the file-descriptor limit: the soft limit to set (None: leave it), or why not to start."""

    new_soft: int | None
    refusal: str | None = None


def plan_fd_limit(soft: int, hard: int, min_nodes: int, margin: int = FD_MARGIN,
                  unlimited: int = resource.RLIM_INFINITY) -> FdLimitPlan:
    """Raise ``soft`` to ``hard`` (pure); refuse when ``hard`` is below ``min_nodes + margin``."""
    needed = min_nodes + margin
    target = FD_TARGET_WHEN_UNLIMITED if hard == unlimited else hard
    if hard != unlimited and hard < needed:
        return FdLimitPlan(None, f"the file-descriptor hard limit is {hard}, below the {needed} that --min-nodes "
                                 f"{min_nodes} needs (one per node + {margin}); raise it (ulimit -Hn, "
                                 "LimitNOFILE= in systemd, nofile in /etc/security/limits.conf, --ulimit nofile= in "
                                 "Docker) or lower --min-nodes")
    if soft != unlimited and soft < target:
        return FdLimitPlan(target)
    return FdLimitPlan(None)


def raise_fd_limit(min_nodes: int) -> int:
    """Apply ``plan_fd_limit`` to this process (start-up); the soft limit now in force. ``ValueError`` (a usage
    error: exit 2) when the hard limit cannot hold ``min_nodes``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = plan_fd_limit(soft, hard, min_nodes)
    if plan.refusal is not None:
        raise ValueError(plan.refusal)
    if plan.new_soft is None:
        logger.info("file-descriptor limit: %d (enough for %d node(s))", soft, max(0, soft - FD_MARGIN))
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.new_soft, hard))
    except (ValueError, OSError) as exc:  # e.g. RLIM_INFINITY hard limit above the kernel's nr_open
        logger.warning("could not raise the file-descriptor limit from %d to %d (%s); up to about %d nodes",
                       soft, plan.new_soft, exc, max(0, soft - FD_MARGIN))
        return soft
    logger.info("raised the file-descriptor limit from %d to %d (room for about %d nodes)", soft, plan.new_soft,
                plan.new_soft - FD_MARGIN)
    return plan.new_soft


def retry_after_s(waiting: int, max_pending: int) -> float:
    """How long a node told ``server_busy`` should wait: about two seconds per full queue of handshakes ahead
    of it (a handshake takes milliseconds; the queue drains in a few seconds even on a loaded 2-core machine),
    within [MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S]. The node adds its own jitter."""
    queues = waiting / max(max_pending, 1)
    return round(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, 2.0 * queues)), 1)


@dataclass
class Admission:
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS
    max_pending: int = DEFAULT_MAX_PENDING
    fd_limit: int = field(default_factory=soft_fd_limit)
    fd_headroom: int = FD_HEADROOM
    max_busy: int = DEFAULT_MAX_BUSY
    _pending: dict[str, str] = field(default_factory=dict)  # engine.io session -> address
    _busy: set[str] = field(default_factory=set)  # pending sessions to be told server_busy at their hello
    _per_address: Counter[str] = field(default_factory=Counter)
    shed_by_reason: Counter[str] = field(default_factory=Counter)

    def open(self, session: str, address: str, open_sessions: int) -> str | None:
        """A new session from ``address``; returns why it is shed, or None when it may start its handshake
        (``is_busy`` then says whether that handshake is to end in a ``server_busy`` refusal)."""
        reason = None
        busy = False
        if open_sessions >= self.fd_limit - self.fd_headroom:
            reason = "fd_limit"
        elif self._per_address[address] >= self.max_pending_per_address:
            reason = "too_many_pending_from_address"
        elif len(self._pending) - len(self._busy) >= self.max_pending:
            if len(self._busy) >= self.max_busy:
                reason = "too_many_pending"
            busy = True
        if reason is not None:
            self.shed_by_reason[reason] += 1
            return reason
        self._pending[session] = address
        self._per_address[address] += 1
        if busy:
            self._busy.add(session)
        return None

    def is_busy(self, session: str) -> bool:
        """This session was let open past ``max_pending``: its hello is answered ``server_busy``."""
        return session in self._busy

    def retry_after_s(self) -> float:
        return retry_after_s(len(self._pending), self.max_pending)

    def admitted(self, session: str) -> None:
        """Its hello was accepted: it no longer counts against the pending limits."""
        self._forget(session)

    def closed(self, session: str) -> None:
        self._forget(session)

    def is_pending(self, session: str) -> bool:
        return session in self._pending

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _forget(self, session: str) -> None:
        self._busy.discard(session)
        address = self._pending.pop(session, None)
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
