"""The server's settings: one frozen ``ServerConfig``, every default defined here once.

Flags, ``FL_*`` environment variables and ``--config`` files are parsed by ``fl_server.cli`` (whose
parser takes its defaults from ``DEFAULTS``) and turned into a ``ServerConfig`` with ``from_args``;
from then on nothing reads the argparse namespace. ``resume_config`` (pure) takes the settings that
define a session from its checkpoint. The history records an explicit allow-list of settings
(``HISTORY_SETTINGS``); the SASL password is a ``Secret`` that never serialises, and a new setting
must be put on one of the two lists (a test checks), so it cannot leak by being forgotten.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from common.config import DEFAULT_KAFKA, DEFAULT_MODELS_TOPIC, DEFAULT_UPDATES_TOPIC
from common.data.datasets import DEFAULT_DATASET, DEFAULT_SEED
from common.data.disclosure import DEFAULT_MIN_CATEGORY_COUNT
from common.paillier.keys import PaillierPublic
from common.transport.kafka_security import Secret
from common.wire.protocol import DEFAULT_CHUNK_BYTES, MAX_RECORD_BYTES, TrainConfig
from fl_server.admission import DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_ADDRESS
from fl_server.inbox import DEFAULT_KAFKA_BYTES
from fl_server.paillier_round import PaillierSettings
from fl_server.privacy.plan import PrivacyOptions
from fl_server.secure_round import SecureAggregationSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Every ``fl-server`` setting, named as its flag (``--min-nodes`` is ``min_nodes``)."""

    # -- what the session is (taken from the checkpoint on --resume: SESSION_SETTINGS)
    rounds: int = 5
    min_nodes: int = 2
    min_round_nodes: int | None = None  # None: --min-nodes
    dataset: str = DEFAULT_DATASET
    holdout: Path | None = None
    no_holdout: bool = False  # no central holdout: progress is measured by --federated-eval only
    federated_eval: bool = False  # nodes evaluate each round's global model on their local test split
    target: str | None = None
    schema: Path | None = None
    categorical: str | None = None
    exclude_columns: tuple[str, ...] = ()
    min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT
    task: str | None = None  # classification, binary or regression; None: inferred (common.ml.tasks)
    class_weights: bool = False  # balanced class weights from the nodes' pooled target counts
    model: str = "mlp"
    initial_model: Path | None = None  # warm start: a .keras file (loaded in safe mode) instead of --model
    freeze_layers: int = 0  # the first N layers are not trained (federated fine-tuning)
    personal_layers: int = 0  # FedPer: the last K layers with weights stay on each node, never averaged
    strategy: str = "fedavg"
    strategy_param: tuple[tuple[str, str], ...] = ()
    server_lr: float | None = None
    server_momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    proximal_mu: float | None = None
    trim_fraction: float | None = None
    num_byzantine: int | None = None
    num_selected: int | None = None
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.005
    optimizer: str = "adam"
    seed: int = DEFAULT_SEED
    fraction_fit: float = 1.0
    min_fit: int = 1
    min_fit_fraction: float = 0.0
    max_update_norm: float | None = None
    max_node_weight: float | None = None
    max_record_bytes: int = MAX_RECORD_BYTES
    dp: str | None = None  # "central" or "local" differential privacy
    dp_clip: str | None = None  # a number, or "adaptive"
    dp_initial_clip: float = PrivacyOptions.initial_clip
    dp_noise_multiplier: float | None = None
    dp_target_epsilon: float | None = None
    dp_delta: float = PrivacyOptions.delta
    dp_target_quantile: float = PrivacyOptions.target_quantile
    dp_clip_learning_rate: float = PrivacyOptions.clip_learning_rate
    dp_count_stddev: float | None = None
    dp_budget_stop: bool = False
    secure_aggregation: str = "off"  # "secagg" (all pairs) or "secagg+" (k neighbours)
    secagg_threshold: int | None = None  # None: 2/3 of a node's holders, per round
    secagg_neighbours: int | None = None  # secagg+ degree k; None: 2*ceil(log2 n)
    secagg_clip: float = 1.0
    secagg_bits: int = 16
    secagg_stage_timeout: float = 30.0
    paillier_public_key: Path | None = None  # fl-keys create --paillier: paillier.pub.json
    paillier_decryptor: str | None = None  # the fl-decryptor's URL
    paillier_no_packing: bool = False  # one value per ciphertext (to measure what packing saves)
    # -- how this process runs it (the command line's, also on --resume)
    host: str = "127.0.0.1"
    port: int = 5000
    round_timeout: float = 120.0
    end_grace: float = 30.0
    inbox_bytes: int = DEFAULT_KAFKA_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    node_keys: Path | None = None
    server_key: Path | None = None  # the server's Ed25519 private key: signs global models and round records
    aggregators: int = 0  # fl-aggregator workers that validate and fold the updates (0: this process does)
    aggregator_key: Path | None = None  # the secret the server and its workers sign their messages with
    allow_unauthenticated: bool = False
    resume: Path | None = None
    history_dir: Path = Path("history")
    session_id: str | None = None
    kafka: str = DEFAULT_KAFKA
    updates_topic: str = DEFAULT_UPDATES_TOPIC
    models_topic: str = DEFAULT_MODELS_TOPIC
    tf_threads: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_no_check_hostname: bool = False
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    dashboard_token: Secret | None = None  # required to read the dashboard and /metrics (fl_server.dashboard.access)
    linger: float = 0.0  # seconds the dashboard and /metrics stay up after the session ended
    max_pending_handshakes: int = DEFAULT_MAX_PENDING  # connections completing their hello at once (connect storms)
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS
    config: Path | None = None  # the --config file these settings came from, if any
    log_level: str = "INFO"
    quiet: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerConfig:
        """The settings ``fl_server.cli``'s parser produced (list-valued flags become tuples)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values["strategy_param"] = tuple(tuple(pair) for pair in (values["strategy_param"] or ()))
        return cls(**values)

    @property
    def effective_min_round_nodes(self) -> int:
        return self.min_round_nodes or self.min_nodes

    @property
    def train(self) -> TrainConfig:
        return TrainConfig(self.epochs, self.batch_size, self.learning_rate, federated_eval=self.federated_eval,
                           personal_layers=self.personal_layers)

    def categorical_columns(self) -> list[str]:
        return [name for name in (self.categorical or "").split(",") if name]

    def privacy_options(self) -> PrivacyOptions:
        return PrivacyOptions(mode=self.dp, clip=self.dp_clip, initial_clip=self.dp_initial_clip,
                              noise_multiplier=self.dp_noise_multiplier, target_epsilon=self.dp_target_epsilon,
                              delta=self.dp_delta, target_quantile=self.dp_target_quantile,
                              clip_learning_rate=self.dp_clip_learning_rate, count_stddev=self.dp_count_stddev,
                              budget_stop=self.dp_budget_stop)

    def secure_settings(self) -> SecureAggregationSettings | None:
        if self.secure_aggregation in ("off", "paillier"):
            return None
        return SecureAggregationSettings(protocol=self.secure_aggregation, threshold=self.secagg_threshold,
                                         neighbours=self.secagg_neighbours, clip=self.secagg_clip,
                                         bits=self.secagg_bits, stage_timeout_s=self.secagg_stage_timeout)

    def paillier_settings(self) -> PaillierSettings | None:
        """``--secure-aggregation paillier``'s settings (reads the public key file; ``ValueError`` if bad)."""
        if self.secure_aggregation != "paillier":
            return None
        if self.paillier_public_key is None or self.paillier_decryptor is None:
            raise ValueError("--secure-aggregation paillier needs --paillier-public-key and --paillier-decryptor")
        return PaillierSettings(public=PaillierPublic.load(self.paillier_public_key),
                                decryptor_url=self.paillier_decryptor, clip=self.secagg_clip, bits=self.secagg_bits,
                                packed=not self.paillier_no_packing,
                                decrypt_timeout_s=self.secagg_stage_timeout)

    def history_settings(self) -> dict[str, Any]:
        """The allow-listed settings, JSON-ready, for the history's ``config`` (and a resume's)."""
        return {name: json_ready(getattr(self, name)) for name in HISTORY_SETTINGS}


