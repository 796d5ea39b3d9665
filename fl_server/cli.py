"""``fl-server``: run a federated training session."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import UsageError, command_main, run_until_signal
from common.config import (
    add_common_options,
    add_disclosure_options,
    add_flag,
    add_option,
    add_training_options,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_fraction,
    positive_int,
)
from common.ml.tasks import add_task_options
from common.transport.kafka_security import Secret, add_kafka_security_options
from common.transport.tls import add_tls_server_options
from fl_server.admission import raise_fd_limit
from fl_server.config import DEFAULTS as D
from fl_server.config import ServerConfig
from fl_server.plan import SessionPlan, plan_session
from fl_server.session import run_session
from fl_server.strategy_options import add_strategy_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-server",
        description="Coordinate federated training: wait for nodes, run rounds over Socket.IO (control) "
        "and Kafka (weights), aggregate, evaluate on a holdout set, and write history/<session>.json.",
    )
    add_option(parser, "--host", default=D.host, help="address to listen on")
    add_option(parser, "--port", type=int, default=D.port, help="Socket.IO port (0 picks a free one)")
    add_option(parser, "--min-nodes", type=positive_int, default=D.min_nodes,
               help="nodes that must be connected to start")
    add_option(parser, "--min-round-nodes", type=positive_int, default=None,
               help="nodes that must be connected to start each later round; below it the server waits, logging "
               "how long it has waited (default: --min-nodes)")
    add_option(parser, "--rounds", type=positive_int, default=D.rounds, help="number of rounds")
    add_data_options(parser)
    add_strategy_options(parser)
    add_training_options(parser)
    add_round_options(parser)
    add_privacy_options(parser)
    add_secure_aggregation_options(parser)
    add_session_options(parser)
    add_dashboard_options(parser)
    add_common_options(parser)
    add_tls_server_options(parser)
    add_kafka_security_options(parser)
    return parser


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The holdout data, the schema, what statistics may disclose, the model."""
    add_option(parser, "--dataset", default=D.dataset,
               help="built-in dataset whose holdout split the server keeps: digits, breast_cancer, wine, iris "
               "(bundled), mnist, fashion_mnist, cifar10 (keras.datasets, need internet)")
    add_option(parser, "--holdout", type=Path, default=None,
               help="evaluate on this CSV instead of a built-in dataset's holdout (needs --target)")
    add_option(parser, "--target", default=None, help="class column of --holdout and of the nodes' CSV files")
    add_flag(parser, "--no-holdout",
             help="keep no central holdout (tabular: needs --target; images: the dataset gives only the shape): "
             "measure progress with --federated-eval")
    add_flag(parser, "--federated-eval",
             help="each round, nodes evaluate the global model they receive on their local test split "
             "(fl-node --local-test-fraction) and the history records per-node and sample-weighted metrics")
    add_option(parser, "--schema", type=Path, default=None,
               help="declared data schema (JSON); default: merged from the nodes' column statistics")
    add_option(parser, "--categorical", default=None,
               help="comma-separated columns to treat as categorical even if they hold numbers")
    add_disclosure_options(parser, side="server")
    add_task_options(parser)
    add_option(parser, "--model", default=D.model,
               help="model: logreg, mlp, mlp:H1,H2,... (hidden sizes), cnn (images) or path/to/file.py:function "
               "(your Keras builder taking input_shape and num_classes)")
    add_option(parser, "--initial-model", type=Path, default=None,
               help="warm start: begin from this .keras model (e.g. a previous session's history/<session>.keras), "
               "loaded in Keras safe mode, instead of a new --model")
    add_option(parser, "--freeze-layers", type=int, default=D.freeze_layers,
               help="do not train the model's first N layers (federated fine-tuning of a pre-trained model)")
    add_option(parser, "--personal-layers", type=int, default=D.personal_layers,
               help="FedPer personalization: the model's last K layers with weights stay on each node (never "
               "uploaded, never averaged); each node saves its personalized model at the end")


