"""Registry of connected nodes (event-loop only; no I/O)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class NodeInfo:
    node_id: str
    sid: str
    num_samples: int
    instance: str = ""


class NodeRegistry:
    """Maps Socket.IO session ids to node ids; lets the round loop await a number of nodes."""

    def __init__(self) -> None:
        self._by_node: dict[str, NodeInfo] = {}
        self._node_by_sid: dict[str, str] = {}
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._by_node)

    async def add(self, info: NodeInfo) -> NodeInfo | None:
        """Register a node; returns the previous connection of the same node id, if any (it is replaced)."""
        previous = self._by_node.get(info.node_id)
        if previous is not None:
            self._node_by_sid.pop(previous.sid, None)
        self._by_node[info.node_id] = info
        self._node_by_sid[info.sid] = info.node_id
        async with self._changed:
            self._changed.notify_all()
        return previous

    async def remove_sid(self, sid: str) -> NodeInfo | None:
        node_id = self._node_by_sid.pop(sid, None)
        if node_id is None:
            return None
        info = self._by_node.pop(node_id)
        async with self._changed:
            self._changed.notify_all()
        return info

    def info(self, node_id: str) -> NodeInfo | None:
        return self._by_node.get(node_id)

    def node_for_sid(self, sid: str) -> str | None:
        return self._node_by_sid.get(sid)

    def snapshot(self) -> list[NodeInfo]:
        return sorted(self._by_node.values(), key=lambda n: n.node_id)

    async def wait_for(self, count: int, timeout_s: float | None = None) -> bool:
        """Wait until at least ``count`` nodes are connected; False on timeout."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self._by_node) >= count), timeout_s)
            except TimeoutError:
                return False
        return True

    async def wait_for_logged(self, count: int, log_every_s: float = 10.0) -> None:
        """Wait until ``count`` nodes are connected, logging progress while waiting."""
        while not await self.wait_for(count, timeout_s=log_every_s):
            logger.info("waiting for nodes: %d of %d connected", len(self), count)
        logger.info("%d node(s) connected", len(self))

    async def wait_changed(self, timeout_s: float) -> None:
        """Wait for any connect or disconnect (or the timeout)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except TimeoutError:
                pass
