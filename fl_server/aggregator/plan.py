"""``fl-server --aggregators K``: which sessions may scale aggregation out, checked before anything starts."""

from __future__ import annotations

from typing import Any

from common.cli import UsageError
from fl_server.aggregator.messages import AggregationKey
from fl_server.strategies import STRATEGIES, Strategy

PARTIAL_SUM_STRATEGIES = sorted(name for name, cls in STRATEGIES.items() if cls.partial_sums)


def aggregation_key(config: Any, strategy: Strategy) -> AggregationKey | None:
    """The aggregation key when ``--aggregators`` is set (None otherwise); ``UsageError`` when the session cannot
    be aggregated from partial sums. ``config`` is a ``ServerConfig``."""
    if not config.aggregators:
        if config.aggregator_key is not None:
            raise UsageError("--aggregator-key needs --aggregators")
        return None
    refusals = {
        "secure_aggregation": (config.secure_aggregation != "off", "--secure-aggregation cannot run with "
                               "--aggregators: masked or encrypted updates open only as one sum, at the coordinator"),
        "dp": (config.dp in ("central", "local"), f"--dp {config.dp} cannot run with --aggregators: the server's "
               "DP aggregation clips (central) and averages each update with equal weight, not a sample-weighted "
               "sum (--dp sgd works: its noise is added at the nodes)"),
        "max_update_norm": (config.max_update_norm is not None, "--max-update-norm cannot run with --aggregators "
                            "yet: the workers do not fetch the global model to measure an update's distance"),
    }
    for refused, why in refusals.values():
        if refused:
            raise UsageError(why)
    if not strategy.partial_sums:
        raise UsageError(f"--strategy {config.strategy} needs every update (it is not a sample-weighted sum), so it "
                         f"keeps the single-aggregator path: drop --aggregators, or use one of "
                         f"{', '.join(PARTIAL_SUM_STRATEGIES)}")
    if config.aggregator_key is None:
        raise UsageError("--aggregators needs --aggregator-key: the secret the server and its fl-aggregator workers "
                         "sign their messages with (openssl rand -hex 32 > aggregation.key)")
    try:
        return AggregationKey.load(config.aggregator_key)
    except ValueError as exc:
        raise UsageError(f"--aggregator-key: {exc}") from None