def add_round_options(parser: argparse.ArgumentParser) -> None:
    """How a round samples, waits, and judges updates."""
    add_option(parser, "--round-timeout", type=positive_float, default=D.round_timeout,
               help="seconds a round waits for updates before closing with what it has")
    add_option(parser, "--fraction-fit", type=positive_fraction, default=D.fraction_fit,
               help="share of the connected nodes sampled to train each round (seeded by --seed and the round)")
    add_option(parser, "--min-fit", type=positive_int, default=D.min_fit,
               help="accepted updates a round needs to change the global model (and nodes needed to start it)")
    add_option(parser, "--min-fit-fraction", type=fraction, default=D.min_fit_fraction,
               help="as --min-fit, as a share of the round's sampled nodes (the larger of the two applies)")
    add_option(parser, "--max-update-norm", type=positive_float, default=None,
               help="reject an update whose L2 distance from the global model exceeds this")
    add_option(parser, "--max-node-weight", type=positive_fraction, default=None,
               help="cap any node's weight in an averaging strategy at this share of the samples the round's "
               "participants declared (a node cannot buy the average by claiming many samples)")
    add_option(parser, "--max-record-bytes", type=positive_int, default=D.max_record_bytes,
               help="reject update records larger than this")
    add_option(parser, "--aggregators", type=non_negative_int, default=D.aggregators,
               help="fl-aggregator workers that validate and fold the updates in a Kafka consumer group (README "
               "\"Scaling aggregation\"); the server adds their partial sums. 0: the server does it itself")
    add_option(parser, "--aggregator-key", type=Path, default=None,
               help="file with the hex secret the server and its fl-aggregator workers sign their messages with")
    add_option(parser, "--inbox-bytes", type=positive_int, default=D.inbox_bytes,
               help="most bytes of update records waiting for the round loop; past it the server stops reading "
               "Kafka until the loop catches up (records wait in the broker, none is dropped)")


def add_privacy_options(parser: argparse.ArgumentParser) -> None:
    """Differential privacy (README "Differential privacy"): clipping, noise, the accountant's budget."""
    add_option(parser, "--dp", default=None, choices=["central", "local", "sgd"],
               help="differential privacy of the nodes' updates: central (the server clips and noises the mean; "
               "trust the server), local (each node clips and noises its own update before it leaves) or sgd "
               "(record-level DP-SGD: each node clips every example's gradient and reports its own epsilon)")
    add_option(parser, "--dp-clip", default=None, metavar="C|adaptive",
               help="L2 norm each update delta (w_node - w_global) is clipped to (sgd: each example's gradient), or "
               "'adaptive' (central: the clip follows --dp-target-quantile of the update norms, Andrew et al. 2021)")
    add_option(parser, "--dp-initial-clip", type=positive_float, default=D.dp_initial_clip,
               help="adaptive clipping's first clipping norm")
    add_option(parser, "--dp-noise-multiplier", type=non_negative_float, default=None,
               help="z: Gaussian noise of stddev z*C on the sum of clipped deltas (default: calibrated by the "
               "accountant so that --rounds spend --dp-target-epsilon)")
    add_option(parser, "--dp-target-epsilon", type=positive_float, default=None,
               help="privacy budget epsilon at --dp-delta for the whole session")
    add_option(parser, "--dp-delta", type=positive_float, default=D.dp_delta, help="delta of the (epsilon, delta) "
               "guarantee; must be below 1/number of nodes")
    add_option(parser, "--dp-target-quantile", type=positive_fraction, default=D.dp_target_quantile,
               help="adaptive clipping: share of updates that should be unclipped")
    add_option(parser, "--dp-clip-learning-rate", type=positive_float, default=D.dp_clip_learning_rate,
               help="adaptive clipping: step of the geometric clip update")
    add_option(parser, "--dp-count-stddev", type=positive_float, default=None,
               help="adaptive clipping: noise on the count of unclipped updates (default: expected updates / 20)")
    add_flag(parser, "--dp-budget-stop",
             help="with z and a budget: run until the next round would cross --dp-target-epsilon, then stop "
             "(status budget_exhausted), even before --rounds")


