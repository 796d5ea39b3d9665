"""``ServerSession``: the composition root of ``fl-server``.

It wires the Socket.IO frontend, the Kafka plane, the holdout data, the model and the coordinator, in
the order that finds a mistake soonest: ``fl_server.plan.plan_session`` checks the settings (well under a
second), then ``start`` binds the port and asks the broker, and only then loads TensorFlow. ``stop`` writes the
session's totals and releases everything; it is idempotent, and ``async with`` calls it however the
session ends. The heavy parts (broker, TensorFlow, data, Keras) come from a ``SessionRuntime``, so the
wiring is unit-tested with fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from common.privacy.accountant import PrivacyAccountant
from common.transport import kafka_io
from common.wire.integrity import ConnectVerifier
from common.wire.protocol import ModelRef, RawRecord
from fl_server.admission import Admission
from fl_server.checkpoint import Checkpoint, checkpoint_path
from fl_server.collector import InspectedRecord, inspect_record
from fl_server.config import ServerConfig
from fl_server.coordinator import Coordinator, EvaluateFn, GlobalModel, SessionSettings
from fl_server.dashboard.onlookers import make_onlookers
from fl_server.data import ServerData
from fl_server.history import SessionHistory, utc_now
from fl_server.inbox import DEFAULT_CONTROL_ITEMS, Inbox
from fl_server.plan import SessionPlan
from fl_server.privacy.ledger import PrivacyLedger
from fl_server.privacy.plan import with_dp_sgd
from fl_server.privacy.validation import USER_LEVEL_MODES
from fl_server.records import ResumeMark, SessionSummary
from fl_server.registry import NodeRegistry
from fl_server.transport.kafka import Endpoints
from fl_server.transport.socketio import SocketIOFrontend, serve_socketio

logger = logging.getLogger("fl_server")

Weights = list[np.ndarray]


# ---------------------------------------------------------------- the heavy parts, behind one interface


class KafkaTransport(Protocol):
    async def start(self, inbox: Inbox, inspect: Callable[[RawRecord], InspectedRecord]) -> dict[int, int]: ...

    def commit(self, offsets: dict[int, int]) -> None: ...

    async def publish_model(self, server_round: int, weights: Sequence[np.ndarray],
                            model_sha256: str) -> ModelRef: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class SessionModel:
    """The global model as the coordinator needs it, its holdout evaluation, and how to save it at the end."""

    model: GlobalModel
    evaluate: EvaluateFn
    save: Callable[[Sequence[np.ndarray], Path], None]
    num_parameters: int


class SessionRuntime(Protocol):
    """What a session needs from the outside world beyond the Socket.IO frontend."""

    def check_broker(self, bootstrap: str) -> None: ...

    def load_tensorflow(self, threads: int | None) -> None: ...

    def kafka(self, endpoints: Endpoints, session_id: str, client_config: dict[str, Any],
              start_offsets: dict[int, int] | None) -> KafkaTransport: ...

    def server_data(self, config: ServerConfig, checkpoint: Checkpoint | None,
                    gather: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Awaitable[ServerData]: ...

    def build_model(self, config: ServerConfig, data: ServerData, checkpoint: Checkpoint | None) -> SessionModel: ...


class LiveRuntime:
    """The real parts: a Kafka broker, TensorFlow, Keras (imported only once the cheap checks passed)."""

    def check_broker(self, bootstrap: str) -> None:
        kafka_io.log_crc32c_implementation()
        kafka_io.check_broker(bootstrap)

    def load_tensorflow(self, threads: int | None) -> None:
        from common.ml.tf_setup import configure_tensorflow

        configure_tensorflow(threads)

    def kafka(self, endpoints: Endpoints, session_id: str, client_config: dict[str, Any],
              start_offsets: dict[int, int] | None) -> KafkaTransport:
        from fl_server.transport.kafka import KafkaPlane

        return KafkaPlane(endpoints, session_id, config=client_config, start_offsets=start_offsets)

    async def server_data(self, config: ServerConfig, checkpoint: Checkpoint | None,
                          gather: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> ServerData:
        from common.data.dataspec import DataSpec
        from fl_server.data import resolve_server_data

        return await resolve_server_data(
            dataset=config.dataset, holdout_csv=config.holdout, target=config.target, schema_file=config.schema,
            categorical=config.categorical_columns(), seed=config.seed, exclude=list(config.exclude_columns),
            min_category_count=config.min_category_count, gather_statistics=gather, task=config.task,
            no_holdout=config.no_holdout,
            declared=DataSpec.from_wire(checkpoint.model["data"]) if checkpoint else None,
        )

    def build_model(self, config: ServerConfig, data: ServerData, checkpoint: Checkpoint | None) -> SessionModel:
        from common.ml.models import build_model, compile_model, compile_spec, model_from_architecture
        from fl_server.evaluation import KerasHoldout

        if checkpoint is not None:
            model = model_from_architecture(checkpoint.model["architecture"])
            spec = checkpoint.model["compile"]
        else:
            if config.initial_model is not None:
                from common.ml.warm_start import load_initial_model

                # Binary and regression models end in one unit (common.ml.models.build_model).
                model = load_initial_model(config.initial_model, input_shape=data.spec.input_shape,
                                           num_classes=data.spec.num_classes if data.spec.task == "classification"
                                           else 1)
            else:
                model = build_model(config.model, data.spec.input_shape, data.spec.num_classes, seed=config.seed,
                                    task=data.spec.task)
            if config.freeze_layers:
                from common.ml.warm_start import freeze_first_layers

                logger.info("frozen layers (not trained at the nodes): %s",
                            ", ".join(freeze_first_layers(model, config.freeze_layers)))
            spec = compile_spec(config.optimizer, config.learning_rate, data.spec.task,
                                class_weights_for(data) if config.class_weights else None)
        compile_model(model, spec)
        schema = data.spec.schema
        holdout = KerasHoldout(model, data.x_holdout, data.y_holdout, task=data.spec.task,
                               target_mean=schema.target_mean if schema else 0.0,
                               target_std=schema.target_std if schema else 1.0)
        personal: list[int] = []
        if config.personal_layers:
            from common.ml.personal import personal_indices

            personal = personal_indices([len(layer.weights) for layer in model.layers], config.personal_layers)
        return SessionModel(GlobalModel(model.to_json(), spec, model.get_weights(), data.spec.to_wire(),
                                        personal=tuple(personal)),
                            holdout, holdout.save, int(model.count_params()))


def class_weights_for(data: ServerData) -> list[float]:
    """``--class-weights``: balanced weights from the nodes' pooled target counts (``common.ml.tasks``)."""
    from common.ml.tasks import balanced_class_weights

    if not data.class_counts or not any(data.class_counts):
        raise ValueError("--class-weights needs a classification or binary schema merged from the nodes' "
                         "statistics (their target counts); a declared --schema or a regression target has none")
    weights = balanced_class_weights(list(data.class_counts))
    logger.info("class weights from the nodes' target counts %s: %s", list(data.class_counts),
                [round(w, 4) for w in weights])
    return weights


