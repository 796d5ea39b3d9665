"""``fl-data partition``: write one CSV per node plus a holdout CSV, with iid or skewed class mixes."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.cli import command_main
from common.config import add_logging_options, add_option, positive_float, positive_int
from common.data.datasets import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_SEED,
    REGRESSION_DATASETS,
    TabularData,
    check_class_column,
    load_builtin,
    read_csv,
)
from common.data.disclosure import DEFAULT_MIN_CATEGORY_COUNT
from common.data.partition import SCHEMES, dominant_class_share, holdout_split, partition
from common.data.tabular import label_text
from common.ml.tasks import REGRESSION, TASKS, infer_task, strata

logger = logging.getLogger("fl_data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-data", description="Prepare data for federated experiments.")
    commands = parser.add_subparsers(dest="command", required=True)
    part = commands.add_parser(
        "partition",
        help="split a dataset into per-node CSV files and a holdout CSV",
        description="Split a built-in dataset or a CSV into node-<i>.csv files (one per node) and holdout.csv, "
        "and print rows and class counts per node. Same seed, same partition.",
    )
    source = part.add_mutually_exclusive_group()
    source.add_argument("--dataset", default=None,
                        help=f"built-in tabular dataset ({', '.join(sorted(BUILTIN_DATASETS))}; "
                        f"default {DEFAULT_DATASET})")
    source.add_argument("--data", type=Path, default=None, help="a CSV file to split")
    part.add_argument("--target", default=None, help="class column (or numeric target) of --data")
    add_option(part, "--task", default=None, choices=list(TASKS),
               help="classification, binary or regression (default: inferred from the target); a regression "
               "target is split and partitioned on its quantile bins (q0 to q9)")
    add_option(part, "--nodes", type=positive_int, default=3, help="number of nodes")
    add_option(part, "--scheme", default="iid", choices=list(SCHEMES), help="how rows are shared out")
    add_option(part, "--alpha", type=positive_float, default=0.5, help="Dirichlet concentration (dirichlet, quantity)")
    add_option(part, "--seed", type=int, default=DEFAULT_SEED, help="seed of the holdout split and the partition")
    add_option(part, "--holdout-fraction", type=positive_float, default=DEFAULT_HOLDOUT_FRACTION,
               help="share of --data kept as holdout.csv (built-in datasets use their fixed holdout split)")
    part.add_argument("--out", type=Path, required=True, help="output folder")
    part.add_argument("--plot", action="store_true", help="also write class-mix.png (class mix per node)")
    part.add_argument("--overwrite", action="store_true",
                      help="write into a folder that is not empty: first remove the files fl-data wrote there "
                      "before (node-<i>.csv, holdout.csv, class-mix.png), and nothing else")
    add_logging_options(parser)
    return parser


def task_of(frame: pd.DataFrame, target: str, task: str | None) -> str:
    """``--task``, or what the target suggests (``common.ml.tasks.infer_task`` on this file's own counts)."""
    if task is not None:
        return task
    numeric = pd.to_numeric(frame[target], errors="coerce")
    counts = frame[target].dropna().map(label_text).value_counts()
    repeated = {str(k): int(v) for k, v in counts.items() if v >= DEFAULT_MIN_CATEGORY_COUNT}
    numeric_count = int(numeric.notna().sum()) if numeric.notna().sum() == frame[target].notna().sum() else None
    return infer_task(repeated, numeric_count)


def strata_labels(frame: pd.DataFrame, target: str, task: str) -> np.ndarray:
    """Class labels, or ``q<i>`` quantile bins of a regression target, to split and partition on."""
    if task == REGRESSION:
        values = pd.to_numeric(frame[target], errors="coerce")
        if values.isna().any():
            raise ValueError(f"regression: column {target!r} has missing or non-numeric values")
        return np.array([f"q{b}" for b in strata(values.to_numpy(), REGRESSION)])
    return frame[target].map(label_text).to_numpy()


def load_source(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Training rows, holdout rows, target column."""
    if args.data is not None:
        if not args.target:
            raise ValueError("--data needs --target")
        frame = read_csv(args.data)
        if args.target not in frame.columns:
            raise ValueError(f"{args.data}: no column {args.target!r}")
        args.task = task_of(frame, args.target, args.task)
        if args.task != REGRESSION:
            check_class_column(frame[args.target], args.target)
        labels = strata_labels(frame, args.target, args.task)
        train_rows, holdout_rows = holdout_split(labels, holdout_fraction=args.holdout_fraction, seed=args.seed)
        return frame.iloc[train_rows], frame.iloc[holdout_rows], args.target
    name = args.dataset or DEFAULT_DATASET
    args.task = args.task or (REGRESSION if name in REGRESSION_DATASETS else None)
    dataset = load_builtin(name, seed=args.seed)
    if not isinstance(dataset, TabularData):
        raise ValueError(f"{dataset.name} is an image dataset; fl-data partitions tabular data")
    args.task = task_of(dataset.train, dataset.target, args.task)
    return dataset.train, dataset.holdout, dataset.target


def class_table(labels: np.ndarray, parts: list[np.ndarray]) -> pd.DataFrame:
    classes = sorted(set(labels), key=lambda v: (len(v), v))
    rows = []
    for node, part in enumerate(parts):
        counts = pd.Series(labels[part]).value_counts()
        rows.append({"node": node, "rows": len(part), **{c: int(counts.get(c, 0)) for c in classes}})
    return pd.DataFrame(rows).set_index("node")


def plot_class_mix(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = table.drop(columns=["rows"])
    shares = counts.div(counts.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(max(6, len(table) * 0.8), 4))
    bottom = np.zeros(len(shares))
    cmap = plt.get_cmap("tab20")
    for i, label in enumerate(shares.columns):
        ax.bar([f"node {n}" for n in shares.index], shares[label], bottom=bottom, label=str(label), color=cmap(i % 20))
        bottom += shares[label].to_numpy()
    ax.set_ylabel("share of the node's rows")
    ax.set_title("class mix per node")
    ax.legend(title="class", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


WRITTEN_FILES = re.compile(r"node-\d+\.csv|holdout\.csv|class-mix\.png")


def prepare_output_folder(folder: Path, *, overwrite: bool) -> None:
    """Refuse a folder with anything in it (a later step would pool stale node files), unless ``overwrite``:
    then remove what an earlier ``fl-data partition`` wrote there, and only that."""
    folder.mkdir(parents=True, exist_ok=True)
    present = sorted(p.name for p in folder.iterdir())
    if not present:
        return
    if not overwrite:
        raise ValueError(f"{folder} is not empty ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''}); "
                         "choose an empty folder, or pass --overwrite to replace an earlier partition's files")
    for name in present:
        if WRITTEN_FILES.fullmatch(name) and (folder / name).is_file():
            (folder / name).unlink()
            logger.info("removed %s (written by an earlier fl-data partition)", folder / name)


@dataclass(frozen=True)
class PartitionPlan:
    """What ``fl-data partition`` will write, decided (and every input checked) before any file is written."""

    args: argparse.Namespace
    train: pd.DataFrame
    holdout: pd.DataFrame
    labels: np.ndarray
    parts: list[np.ndarray]


def plan_partition(args: argparse.Namespace) -> PartitionPlan:
    train, holdout, target = load_source(args)
    labels = strata_labels(train, target, args.task)
    parts = partition(labels, args.nodes, scheme=args.scheme, seed=args.seed, alpha=args.alpha)
    prepare_output_folder(args.out, overwrite=args.overwrite)
    return PartitionPlan(args, train, holdout, labels, parts)


def write_partition(plan: PartitionPlan) -> None:
    args, labels, parts = plan.args, plan.labels, plan.parts
    for node, rows in enumerate(parts):
        plan.train.iloc[rows].to_csv(args.out / f"node-{node}.csv", index=False)
    plan.holdout.to_csv(args.out / "holdout.csv", index=False)
    table = class_table(labels, parts)
    out = sys.stdout
    out.write(table.to_string() + "\n")
    out.write(f"scheme {args.scheme}" + (f" alpha {args.alpha}" if args.scheme in ("dirichlet", "quantity") else "")
              + f", seed {args.seed}: mean dominant-class share {dominant_class_share(labels, parts):.3f} "
              f"(iid would be about {1 / len(table.columns[1:]):.3f}); holdout {len(plan.holdout)} rows\n")
    out.write(f"wrote {args.nodes} node files and holdout.csv to {args.out}\n")
    if args.plot:
        plot_class_mix(table, args.out / "class-mix.png")
        out.write(f"plot: {args.out / 'class-mix.png'}\n")


def main(argv: list[str] | None = None) -> int:
    # Every fl-data failure is about the files the user named, read or written: exit 2 (usage) throughout.
    return command_main(build_parser(), argv, prepare=plan_partition, run=write_partition,
                        usage_errors=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
