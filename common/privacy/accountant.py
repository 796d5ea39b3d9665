"""Privacy accounting with Google's ``dp-accounting`` library (RDP accountant). No I/O.

Shared by the server (user-level DP-FedAvg, ``fl_server.privacy``) and the nodes (record-level DP-SGD,
``fl_node.dp_sgd``). Each "round" is one Poisson-subsampled Gaussian mechanism: in DP-FedAvg every node takes
part with probability q and the sum of clipped deltas gets Gaussian noise of stddev z*C (noise multiplier z);
in DP-SGD a round is one optimizer step, q is batch size / records and the sum of clipped per-example gradients
gets the noise. The accountant records the rounds and asks the library's ``RdpAccountant`` for epsilon at a
delta; nothing here computes a privacy bound by hand.

Rounds are kept run-length encoded, ``[(q, z, rounds), ...]``, and each run is composed as one
``SelfComposedDpEvent``. RDP composes additively, so this is the same bound as composing round by round, and
far cheaper: the library's RDP of a subsampled Gaussian costs up to half a second per event.

With adaptive clipping (Andrew et al. 2021) the z given here is the effective multiplier of the weights and
the clipped count together (see ``fl_server.privacy.adaptive_clipping``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting import rdp

logger = logging.getLogger(__name__)

STATE_FORMAT = "fl-kafka/rdp-accountant"
STATE_VERSION = 1


@dataclass(frozen=True)
class RoundRun:
    """``rounds`` consecutive rounds run with the same sampling rate and noise multiplier."""

    sampling_rate: float
    noise_multiplier: float
    rounds: int


def round_event(*, sampling_rate: float, noise_multiplier: float) -> dp_accounting.DpEvent:
    """One round of DP-FedAvg as the library sees it: a Poisson-subsampled Gaussian mechanism."""
    check_round_parameters(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier)
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))


def check_round_parameters(*, sampling_rate: float, noise_multiplier: float) -> None:
    """Raise ``ValueError`` unless 0 < q <= 1 and z is a finite number >= 0."""
    if not (isinstance(sampling_rate, int | float) and 0 < sampling_rate <= 1):
        raise ValueError(f"the sampling rate q must be in (0, 1], got {sampling_rate!r}")
    if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"the noise multiplier z must be a finite number >= 0, got {noise_multiplier!r}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


class PrivacyAccountant:
    """The rounds run so far and their epsilon; one round is recorded at a time."""

    def __init__(self) -> None:
        self._runs: list[RoundRun] = []

    @property
    def rounds(self) -> int:
        """How many rounds have been recorded."""
        return sum(run.rounds for run in self._runs)

    @property
    def runs(self) -> tuple[RoundRun, ...]:
        """The recorded rounds, run-length encoded in order."""
        return tuple(self._runs)

    def record_round(self, *, sampling_rate: float, noise_multiplier: float) -> None:
        """Add one round with sampling rate q and noise multiplier z."""
        self.record_rounds(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier, rounds=1)

    def record_rounds(self, *, sampling_rate: float, noise_multiplier: float, rounds: int) -> None:
        """Add ``rounds`` rounds (DP-SGD: steps) with sampling rate q and noise multiplier z."""
        check_round_parameters(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"the number of rounds must be an integer >= 1, got {rounds!r}")
        last = self._runs[-1] if self._runs else None
        if last is not None and (last.sampling_rate, last.noise_multiplier) == (sampling_rate, noise_multiplier):
            self._runs[-1] = RoundRun(last.sampling_rate, last.noise_multiplier, last.rounds + rounds)
        else:
            self._runs.append(RoundRun(float(sampling_rate), float(noise_multiplier), rounds))

    def epsilon(self, delta: float) -> float:
        """Epsilon of all recorded rounds at ``delta`` (0 before any round; infinite if some round had z = 0)."""
        return _epsilon_of(self._runs, delta)

    def epsilon_after_next_round(self, delta: float, *, sampling_rate: float, noise_multiplier: float) -> float:
        """Epsilon at ``delta`` if one more round with (q, z) were run; the accountant is not changed."""
        check_round_parameters(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier)
        return _epsilon_of([*self._runs, RoundRun(sampling_rate, noise_multiplier, 1)], delta)

    def to_state(self) -> dict[str, Any]:
        """Plain JSON-able state: enough to rebuild the accountant on resume (no pickle)."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "rounds": self.rounds,
            "runs": [{"sampling_rate": run.sampling_rate, "noise_multiplier": run.noise_multiplier,
                      "rounds": run.rounds} for run in self._runs],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PrivacyAccountant:
        """Rebuild from :meth:`to_state`'s output; anything malformed raises ``ValueError`` saying what."""
        if not isinstance(state, Mapping):
            raise ValueError("accountant state must be a JSON object")
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"accountant state must have format {STATE_FORMAT!r} version {STATE_VERSION}, got "
                             f"{state.get('format')!r} version {state.get('version')!r}")
        runs = state.get("runs")
        if not isinstance(runs, list):
            raise ValueError("accountant state: 'runs' must be a list")
        accountant = cls()
        for index, run in enumerate(runs):
            if not isinstance(run, Mapping) or set(run) != {"sampling_rate", "noise_multiplier", "rounds"}:
                raise ValueError(f"accountant state: run {index} must have exactly sampling_rate, noise_multiplier "
                                 "and rounds")
            count = run["rounds"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"accountant state: run {index} has rounds {count!r}; expected an integer >= 1")
            for name in ("sampling_rate", "noise_multiplier"):
                if isinstance(run[name], bool):
                    raise ValueError(f"accountant state: run {index} has {name} {run[name]!r}")
            try:
                check_round_parameters(sampling_rate=run["sampling_rate"], noise_multiplier=run["noise_multiplier"])
            except ValueError as error:
                raise ValueError(f"accountant state: run {index}: {error}") from None
            accountant._runs.append(RoundRun(float(run["sampling_rate"]), float(run["noise_multiplier"]), count))
        if state.get("rounds") != accountant.rounds:
            raise ValueError(f"accountant state says {state.get('rounds')!r} rounds but its runs add up to "
                             f"{accountant.rounds}")
        return accountant


def _epsilon_of(runs: list[RoundRun], delta: float) -> float:
    _check_delta(delta)
    if not runs:
        return 0.0
    accountant = rdp.RdpAccountant()
    for run in runs:
        event = round_event(sampling_rate=run.sampling_rate, noise_multiplier=run.noise_multiplier)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, run.rounds))
    return float(accountant.get_epsilon(delta))