DEFAULTS = ServerConfig()

STRATEGY_KEYWORDS = ("server_lr", "server_momentum", "beta1", "beta2", "tau", "proximal_mu", "trim_fraction",
                     "num_byzantine", "num_selected")
DP_SETTINGS = ("dp", "dp_clip", "dp_initial_clip", "dp_noise_multiplier", "dp_target_epsilon", "dp_delta",
               "dp_target_quantile", "dp_clip_learning_rate", "dp_count_stddev", "dp_budget_stop")
SECAGG_SETTINGS = ("secure_aggregation", "secagg_threshold", "secagg_neighbours", "secagg_clip", "secagg_bits",
                   "secagg_stage_timeout", "paillier_public_key",
                   "paillier_no_packing")
# What defines a session: on --resume these come from the checkpoint, not the command line.
SESSION_SETTINGS = (
    "rounds", "dataset", "holdout", "target", "schema", "categorical", "model", "strategy", "strategy_param",
    "epochs", "batch_size", "learning_rate", "optimizer", "seed", "fraction_fit", "min_fit", "min_fit_fraction",
    "max_update_norm", "min_nodes", "min_round_nodes", "exclude_columns", "min_category_count", "max_record_bytes",
    "max_node_weight", "task", "class_weights", *STRATEGY_KEYWORDS, *DP_SETTINGS, *SECAGG_SETTINGS, "no_holdout",
    "federated_eval", "initial_model", "freeze_layers", "personal_layers",
)
OPERATIONAL_SETTINGS = (
    "host", "port", "round_timeout", "end_grace", "inbox_bytes", "chunk_bytes", "node_keys", "allow_unauthenticated",
    "resume", "history_dir", "session_id", "kafka", "updates_topic", "models_topic", "tf_threads", "tls_cert",
    "tls_key", "kafka_security_protocol", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
    "kafka_ssl_no_check_hostname", "kafka_sasl_mechanism", "kafka_sasl_username", "config", "log_level", "quiet",
    "linger",
    "server_key", "paillier_decryptor", "aggregators", "aggregator_key", "max_pending_handshakes",
    "max_pending_per_address",
)
HISTORY_SETTINGS = SESSION_SETTINGS + OPERATIONAL_SETTINGS
NOT_RECORDED = {"kafka_sasl_password": "a secret: never printed, never written to a file",
                "dashboard_token": "a secret: never printed, never written to a file"}


