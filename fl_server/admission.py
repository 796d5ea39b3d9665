"""Admission control for connections that have not proven who they are yet (pure: no sockets).

A client that opens a connection and then never completes the Socket.IO connect, or keeps connections
whose connect was refused, must not be able to hold the server's file descriptors. Every Engine.IO
session is *pending* from its first request until its hello is accepted; the server refuses a new
session (before any Socket.IO handshake) when one address already has ``max_pending_per_address``
pending sessions, when ``max_pending`` are pending in all, or when the open sessions come within
``fd_headroom`` of the process's file-descriptor limit. Pending sessions are closed after
``handshake_timeout_s``, refused ones at once.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass, field

DEFAULT_MAX_PENDING_PER_ADDRESS = 32
DEFAULT_MAX_PENDING = 512
DEFAULT_HANDSHAKE_TIMEOUT_S = 15.0
FD_HEADROOM = 64  # descriptors kept for Kafka connections, files and the listening socket


def soft_fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Admission:
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS
    max_pending: int = DEFAULT_MAX_PENDING
    fd_limit: int = field(default_factory=soft_fd_limit)
    fd_headroom: int = FD_HEADROOM
    _pending: dict[str, str] = field(default_factory=dict)  # engine.io session -> address
    _per_address: Counter[str] = field(default_factory=Counter)
    shed_by_reason: Counter[str] = field(default_factory=Counter)

    def open(self, session: str, address: str, open_sessions: int) -> str | None:
        """A new session from ``address``; returns why it is shed, or None when it may start its handshake."""
        reason = None
        if open_sessions >= self.fd_limit - self.fd_headroom:
            reason = "fd_limit"
        elif len(self._pending) >= self.max_pending:
            reason = "too_many_pending"
        elif self._per_address[address] >= self.max_pending_per_address:
            reason = "too_many_pending_from_address"
        if reason is not None:
            self.shed_by_reason[reason] += 1
            return reason
        self._pending[session] = address
        self._per_address[address] += 1
        return None

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
        address = self._pending.pop(session, None)
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
