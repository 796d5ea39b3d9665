"""``fl-server``: run a federated training session."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from common.config import (
    add_common_options,
    add_disclosure_options,
    add_flag,
    add_option,
    add_training_options,
    fraction,
    positive_float,
    positive_fraction,
    positive_int,
    setup_logging,
)
from common.config_file import config_template, log_settings, parse_with_config
from common.transport import kafka_io
from common.transport.kafka_security import KafkaSecurity, add_kafka_security_options
from common.transport.tls import add_tls_server_options, tls_server_context_from_args
from common.wire.integrity import ConnectVerifier, KeyRegistry
from common.wire.protocol import DEFAULT_CHUNK_BYTES, MAX_RECORD_BYTES, SESSION_ID_PATTERN, TrainConfig
from fl_server.app import Endpoints, KafkaPlane, SocketIOFrontend, final_model_path, serve_socketio
from fl_server.checkpoint import Checkpoint, CheckpointError, checkpoint_path, load_checkpoint_for
from fl_server.collector import inspect_record
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory, config_from_args, utc_now
from fl_server.inbox import DEFAULT_KAFKA_BYTES, Inbox
from fl_server.registry import NodeRegistry
from fl_server.strategy_options import STRATEGY_FLAGS, add_strategy_options, strategy_from_args

logger = logging.getLogger("fl_server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-server",
        description="Coordinate federated training: wait for nodes, run rounds over Socket.IO (control) "
        "and Kafka (weights), aggregate, evaluate on a holdout set, and write history/<session>.json.",
    )
    add_option(parser, "--host", default="127.0.0.1", help="address to listen on")
    add_option(parser, "--port", type=int, default=5000, help="Socket.IO port (0 picks a free one)")
    add_option(parser, "--min-nodes", type=positive_int, default=2, help="nodes that must be connected to start")
    add_option(parser, "--min-round-nodes", type=positive_int, default=None,
               help="nodes that must be connected to start each later round; below it the server waits, logging "
               "how long it has waited (default: --min-nodes)")
    add_option(parser, "--rounds", type=positive_int, default=5, help="number of rounds")
    add_option(parser, "--dataset", default="digits",
               help="built-in dataset whose holdout split the server keeps: digits, breast_cancer, wine, iris "
               "(bundled), mnist, fashion_mnist, cifar10 (keras.datasets, need internet)")
    add_option(parser, "--holdout", type=Path, default=None,
               help="evaluate on this CSV instead of a built-in dataset's holdout (needs --target)")
    add_option(parser, "--target", default=None, help="class column of --holdout and of the nodes' CSV files")
    add_option(parser, "--schema", type=Path, default=None,
               help="declared data schema (JSON); default: merged from the nodes' column statistics")
    add_option(parser, "--categorical", default=None,
               help="comma-separated columns to treat as categorical even if they hold numbers")
    add_disclosure_options(parser, side="server")
    add_option(parser, "--model", default="mlp",
               help="model: logreg, mlp, mlp:H1,H2,... (hidden sizes), cnn (images) or path/to/file.py:function "
               "(your Keras builder taking input_shape and num_classes)")
    add_strategy_options(parser)
    add_training_options(parser)
    add_option(parser, "--round-timeout", type=positive_float, default=120.0,
               help="seconds a round waits for updates before closing with what it has")
    add_option(parser, "--fraction-fit", type=positive_fraction, default=1.0,
               help="share of the connected nodes sampled to train each round (seeded by --seed and the round)")
    add_option(parser, "--min-fit", type=positive_int, default=1,
               help="accepted updates a round needs to change the global model (and nodes needed to start it)")
    add_option(parser, "--min-fit-fraction", type=fraction, default=0.0,
               help="as --min-fit, as a share of the round's sampled nodes (the larger of the two applies)")
    add_option(parser, "--max-update-norm", type=positive_float, default=None,
               help="reject an update whose L2 distance from the global model exceeds this")
    add_option(parser, "--max-node-weight", type=positive_fraction, default=None,
               help="cap any node's weight in an averaging strategy at this share of the samples the round's "
               "participants declared (a node cannot buy the average by claiming many samples)")
    add_option(parser, "--max-record-bytes", type=positive_int, default=MAX_RECORD_BYTES,
               help="reject update records larger than this")
    add_option(parser, "--inbox-bytes", type=positive_int, default=DEFAULT_KAFKA_BYTES,
               help="most bytes of update records waiting for the round loop; past it the server stops reading "
               "Kafka until the loop catches up (records wait in the broker, none is dropped)")
    add_option(parser, "--node-keys", type=Path, default=None,
               help="registry of node keys (JSON made by fl-keys): nodes must prove their key to connect, "
               "and every update record must carry its HMAC")
    add_flag(parser, "--allow-unauthenticated",
             help="DEMOS ONLY: without --node-keys, let any client join and accept unsigned updates")
    add_option(parser, "--resume", type=Path, default=None,
               help="continue the session of this history file (history/<session>.json) from its last "
               "completed round; the session's own settings come from its checkpoint")
    add_option(parser, "--history-dir", type=Path, default=Path("history"), help="where history JSON is written")
    add_option(parser, "--session-id", default=None, help="session id (default: UTC time + random suffix)")
    add_option(parser, "--seed", type=int, default=42, help="seed for the holdout split and initial weights")
    add_option(parser, "--chunk-bytes", type=positive_int, default=DEFAULT_CHUNK_BYTES,
               help="largest raw weight slice per Kafka record")
    add_option(parser, "--end-grace", type=positive_float, default=30.0,
               help="seconds to wait for nodes to leave after end_session")
    add_common_options(parser)
    add_tls_server_options(parser)
    add_kafka_security_options(parser)
    return parser


# Settings that define a session: on --resume they come from the checkpoint, not the command line.
SESSION_SETTINGS = (
    "rounds", "dataset", "holdout", "target", "schema", "categorical", "model", "strategy", "epochs", "batch_size",
    "learning_rate", "optimizer", "seed", "fraction_fit", "min_fit", "min_fit_fraction", "max_update_norm",
    "min_nodes", "min_round_nodes", "exclude_columns", "min_category_count", "max_record_bytes", "max_node_weight",
    *(keyword for keyword, _, _ in STRATEGY_FLAGS.values()),
)


def new_session_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def node_keys_from_args(args: argparse.Namespace) -> KeyRegistry | None:
    """The key registry, or None when the operator chose --allow-unauthenticated (loudly)."""
    if args.node_keys is not None:
        keys = KeyRegistry.load(args.node_keys)
        logger.info("node authentication on: %d node(s) in %s", len(keys), args.node_keys)
        return keys
    if not args.allow_unauthenticated:
        raise ValueError("no --node-keys given: create keys with `fl-keys create NODE...` and pass "
                         "--node-keys keys/registry.json (or --allow-unauthenticated for a demo)")
    logger.warning("*** --allow-unauthenticated: ANY client that reaches this server can join, and ANY writer "
                   "to the updates topic can submit updates in a node's name. Use --node-keys outside demos. ***")
    return None


def check_argument_combinations(args: argparse.Namespace) -> None:
    """Settings that cannot work together, found before anything starts (a ValueError says which)."""
    if args.holdout is not None and not args.target:
        raise ValueError("--holdout needs --target (the class column of the holdout and of the nodes' CSV files)")
    if args.holdout is not None and not args.holdout.is_file():
        raise ValueError(f"--holdout {args.holdout}: no such file")
    if args.schema is not None and not args.schema.is_file():
        raise ValueError(f"--schema {args.schema}: no such file")
    if args.min_round_nodes is not None and args.min_round_nodes > args.min_nodes:
        logger.warning("--min-round-nodes %d is more than --min-nodes %d: round 2 may wait for nodes round 1 did "
                       "not need", args.min_round_nodes, args.min_nodes)


def apply_checkpoint_settings(args: argparse.Namespace, checkpoint: Checkpoint) -> None:
    """Take the session-defining settings from the checkpoint, saying where the command line differed."""
    saved = checkpoint.history.get("config", {})
    for name in SESSION_SETTINGS:
        if name not in saved:
            continue
        value, current = saved[name], getattr(args, name, None)
        if isinstance(current, Path) and value is not None:
            value = Path(value)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if current != value:
            logger.info("--resume: %s is %r in this session (the command line's %r is not used)", name, value,
                        current)
        setattr(args, name, value)


def open_history(args: argparse.Namespace, session_id: str, checkpoint: Checkpoint | None, *,
                 strategy_params: dict[str, Any], authenticated: bool) -> SessionHistory:
    """A new session's history, or a resumed one's (from its checkpoint, with the resume recorded)."""
    if checkpoint is not None:
        history = SessionHistory.restore(Path(args.resume), checkpoint.history)
        # What is in force from here on: the session's settings (from the checkpoint, so unchanged) and this
        # process's operational ones (ports, timeouts, Kafka), which may differ from the first run's.
        history.document.setdefault("resumes", []).append(
            {"at": utc_now(), "after_round": checkpoint.completed_round, "model_sha256": checkpoint.weights_sha256,
             "config": config_from_args(args)})
        history.document.update(status="running", finished_at=None)
        return history
    config = config_from_args(args)
    config.update(session_id=session_id, strategy_params=strategy_params, authenticated=authenticated)
    return SessionHistory(args.history_dir, session_id, config)


async def run_session(args: argparse.Namespace) -> Path:
    """Run one session end to end (or the rest of one, with --resume); returns the history file path."""
    from common.data.dataspec import DataSpec
    from common.ml.models import build_model, compile_model, compile_spec, model_from_architecture
    from common.ml.tf_setup import configure_tensorflow
    from fl_server.data import resolve_server_data
    from fl_server.evaluation import KerasHoldout

    checkpoint: Checkpoint | None = None
    if args.resume is not None:
        try:
            checkpoint, _ = load_checkpoint_for(args.resume)
        except CheckpointError as exc:
            raise ValueError(f"cannot resume: {exc}") from None
        apply_checkpoint_settings(args, checkpoint)
        args.session_id = checkpoint.session_id
        args.history_dir = Path(args.resume).parent
    # Everything that can be wrong with the command line is found first, in well under a second ...
    check_argument_combinations(args)
    strategy = strategy_from_args(args)  # a strategy that cannot run refuses here
    kafka_io.log_crc32c_implementation()
    keys = node_keys_from_args(args)
    server_tls = tls_server_context_from_args(args)
    kafka_config = KafkaSecurity.from_args(args).to_client_config()
    session_id = args.session_id or new_session_id()
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise ValueError(f"session id {session_id!r} must match {SESSION_ID_PATTERN.pattern}")
    registry = NodeRegistry()
    frontend = SocketIOFrontend(registry, ConnectVerifier(keys) if keys is not None else None)
    # ... then the port and the broker, before the slow part (TensorFlow, data, model) ...
    loop = asyncio.get_running_loop()
    early_runner = await serve_socketio(frontend, args.host, args.port, server_tls)
    try:
        await loop.run_in_executor(None, kafka_io.check_broker, args.kafka)
        logger.info("start-up: loading TensorFlow")
        await loop.run_in_executor(None, configure_tensorflow, args.tf_threads or None)
    except BaseException:
        await early_runner.cleanup()
        raise
    endpoints = Endpoints(args.host, args.port, args.kafka, args.updates_topic, args.models_topic,
                          chunk_bytes=args.chunk_bytes)
    kafka = KafkaPlane(endpoints, session_id, config=kafka_config,
                       start_offsets=checkpoint.offsets if checkpoint else None)
    history = open_history(args, session_id, checkpoint, strategy_params=strategy.params(),
                           authenticated=keys is not None)
    config = history.document["config"]
    # Records that arrive before round 1 wait here (bounded; past the bound they wait in Kafka) and are judged in it.
    inbox = Inbox(max_kafka_bytes=args.inbox_bytes)
    inspect = partial(inspect_record, keys=keys, max_record_bytes=args.max_record_bytes)
    runner = early_runner
    status = "failed"
    try:
        logger.info("start-up: creating topics and positioning the consumer on %s", args.updates_topic)
        start_offsets = await kafka.start(inbox, inspect)
        history.save()
        await registry.wait_for_logged(args.min_nodes)
        logger.info("start-up: preparing the holdout data and the schema")
        declared = DataSpec.from_wire(checkpoint.model["data"]) if checkpoint else None
        data = await resolve_server_data(
            dataset=args.dataset, holdout_csv=args.holdout, target=args.target, schema_file=args.schema,
            categorical=[c for c in (args.categorical or "").split(",") if c], seed=args.seed,
            exclude=list(args.exclude_columns), min_category_count=args.min_category_count,
            gather_statistics=lambda request: frontend.gather_statistics(request, timeout_s=args.round_timeout),
            declared=declared,
        )
        logger.info("start-up: building the model")
        if checkpoint is not None:
            model = model_from_architecture(checkpoint.model["architecture"])
            spec = checkpoint.model["compile"]
        else:
            model = build_model(args.model, data.spec.input_shape, data.spec.num_classes, seed=args.seed)
            spec = compile_spec(args.optimizer, args.learning_rate)
        compile_model(model, spec)
        holdout = KerasHoldout(model, data.x_holdout, data.y_holdout)
        config.update(num_holdout=len(data.y_holdout), num_parameters=int(model.count_params()),
                      data=data.spec.to_wire(), data_source=data.source)
        settings = SessionSettings(
            session_id=session_id,
            rounds=args.rounds,
            min_nodes=args.min_nodes,
            min_round_nodes=args.min_round_nodes or args.min_nodes,
            max_node_weight=args.max_node_weight,
            round_timeout_s=args.round_timeout,
            train=TrainConfig(args.epochs, args.batch_size, args.learning_rate),
            end_grace_s=args.end_grace,
            fraction_fit=args.fraction_fit,
            min_fit=args.min_fit,
            min_fit_fraction=args.min_fit_fraction,
            seed=args.seed,
            max_update_norm=args.max_update_norm,
            max_record_bytes=args.max_record_bytes,
        )
        coordinator = Coordinator(
            settings=settings,
            registry=registry,
            strategy=strategy,
            model=GlobalModel(model.to_json(), spec, model.get_weights(), data.spec.to_wire()),
            evaluate=holdout,
            publish_model=kafka.publish_model,
            emit=frontend.emit,
            history=history,
            keys=keys,
            checkpoint_file=checkpoint_path(args.history_dir, session_id),
            commit=kafka.commit,
            resume=checkpoint,
            offsets=start_offsets,
            inbox=inbox,
        )
        frontend.coordinator = coordinator
        logger.info("session %s: %s on %s, rounds %d..%d, %d parameters; history at %s", session_id, args.model,
                    data.source, coordinator.first_round, args.rounds, model.count_params(), history.path)
        weights = await coordinator.run()
        loop = asyncio.get_running_loop()
        model_path = final_model_path(history.path)
        await loop.run_in_executor(None, holdout.save, weights, model_path)
        history.document["final_model"] = str(model_path)
        status = "completed"
        logger.info("session %s completed; final model at %s", session_id, model_path)
    except asyncio.CancelledError:
        status = "interrupted"
        logger.warning("session %s interrupted", session_id)
        raise
    finally:
        totals: Counter[str] = Counter()
        for round_record in history.rounds:
            totals.update(round_record.get("rejected_updates_by_reason", {}))
        history.document["rejected_updates_total"] = dict(sorted(totals.items()))
        history.document["refused_connections"] = frontend.refused
        history.document["refused_connections_by_reason"] = dict(frontend.refused_by_reason)
        history.document["refused_nodes"] = dict(frontend.refusals)
        history.document["malformed_packets_by_reason"] = dict(sorted(frontend.malformed_by_reason.items()))
        history.document["inbox"] = asdict(inbox.stats())
        history.finish(status)
        await runner.cleanup()
        await kafka.stop()
    return history.path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, sources = parse_with_config(parser, argv, section="server")
    if args.print_config:
        sys.stdout.write(config_template(parser, "server"))
        return 0
    setup_logging(args.log_level, args.quiet)
    log_settings(args, sources)

    async def runner() -> Any:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await run_session(args)

    try:
        path = asyncio.run(runner())
    except asyncio.CancelledError:
        logger.warning("stopped by signal")
        return 130
    except (ValueError, TimeoutError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
