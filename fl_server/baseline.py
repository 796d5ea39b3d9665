"""``fl-baseline``: the same model trained centrally on the pooled training data, for comparison.

It spends the same epoch budget as a federated run (rounds x local epochs), evaluates on the same
holdout split after every "round" of epochs, and writes a history file in the same format, so
``fl-history`` can show, plot and compare both.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.cli import UsageError, command_main
from common.config import add_logging_options, add_option, add_training_options, positive_int
from common.metrics_format import format_metrics
from common.ml.batch_eval import evaluate_in_batches, predict_in_batches
from common.ml.tasks import add_task_options
from fl_server.config import DEFAULTS, json_ready
from fl_server.history import SessionHistory, utc_now
from fl_server.records import RoundRecord, RoundTimings

if TYPE_CHECKING:
    from common.data.dataspec import DataSpec

logger = logging.getLogger("fl_baseline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-baseline",
        description="Train the federated model centrally on the pooled training data with the same epoch "
        "budget, and write its curve as a history file.",
    )
    add_option(parser, "--dataset", default=DEFAULTS.dataset, help="built-in dataset (ignored with --data)")
    parser.add_argument("--data", type=Path, nargs="+", default=None,
                        help="the nodes' CSV partitions to pool (e.g. from fl-data partition); needs --holdout")
    add_option(parser, "--holdout", type=Path, default=None, help="holdout CSV (with --data)")
    add_option(parser, "--target", default=None, help="class column of --data and --holdout")
    add_option(parser, "--categorical", default=None, help="comma-separated columns to treat as categorical")
    add_task_options(parser)
    add_option(parser, "--model", default=DEFAULTS.model, help="model name, as for fl-server")
    add_option(parser, "--rounds", type=positive_int, default=DEFAULTS.rounds,
               help="rounds of the federated run to match")
    add_training_options(parser)
    add_option(parser, "--seed", type=int, default=DEFAULTS.seed,
               help="seed of the holdout split and initial weights")
    add_option(parser, "--history-dir", type=Path, default=DEFAULTS.history_dir, help="where the history JSON goes")
    add_option(parser, "--session-id", default=None, help="history file name (default: baseline-<time>)")
    add_logging_options(parser)
    return parser


# What the history's config records (everything: fl-baseline has no secrets, but the list is explicit).
BASELINE_SETTINGS = ("dataset", "data", "holdout", "target", "categorical", "task", "class_weights", "model",
                     "rounds", "epochs", "batch_size", "learning_rate", "optimizer", "seed", "history_dir",
                     "session_id", "log_level", "quiet")


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    if args.data and not (args.holdout and args.target):
        raise UsageError("--data needs --holdout and --target")
    return args


def run_baseline(args: argparse.Namespace) -> Path:
    from common.data.datasets import ImageData, load_builtin, read_csv
    from common.data.dataspec import DataSpec
    from common.data.tabular import encode_frame, local_statistics, merge_statistics, pooled_class_counts
    from common.ml.models import build_model, class_weight_of, compile_model, compile_spec
    from common.ml.tasks import CLASSIFICATION, balanced_class_weights
    from common.ml.tf_setup import configure_tensorflow

    configure_tensorflow()
    categorical = [c for c in (args.categorical or "").split(",") if c]
    if args.data:
        import pandas as pd

        train, holdout, target = pd.concat([read_csv(p) for p in args.data]), read_csv(args.holdout), args.target
    else:
        dataset = load_builtin(args.dataset, seed=args.seed)
        if isinstance(dataset, ImageData):
            if args.task not in (None, CLASSIFICATION):
                raise UsageError(f"{args.dataset} is an image dataset: its task is classification")
            train = holdout = None
            spec = DataSpec.image(dataset.input_shape, dataset.num_classes)
            x_train, y_train = dataset.x_train, dataset.y_train
            x_holdout, y_holdout = dataset.x_holdout, dataset.y_holdout
        else:
            train, holdout, target = dataset.train, dataset.holdout, dataset.target
    if train is not None:
        # The same schema a federation would merge from its nodes' statistics (pooling sums is exact).
        stats = [local_statistics(train, target, categorical)]
        schema = merge_statistics(stats, target, categorical, args.task)
        class_counts = list(pooled_class_counts(stats, target, schema))
        spec = DataSpec.tabular(schema)
        x_train, y_train, _ = encode_frame(train, schema)
        x_holdout, y_holdout, _ = encode_frame(holdout, schema)
    else:
        class_counts = []
    if args.class_weights and not any(class_counts):
        raise UsageError("--class-weights needs a tabular classification or binary target")
    model = build_model(args.model, spec.input_shape, spec.num_classes, seed=args.seed, task=spec.task)
    model_spec = compile_spec(args.optimizer, args.learning_rate, spec.task,
                              balanced_class_weights(class_counts) if args.class_weights else None)
    compile_model(model, model_spec)
    session_id = args.session_id or "baseline-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    config = {name: json_ready(getattr(args, name)) for name in BASELINE_SETTINGS}
    config.update(kind="central_baseline", num_holdout=len(y_holdout), num_parameters=int(model.count_params()),
                  data_spec=spec.to_wire())
    history = SessionHistory.create(args.history_dir, session_id, config)
    for server_round in range(1, args.rounds + 1):
        history.add_round(train_round(model, server_round, args, (x_train, y_train), (x_holdout, y_holdout),
                                      spec=spec, class_weight=class_weight_of(model_spec)))
        history.save()
        holdout_metrics = history.rounds[-1]["holdout"]
        logger.info("baseline round %d: holdout %s", server_round,
                    format_metrics(holdout_metrics))
    history.finish("completed")
    return history.path


def train_round(model: Any, server_round: int, args: argparse.Namespace, train: tuple[Any, Any],
                holdout: tuple[Any, Any], *, spec: DataSpec | None = None,
                class_weight: dict[int, float] | None = None) -> RoundRecord:
    """One "round" of central training: ``--epochs`` over the pooled data, then the holdout evaluation (the
    server's metrics for the task, ``fl_server.evaluation.task_metrics``)."""
    from fl_server.evaluation import CLASSIFICATION, task_metrics

    started_at, t0 = utc_now(), time.perf_counter()
    fit = model.fit(*train, epochs=args.epochs, batch_size=args.batch_size, shuffle=True, verbose=0,
                    class_weight=class_weight)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    task = spec.task if spec is not None else CLASSIFICATION
    schema = spec.schema if spec is not None else None
    predicted = predict_in_batches(model, holdout[0]) if task != CLASSIFICATION else None
    scores = task_metrics(task, evaluate_in_batches(model, *holdout), holdout[1], predicted,
                          (schema.target_mean, schema.target_std) if schema is not None else (0.0, 1.0))
    evaluate_s = time.perf_counter() - t1
    num_samples = len(train[1])
    return RoundRecord(
        server_round=server_round, status="completed", started_at=started_at, ended_at=utc_now(),
        participants=["central"], accepted=["central"], num_samples={"central": num_samples},
        train_loss=float(fit.history["loss"][-1]),
        train_per_node={"central": {k: float(v[-1]) for k, v in fit.history.items()}},
        holdout={k: float(v) for k, v in scores.items()},
        timings=RoundTimings(train=train_s, evaluate=evaluate_s, total=time.perf_counter() - t0),
        connected=1, required_updates=1,
    )


def main(argv: list[str] | None = None) -> int:
    def run(args: argparse.Namespace) -> None:
        sys.stdout.write(f"{run_baseline(args)}\n")

    return command_main(build_parser(), argv, prepare=check_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
