"""The session's privacy ledger: what each round cost, the epsilon so far, and whether the next round fits.

The round loop asks ``may_run_next_round`` before it opens a round (the budget stop) and calls
``record_round`` after a round released a new model. Every number comes from the accountant
(``common.privacy.accountant``, Google's dp-accounting); the ledger only keeps the books.

Sampling: the server samples a fixed number of participants from a seeded, public draw, which gives no
privacy amplification, so every round is accounted with sampling rate q = 1 (conservative and honest).
In local mode a round where only m of the n asked nodes deliver carries noise z*sqrt(m/n) (each node
added its share for n); that effective multiplier is what is accounted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from common.privacy.accountant import PrivacyAccountant
from common.privacy.noise import local_noise_stddev
from fl_server.privacy.budget import next_round_within_budget

logger = logging.getLogger(__name__)

SAMPLING_RATE = 1.0
MECHANISM = "gaussian, user-level DP-FedAvg (RDP accountant, dp-accounting)"


@dataclass(frozen=True)
class PrivacySettings:
    mode: str  # "central" or "local"
    noise_multiplier: float
    delta: float
    target_epsilon: float | None = None
    clip_norm: float = 0.0  # the nodes' clip in local mode (central: the server's, which may adapt)


class PrivacyLedger:
    def __init__(self, settings: PrivacySettings, accountant: PrivacyAccountant | None = None) -> None:
        self.settings = settings
        self.accountant = accountant or PrivacyAccountant()

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon(self.settings.delta)

    def may_run_next_round(self) -> bool:
        """False when one more round at the session's noise would take epsilon past ``--dp-target-epsilon``."""
        target = self.settings.target_epsilon
        if target is None:
            return True
        return next_round_within_budget(self.accountant, target_epsilon=target, delta=self.settings.delta,
                                        sampling_rate=SAMPLING_RATE,
                                        noise_multiplier=self.settings.noise_multiplier)

    def effective_noise_multiplier(self, *, delivered: int, asked: int) -> float:
        z = self.settings.noise_multiplier
        if self.settings.mode == "local" and asked > 0:
            return z * math.sqrt(delivered / asked)
        return z

    def node_config(self, num_participants: int) -> dict[str, float]:
        """The ``start_round`` config fields that make each node clip and noise its own update (local mode):
        each of n participants adds N(0, (z*C)^2 / n), so the sum of all n carries (z*C)^2."""
        if self.settings.mode != "local":
            return {}
        stddev = local_noise_stddev(noise_multiplier=self.settings.noise_multiplier,
                                    clip_norm=self.settings.clip_norm, num_nodes=max(num_participants, 1))
        return {"dp_clip_norm": self.settings.clip_norm, "dp_noise_stddev": stddev}

    def record_round(self, *, clip_norm: float, delivered: int, asked: int) -> dict[str, Any]:
        """Account one released round; returns the round's ``privacy`` record for the history."""
        z = self.effective_noise_multiplier(delivered=delivered, asked=asked)
        self.accountant.record_round(sampling_rate=SAMPLING_RATE, noise_multiplier=z)
        return {"epsilon": self.epsilon, "delta": self.settings.delta, "noise_multiplier": z, "clip": clip_norm,
                "sampling_rate": SAMPLING_RATE, "mechanism": f"{self.settings.mode} {MECHANISM}",
                "rounds_accounted": self.accountant.rounds}

    def state(self) -> dict[str, Any]:
        return self.accountant.to_state()
