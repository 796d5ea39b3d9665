"""The coordinator's inbox: a bounded hand-over from the transports to the round loop.

Two kinds of producers, two overflow policies:

* **Kafka** (the consumer's thread): records wait in the broker, not in our memory. When the inbox
  holds ``max_kafka_bytes`` or ``max_kafka_items`` of records, ``put_from_thread`` blocks the consumer
  thread (never the event loop) until the round loop takes some out: backpressure, nothing dropped.
  Records that arrive before round 1 (while the server waits for nodes) therefore fill the inbox
  once and then stay in Kafka until round 1 reads them.
* **Socket.IO** (handlers on the event loop): acknowledgements and refusals are small, but a
  connected client can repeat them. Past ``max_control_items`` waiting, ``put_nowait`` drops the
  message and counts it under ``dropped_by_reason["inbox_full"]``; the loop never blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

DEFAULT_KAFKA_BYTES = 64 * 1024 * 1024
DEFAULT_KAFKA_ITEMS = 8192
DEFAULT_CONTROL_ITEMS = 4096


@dataclass(frozen=True)
class InboxStats:
    kafka_bytes: int
    kafka_items: int
    peak_kafka_bytes: int
    peak_kafka_items: int
    backpressure_waits: int
    dropped_by_reason: dict[str, int]


class Inbox:
    """Bounded queue of items for the round loop (see the module docstring for the two policies)."""

    def __init__(self, *, max_kafka_bytes: int = DEFAULT_KAFKA_BYTES, max_kafka_items: int = DEFAULT_KAFKA_ITEMS,
                 max_control_items: int = DEFAULT_CONTROL_ITEMS) -> None:
        self.max_kafka_bytes = max_kafka_bytes
        self.max_kafka_items = max_kafka_items
        self.max_control_items = max_control_items
        self._queue: asyncio.Queue[tuple[Any, int]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._space = threading.Condition()
        self._kafka_bytes = 0
        self._kafka_items = 0
        self._control_items = 0
        self._peak_bytes = 0
        self._peak_items = 0
        self._waits = 0
        self.dropped_by_reason: Counter[str] = Counter()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that reads the inbox (thread producers hand items to it)."""
        self._loop = loop

    def put_from_thread(self, item: Any, size_bytes: int, stop: threading.Event) -> bool:
        """From a non-loop thread: wait for room, then enqueue. False if ``stop`` was set while waiting.

        A single item larger than the whole budget is let in when the inbox is empty (it cannot wait for
        room that will never come); the record size limit bounds it."""
        if self._loop is None:
            raise RuntimeError("Inbox.bind(loop) must be called before threads put items")
        size_bytes = max(int(size_bytes), 1)
        with self._space:
            waited = False
            while self._kafka_items and (self._kafka_bytes + size_bytes > self.max_kafka_bytes
                                         or self._kafka_items >= self.max_kafka_items):
                if not waited:
                    self._waits += 1
                    waited = True
                if stop.is_set():
                    return False
                self._space.wait(0.2)
            self._kafka_bytes += size_bytes
            self._kafka_items += 1
            self._peak_bytes = max(self._peak_bytes, self._kafka_bytes)
            self._peak_items = max(self._peak_items, self._kafka_items)
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (item, size_bytes))
        except RuntimeError:  # the loop is closed: the session is over
            self._release(size_bytes)
            return False
        return True

    def put_nowait(self, item: Any) -> bool:
        """From the event loop: enqueue, or drop and count when too many control messages wait."""
        if self._control_items >= self.max_control_items:
            self.dropped_by_reason["inbox_full"] += 1
            return False
        self._control_items += 1
        self._queue.put_nowait((item, 0))
        return True

    async def get(self) -> Any:
        item, size_bytes = await self._queue.get()
        if size_bytes:
            self._release(size_bytes)
        else:
            self._control_items -= 1
        return item

    def _release(self, size_bytes: int) -> None:
        with self._space:
            self._kafka_bytes -= size_bytes
            self._kafka_items -= 1
            self._space.notify_all()

    def stats(self) -> InboxStats:
        with self._space:
            return InboxStats(self._kafka_bytes, self._kafka_items, self._peak_bytes, self._peak_items, self._waits,
                              dict(self.dropped_by_reason))
