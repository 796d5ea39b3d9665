"""The session plan: every ``fl-server`` setting checked, and what the settings name loaded, before anything starts.

``plan_session`` runs in well under a second (no port, no broker, no TensorFlow), so a mistake in the flags,
the environment, a config file or a file they name is one ``UsageError`` line (exit 2) at once.
"""

from __future__ import annotations

import logging
import math
import secrets
import ssl
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.cli import UsageError
from common.secagg.round import MAX_BITS
from common.transport.kafka_security import KafkaSecurity
from common.transport.tls import server_ssl_context
from common.wire.integrity import KeyRegistry
from common.wire.protocol import SESSION_ID_PATTERN
from common.wire.server_key import ServerSigner
from fl_server.aggregator.messages import AggregationKey
from fl_server.aggregator.plan import aggregation_key
from fl_server.checkpoint import Checkpoint, CheckpointError, load_checkpoint_for
from fl_server.config import ServerConfig, resume_config
from fl_server.privacy.aggregation import DPAggregation
from fl_server.privacy.plan import PrivacyPlan, plan_privacy
from fl_server.privacy.validation import USER_LEVEL_MODES
from fl_server.strategies import Strategy
from fl_server.strategy_options import strategy_from_args

logger = logging.getLogger("fl_server")


@dataclass(frozen=True)
class SessionPlan:
    """A session's settings, checked, with what they name loaded: nothing is running yet."""

    config: ServerConfig  # with --resume applied
    session_id: str
    checkpoint: Checkpoint | None
    strategy: Strategy
    keys: KeyRegistry | None
    tls: ssl.SSLContext | None
    kafka_client_config: dict[str, Any]
    privacy: PrivacyPlan | None = None
    server_key: ServerSigner | None = None
    aggregation_key: AggregationKey | None = None  # --aggregators: signs the messages to and from the workers


def new_session_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def plan_session(config: ServerConfig) -> SessionPlan:
    """Everything that can be wrong with the settings, found in well under a second (``UsageError`` says what)."""
    checkpoint = None
    if config.resume is not None:
        resume = config.resume
        try:
            checkpoint, _ = load_checkpoint_for(resume)
        except CheckpointError as exc:
            raise UsageError(f"cannot resume: {exc}") from None
        config, differed = resume_config(config, checkpoint.history.get("config", {}))
        for name, (value, current) in differed.items():
            logger.info("--resume: %s is %r in this session (the command line's %r is not used)", name, value,
                        current)
        config = replace(config, session_id=checkpoint.session_id, history_dir=Path(resume).parent)
    check_combinations(config)
    session_id = config.session_id or new_session_id()
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise UsageError(f"session id {session_id!r} must match {SESSION_ID_PATTERN.pattern}")
    strategy = strategy_from_args(config)  # type: ignore[arg-type]  # a strategy that cannot run refuses here
    privacy = privacy_plan(config)
    if privacy is not None and privacy.settings.mode in USER_LEVEL_MODES:  # DP-SGD: the nodes' updates are private
        strategy = DPAggregation(strategy, mode=privacy.settings.mode, clip_norm=privacy.clip_norm,
                                 noise_multiplier=privacy.settings.noise_multiplier, adaptive=privacy.adaptive)
    return SessionPlan(
        config=config,
        session_id=session_id,
        checkpoint=checkpoint,
        strategy=strategy,
        privacy=privacy,
        keys=node_keys(config),
        server_key=server_key(config),
        aggregation_key=aggregation_key(config, strategy),
        tls=server_tls(config),
        kafka_client_config=KafkaSecurity.from_args(config).to_client_config(),  # type: ignore[arg-type]
    )


def privacy_plan(config: ServerConfig) -> PrivacyPlan | None:
    """The session's differential privacy (``--dp``), checked, with z calibrated when only a budget is given."""
    expected_updates = max(config.min_fit, math.ceil(config.fraction_fit * config.min_nodes))
    try:
        plan = plan_privacy(config.privacy_options(), strategy=config.strategy, rounds=config.rounds,
                            num_nodes=config.min_nodes, expected_updates=expected_updates)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if plan is not None:
        settings = plan.settings
        logger.info("differential privacy: %s, clip %s, noise multiplier z = %.4g%s, delta %g%s", settings.mode,
                    f"adaptive from {plan.clip_norm:g}" if plan.adaptive else f"{plan.clip_norm:g}",
                    settings.noise_multiplier, "" if config.dp_noise_multiplier is not None else " (calibrated)",
                    settings.delta, f", budget epsilon {settings.target_epsilon:g}"
                    if settings.target_epsilon is not None else "")
    return plan


def check_combinations(config: ServerConfig) -> None:
    """Settings that cannot work together."""
    if config.holdout is not None and not config.target:
        raise UsageError("--holdout needs --target (the class column of the holdout and of the nodes' CSV files)")
    if config.holdout is not None and not config.holdout.is_file():
        raise UsageError(f"--holdout {config.holdout}: no such file")
    if config.no_holdout and config.holdout is not None:
        raise UsageError("--no-holdout and --holdout contradict each other: give one")
    if config.no_holdout and not config.federated_eval:
        logger.warning("--no-holdout without --federated-eval: nothing will measure the model's progress")
    if config.initial_model is not None and (config.initial_model.suffix != ".keras"
                                             or not config.initial_model.is_file()):
        raise UsageError(f"--initial-model {config.initial_model}: must be an existing .keras file")
    if config.personal_layers < 0:
        raise UsageError(f"--personal-layers {config.personal_layers}: must be 0 or more")
    if config.personal_layers and config.secure_aggregation != "off":
        raise UsageError("--personal-layers with --secure-aggregation is not supported: the masked vector covers "
                         "the whole model")
    if config.freeze_layers < 0:
        raise UsageError(f"--freeze-layers {config.freeze_layers}: must be 0 or more")
    if config.schema is not None and not config.schema.is_file():
        raise UsageError(f"--schema {config.schema}: no such file")
    check_secure_aggregation(config)
    if config.min_round_nodes is not None and config.min_round_nodes > config.min_nodes:
        logger.warning("--min-round-nodes %d is more than --min-nodes %d: round 2 may wait for nodes round 1 did "
                       "not need", config.min_round_nodes, config.min_nodes)


