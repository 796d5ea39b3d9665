"""Command-line flags that can also come from the environment (``FL_...``), read once at start-up."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.data.disclosure import DEFAULT_MIN_CATEGORY_COUNT
from common.validation import (
    require_fraction,
    require_non_negative_finite,
    require_non_negative_int,
    require_positive,
    require_positive_fraction,
    require_positive_int,
)

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_UPDATES_TOPIC = "fl.updates"
DEFAULT_MODELS_TOPIC = "fl.models"

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def env_name(flag: str) -> str:
    return "FL_" + flag.lstrip("-").replace("-", "_").upper()


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    type: Callable[[str], Any] = str,
    default: Any = None,
    help: str,
    env: str | None = None,
    extra_env: tuple[str, ...] = (),
    **kwargs: Any,
) -> None:
    """Add ``flag`` whose default comes from ``env`` (or ``FL_<FLAG>``) before the built-in default."""
    env = env or env_name(flag)
    raw = os.environ.get(env)
    if raw is not None and raw != "":
        try:
            default = type(raw)
        except (TypeError, ValueError) as exc:
            parser.error(f"environment variable {env}={raw!r}: {exc}")
    shown = "" if default is None else f", default: {default}"
    action = parser.add_argument(flag, type=type, default=default, help=f"{help} [env {env}{shown}]", **kwargs)
    action.env_vars = (env, *extra_env)  # type: ignore[attr-defined]  # read by common.config_file


def add_flag(parser: argparse.ArgumentParser, flag: str, *, help: str, env: str | None = None) -> None:
    """A boolean switch, also on when its environment variable is 1/true/yes."""
    env = env or env_name(flag)
    default = os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")
    action = parser.add_argument(flag, action="store_true", default=default, help=f"{help} [env {env}]")
    action.env_vars = (env,)  # type: ignore[attr-defined]


def add_common_options(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--config", type=Path, default=None, env="FL_CONFIG",
               help="TOML file of settings (keys as in --print-config); flags and environment override it")
    add_flag(parser, "--print-config", help="write a complete, commented settings file to standard output and exit")
    add_option(parser, "--kafka", default=os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_KAFKA),
               extra_env=("KAFKA_BOOTSTRAP",),
               help="Kafka bootstrap servers, host:port[,host:port]")
    add_option(parser, "--updates-topic", default=DEFAULT_UPDATES_TOPIC, help="Kafka topic for node updates")
    add_option(parser, "--models-topic", default=DEFAULT_MODELS_TOPIC, help="Kafka topic for global models")
    add_logging_options(parser)
    add_option(parser, "--tf-threads", type=int, default=0,
               help="cap TensorFlow intra/inter-op threads (0: TensorFlow's default)")


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--quiet``: every command has them (subcommands each get their own)."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    targets = list(subcommands[0].choices.values()) if subcommands else [parser]
    for target in targets:
        add_option(target, "--log-level", default="INFO", help="logging level",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        add_flag(target, "--quiet", help="only warnings and errors")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Local training settings, shared by fl-server (sent to nodes) and fl-baseline (same budget)."""
    add_option(parser, "--epochs", type=positive_int, default=1, help="local epochs per round")
    add_option(parser, "--batch-size", type=positive_int, default=32, help="local batch size")
    add_option(parser, "--learning-rate", type=positive_float, default=0.005, help="local learning rate")
    add_option(parser, "--optimizer", default="adam", choices=["adam", "sgd"], help="local optimizer")


def add_disclosure_options(parser: argparse.ArgumentParser, *, side: str) -> None:
    """What column statistics may disclose (``common.data.disclosure``), shared by fl-server and fl-node."""
    where = ("asked of every node (a node applies the stricter of this and its own)" if side == "server"
             else "applied before this node's statistics leave it (the server can only make it stricter)")
    add_option(parser, "--exclude-columns", type=column_list, default=(),
               help=f"comma-separated columns never used nor described in statistics; {where}")
    add_option(parser, "--min-category-count", type=positive_int, default=DEFAULT_MIN_CATEGORY_COUNT,
               help=f"k: a category or class held by fewer rows at a node is not shared; {where}")


def column_list(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


# argparse types: argparse names them in its errors ("invalid positive_int value"), so the names stay.
def positive_int(text: str) -> int:
    return require_positive_int("", int(text))


def non_negative_int(text: str) -> int:
    return require_non_negative_int("", int(text))


def non_negative_float(text: str) -> float:
    return require_non_negative_finite("", float(text))


def positive_float(text: str) -> float:
    return require_positive("", float(text))


def fraction(text: str) -> float:
    return require_fraction("", float(text))


def positive_fraction(text: str) -> float:
    return require_positive_fraction("", float(text))


def setup_logging(level: str, quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else getattr(logging, level), format=LOG_FORMAT,
                        stream=sys.stderr, force=True)
    # Libraries that are chatty at INFO; with --log-level DEBUG they say everything.
    debug = level == "DEBUG" and not quiet
    for noisy in ("kafka", "aiohttp.access", "engineio", "socketio", "absl"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    # Warnings nobody can act on: kafka-python timing its own I/O tasks ("ran for 0.1s ... blocking").
    logging.getLogger("kafka.net.selector").setLevel(logging.DEBUG if debug else logging.ERROR)
    if debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # TensorFlow's C++ banners too
