"""Local differential privacy at a node: what it publishes when the round asks for it (``TrainConfig.dp_*``).

The node clips its update's delta ``w_local - w_global`` to L2 norm C and adds Gaussian noise of the stddev the
server computed for the round (z*C/sqrt(n) for n participants, so the sum of all n carries z*C); the clear
update never leaves the node. Noise comes from ``secure_generator`` (OS entropy), never from a session seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.privacy.clipping import clip_delta
from common.privacy.noise import add_gaussian_noise


def strictest_local_dp(*, server_clip: float, server_stddev: float, own_clip: float,
                       own_stddev: float) -> tuple[float, float]:
    """The (clip, noise stddev) a node applies: the smaller positive clip and the larger noise of what the round
    asks and what the node itself insists on (``fl-node --dp-clip``/``--dp-noise-stddev``). (0, 0) means none.

    A node that does not trust the server sets its own floor: a server that asks for less (or nothing) does not
    get a clearer update."""
    clips = [c for c in (server_clip, own_clip) if c > 0]
    clip = min(clips) if clips else 0.0
    return clip, (max(server_stddev, own_stddev) if clip > 0 else 0.0)


def privatize_update(global_weights: Sequence[np.ndarray], local_weights: Sequence[np.ndarray], *,
                     clip_norm: float, noise_stddev: float) -> tuple[list[np.ndarray], float]:
    """``w_global + noise(clip(w_local - w_global))`` per layer in the local dtypes, and the delta's norm."""
    delta = [np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64)
             for g, w in zip(global_weights, local_weights, strict=True)]
    clipped = clip_delta(delta, clip_norm)
    noised = add_gaussian_noise(clipped.delta, noise_stddev) if noise_stddev > 0 else list(clipped.delta)
    published = [(np.asarray(g, dtype=np.float64) + d).astype(np.asarray(w).dtype)
                 for g, d, w in zip(global_weights, noised, local_weights, strict=True)]
    return published, clipped.original_norm
