"""Gaussian noise for DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", user-level DP), central and local (pure numpy, no I/O).

Central DP: the server averages n clipped deltas (each of global L2 norm <= C) with equal weights and adds
N(0, (z*C/n)^2) to every coordinate of the mean: the sum has sensitivity C, its noise is z*C, and dividing by
n divides both. z is the noise multiplier the accountant is given.

Local DP (each node noises its own clipped delta so that the server never needs to be trusted with the raw
sum's noise): node k adds N(0, (z*C)^2 / n). Independent Gaussians add their variances, so the sum of the n
noised deltas carries variance n * (z*C)^2 / n = (z*C)^2, exactly the central noise of the sum, and their mean
carries stddev z*C/n. That equivalence holds for the aggregate only: one node's update on its own carries
stddev z*C/sqrt(n), i.e. noise multiplier z/sqrt(n), so whoever sees individual updates (the server without
secure aggregation, the Kafka topic) gets the weaker per-node guarantee.

Randomness: noise comes from a fresh generator seeded with 256 bits from the OS CSPRNG (``os.urandom``) on
every call. No function here takes a seed or a generator: the session seed is public (it is recorded in the
history to make runs repeatable), and noise reproducible from it would be removable. Known limitation:
floating-point Gaussian samples are not the ideal continuous distribution (Mironov 2012 shows an attack on
floating-point Laplace noise); a discrete Gaussian would close that gap.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from common.privacy.clipping import global_l2_norm

logger = logging.getLogger(__name__)

# Relative slack allowed above the clipping norm when checking that deltas were clipped: float32 rounding
# after scaling can leave a clipped delta a few ulps above C.
CLIP_NORM_TOLERANCE = 1e-6

_SEED_BYTES = 32


def secure_generator() -> np.random.Generator:
    """A new numpy generator seeded with 256 bits from the OS CSPRNG, never from a caller's seed."""
    entropy = int.from_bytes(os.urandom(_SEED_BYTES), "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def central_noise_stddev(*, noise_multiplier: float, clip_norm: float, denominator: float) -> float:
    """The stddev of the noise on the mean of clipped deltas: ``z * C / denominator`` (McMahan et al. 2018)."""
    _check_noise_parameters(noise_multiplier, clip_norm)
    if not denominator > 0:
        raise ValueError(f"the mean's denominator must be positive, got {denominator}")
    return noise_multiplier * clip_norm / denominator


def local_noise_stddev(*, noise_multiplier: float, clip_norm: float, num_nodes: int) -> float:
    """The stddev each of ``num_nodes`` nodes adds to its own clipped delta: ``z * C / sqrt(n)``.

    The sum of the n noised deltas then carries stddev ``z * C`` and their mean ``z * C / n``, the same as
    central DP-FedAvg with noise multiplier z (see the module docstring for what one update alone carries).
    """
    _check_noise_parameters(noise_multiplier, clip_norm)
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    return noise_multiplier * clip_norm / math.sqrt(num_nodes)


def add_gaussian_noise(arrays: Sequence[np.ndarray], stddev: float) -> list[np.ndarray]:
    """``arrays`` plus independent N(0, stddev^2) per coordinate (from :func:`secure_generator`), dtypes kept."""
    if not (math.isfinite(stddev) and stddev >= 0):
        raise ValueError(f"the noise stddev must be a finite number >= 0, got {stddev}")
    generator = secure_generator()
    noised = []
    for layer in arrays:
        layer = np.asarray(layer)
        noise = generator.normal(0.0, stddev, size=layer.shape)
        noised.append((layer.astype(np.float64) + noise).astype(layer.dtype, copy=False))
    return noised


def noised_mean(clipped_deltas: Sequence[Sequence[np.ndarray]], *, clip_norm: float, noise_multiplier: float,
                denominator: float | None = None) -> list[np.ndarray]:
    """DP-FedAvg's server step: the equal-weight mean of clipped deltas plus N(0, (z*C/denominator)^2).

    ``denominator`` defaults to the number of deltas, the right choice when that number is fixed and
    public (the server asks a fixed number of nodes). Under Poisson sampling the realised count is itself
    private; pass the expected count q*N instead (McMahan et al. 2018's fixed-denominator estimator).
    Deltas above ``clip_norm`` are refused: the noise would not cover them.
    """
    if not clipped_deltas:
        raise ValueError("no deltas to average")
    shapes = [np.shape(layer) for layer in clipped_deltas[0]]
    for index, delta in enumerate(clipped_deltas):
        if [np.shape(layer) for layer in delta] != shapes:
            raise ValueError(f"delta {index} has layer shapes {[np.shape(la) for la in delta]}, expected {shapes}")
        norm = global_l2_norm(delta)
        if not norm <= clip_norm * (1 + CLIP_NORM_TOLERANCE):
            raise ValueError(f"delta {index} has norm {norm:.6g} above the clipping norm {clip_norm:.6g}; "
                             "clip it first")
    divide_by = float(len(clipped_deltas)) if denominator is None else denominator
    stddev = central_noise_stddev(noise_multiplier=noise_multiplier, clip_norm=clip_norm, denominator=divide_by)
    mean = [np.sum([np.asarray(delta[i], dtype=np.float64) for delta in clipped_deltas], axis=0) / divide_by
            for i in range(len(shapes))]
    noised = add_gaussian_noise(mean, stddev)
    return [layer.astype(np.asarray(template).dtype, copy=False)
            for layer, template in zip(noised, clipped_deltas[0], strict=True)]


def add_local_noise(clipped_delta: Sequence[np.ndarray], *, clip_norm: float, noise_multiplier: float,
                    num_nodes: int) -> list[np.ndarray]:
    """A node's local-DP step: its clipped delta plus N(0, (z*C)^2 / num_nodes) per coordinate."""
    norm = global_l2_norm(clipped_delta)
    if not norm <= clip_norm * (1 + CLIP_NORM_TOLERANCE):
        raise ValueError(f"the delta has norm {norm:.6g} above the clipping norm {clip_norm:.6g}; clip it first")
    stddev = local_noise_stddev(noise_multiplier=noise_multiplier, clip_norm=clip_norm, num_nodes=num_nodes)
    return add_gaussian_noise(clipped_delta, stddev)


def _check_noise_parameters(noise_multiplier: float, clip_norm: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm}")
