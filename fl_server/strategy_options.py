"""``fl-server`` flags of the aggregation strategies, and building the strategy from them.

Each flag maps to one keyword of the strategy constructors. A flag that does not apply to the
chosen ``--strategy`` is an error rather than silently ignored (``--mu`` with ``fedavg`` is
almost certainly a mistake), and so is a ``--min-nodes`` the strategy cannot aggregate.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

from common.config import add_option, env_name, non_negative_float, non_negative_int, positive_float, positive_int
from common.plugins import entry_point_names, is_import_path
from common.validation import require_decay_rate
from fl_server.strategies import (
    ENTRY_POINT_GROUP,
    STRATEGIES,
    AggregationError,
    Strategy,
    make_strategy,
    strategy_defaults,
    strategy_parameters,
)
from fl_server.strategies.robust import require_trim_fraction

MAX_SUGGESTED_NODES = 10_000


def decay_rate(text: str) -> float:
    return require_decay_rate("", float(text))


def trim_fraction(text: str) -> float:
    return require_trim_fraction("", float(text))


# flag -> (constructor keyword, argparse type, help)
STRATEGY_FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--server-lr": ("server_lr", positive_float, "server learning rate (eta) of the server optimizers"),
    "--server-momentum": ("server_momentum", decay_rate, "server momentum beta of fedavgm, in [0, 1)"),
    "--beta1": ("beta1", decay_rate, "first-moment decay of fedadam/fedyogi/fedadagrad, in [0, 1)"),
    "--beta2": ("beta2", decay_rate, "second-moment decay of fedadam/fedyogi, in [0, 1)"),
    "--tau": ("tau", positive_float, "adaptivity tau of fedadam/fedyogi/fedadagrad (v starts at tau^2)"),
    "--mu": ("proximal_mu", non_negative_float,
             "fedprox: nodes add mu/2 * ||w - w_global||^2 to their local loss (sent to nodes in start_round)"),
    "--trim-fraction": ("trim_fraction", trim_fraction,
                        "trimmed_mean: per coordinate drop the floor(fraction * n) largest and smallest values"),
    "--byzantine": ("num_byzantine", non_negative_int,
                    "krum/multi_krum: Byzantine nodes f to tolerate; a round needs more than 2f + 2 updates"),
    "--multi-krum-m": ("num_selected", positive_int,
                       "multi_krum: updates to average, the m with the best Krum scores (default n - f)"),
}


def _defaults(keyword: str) -> str:
    """``"fedadam 0.01, fedyogi 0.01"``: each strategy's own default for ``keyword``, read from its constructor."""
    shown = []
    for name, cls in sorted(STRATEGIES.items()):
        parameter = inspect.signature(cls.__init__).parameters.get(keyword)
        if parameter is not None and parameter.kind is parameter.KEYWORD_ONLY and parameter.default is not None:
            shown.append(f"{name} {parameter.default}")
    return ", ".join(shown)


def add_strategy_options(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--strategy", type=strategy_name, default="fedavg",
               help=f"aggregation strategy: {', '.join(sorted(STRATEGIES))}, a name a package registers in the "
               "fl_kafka.strategies entry-point group, or your own class as package.module:Class (see the README's "
               "Strategies section)")
    add_option(parser, "--strategy-param", type=strategy_param, default=None, action="append", metavar="NAME=VALUE",
               help="a keyword of the strategy's constructor, repeatable (for strategies of your own; the built-in "
               "ones also have the flags below)")
    for flag, (keyword, kind, text) in STRATEGY_FLAGS.items():
        defaults = _defaults(keyword)
        add_option(parser, flag, type=kind, default=None, dest=keyword, metavar=flag[2:].replace("-", "_").upper(),
                   help=f"{text}" + (f" (default: {defaults})" if defaults else ""))


def strategy_name(text: str) -> str:
    """A built-in name, an installed plugin's name, or the syntax of package.module:Class (imported later)."""
    if text in STRATEGIES or is_import_path(text) or text in entry_point_names(ENTRY_POINT_GROUP):
        return text
    raise argparse.ArgumentTypeError(f"unknown strategy {text!r}: one of {', '.join(sorted(STRATEGIES))}, an "
                                     "installed plugin's name, or package.module:Class")


def strategy_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise ValueError("must be NAME=VALUE with NAME a keyword of the strategy's constructor")
    return name.strip(), value.strip()


def typed_params(name: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``--strategy-param`` values as the constructor's defaults are typed (int, float, bool; else text)."""
    defaults = strategy_defaults(name)
    params: dict[str, Any] = {}
    for keyword, text in pairs:
        default = defaults.get(keyword)
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("must be true or false")
                params[keyword] = text.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                params[keyword] = int(text)
            elif isinstance(default, float):
                params[keyword] = float(text)
            else:
                params[keyword] = _number_or_text(text)
        except ValueError as exc:
            raise ValueError(f"--strategy-param {keyword}={text}: {exc}") from None
    return params


def _number_or_text(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def strategy_from_args(args: argparse.Namespace) -> Strategy:
    """Build ``--strategy`` from its flags; raise ``ValueError`` with the flags to change if it cannot run."""
    name = args.strategy
    params = {keyword: getattr(args, keyword) for keyword, _, _ in STRATEGY_FLAGS.values()
              if getattr(args, keyword, None) is not None}
    params.update(typed_params(name, [tuple(p) for p in (getattr(args, "strategy_param", None) or [])]))
    accepted = strategy_parameters(name)
    stray = [flag for flag, (keyword, _, _) in STRATEGY_FLAGS.items() if keyword in params and keyword not in accepted]
    if stray:
        takes = [flag for flag, (keyword, _, _) in STRATEGY_FLAGS.items() if keyword in accepted]
        raise ValueError(f"{', '.join(f'{flag} ({env_name(flag)})' for flag in stray)} does not apply to --strategy "
                         f"{name}, which takes {', '.join(takes) or 'no options'}")
    strategy = make_strategy(name, **params)
    try:
        strategy.check_num_updates(args.min_nodes)
    except AggregationError as exc:
        workable = next((n for n in range(args.min_nodes + 1, MAX_SUGGESTED_NODES) if _can_aggregate(strategy, n)),
                        None)
        hint = f"; use --min-nodes {workable} or more" if workable else ""
        if "num_byzantine" in strategy.params():
            hint += " (or a smaller --byzantine)"
        raise ValueError(f"--strategy {name} cannot aggregate a round of --min-nodes {args.min_nodes} "
                         f"update(s): {exc}{hint}") from None
    return strategy


def _can_aggregate(strategy: Strategy, num_updates: int) -> bool:
    try:
        strategy.check_num_updates(num_updates)
    except AggregationError:
        return False
    return True