# Strategies that only need the weighted mean of the updates: the one thing secure aggregation reveals.
MEAN_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def check_secure_aggregation(config: ServerConfig) -> None:
    """What cannot run on masked updates (the server never sees one update, only their sum)."""
    paillier_flags = ("paillier_public_key", "paillier_decryptor", "paillier_no_packing")
    if config.secure_aggregation != "paillier":
        for name in paillier_flags:
            if getattr(config, name) not in (None, False):
                raise UsageError(f"--{name.replace('_', '-')} needs --secure-aggregation paillier")
    if config.secure_aggregation == "off":
        for name in ("secagg_threshold", "secagg_neighbours"):
            if getattr(config, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} needs --secure-aggregation")
        return
    if config.strategy not in MEAN_STRATEGIES:
        raise UsageError(f"--strategy {config.strategy} cannot run with --secure-aggregation: it needs each update, "
                         f"the server only learns their sum (use one of {', '.join(MEAN_STRATEGIES)})")
    if config.dp == "central":
        raise UsageError("--dp central cannot run with --secure-aggregation: the server cannot clip updates it "
                         "cannot see; use --dp local (each node clips and adds its share of the noise: distributed DP)")
    refused = {"max_update_norm": "a norm bound on masked updates needs zero-knowledge proofs",
               "max_node_weight": "the server does not see a node's weight"}
    for name, why in refused.items():
        if getattr(config, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')} cannot run with --secure-aggregation: {why}")
    if config.node_keys is None:
        raise UsageError("--secure-aggregation needs --node-keys: nodes sign their key adverts with their node key")
    if config.secure_aggregation == "paillier":
        check_paillier(config)
    if config.secagg_neighbours is not None:
        if config.secure_aggregation != "secagg+":
            raise UsageError("--secagg-neighbours needs --secure-aggregation secagg+ (secagg masks every pair)")
        if config.secagg_neighbours < 2 or config.secagg_neighbours % 2:
            raise UsageError(f"--secagg-neighbours must be even and at least 2, got {config.secagg_neighbours}")
    if config.secagg_threshold is not None and config.secagg_threshold < 2:
        raise UsageError("--secagg-threshold must be at least 2")
    if not 1 <= config.secagg_bits <= MAX_BITS:
        raise UsageError(f"--secagg-bits must be in 1..{MAX_BITS}, got {config.secagg_bits}")


def check_paillier(config: ServerConfig) -> None:
    """--secure-aggregation paillier: the public key and the decryptor are given, and the key file is good."""
    if config.secagg_threshold is not None:
        raise UsageError("--secagg-threshold is for secagg and secagg+ (paillier needs no threshold: the "
                         "decryptor refuses sums of fewer than its --min-updates)")
    for name in ("paillier_public_key", "paillier_decryptor"):
        if getattr(config, name) is None:
            raise UsageError(f"--secure-aggregation paillier needs --{name.replace('_', '-')}")
    assert config.paillier_decryptor is not None
    if not config.paillier_decryptor.startswith(("http://", "https://")):
        raise UsageError(f"--paillier-decryptor {config.paillier_decryptor!r:.80}: must be an http(s):// URL")
    try:
        config.paillier_settings()
    except ValueError as exc:
        raise UsageError(f"--paillier-public-key: {exc}") from None


def node_keys(config: ServerConfig) -> KeyRegistry | None:
    """The key registry, or None when the operator chose --allow-unauthenticated (loudly)."""
    if config.node_keys is not None:
        keys = KeyRegistry.load(config.node_keys)
        logger.info("node authentication on: %d node(s) in %s", len(keys), config.node_keys)
        return keys
    if not config.allow_unauthenticated:
        raise UsageError("no --node-keys given: create keys with `fl-keys create NODE...` and pass "
                         "--node-keys keys/registry.json (or --allow-unauthenticated for a demo)")
    logger.warning("*** --allow-unauthenticated: ANY client that reaches this server can join, and ANY writer "
                   "to the updates topic can submit updates in a node's name. Use --node-keys outside demos. ***")
    return None


def server_key(config: ServerConfig) -> ServerSigner | None:
    """The server's signing key (``--server-key``), or None: models and rounds then go out unsigned."""
    if config.server_key is None:
        return None
    try:
        signer = ServerSigner.load(config.server_key)
    except ValueError as exc:
        raise UsageError(f"--server-key: {exc}") from None
    logger.info("server key %s (%s): global models and round records are signed", signer.key_id, config.server_key)
    return signer


def server_tls(config: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context of --tls-cert/--tls-key, or None (plain HTTP) when neither is given."""
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise UsageError("--tls-cert and --tls-key go together: give both or neither")
    return server_ssl_context(config.tls_cert, config.tls_key)