def add_secure_aggregation_options(parser: argparse.ArgumentParser) -> None:
    """Secure aggregation (README "Secure aggregation"): the server learns only the sum of the updates."""
    add_option(parser, "--secure-aggregation", default=D.secure_aggregation,
               choices=["off", "secagg", "secagg+", "paillier"],
               help="mask every update so the server can only recover their sum: secagg (Bonawitz et al. 2017, "
               "every pair of nodes masks) or secagg+ (Bell et al. 2020, each node masks with k neighbours); or "
               "paillier: nodes encrypt, the server adds ciphertexts, fl-decryptor decrypts only the sum")
    add_option(parser, "--secagg-threshold", type=positive_int, default=None,
               help="t: shares that rebuild a node's secrets, and the fewest nodes a round may continue with "
               "(default: 2/3 of a node's neighbours and itself, per round)")
    add_option(parser, "--secagg-neighbours", type=positive_int, default=None,
               help="secagg+: k, the even number of neighbours each node masks with (default 2*ceil(log2 n))")
    add_option(parser, "--secagg-clip", type=positive_float, default=D.secagg_clip,
               help="largest |w_node - w_global| per weight that is encoded exactly; larger entries are clipped")
    add_option(parser, "--secagg-bits", type=positive_int, default=D.secagg_bits,
               help="fixed-point bits per weight (1-24); n nodes need n*(2^bits - 1) < 2^32")
    add_option(parser, "--secagg-stage-timeout", type=positive_float, default=D.secagg_stage_timeout,
               help="seconds each key stage (advertise, share keys, unmask) waits for the nodes; masked inputs "
               "wait up to --round-timeout (paillier: how long the decryptor may take)")
    add_option(parser, "--paillier-public-key", type=Path, default=None,
               help="paillier: the federation's public key file (fl-keys create --paillier: paillier.pub.json)")
    add_option(parser, "--paillier-decryptor", default=None,
               help="paillier: the URL of fl-decryptor (e.g. http://decryptor:8470), the only holder of the "
               "private key")
    add_flag(parser, "--paillier-no-packing",
             help="paillier: one value per ciphertext instead of packing many (only to measure what packing saves)")


def add_session_options(parser: argparse.ArgumentParser) -> None:
    """Who may join, where the history goes, resuming."""
    add_option(parser, "--node-keys", type=Path, default=None,
               help="registry of node keys (JSON made by fl-keys): nodes must prove their key to connect, "
               "and every update record must carry its HMAC")
    add_option(parser, "--server-key", type=Path, default=None,
               help="the server's private key (fl-keys create --server): signs every global-model record and every "
               "round of the history; give its public key to the nodes and auditors")
    add_flag(parser, "--allow-unauthenticated",
             help="DEMOS ONLY: without --node-keys, let any client join and accept unsigned updates")
    add_option(parser, "--resume", type=Path, default=None,
               help="continue the session of this history file (history/<session>.json) from its last "
               "completed round; the session's own settings come from its checkpoint")
    add_option(parser, "--history-dir", type=Path, default=D.history_dir, help="where history JSON is written")
    add_option(parser, "--session-id", default=None, help="session id (default: UTC time + random suffix)")
    add_option(parser, "--seed", type=int, default=D.seed, help="seed for the holdout split and initial weights")
    add_option(parser, "--chunk-bytes", type=positive_int, default=D.chunk_bytes,
               help="largest raw weight slice per Kafka record")
    add_option(parser, "--end-grace", type=positive_float, default=D.end_grace,
               help="seconds to wait for nodes to leave after end_session")
    add_option(parser, "--max-pending-handshakes", type=positive_int, default=D.max_pending_handshakes,
               help="connections completing their hello at once; during a connect storm as many more are told "
               "server_busy with a retry-after, and the rest are shed before their handshake")
    add_option(parser, "--max-pending-per-address", type=positive_int, default=D.max_pending_per_address,
               help="pending handshakes from one address (raise it for many nodes behind one NAT or load tester)")


def add_dashboard_options(parser: argparse.ArgumentParser) -> None:
    """The dashboard (/dashboard/) and Prometheus metrics (/metrics) on the Socket.IO port (README "Dashboard")."""
    add_option(parser, "--dashboard-token", type=Secret, default=None,
               help="token the dashboard and /metrics require (Authorization: Bearer, or ?token=); without it they "
               "answer only loopback clients when --host is beyond loopback (better set by the environment)")
    add_option(parser, "--linger", type=non_negative_float, default=D.linger,
               help="seconds to keep serving the dashboard and /metrics after the session ended (a last scrape, "
               "a last look); a signal ends it sooner")


def main(argv: list[str] | None = None) -> int:
    def run(plan: SessionPlan) -> None:
        sys.stdout.write(f"{run_until_signal(lambda: run_session(plan))}\n")

    def prepare(args: argparse.Namespace) -> SessionPlan:
        config = ServerConfig.from_args(args)
        try:
            raise_fd_limit(config.min_nodes)  # before any socket: one descriptor per node
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return plan_session(config)

    return command_main(build_parser(), argv, prepare=prepare, run=run, config_section="server")


if __name__ == "__main__":
    sys.exit(main())
