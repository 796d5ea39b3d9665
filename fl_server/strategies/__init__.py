"""Aggregation strategies: pure numpy math, no I/O. ``make_strategy(name, **params)`` builds one by name."""

from __future__ import annotations

import inspect
from typing import Any

from common.plugins import entry_point, entry_point_names, is_import_path, load_object
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


def strategy_defaults(name: str) -> dict[str, Any]:
    """Strategy ``name``'s keyword-only hyperparameters and their defaults."""
    cls = _lookup(name)
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is p.KEYWORD_ONLY}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build strategy ``name``; ``params`` it does not take are an error (not silently ignored)."""
    cls = _lookup(name)
    accepted = strategy_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"strategy {name!r} does not take {', '.join(unknown)} "
                         f"(it takes: {', '.join(accepted) or 'no parameters'})")
    return cls(**params)


ENTRY_POINT_GROUP = "fl_kafka.strategies"


def _lookup(name: str) -> type[Strategy]:
    """A built-in strategy, one an installed package registers under ``fl_kafka.strategies``, or
    ``package.module:Class`` from the user's own code."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    found = load_object(name, "--strategy") if is_import_path(name) else entry_point(ENTRY_POINT_GROUP, name)
    if found is None:
        plugins = entry_point_names(ENTRY_POINT_GROUP)
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES) + plugins}, or give your own "
                         "class as package.module:Class")
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise ValueError(f"--strategy {name}: {found!r} is not a subclass of fl_server.strategies.Strategy")
    return found


__all__ = [
    "ENTRY_POINT_GROUP",
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
    "strategy_defaults",
    "strategy_parameters",
    "weighted_average",
]
