"""Who trains in a round, and how many updates a round needs (pure: no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from common.validation import require_positive_fraction


def sample_participants(node_ids: Iterable[str], *, fraction: float, min_count: int, seed: int,
                        server_round: int) -> list[str]:
    """``ceil(fraction * connected)`` nodes (at least ``min_count``, at most all), drawn without replacement.

    The draw depends only on ``(seed, server_round)`` and the sorted ids, so a resumed session
    or a rerun with the same seed samples the same nodes."""
    require_positive_fraction("fraction", fraction)
    ids = sorted(set(node_ids))
    count = min(len(ids), max(min_count, math.ceil(fraction * len(ids))))
    if count >= len(ids):
        return ids
    rng = np.random.default_rng([seed, server_round])
    chosen = rng.choice(len(ids), size=count, replace=False)
    return sorted(ids[i] for i in chosen)


def required_updates(num_participants: int, *, min_fit: int, min_fit_fraction: float) -> int:
    """Accepted updates a round needs to change the global model: ``max(min_fit, ceil(f * participants))``."""
    return max(min_fit, math.ceil(min_fit_fraction * num_participants))
