"""L2 clipping of a model update across all layers (pure numpy, no I/O).

An update delta is ``w_k - w_global`` as a list of arrays, one per layer. DP-FedAvg bounds each node's
contribution by scaling the whole delta so that its global L2 norm (over every layer together) is at
most the clipping norm C; that bound is the sensitivity the Gaussian noise is calibrated to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClippedDelta:
    """A delta scaled to global L2 norm at most the clipping norm, and the norm it had before."""

    delta: list[np.ndarray]
    original_norm: float
    scale: float = 1.0  # the factor applied to every layer: min(1, clip_norm / original_norm)

    @property
    def was_clipped(self) -> bool:
        """Whether the delta had to be scaled down (its original norm exceeded the clipping norm)."""
        return self.scale < 1.0


def global_l2_norm(delta: Sequence[np.ndarray]) -> float:
    """The L2 norm of all layers together, computed in float64 (float32 sums of squares overflow early)."""
    squares = math.fsum(float(np.sum(np.square(np.asarray(layer, dtype=np.float64)))) for layer in delta)
    return math.sqrt(squares)


def clip_delta(delta: Sequence[np.ndarray], clip_norm: float) -> ClippedDelta:
    """Scale ``delta`` by ``min(1, clip_norm / norm)``, keeping each layer's dtype.

    A delta already inside the ball comes back unchanged (the same values). A delta with a non-finite
    value has no norm to clip to and is refused with ``ValueError``: the caller treats it as a bad update.
    Float32 layers are rounded after scaling, so the clipped norm can exceed ``clip_norm`` by a relative
    1e-7 or so; the noise calibration must not rely on a tighter bound.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm}")
    for index, layer in enumerate(delta):
        if not np.issubdtype(np.asarray(layer).dtype, np.floating):
            raise ValueError(f"layer {index} has dtype {np.asarray(layer).dtype}; only floating-point deltas "
                             "can be clipped")
    norm = global_l2_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("the update has a non-finite value (NaN or infinity); it cannot be clipped")
    if norm <= clip_norm:
        return ClippedDelta(delta=[np.asarray(layer) for layer in delta], original_norm=norm)
    scale = clip_norm / norm
    clipped = [(np.asarray(layer, dtype=np.float64) * scale).astype(np.asarray(layer).dtype, copy=False)
               for layer in delta]
    return ClippedDelta(delta=clipped, original_norm=norm, scale=scale)
