"""``fl-sim``: many light nodes in one process (``fl_node.simulate``) against a real server and broker, for
load tests. Prints one JSON line of what the nodes saw when they are done."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common.cli import UsageError, command_main, run_until_signal
from common.config import DEFAULT_KAFKA, DEFAULT_UPDATES_TOPIC, add_logging_options, add_option, positive_int
from common.data.datasets import DEFAULT_DATASET, DEFAULT_SEED, TabularData, load_builtin, node_rows
from common.wire.integrity import read_key_file
from common.wire.protocol import check_node_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-sim", description=__doc__.splitlines()[0])
    add_option(parser, "--server", default="http://127.0.0.1:5000", help="the fl-server's URL")
    add_option(parser, "--kafka", default=os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_KAFKA),
               extra_env=("KAFKA_BOOTSTRAP",), help="Kafka bootstrap servers, host:port[,host:port]")
    add_option(parser, "--updates-topic", default=DEFAULT_UPDATES_TOPIC, help="Kafka topic for node updates")
    add_option(parser, "--nodes", type=positive_int, default=100, help="light nodes in this process")
    add_option(parser, "--first-index", type=int, default=0,
               help="node ids are <prefix><index> from this index on (several processes: disjoint ranges)")
    add_option(parser, "--node-prefix", default="sim", help="node id prefix")
    add_option(parser, "--keys-dir", type=Path, default=None,
               help="folder of the nodes' key files (<node>.key, as fl-keys writes them); without it the nodes "
               "send no proofs and unsigned updates (a server with --allow-unauthenticated)")
    add_option(parser, "--dataset", default=DEFAULT_DATASET, help="built-in dataset the nodes' rows come from")
    add_option(parser, "--shards", type=positive_int, default=10,
               help="the dataset's training rows are cut into this many IID shards; node i holds shard i mod shards "
               "(few enough that each class has the 5 rows a node's statistics may disclose)")
    add_option(parser, "--connect-concurrency", type=positive_int, default=200,
               help="nodes of this process connecting at once")
    add_option(parser, "--max-seconds", type=positive_int, default=3600,
               help="stop after this long even if the session has not ended")
    add_logging_options(parser)
    return parser


@dataclass(frozen=True)
class SimSetup:
    args: argparse.Namespace
    node_ids: list[str]
    keys: list[bytes | None]


def prepare(args: argparse.Namespace) -> SimSetup:
    node_ids = [check_node_id(f"{args.node_prefix}{i}") for i in range(args.first_index, args.first_index + args.nodes)]
    keys: list[bytes | None] = [None] * len(node_ids)
    if args.keys_dir is not None:
        keys = [read_key_file(args.keys_dir / f"{node_id}.key") for node_id in node_ids]
    return SimSetup(args, node_ids, keys)


def run(setup: SimSetup) -> int:
    import asyncio

    from fl_node.simulate import LightNode, SharedPlane, SimStats, run_light_nodes

    args = setup.args
    dataset = load_builtin(args.dataset, seed=DEFAULT_SEED)
    if not isinstance(dataset, TabularData):
        raise UsageError(f"fl-sim needs a tabular built-in dataset; {args.dataset} is images")
    shards = [node_rows(dataset, s, args.shards, scheme="iid", seed=DEFAULT_SEED) for s in range(args.shards)]
    stats = SimStats()

    async def main() -> None:
        plane = SharedPlane(kafka=args.kafka, updates_topic=args.updates_topic, frame=dataset.train,
                            target=dataset.target, client_config={}, connect_concurrency=args.connect_concurrency)
        done = asyncio.Event()
        nodes = [LightNode(node_id, key, shards[(args.first_index + i) % args.shards],
                           shard=(args.first_index + i) % args.shards, server_url=args.server,
                           plane=plane, stats=stats, done=done, seed=args.first_index + i)
                 for i, (node_id, key) in enumerate(zip(setup.node_ids, setup.keys, strict=True))]
        try:
            await run_light_nodes(nodes, max_seconds=args.max_seconds)
        finally:
            plane.close()

    run_until_signal(main)
    sys.stdout.write(json.dumps({"nodes": len(setup.node_ids), **stats.to_wire()}) + "\n")
    return 0 if stats.ended == len(setup.node_ids) else 1


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser(), argv, prepare=prepare, run=run)


if __name__ == "__main__":
    sys.exit(main())
