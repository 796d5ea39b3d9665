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

from common.config import add_logging_options, add_option, add_training_options, positive_int, setup_logging
from fl_server.history import SessionHistory, config_from_args, utc_now

logger = logging.getLogger("fl_baseline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-baseline",
        description="Train the federated model centrally on the pooled training data with the same epoch "
        "budget, and write its curve as a history file.",
    )
    add_option(parser, "--dataset", default="digits", help="built-in dataset (ignored with --data)")
    parser.add_argument("--data", type=Path, nargs="+", default=None,
                        help="the nodes' CSV partitions to pool (e.g. from fl-data partition); needs --holdout")
    add_option(parser, "--holdout", type=Path, default=None, help="holdout CSV (with --data)")
    add_option(parser, "--target", default=None, help="class column of --data and --holdout")
    add_option(parser, "--categorical", default=None, help="comma-separated columns to treat as categorical")
    add_option(parser, "--model", default="mlp", help="model name, as for fl-server")
    add_option(parser, "--rounds", type=positive_int, default=5, help="rounds of the federated run to match")
    add_training_options(parser)
    add_option(parser, "--seed", type=int, default=42, help="seed of the holdout split and initial weights")
    add_option(parser, "--history-dir", type=Path, default=Path("history"), help="where the history JSON goes")
    add_option(parser, "--session-id", default=None, help="history file name (default: baseline-<time>)")
    add_logging_options(parser)
    return parser


def run_baseline(args: argparse.Namespace) -> Path:
    from common.data.datasets import ImageData, load_builtin, read_csv
    from common.data.dataspec import DataSpec
    from common.data.tabular import encode_frame, local_statistics, merge_statistics
    from common.ml.models import build_model, compile_model, compile_spec
    from common.ml.tf_setup import configure_tensorflow

    configure_tensorflow()
    categorical = [c for c in (args.categorical or "").split(",") if c]
    if args.data:
        if not (args.holdout and args.target):
            raise ValueError("--data needs --holdout and --target")
        import pandas as pd

        train, holdout, target = pd.concat([read_csv(p) for p in args.data]), read_csv(args.holdout), args.target
    else:
        dataset = load_builtin(args.dataset, seed=args.seed)
        if isinstance(dataset, ImageData):
            train = holdout = None
            spec = DataSpec.image(dataset.input_shape, dataset.num_classes)
            x_train, y_train = dataset.x_train, dataset.y_train
            x_holdout, y_holdout = dataset.x_holdout, dataset.y_holdout
        else:
            train, holdout, target = dataset.train, dataset.holdout, dataset.target
    if train is not None:
        # The same schema a federation would merge from its nodes' statistics (pooling sums is exact).
        schema = merge_statistics([local_statistics(train, target, categorical)], target, categorical)
        spec = DataSpec.tabular(schema)
        x_train, y_train, _ = encode_frame(train, schema)
        x_holdout, y_holdout, _ = encode_frame(holdout, schema)
    model = build_model(args.model, spec.input_shape, spec.num_classes, seed=args.seed)
    compile_model(model, compile_spec(args.optimizer, args.learning_rate))
    session_id = args.session_id or "baseline-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    config = config_from_args(args)
    config.update(kind="central_baseline", num_holdout=len(y_holdout),
                  num_parameters=int(model.count_params()))
    history = SessionHistory(args.history_dir, session_id, config)
    num_samples = len(y_train)
    for server_round in range(1, args.rounds + 1):
        started_at, t0 = utc_now(), time.perf_counter()
        fit = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        shuffle=True, verbose=0)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        scores = model.evaluate(x_holdout, y_holdout, verbose=0, return_dict=True)
        evaluate_s = time.perf_counter() - t1
        holdout_metrics = {k: float(v) for k, v in scores.items()}
        history.add_round({
            "round": server_round, "status": "completed", "started_at": started_at, "ended_at": utc_now(),
            "participants": ["central"], "accepted": ["central"], "num_samples": {"central": num_samples},
            "timed_out": False,
            "train": {"loss": float(fit.history["loss"][-1]),
                      "per_node": {"central": {k: float(v[-1]) for k, v in fit.history.items()}}},
            "holdout": holdout_metrics,
            "timings_s": {"train": round(train_s, 4), "transport": 0.0, "aggregate": 0.0,
                          "evaluate": round(evaluate_s, 4), "total": round(time.perf_counter() - t0, 4)},
            "rejected_updates": 0, "rejected_updates_by_reason": {}, "duplicates": 0,
        })
        logger.info("baseline round %d: holdout %s", server_round,
                    " ".join(f"{k}={v:.4f}" for k, v in holdout_metrics.items()))
    history.finish("completed")
    return history.path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.quiet)
    try:
        path = run_baseline(args)
    except (ValueError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