def final_model_path(history_path: Path) -> Path:
    return history_path.with_suffix(".keras")


# ---------------------------------------------------------------- the session


class ServerSession:
    """One session (or the rest of one, with --resume): ``async with ServerSession(plan) as s: await s.run()``."""

    def __init__(self, plan: SessionPlan, runtime: SessionRuntime | None = None,
                 frontend: SocketIOFrontend | None = None) -> None:
        self.plan = plan
        self.config = plan.config
        self.runtime: SessionRuntime = runtime or LiveRuntime()
        self.registry = frontend.registry if frontend is not None else NodeRegistry()
        self.frontend = frontend or SocketIOFrontend(
            self.registry, ConnectVerifier(plan.keys) if plan.keys is not None else None,
            admission=Admission(max_pending_per_address=self.config.max_pending_per_address,
                                max_pending=self.config.max_pending_handshakes,
                                max_busy=self.config.max_pending_handshakes))
        # Records that arrive before round 1 wait here (bounded; past the bound they wait in Kafka).
        # Acknowledgements of a whole round may wait at once: room for a few per node (issue 19: 5,000 nodes).
        self.inbox = Inbox(max_kafka_bytes=self.config.inbox_bytes,
                           max_control_items=max(DEFAULT_CONTROL_ITEMS, 4 * self.config.min_nodes))
        self.history: SessionHistory | None = None
        self.status = "failed"
        self._runner: Any = None  # the aiohttp runner serving Socket.IO
        self._kafka: KafkaTransport | None = None
        self._start_offsets: dict[int, int] = {}
        self._stopped = False
        self._finished = False
        self.stop_reason: str | None = None
        # The dashboard and /metrics (read-only onlookers of the round loop, served on the Socket.IO port).
        self.onlookers = make_onlookers(self.config, plan.session_id, registry=self.registry, frontend=self.frontend,
                                        inbox=self.inbox, files=self._files)

    async def __aenter__(self) -> ServerSession:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if isinstance(exc, asyncio.CancelledError) and not self._finished:
            self.status = "interrupted"
            logger.warning("session %s interrupted", self.plan.session_id)
        await self.stop()

    async def start(self) -> None:
        """Bind the port and reach the broker (the cheap checks), then load TensorFlow and start Kafka."""
        config, loop = self.config, asyncio.get_running_loop()
        self._runner = await serve_socketio(self.frontend, config.host, config.port, self.plan.tls,
                                            routes=self.onlookers.add_routes)
        self.onlookers.announce(config.host, self._runner.addresses[0][1] if self._runner.addresses else config.port,
                                self.plan.tls is not None)
        try:
            await loop.run_in_executor(None, self.runtime.check_broker, config.kafka)
            logger.info("start-up: loading TensorFlow")
            await loop.run_in_executor(None, self.runtime.load_tensorflow, config.tf_threads or None)
        except BaseException:
            await self.stop()
            raise
        endpoints = Endpoints(config.host, config.port, config.kafka, config.updates_topic, config.models_topic,
                              chunk_bytes=config.chunk_bytes, server_key=self.plan.server_key,
                              aggregators=config.aggregators, aggregation_key=self.plan.aggregation_key,
                              round_timeout_s=config.round_timeout)
        checkpoint = self.plan.checkpoint
        self._kafka = self.runtime.kafka(endpoints, self.plan.session_id, self.plan.kafka_client_config,
                                         checkpoint.offsets if checkpoint else None)
        self.history = self._open_history()
        self.history.sign_with(self.plan.server_key)
        self.onlookers.replay(self.history.round_records())
        logger.info("start-up: creating topics and positioning the consumer on %s", config.updates_topic)
        inspect = partial(inspect_record, keys=self.plan.keys, max_record_bytes=config.max_record_bytes)
        self._start_offsets = await self._kafka.start(self.inbox, inspect)
        self.history.save()

    def _open_history(self) -> SessionHistory:
        """A new session's history, or a resumed one's (from its checkpoint, with the resume recorded)."""
        settings = self.config.history_settings()
        checkpoint = self.plan.checkpoint
        if checkpoint is not None:
            # What is in force from here on: the session's settings (from the checkpoint, so unchanged) and this
            # process's operational ones (ports, timeouts, Kafka), which may differ from the first run's.
            mark = ResumeMark(utc_now(), checkpoint.completed_round, checkpoint.weights_sha256, settings)
            assert self.config.resume is not None
            return SessionHistory.resumed(Path(self.config.resume), checkpoint.history, mark)
        settings.update(session_id=self.plan.session_id, strategy_params=self.plan.strategy.params(),
                        authenticated=self.plan.keys is not None)
        return SessionHistory.create(self.config.history_dir, self.plan.session_id, settings)

    async def run(self) -> Path:
        """Wait for the nodes, prepare data and model, run the rounds, save the final model; the history's path."""
        assert self.history is not None and self._kafka is not None, "start() first"
        config, history, loop = self.config, self.history, asyncio.get_running_loop()
        await self.registry.wait_for_logged(config.min_nodes)
        logger.info("start-up: preparing the holdout data and the schema")
        data = await self.runtime.server_data(
            config, self.plan.checkpoint,
            lambda request: self.frontend.gather_statistics(request, timeout_s=config.round_timeout))
        logger.info("start-up: building the model")
        model = await loop.run_in_executor(None, self.runtime.build_model, config, data, self.plan.checkpoint)
        history.describe(num_holdout=len(data.y_holdout), num_parameters=model.num_parameters,
                         data=data.spec.to_wire(), data_source=data.source)
        coordinator = self._coordinator(model)
        self.frontend.coordinator = coordinator
        logger.info("session %s: %s on %s, rounds %d..%d, %d parameters; history at %s", self.plan.session_id,
                    config.model, data.source, coordinator.first_round, config.rounds, model.num_parameters,
                    history.path)
        weights = await coordinator.run()
        self.stop_reason = coordinator.stop_reason
        model_path = final_model_path(history.path)
        await loop.run_in_executor(None, model.save, weights, model_path)
        history.set_final_model(model_path)
        self.onlookers.live.set_link("model", True)
        self.status = self.stop_reason or "completed"
        logger.info("session %s %s; final model at %s", self.plan.session_id, self.status.replace("_", " "),
                    model_path)
        return history.path

    def _coordinator(self, model: SessionModel) -> Coordinator:
        assert self.history is not None and self._kafka is not None
        plan = self.plan
        return Coordinator(
            settings=self._session_settings(),
            registry=self.registry,
            strategy=plan.strategy,
            model=model.model,
            evaluate=model.evaluate,
            publish_model=self._kafka.publish_model,
            emit=self.frontend.emit,
            broadcast=self.frontend.broadcast,
            history=self.history,
            keys=plan.keys,
            checkpoint_file=checkpoint_path(self.config.history_dir, plan.session_id),
            commit=self._kafka.commit,
            resume=plan.checkpoint,
            offsets=self._start_offsets,
            inbox=self.inbox,
            privacy=self._privacy_ledger(),
            observer=self.onlookers.observer,
            aggregation=getattr(self._kafka, "aggregation", None),  # set by the Kafka plane with --aggregators
        )

    def _session_settings(self) -> SessionSettings:
        """The round loop's settings; with ``--dp sgd`` every round's config asks the nodes for DP-SGD."""
        settings = SessionSettings.from_config(self.config, self.plan.session_id)
        return replace(settings, train=with_dp_sgd(settings.train, self.plan.privacy))

    def _privacy_ledger(self) -> PrivacyLedger | None:
        """The privacy books, continued from the checkpoint's on --resume."""
        if self.plan.privacy is None or self.plan.privacy.settings.mode not in USER_LEVEL_MODES:
            return None  # DP-SGD: no user-level books; every node accounts its own records
        assert self.history is not None
        state = self.history.privacy_state if self.plan.checkpoint is not None else None
        return PrivacyLedger(self.plan.privacy.settings, PrivacyAccountant.from_state(state) if state else None)

    async def stop(self) -> None:
        """Write the session's totals and status, close Socket.IO and Kafka (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._finish()
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._kafka is not None:
                await self._kafka.stop()

    def _finish(self) -> None:
        """Write the session's totals and status once, and tell the onlookers."""
        if self._finished:
            return
        self._finished = True
        if self.history is not None:
            self.history.finish(self.status, self.summary())
        self.onlookers.observer.session_ended(self.status)

    async def linger(self) -> None:
        """The session is over (history final): keep the dashboard and /metrics up ``--linger`` seconds, so that
        Prometheus scrapes the last values and a browser sees the end. A signal ends the wait (not an error)."""
        if self.config.linger <= 0:
            return
        self._finish()
        logger.info("session %s over; the dashboard and /metrics stay up %.0fs more (--linger)", self.plan.session_id,
                    self.config.linger)
        try:
            await asyncio.sleep(self.config.linger)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.uncancel() > 0:
                raise
            logger.info("linger ended by a signal")

    def _files(self) -> dict[str, Path | None]:
        """The session's files the dashboard links to (the final model once it is saved)."""
        if self.history is None:
            return {}
        model = self.history.document.get("final_model")
        return {"history": self.history.path, "model": Path(model) if isinstance(model, str) else None}

    def summary(self) -> SessionSummary:
        assert self.history is not None
        totals: Counter[str] = Counter()
        for record in self.history.rounds:
            totals.update(record.get("rejected_updates_by_reason", {}))
        return SessionSummary(
            rejected_updates_total=dict(totals),
            refused_connections_by_reason=dict(self.frontend.refused_by_reason),
            node_refusals=dict(self.frontend.refusals),
            malformed_packets_by_reason=dict(self.frontend.malformed_by_reason),
            inbox=asdict(self.inbox.stats()),
        )


async def run_session(plan: SessionPlan, runtime: SessionRuntime | None = None) -> Path:
    """Run one session end to end; returns the history file's path."""
    async with ServerSession(plan, runtime) as session:
        path = await session.run()
        await session.linger()
        return path
