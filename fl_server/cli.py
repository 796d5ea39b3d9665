"""``fl-server``: run a federated training session."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.config import (
    add_common_options,
    add_option,
    add_training_options,
    positive_float,
    positive_int,
    setup_logging,
)
from common.protocol import DEFAULT_CHUNK_BYTES, SESSION_ID_PATTERN, TrainConfig
from fl_server.app import Endpoints, KafkaPlane, SocketIOFrontend, final_model_path, serve_socketio
from fl_server.coordinator import Coordinator, GlobalModel, SessionSettings
from fl_server.history import SessionHistory, config_from_args
from fl_server.registry import NodeRegistry
from fl_server.strategy_options import add_strategy_options, strategy_from_args

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
    add_option(parser, "--model", default="mlp",
               help="model: logreg, mlp, mlp:H1,H2,... (hidden sizes), cnn (images) or path/to/file.py:function "
               "(your Keras builder taking input_shape and num_classes)")
    add_strategy_options(parser)
    add_training_options(parser)
    add_option(parser, "--round-timeout", type=positive_float, default=120.0,
               help="seconds a round waits for updates before closing with what it has")
    add_option(parser, "--history-dir", type=Path, default=Path("history"), help="where history JSON is written")
    add_option(parser, "--session-id", default=None, help="session id (default: UTC time + random suffix)")
    add_option(parser, "--seed", type=int, default=42, help="seed for the holdout split and initial weights")
    add_option(parser, "--chunk-bytes", type=positive_int, default=DEFAULT_CHUNK_BYTES,
               help="largest raw weight slice per Kafka record")
    add_option(parser, "--end-grace", type=positive_float, default=30.0,
               help="seconds to wait for nodes to leave after end_session")
    add_common_options(parser)
    return parser


def new_session_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


async def run_session(args: argparse.Namespace) -> Path:
    """Run one session end to end; returns the history file path."""
    from common.models import build_model, compile_model, compile_spec
    from common.tf_setup import configure_tensorflow
    from fl_server.data import resolve_server_data
    from fl_server.evaluation import KerasHoldout

    strategy = strategy_from_args(args)  # before anything starts: a strategy that cannot run refuses here
    configure_tensorflow(args.tf_threads or None)
    session_id = args.session_id or new_session_id()
    if not SESSION_ID_PATTERN.match(session_id):
        raise ValueError(f"session id {session_id!r} must match {SESSION_ID_PATTERN.pattern}")
    registry = NodeRegistry()
    frontend = SocketIOFrontend(registry)
    endpoints = Endpoints(args.host, args.port, args.kafka, args.updates_topic, args.models_topic,
                          chunk_bytes=args.chunk_bytes)
    kafka = KafkaPlane(endpoints, session_id)
    config = config_from_args(args)
    config["session_id"] = session_id
    config["strategy_params"] = strategy.params()
    history = SessionHistory(args.history_dir, session_id, config)
    coordinator: Coordinator | None = None
    early_records: list[bytes | None] = []  # records that arrive before round 1 are judged in round 1

    def on_record(value: bytes | None) -> None:
        if coordinator is None:
            early_records.append(value)
        else:
            coordinator.on_record(value)

    runner = None
    status = "failed"
    try:
        await kafka.start(on_record)
        runner = await serve_socketio(frontend, args.host, args.port)
        history.save()
        await registry.wait_for_logged(args.min_nodes)
        data = await resolve_server_data(
            dataset=args.dataset, holdout_csv=args.holdout, target=args.target, schema_file=args.schema,
            categorical=[c for c in (args.categorical or "").split(",") if c], seed=args.seed,
            gather_statistics=lambda request: frontend.gather_statistics(request, timeout_s=args.round_timeout),
        )
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
            round_timeout_s=args.round_timeout,
            train=TrainConfig(args.epochs, args.batch_size, args.learning_rate),
            end_grace_s=args.end_grace,
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
        )
        for value in early_records:
            coordinator.on_record(value)
        early_records.clear()
        frontend.coordinator = coordinator
        logger.info("session %s: %s on %s, %d rounds, %d parameters; history at %s", session_id, args.model,
                    data.source, args.rounds, model.count_params(), history.path)
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
        if coordinator is not None:
            history.document["rejected_updates_total"] = dict(coordinator.rejected_total)
        history.document["refused_connections"] = frontend.refused
        history.document["refused_nodes"] = dict(frontend.refusals)
        history.finish(status)
        if runner is not None:
            await runner.cleanup()
        await kafka.stop()
    return history.path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.quiet)

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
