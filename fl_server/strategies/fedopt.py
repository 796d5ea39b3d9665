"""Server optimizers on the pseudo-gradient: FedAvgM, FedAdagrad, FedAdam, FedYogi.

Every round the nodes' updates are averaged as in FedAvg (streamed, sample-weighted), and
``delta = avg(w_k) - w_global`` is treated as a pseudo-gradient that a server-side optimizer
applies to the global model. The optimizer state (momentum, second moment) is one model-sized
float64 array each and carries across rounds; a failed round leaves it untouched.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.validation import require_decay_rate, require_positive_finite
from fl_server.strategies.base import Strategy, cast_to
from fl_server.strategies.fedavg import FedAvg


def _restore(state: dict[str, list[np.ndarray]], name: str, strategy: str) -> list[np.ndarray] | None:
    """One optimizer moment from a checkpoint (absent: the optimizer had not stepped yet)."""
    unknown = set(state) - {"momentum", "m", "v"}
    if unknown:
        raise ValueError(f"strategy {strategy}: unknown state {sorted(unknown)}")
    arrays = state.get(name)
    return None if arrays is None else [np.array(a, dtype=np.float64) for a in arrays]


class PseudoGradientStrategy(Strategy):
    """Streams a FedAvg of the round, then hands ``delta = avg - w_global`` to ``_step``."""

    partial_sums = True

    def __init__(self) -> None:
        self._fedavg = FedAvg()
        self._global: list[np.ndarray] = []

    def begin_round(self, server_round: int, global_weights: Sequence[np.ndarray]) -> None:
        self._fedavg.begin_round(server_round, global_weights)
        self._global = [np.asarray(w) for w in global_weights]  # references: the coordinator never mutates them

    def accumulate(self, node_id: str, weights: Sequence[np.ndarray], num_samples: int) -> None:
        self._fedavg.accumulate(node_id, weights, num_samples)

    def add_partial_sum(self, sums: Sequence[np.ndarray], total_weight: int) -> None:
        self._fedavg.add_partial_sum(sums, total_weight)

    def aggregate(self) -> list[np.ndarray] | None:
        mean = self._fedavg.average()
        if mean is None:
            return None
        globals64 = [np.asarray(w, dtype=np.float64) for w in self._global]
        deltas = [m - g for m, g in zip(mean, globals64, strict=True)]
        steps = self._step(deltas)
        return [cast_to(g + s, w.dtype) for g, s, w in zip(globals64, steps, self._global, strict=True)]

    @abstractmethod
    def _step(self, deltas: list[np.ndarray]) -> list[np.ndarray]:
        """The change to apply to the global weights for this round's pseudo-gradient (updates state)."""


class FedAvgM(PseudoGradientStrategy):
    """FedAvg with server momentum (Hsu et al., 2019): ``m = beta * m + delta``, ``w = w + server_lr * m``.

    With ``server_momentum=0`` and ``server_lr=1`` this is FedAvg.
    """

    name = "fedavgm"

    def __init__(self, *, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        super().__init__()
        self.server_lr = require_positive_finite("server_lr", server_lr)
        self.server_momentum = require_decay_rate("server_momentum", server_momentum)
        self._momentum: list[np.ndarray] | None = None

    def _step(self, deltas: list[np.ndarray]) -> list[np.ndarray]:
        if self._momentum is None:
            self._momentum = [np.zeros_like(d) for d in deltas]
        for m, d in zip(self._momentum, deltas, strict=True):
            m *= self.server_momentum
            m += d
        return [self.server_lr * m for m in self._momentum]

    def params(self) -> dict[str, Any]:
        return {"server_lr": self.server_lr, "server_momentum": self.server_momentum}

    def state(self) -> dict[str, list[np.ndarray]]:
        return {} if self._momentum is None else {"momentum": self._momentum}

    def load_state(self, state: dict[str, list[np.ndarray]]) -> None:
        self._momentum = _restore(state, "momentum", self.name)


class AdaptiveServerOptimizer(PseudoGradientStrategy):
    """Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2, as written there:

    ``m_t = beta1 * m_{t-1} + (1 - beta1) * delta``; ``v_t`` per variant (``_second_moment``);
    ``w = w + server_lr * m_t / (sqrt(v_t) + tau)``, with ``m_{-1} = 0`` and ``v_{-1} = tau**2``
    (the paper asks for ``v_{-1} >= tau**2``; Flower starts from zeros) and no bias correction
    (Flower's FedAdam adds Adam's; the paper does not).
    """

    def __init__(self, *, server_lr: float, beta1: float, tau: float) -> None:
        super().__init__()
        self.server_lr = require_positive_finite("server_lr", server_lr)
        self.beta1 = require_decay_rate("beta1", beta1)
        self.tau = require_positive_finite("tau", tau)
        self._m: list[np.ndarray] | None = None
        self._v: list[np.ndarray] | None = None

    def _step(self, deltas: list[np.ndarray]) -> list[np.ndarray]:
        if self._m is None or self._v is None:
            self._m = [np.zeros_like(d) for d in deltas]
            self._v = [np.full_like(d, self.tau**2) for d in deltas]
        steps = []
        for m, v, d in zip(self._m, self._v, deltas, strict=True):
            m *= self.beta1
            m += (1.0 - self.beta1) * d
            v[...] = self._second_moment(v, np.square(d))
            steps.append(self.server_lr * m / (np.sqrt(v) + self.tau))
        return steps

    def state(self) -> dict[str, list[np.ndarray]]:
        return {} if self._m is None or self._v is None else {"m": self._m, "v": self._v}

    def load_state(self, state: dict[str, list[np.ndarray]]) -> None:
        self._m, self._v = _restore(state, "m", self.name), _restore(state, "v", self.name)

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """``v_t`` from ``v_{t-1}`` and ``delta**2``."""


class FedAdagrad(AdaptiveServerOptimizer):
    """``v_t = v_{t-1} + delta**2``."""

    name = "fedadagrad"

    def __init__(self, *, server_lr: float = 0.1, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, tau=tau)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq

    def params(self) -> dict[str, Any]:
        return {"server_lr": self.server_lr, "beta1": self.beta1, "tau": self.tau}


class FedAdam(AdaptiveServerOptimizer):
    """``v_t = beta2 * v_{t-1} + (1 - beta2) * delta**2``."""

    name = "fedadam"

    def __init__(self, *, server_lr: float = 0.03, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, tau=tau)
        self.beta2 = require_decay_rate("beta2", beta2)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq

    def params(self) -> dict[str, Any]:
        return {"server_lr": self.server_lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}


class FedYogi(FedAdam):
    """``v_t = v_{t-1} - (1 - beta2) * delta**2 * sign(v_{t-1} - delta**2)``: ``v`` moves additively."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)
