"""``fl-node``: join a federated session with local data."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.cli import EXIT_OK, EXIT_RUNTIME, UsageError, command_main, run_until_signal
from common.config import (
    add_common_options,
    add_disclosure_options,
    add_option,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from common.data.datasets import DEFAULT_DATASET, DEFAULT_SEED
from common.ml.model_budget import DEFAULT_MAX_MODEL_PARAMS
from common.paillier.keys import PaillierPublic
from common.transport import kafka_io
from common.transport.kafka_security import KafkaSecurity, add_kafka_security_options
from common.transport.tls import (
    CertificateProblem,
    add_tls_client_options,
    check_server_certificate,
    tls_client_context_from_args,
)
from common.wire.integrity import read_key_file
from common.wire.protocol import DEFAULT_CHUNK_BYTES, check_node_id
from common.wire.server_key import ServerPublicKey
from fl_node.attacks import ATTACKS
from fl_node.metrics import NodeMetrics

if TYPE_CHECKING:
    from fl_node.client import FederatedNode

logger = logging.getLogger("fl_node")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-node",
        description="Train on local data when the server starts a round; only weights leave this process "
        "(published to Kafka). Data comes from a built-in dataset share (--dataset/--partition) or a CSV "
        "(--data/--target).",
    )
    port = os.environ.get("FL_PORT", "").strip() or "5000"  # the server's port, when only that is configured
    add_option(parser, "--server", default=f"http://127.0.0.1:{port}", help="server URL (default: port from FL_PORT)")
    add_option(parser, "--node-id", default=None, help="node id (default: node-<random hex>)")
    add_option(parser, "--dataset", default=DEFAULT_DATASET, help="built-in dataset to take a share of")
    add_option(parser, "--partition", default="0/1", help="this node's share i/n of the dataset (0-based i)")
    add_option(parser, "--scheme", default="iid", choices=["iid", "dirichlet", "shards", "quantity"],
               help="how the built-in dataset is shared out among the n nodes (all nodes must agree)")
    add_option(parser, "--alpha", type=positive_float, default=0.5,
               help="Dirichlet concentration for --scheme dirichlet/quantity (small: more skew)")
    add_option(parser, "--data", type=Path, default=None, help="local CSV file instead of a built-in dataset")
    add_option(parser, "--target", default=None, help="class column of --data (optional: the server names it)")
    add_option(parser, "--seed", type=int, default=DEFAULT_SEED,
               help="seed of the dataset split (must match the server)")
    add_option(parser, "--local-test-fraction", type=non_negative_float, default=0.0,
               help="hold out this fraction of the local rows (drawn with --seed, the same every round) and, when "
               "the server runs --federated-eval, evaluate each round's global model on them before training")
    add_option(parser, "--out-dir", type=Path, default=Path("models"), help="where the final model is saved")
    add_option(parser, "--finetune-epochs", type=non_negative_int, default=0,
               help="train the final global model this many more epochs on the local rows before saving it (the "
               "fine-tuned model stays on this node)")
    add_option(parser, "--chunk-bytes", type=positive_int, default=DEFAULT_CHUNK_BYTES,
               help="largest raw weight slice per Kafka record")
    add_option(parser, "--fetch-timeout", type=positive_float, default=120.0,
               help="seconds to wait for the global model in Kafka")
    add_option(parser, "--publish-timeout", type=positive_float, default=300.0,
               help="seconds to keep retrying an update's publication while Kafka is unreachable")
    add_option(parser, "--key-file", type=Path, default=None,
               help="this node's secret key (from fl-keys); signs its connection and every update record. "
               "Without it the server must run with --allow-unauthenticated")
    add_option(parser, "--server-public-key", type=Path, default=None,
               help="the server's public key (server.pub from fl-keys create --server): train only on global models "
               "the server signed; refuse (untrusted_model) an unsigned, forged or tampered one")
    add_option(parser, "--paillier-public-key", type=Path, default=None,
               help="the federation's Paillier public key (paillier.pub.json from fl-keys create --paillier): "
               "encrypt updates for --secure-aggregation paillier rounds with this key, never one the server names")
    add_option(parser, "--attack", default="none", choices=list(ATTACKS),
               help="FOR ROBUSTNESS EXPERIMENTS ONLY: poison this node's published update; sign-flip publishes "
               "w_global - S * (w_local - w_global)")
    add_option(parser, "--attack-scale", type=positive_float, default=1.0,
               help="FOR ROBUSTNESS EXPERIMENTS ONLY: the factor S of --attack sign-flip")
    add_option(parser, "--max-idle", type=positive_float, default=1800.0,
               help="seconds without session traffic (a round, statistics, end_session) after which the node exits "
               "with code 3: a server gone for good, or a missed end_session")
    add_option(parser, "--dp-clip", type=non_negative_float, default=0.0,
               help="local DP this node insists on, whatever the server asks: clip its update's delta to this L2 "
               "norm (0: only what the server's --dp local asks)")
    add_option(parser, "--dp-noise-stddev", type=non_negative_float, default=0.0,
               help="with --dp-clip: add at least this much Gaussian noise (stddev per coordinate) to the clipped "
               "delta")
    add_option(parser, "--metrics-port", type=int, default=None,
               help="serve this node's Prometheus metrics (training time, records published, reconnects) at "
               "http://<--metrics-host>:PORT/metrics (0 picks a free port; default: not served)")
    add_option(parser, "--metrics-host", default="127.0.0.1",
               help="address --metrics-port listens on (no token: expose it beyond loopback only on a trusted "
               "network)")
    add_option(parser, "--max-model-params", type=positive_int, default=DEFAULT_MAX_MODEL_PARAMS,
               help="refuse (before building it) a model the server sends with more parameters than this")
    add_disclosure_options(parser, side="node")
    add_common_options(parser)
    add_tls_client_options(parser)
    add_kafka_security_options(parser)
    return parser


def load_local_data(args: argparse.Namespace) -> Any:
    """This node's rows: its own CSV, or its share of a built-in dataset's training split."""
    from common.data.datasets import ImageData, load_builtin, node_rows, read_csv
    from common.data.disclosure import DisclosurePolicy
    from common.data.partition import parse_partition
    from fl_node.data import LocalData

    policy = DisclosurePolicy(min_category_count=args.min_category_count, exclude=frozenset(args.exclude_columns))
    if args.data is not None:
        frame = read_csv(args.data)
        if args.target and args.target not in frame.columns:
            raise ValueError(f"{args.data}: no column {args.target!r} (columns: {', '.join(map(str, frame.columns))})")
        return LocalData(frame=frame, target=args.target, policy=policy)
    index, count = parse_partition(args.partition)
    dataset = load_builtin(args.dataset, seed=args.seed)
    rows = node_rows(dataset, index, count, scheme=args.scheme, alpha=args.alpha, seed=args.seed)
    if isinstance(dataset, ImageData):
        return LocalData(x=dataset.x_train[rows], y=dataset.y_train[rows])
    return LocalData(frame=dataset.train.iloc[rows].reset_index(drop=True), target=dataset.target, policy=policy)


@dataclass(frozen=True)
class NodeSetup:
    """What ``prepare`` read and checked: everything the node needs before it joins."""

    args: argparse.Namespace
    node_id: str
    key: bytes | None
    server_public_key: ServerPublicKey | None
    ssl_context: ssl.SSLContext | None
    kafka_config: dict[str, Any]
    data: Any  # fl_node.data.LocalData (imported with pandas only once the flags are good)
    metrics: NodeMetrics  # served with --metrics-port
    paillier_public: PaillierPublic | None = None  # --paillier-public-key


def server_public_key(path: Path | None) -> ServerPublicKey | None:
    """The key global models must be signed with (``--server-public-key``), or None (logged: models unchecked)."""
    if path is None:
        logger.info("no --server-public-key: global models are taken by the digests start_round lists, without "
                    "checking a server signature")
        return None
    try:
        key = ServerPublicKey.load(path)
    except ValueError as exc:
        raise UsageError(f"--server-public-key: {exc}") from None
    logger.info("global models must be signed by server key %s", key.key_id)
    return key


def paillier_public_key(path: Path | None) -> PaillierPublic | None:
    """The federation's Paillier key (``--paillier-public-key``): without it the node refuses Paillier rounds."""
    if path is None:
        return None
    try:
        key = PaillierPublic.load(path)
    except ValueError as exc:
        raise UsageError(f"--paillier-public-key: {exc}") from None
    logger.info("Paillier rounds encrypt with federation key %s (%d bits)", key.key_id, key.key_bits)
    return key


