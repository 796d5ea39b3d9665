"""The node registry under a connect storm (issue 19): adds never wait for anyone, not even for a waiter whose
log tick fires mid-storm, and waiters are woken by the change that satisfies them. Latency is counted in
event-loop iterations, not seconds, so the test means the same on a loaded machine."""

import asyncio
import logging

from fl_server.registry import NodeInfo, NodeRegistry

NODES = 5000


def completes_without_suspending(coro) -> object:
    """Run a coroutine one step: it must finish there (it took no lock and awaited nothing)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


async def test_connect_storm_admits_every_node_in_one_loop_iteration_while_waiters_tick(caplog):
    registry = NodeRegistry()
    ticks = 0
    running = True

    async def ticker() -> None:  # one increment per event-loop iteration
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0)

    latencies: list[int] = []

    async def connect(i: int) -> None:  # what the Socket.IO connect handler does with the registry
        started = ticks
        await registry.add(NodeInfo(f"n{i}", f"s{i}", 10))
        latencies.append(ticks - started)

    ticking = asyncio.create_task(ticker())
    with caplog.at_level(logging.INFO, logger="fl_server.registry"):
        # Waiters whose log tick fires continually during the storm (the old convoy's trigger).
        everyone = asyncio.create_task(registry.wait_for_logged(NODES, log_every_s=0.0))
        half = asyncio.create_task(registry.wait_for(NODES // 2))
        changed = asyncio.create_task(registry.wait_changed(60.0))
        await asyncio.sleep(0)
        storm = []
        for i in range(NODES):
            if i % 500 == 0:
                # Mid-storm, with every waiter waiting: an add (and a remove) completes in one step.
                assert completes_without_suspending(registry.add(NodeInfo("probe", f"p{i}", 1))) is None
                assert completes_without_suspending(registry.remove_sid(f"p{i}")).node_id == "probe"
                await asyncio.sleep(0)
            storm.append(asyncio.create_task(connect(i)))
        await asyncio.gather(*storm)
        await asyncio.wait_for(asyncio.gather(everyone, half, changed), 60)
    running = False
    await ticking
    assert len(registry) == NODES and half.result() is True
    latencies.sort()
    assert latencies[int(0.99 * len(latencies))] == 0 and latencies[-1] == 0  # no add ever waited
    assert any("waiting for nodes" in r.getMessage() for r in caplog.records)  # the log ticks did fire
    assert registry._count_waiters == [] or all(f.done() for _, f in registry._count_waiters)


async def test_waiters_time_out_cleanly_and_are_woken_by_the_change_that_satisfies_them():
    registry = NodeRegistry()
    assert await registry.wait_for(1, timeout_s=0.0) is False
    waiter = asyncio.create_task(registry.wait_for(2))
    await asyncio.sleep(0)
    registry.register(NodeInfo("a", "s1", 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    registry.register(NodeInfo("b", "s2", 1))
    assert await asyncio.wait_for(waiter, 5) is True
    assert registry.register(NodeInfo("a", "s3", 1)).sid == "s1"  # a reconnect replaces the old connection
    assert registry.unregister_sid("s1") is None and registry.node_for_sid("s3") == "a"
