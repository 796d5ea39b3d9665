"""The coordinator's inbox: Kafka records get backpressure (never dropped), control messages a drop-and-count bound."""

import asyncio
import threading

from fl_server.inbox import Inbox
from tests.waiting import wait_until


async def test_a_full_inbox_blocks_the_consumer_thread_not_the_loop_and_loses_nothing():
    inbox = Inbox(max_kafka_bytes=1000, max_kafka_items=100)
    inbox.bind(asyncio.get_running_loop())
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    # 50 items of 100 bytes through a 1000-byte inbox: the producer thread must wait for the loop 4 times at least.
    producer = loop.run_in_executor(None, lambda: [inbox.put_from_thread(i, 100, stop) for i in range(50)])
    await wait_until(lambda: inbox.stats().kafka_items >= 10, what="a full inbox")  # the loop runs meanwhile
    got = [await asyncio.wait_for(inbox.get(), 10) for _ in range(50)]
    assert await asyncio.wait_for(producer, 10) == [True] * 50
    assert got == list(range(50))  # order kept, nothing dropped
    stats = inbox.stats()
    assert stats.peak_kafka_bytes <= 1000 and stats.peak_kafka_items <= 10
    assert stats.backpressure_waits >= 1 and stats.kafka_items == 0 and not stats.dropped_by_reason


async def test_stop_releases_a_waiting_consumer_thread():
    inbox = Inbox(max_kafka_bytes=100)
    inbox.bind(asyncio.get_running_loop())
    stop = threading.Event()
    assert inbox.put_from_thread("first", 100, stop)
    waiting = asyncio.get_running_loop().run_in_executor(None, inbox.put_from_thread, "second", 100, stop)
    done, _ = await asyncio.wait([waiting], timeout=0.05)
    assert not done  # still waiting for room
    stop.set()
    assert await asyncio.wait_for(waiting, 5) is False


async def test_one_item_larger_than_the_budget_passes_when_the_inbox_is_empty():
    inbox = Inbox(max_kafka_bytes=100)
    inbox.bind(asyncio.get_running_loop())
    assert inbox.put_from_thread("big", 5000, threading.Event())
    assert await inbox.get() == "big"


async def test_control_messages_past_the_bound_are_dropped_and_counted():
    inbox = Inbox(max_control_items=3)
    assert [inbox.put_nowait(i) for i in range(5)] == [True, True, True, False, False]
    assert inbox.stats().dropped_by_reason == {"inbox_full": 2}
    assert [await inbox.get() for _ in range(3)] == [0, 1, 2]
    assert inbox.put_nowait("room again")