def prepare(args: argparse.Namespace) -> NodeSetup:
    """Check the node id, read the key, TLS and Kafka settings and the local data: a problem is the user's (exit 2)."""
    node_id = args.node_id or f"node-{secrets.token_hex(3)}"
    check_node_id(node_id)
    if args.dp_noise_stddev > 0 and args.dp_clip == 0:
        raise UsageError("--dp-noise-stddev needs --dp-clip: noise on an unbounded update bounds nothing")
    if not 0 <= args.local_test_fraction < 1:
        raise UsageError(f"--local-test-fraction {args.local_test_fraction}: must be in [0, 1)")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port {args.metrics_port}: a TCP port is 0..65535 (0 picks a free one)")
    ssl_context = tls_client_context_from_args(args)
    try:  # before TensorFlow loads: a certificate this node cannot verify is an error now, not after seconds
        asyncio.run(check_server_certificate(args.server, ssl_context))
    except CertificateProblem as exc:
        raise UsageError(str(exc)) from None
    return NodeSetup(
        args=args,
        node_id=node_id,
        key=read_key_file(args.key_file) if args.key_file is not None else None,
        server_public_key=server_public_key(args.server_public_key),
        ssl_context=ssl_context,
        kafka_config=KafkaSecurity.from_args(args).to_client_config(),
        data=load_local_data(args),
        metrics=NodeMetrics(node_id),
        paillier_public=paillier_public_key(args.paillier_public_key),
    )


