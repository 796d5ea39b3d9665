"""Differential-privacy math shared by the server (central DP) and the nodes (local DP, DP-SGD): clipping,
noise and the RDP accountant.

Pure numpy and dp-accounting, no I/O. The privacy budget and adaptive clipping live in ``fl_server.privacy``.
"""

from common.privacy.accountant import PrivacyAccountant, RoundRun, round_event
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
    "PrivacyAccountant",
    "RoundRun",
    "add_gaussian_noise",
    "add_local_noise",
    "central_noise_stddev",
    "clip_delta",
    "global_l2_norm",
    "local_noise_stddev",
    "noised_mean",
    "round_event",
    "secure_generator",
]
