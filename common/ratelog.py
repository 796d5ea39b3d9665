"""Rate-limited warnings: a flood of the same complaint becomes a few lines and a count.

Anything an outsider can repeat (a bad record, a refused connection, a malformed packet) is logged
through ``RateLimitedLog``: per key, the first ``burst`` messages of each ``interval_s`` window are
written; the rest are counted, and the next line written for that key (or ``flush``) says how many
were left out. The log's volume is then bounded by the number of keys, not by the attacker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_KEYS = 1024  # keys are reason tags (a small set); past this, all further keys share one bucket


@dataclass
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """``warning(key, msg, *args)`` logs at most ``burst`` times per key per ``interval_s`` (thread-safe)."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self.suppressed_total = 0

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` at WARNING unless this key is over its budget; True if it was written."""
        return self.log(logging.WARNING, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        now = self._clock()
        with self._lock:
            if key not in self._windows and len(self._windows) >= MAX_KEYS:
                key = "(other)"
            window = self._windows.get(key)
            carried = 0
            if window is None or now - window.started >= self._interval_s:
                carried = window.suppressed if window is not None else 0
                window = self._windows[key] = _Window(started=now)
            if window.written >= self._burst:
                window.suppressed += 1
                self.suppressed_total += 1
                return False
            window.written += 1
        if carried:
            msg = f"{msg} (and {carried} more like it not logged in the {self._interval_s:.0f}s before)"
        self._logger.log(level, msg, *args)
        return True

    def flush(self) -> None:
        """Write one line per key with messages left out since its last line, and start afresh."""
        with self._lock:
            pending = {key: w.suppressed for key, w in self._windows.items() if w.suppressed}
            self._windows.clear()
        for key, count in sorted(pending.items()):
            self._logger.warning("%d more %s message(s) were not logged (rate limit)", count, key)
