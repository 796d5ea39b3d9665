"""Aggregation strategies: pure numpy math, no I/O. ``make_strategy(name, **params)`` builds one by name."""

from __future__ import annotations

import inspect
from typing import Any

from fl_server.strategies.base import AggregationError, Strategy, weighted_average
from fl_server.strategies.fedavg import FedAvg, FedProx
from fl_server.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fl_server.strategies.robust import Krum, Median, MultiKrum, TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, Median, TrimmedMean, Krum, MultiKrum)
}


def strategy_parameters(name: str) -> list[str]:
    """The keyword-only hyperparameters strategy ``name`` accepts."""
    cls = _lookup(name)
    return [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build strategy ``name``; ``params`` it does not take are an error (not silently ignored)."""
    cls = _lookup(name)
    accepted = strategy_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"strategy {name!r} does not take {', '.join(unknown)} "
                         f"(it takes: {', '.join(accepted) or 'no parameters'})")
    return cls(**params)


def _lookup(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}") from None


__all__ = [
    "STRATEGIES",
    "AggregationError",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "MultiKrum",
    "Strategy",
    "TrimmedMean",
    "make_strategy",
    "strategy_parameters",
    "weighted_average",
]
