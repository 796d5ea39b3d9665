"""Who masks with whom: the complete graph (SecAgg) or a k-regular graph (SecAgg+, Bell et al. 2020).

SecAgg+ replaces the all-pairs masks with a sparse graph: each node masks with, and shares its secrets among,
only its ``k`` neighbours. Following Bell et al., the graph is a Harary graph ``H(k, n)`` (a ring in which
every node is joined to the ``k/2`` nodes on either side) laid over a random order of the nodes. The order is
public and deterministic: nodes sorted by ``SHA-256(seed || node_id)``, so the server and every node derive
the same graph from the round's public ``seed`` without another message.

A malicious server could pick seeds until the graph suits it; against an honest-but-curious server the seed
only needs to be fixed before the nodes' inputs are (it is sent with the round's config).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def ring_order(node_ids: Sequence[str], seed: bytes) -> list[str]:
    """The nodes in the seed's pseudorandom order (a keyed hash sort: same seed, same order, everywhere)."""
    return sorted(node_ids, key=lambda node_id: (hashlib.sha256(
        len(seed).to_bytes(8, "big") + seed + node_id.encode()).digest(), node_id))


def neighbour_graph(node_ids: Sequence[str], *, degree: int | None, seed: bytes) -> dict[str, frozenset[str]]:
    """node -> its neighbours (never itself). ``degree`` None, or at least ``n - 1``: the complete graph.

    Otherwise ``degree`` must be even and at least 2: each node gets exactly ``degree`` neighbours."""
    nodes = list(node_ids)
    if len(set(nodes)) != len(nodes):
        raise ValueError("node ids must be distinct")
    count = len(nodes)
    if degree is None or degree >= count - 1:
        return {node: frozenset(nodes) - {node} for node in nodes}
    if degree < 2 or degree % 2:
        raise ValueError(f"the neighbour degree must be even and at least 2, got {degree}")
    order = ring_order(nodes, seed)
    half = degree // 2
    return {node: frozenset(order[(position + offset) % count]
                            for offset in range(-half, half + 1) if offset)
            for position, node in enumerate(order)}
