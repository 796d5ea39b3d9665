"""The one error type for untrusted input that breaks the wire rules (no imports: every wire module uses it)."""

from __future__ import annotations


class ProtocolError(ValueError):
    """An untrusted message that does not follow the protocol; ``reason`` is a short tag counted in the history."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
