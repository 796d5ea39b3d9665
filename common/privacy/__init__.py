"""Differential-privacy math shared by the server (central DP) and the nodes (local DP): clipping and noise.

Pure numpy, no I/O. The accountant, the privacy budget and adaptive clipping live in ``fl_server.privacy``.
"""

from common.privacy.clipping import ClippedDelta, clip_delta, global_l2_norm
from common.privacy.noise import (
    CLIP_NORM_TOLERANCE,
    add_gaussian_noise,
    add_local_noise,
    central_noise_stddev,
    local_noise_stddev,
    noised_mean,
    secure_generator,
)

__all__ = [
    "CLIP_NORM_TOLERANCE",
    "ClippedDelta",
    "add_gaussian_noise",
    "add_local_noise",
    "central_noise_stddev",
    "clip_delta",
    "global_l2_norm",
    "local_noise_stddev",
    "noised_mean",
    "secure_generator",
]
