"""DP-FedAvg as a strategy wrapper: clip each node's delta, take the equal-weight mean, add Gaussian noise.

``DPAggregation(inner, ...)`` sits between the coordinator and any averaging strategy (McMahan et al.
2018, user-level DP). Per update it clips ``w_k - w_global`` to L2 norm C and adds it to a running sum
with weight 1: a node's self-reported sample count cannot buy it a larger share. At the round's end it
divides by the number of updates n and adds N(0, (z*C/n)^2) to every coordinate (central mode), then
hands the noised mean to ``inner`` as the round's only update, so a server optimizer (FedAvgM, FedAdam,
...) only post-processes the private release.

In local mode the nodes clip and noise their own deltas before publishing (``common.privacy``); the
server then takes the plain equal-weight mean and adds nothing. With adaptive clipping (Andrew et al.
2021) C follows a target quantile of the update norms, estimated from a noised count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.privacy.clipping import clip_delta
from common.privacy.noise import add_gaussian_noise, central_noise_stddev
from fl_server.privacy.adaptive_clipping import AdaptiveClipping, weights_noise_multiplier
from fl_server.strategies.base import Strategy, cast_to

DP_MEAN_ID = "dp-mean"


class DPAggregation(Strategy):
    """Clipped, equal-weight, noised averaging in front of ``inner`` (``mode`` is ``central`` or ``local``)."""

    name = "dp"

    def __init__(self, inner: Strategy, *, mode: str, clip_norm: float, noise_multiplier: float,
                 adaptive: AdaptiveClipping | None = None) -> None:
        if mode not in ("central", "local"):
            raise ValueError(f"DP mode must be central or local, got {mode!r}")
        if adaptive is not None and mode != "central":
            raise ValueError("adaptive clipping needs --dp central: the server must see the update norms")
        self.inner = inner
        self.mode = mode
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)  # z of the whole release (weights and, if adaptive, count)
        self.adaptive = adaptive
        # With adaptive clipping part of the budget noises the count: the weights get z_delta (Andrew et al. 2021).
        self.weights_noise_multiplier = (
            weights_noise_multiplier(noise_multiplier=noise_multiplier, count_stddev=adaptive.count_stddev)
            if adaptive is not None and noise_multiplier > 0 else noise_multiplier)
        self._round = 0
        self._global: list[np.ndarray] = []
        self._sums: list[np.ndarray] | None = None
        self._count = 0
        self._norms: list[float] = []
        self._info: dict[str, Any] = {}

    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        self._round = server_round
        self._global = [np.asarray(w) for w in global_weights]
        self._sums = None
        self._count = 0
        self._norms = []
        self._info = {}

    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        delta = [np.asarray(w, dtype=np.float64) - g for w, g in zip(weights, self._global, strict=True)]
        if self.mode == "central":
            clipped = clip_delta(delta, self.clip_norm)
            delta = [np.asarray(d, dtype=np.float64) for d in clipped.delta]
            self._norms.append(clipped.original_norm)
        if self._sums is None:
            self._sums = [np.zeros(np.shape(d), dtype=np.float64) for d in delta]
        for acc, d in zip(self._sums, delta, strict=True):
            acc += d
        self._count += 1

    def aggregate(self) -> list[np.ndarray] | None:
        if self._sums is None:
            return None
        mean = [acc / self._count for acc in self._sums]
        noise_stddev = 0.0
        if self.mode == "central" and self.weights_noise_multiplier > 0:
            noise_stddev = central_noise_stddev(noise_multiplier=self.weights_noise_multiplier,
                                                clip_norm=self.clip_norm, denominator=self._count)
            mean = add_gaussian_noise(mean, noise_stddev)
        release = [cast_to(g + m, g.dtype) for g, m in zip(self._global, mean, strict=True)]
        self._info = {"mode": self.mode, "clip_norm": self.clip_norm, "updates": self._count,
                      "noise_stddev": noise_stddev}
        if self.adaptive is not None:
            fraction, next_clip = self.adaptive.adapt(self._norms, self.clip_norm)
            self._info.update(noised_unclipped_fraction=fraction, next_clip_norm=next_clip)
            self.clip_norm = next_clip
        self.inner.begin_round(self._round, self._global)
        self.inner.accumulate(DP_MEAN_ID, release, 1)
        return self.inner.aggregate()

    def train_config(self, server_round: int) -> dict[str, Any]:
        return self.inner.train_config(server_round)

    def check_num_updates(self, num_updates: int) -> None:
        self.inner.check_num_updates(1)  # the inner strategy always sees one update: the noised mean
        super().check_num_updates(num_updates)

    def params(self) -> dict[str, Any]:
        return {**self.inner.params(), "dp_mode": self.mode, "dp_noise_multiplier": self.noise_multiplier,
                "dp_clip_norm": self.clip_norm, "dp_adaptive_clipping": self.adaptive is not None}

    def state(self) -> dict[str, list[np.ndarray]]:
        state = dict(self.inner.state())
        if self.adaptive is not None:
            state["dp_clip_norm"] = [np.array([self.clip_norm], dtype=np.float64)]
        return state

    def load_state(self, state: dict[str, list[np.ndarray]]) -> None:
        state = dict(state)
        clip = state.pop("dp_clip_norm", None)
        if clip is not None:
            value = float(np.asarray(clip[0]).reshape(-1)[0])
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"checkpoint: adaptive clipping norm {value} is not a positive number")
            self.clip_norm = value
        self.inner.load_state(state)

    def last_round_info(self) -> dict[str, Any]:
        return {**self.inner.last_round_info(), "dp": dict(self._info)}
