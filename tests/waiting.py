"""Waiting on conditions, never on time: poll with a deadline (asyncio tests)."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.01


async def wait_until(condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Return the condition's first truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:.0f}s")
        await asyncio.sleep(POLL_S)  # the poll interval, not a wait for the event itself
    return value
