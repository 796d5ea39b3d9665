"""``fl-aggregator``: one worker of ``fl-server --aggregators K`` (README "Scaling aggregation")."""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from common.cli import UsageError, command_main
from common.config import DEFAULT_KAFKA, DEFAULT_UPDATES_TOPIC, add_flag, add_logging_options, add_option, positive_int
from common.transport import kafka_io
from common.transport.kafka_security import KafkaSecurity, add_kafka_security_options
from common.wire.integrity import KeyRegistry
from common.wire.protocol import DEFAULT_CHUNK_BYTES, MAX_RECORD_BYTES, check_node_id
from fl_server.aggregator.messages import AggregationKey
from fl_server.aggregator.worker import AggregatorWorker, WorkerSettings

DEFAULT_GROUP = "fl-aggregator"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-aggregator",
        description="Validate and fold node updates for fl-server --aggregators K: join a Kafka consumer group over "
        "the updates topic, judge each record of its partitions with the server's own checks, and publish a signed "
        "partial FedAvg sum per partition when the server closes a round.")
    add_option(parser, "--kafka", default=os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_KAFKA),
               extra_env=("KAFKA_BOOTSTRAP",), help="Kafka bootstrap servers, host:port[,host:port]")
    add_option(parser, "--updates-topic", default=DEFAULT_UPDATES_TOPIC, help="Kafka topic of the node updates "
               "(the server's --updates-topic)")
    add_option(parser, "--node-keys", type=Path, default=None,
               help="the server's registry of node keys (fl-keys): every update record must carry its node's HMAC")
    add_flag(parser, "--allow-unauthenticated", help="DEMOS ONLY: without --node-keys, accept unsigned updates")
    add_option(parser, "--aggregator-key", type=Path, default=None,
               help="file with the hex secret shared with fl-server --aggregator-key (signs every message)")
    add_option(parser, "--aggregator-id", default=None,
               help="this worker's name in its messages and logs (default: host name and process id)")
    add_option(parser, "--group", default=DEFAULT_GROUP,
               help="Kafka consumer group of the workers (one per server: the workers of a server share it)")
    add_option(parser, "--chunk-bytes", type=positive_int, default=DEFAULT_CHUNK_BYTES,
               help="largest raw slice of a partial sum per Kafka record")
    add_logging_options(parser)
    add_kafka_security_options(parser)
    return parser


@dataclass(frozen=True)
class Prepared:
    settings: WorkerSettings
    keys: KeyRegistry | None
    key: AggregationKey
    config: dict[str, Any]


def prepare(args: argparse.Namespace) -> Prepared:
    if args.aggregator_key is None:
        raise UsageError("--aggregator-key is required: the secret fl-server --aggregator-key also reads")
    try:
        key = AggregationKey.load(args.aggregator_key)
    except ValueError as exc:
        raise UsageError(f"--aggregator-key: {exc}") from None
    if args.node_keys is None and not args.allow_unauthenticated:
        raise UsageError("no --node-keys given: pass the server's registry (or --allow-unauthenticated for a demo)")
    keys = KeyRegistry.load(args.node_keys) if args.node_keys is not None else None
    name = args.aggregator_id or f"{socket.gethostname()}-{os.getpid()}"
    try:
        check_node_id(name)
    except ValueError as exc:
        raise UsageError(f"--aggregator-id {name!r}: {exc}") from None
    settings = WorkerSettings(args.kafka, args.updates_topic, name, args.group, chunk_bytes=args.chunk_bytes,
                              max_record_bytes=MAX_RECORD_BYTES)
    return Prepared(settings, keys, key, KafkaSecurity.from_args(args).to_client_config())


def run(prepared: Prepared) -> None:
    kafka_io.check_broker(prepared.settings.kafka)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: every thread's stack on stderr (a stuck worker)
    AggregatorWorker(prepared.settings, keys=prepared.keys, key=prepared.key, config=prepared.config).run(stop)


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser(), argv, prepare=prepare, run=run)


if __name__ == "__main__":
    sys.exit(main())