def build_node(setup: NodeSetup) -> FederatedNode:
    from common.ml.tf_setup import configure_tensorflow
    from fl_node.client import FederatedNode, NodeSettings
    from fl_node.trainer import LocalTrainer

    args, node_id = setup.args, setup.node_id
    configure_tensorflow(args.tf_threads or None)
    settings = NodeSettings(node_id=node_id, server_url=args.server, kafka=args.kafka,
                            updates_topic=args.updates_topic, out_dir=args.out_dir, chunk_bytes=args.chunk_bytes,
                            fetch_timeout_s=args.fetch_timeout, publish_timeout_s=args.publish_timeout,
                            attack=args.attack, attack_scale=args.attack_scale, key=setup.key,
                            kafka_config=setup.kafka_config, ssl_context=setup.ssl_context, max_idle_s=args.max_idle,
                            dp_clip_norm=args.dp_clip, dp_noise_stddev=args.dp_noise_stddev,
                            server_public_key=setup.server_public_key, paillier_public=setup.paillier_public,
                            local_test_fraction=args.local_test_fraction, local_test_seed=args.seed,
                            finetune_epochs=args.finetune_epochs)
    logger.info("node %s: %d local rows, server %s, Kafka %s", node_id, setup.data.num_rows, args.server, args.kafka)
    kafka_io.log_crc32c_implementation()
    trainer = LocalTrainer(np.zeros((0,)), np.zeros((0,)), node_id=node_id, max_model_params=args.max_model_params)
    return FederatedNode(settings, setup.data, trainer, metrics=setup.metrics)


def run(setup: NodeSetup) -> int:
    """Join the session and serve rounds until it ends; prints the final model's path on success.

    A server that refuses this node, or a node that could not take part, is exit 2 (its configuration or data
    must change); a server that cannot be reached is exit 1; ``--max-idle`` without a session is exit 3."""
    from socketio.exceptions import ConnectionError as SocketIOConnectionError

    from fl_node.client import EXIT_IDLE, ServerRefused

    if setup.args.metrics_port is not None:
        setup.metrics.serve(setup.args.metrics_host, setup.args.metrics_port)
    try:
        node = build_node(setup)
        path = run_until_signal(node.run)
    except ServerRefused as exc:
        raise UsageError(str(exc)) from exc
    except SocketIOConnectionError as exc:
        raise ConnectionError(f"node {setup.node_id} could not connect to {setup.args.server}: {exc}") from exc
    finally:
        setup.metrics.stop()
    if node.refused is not None:
        raise UsageError(f"node {setup.node_id} could not take part: {node.refused}")
    if node.idle_timed_out:
        return EXIT_IDLE
    if path is None:
        return EXIT_RUNTIME
    sys.stdout.write(f"{path}\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser(), argv, prepare=prepare, run=run, config_section="node")


if __name__ == "__main__":
    sys.exit(main())