def json_ready(value: Any) -> Any:
    """Paths as text, tuples and sets as lists, at any depth; a ``Secret`` is refused (it never serialises)."""
    if isinstance(value, Secret):
        raise TypeError("a Secret is never written to a history")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    return value


def resume_config(config: ServerConfig, saved: dict[str, Any]) -> tuple[ServerConfig, dict[str, tuple[Any, Any]]]:
    """``config`` with the session settings a checkpoint's history recorded (``saved``).

    Returns the new config and, per setting where the command line said something else, (session's value,
    command line's value), for the caller to log."""
    by_name = {f.name: f for f in fields(ServerConfig)}
    taken: dict[str, Any] = {}
    differed: dict[str, tuple[Any, Any]] = {}
    for name in SESSION_SETTINGS:
        if name not in saved:
            continue
        value = _as_field_value(saved[name], getattr(config, name), by_name[name].type)
        if value != getattr(config, name):
            differed[name] = (value, getattr(config, name))
        taken[name] = value
    return replace(config, **taken), differed


def _as_field_value(value: Any, current: Any, annotation: Any) -> Any:
    """A JSON value back in the field's Python type (paths, tuples of text or of pairs)."""
    if value is None:
        return () if isinstance(current, tuple) else None
    if "Path" in str(annotation):
        return Path(value)
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value
