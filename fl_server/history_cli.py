"""``fl-history``: read round history files written by fl-server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.cli import command_main
from common.config import add_logging_options
from common.metrics_format import format_number as num
from fl_server.history import HistoryFileError, load_history

__all__ = ["HistoryFileError", "load_history", "main", "summarize"]


def format_table(document: dict[str, Any]) -> str:
    header = ["round", "status", "nodes", "train_loss", "holdout_loss", "holdout_acc", "train_s", "transport_s",
              "waiting_s", "aggregate_s", "evaluate_s", "total_s", "rejected", "epsilon"]
    rows = [header]
    for r in document["rounds"]:
        t = r.get("timings_s", {})
        holdout = r.get("holdout", {})
        rows.append([
            str(r.get("round")), str(r.get("status", "")),
            f"{len(r.get('accepted', []))}/{len(r.get('participants', []))}",
            num(r.get("train", {}).get("loss")), num(holdout.get("loss")), num(holdout.get("accuracy")),
            num(t.get("train"), 2), num(t.get("transport"), 2), num(t.get("waiting"), 2),
            num(t.get("aggregate"), 3),
            num(t.get("evaluate"), 2), num(t.get("total"), 2), str(r.get("rejected_updates", 0)),
            num((r.get("privacy") or {}).get("epsilon"), 3),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    title = (f"session {document.get('session_id')}  status {document.get('status')}  "
             f"started {document.get('started_at')}  finished {document.get('finished_at')}")
    return "\n".join([title, *lines])


def run_label(document: dict[str, Any]) -> str:
    config = document.get("config", {})
    kind = "central" if config.get("kind") == "central_baseline" else config.get("strategy", "federated")
    return f"{document.get('session_id')} ({kind})"


def accuracy_curve(document: dict[str, Any], x: str = "round") -> list[tuple[float | None, float | None,
                                                                          float | None]]:
    """(x, holdout accuracy, holdout loss) per round; x is the round or the epsilon spent after it."""
    return [(r["round"] if x == "round" else (r.get("privacy") or {}).get("epsilon"),
             r.get("holdout", {}).get("accuracy"), r.get("holdout", {}).get("loss")) for r in document["rounds"]]


def summarize(document: dict[str, Any], target: float | None) -> dict[str, Any]:
    """Final and best accuracy, the first round reaching ``target``, total time."""
    curve = [(int(rnd or 0), acc) for rnd, acc, _ in accuracy_curve(document) if acc is not None]
    reached = next((rnd for rnd, acc in curve if target is not None and acc >= target), None)
    total_s = sum(r.get("timings_s", {}).get("total") or 0.0 for r in document["rounds"])
    return {
        "run": run_label(document),
        "rounds": len(document["rounds"]),
        "final_accuracy": curve[-1][1] if curve else None,
        "best_accuracy": max((acc for _, acc in curve), default=None),
        "best_round": max(curve, key=lambda item: item[1])[0] if curve else None,
        "round_reaching_target": reached,
        "total_s": round(total_s, 2),
    }


def format_compare(summaries: list[dict[str, Any]], target: float | None) -> str:
    header = ["run", "rounds", "final_acc", "best_acc", "best_round",
              f"round>={target}" if target is not None else "round>=target", "total_s"]
    rows = [header] + [[s["run"], str(s["rounds"]), num(s["final_accuracy"]), num(s["best_accuracy"]),
                        str(s["best_round"]),
                        "-" if s["round_reaching_target"] is None else str(s["round_reaching_target"]),
                        f"{s['total_s']:.2f}"] for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths, strict=True))) for row in rows)


def plot_runs(documents: list[dict[str, Any]], out: Path, x: str = "round") -> None:
    """Holdout loss and accuracy per round (or against epsilon), one line per run (headless matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for document in documents:
        curve = [c for c in accuracy_curve(document, x) if c[0] is not None]
        rounds = [c[0] for c in curve]
        label = run_label(document)
        loss_ax.plot(rounds, [c[2] for c in curve], marker="o", markersize=3, label=label)
        acc_ax.plot(rounds, [c[1] for c in curve], marker="o", markersize=3, label=label)
    loss_ax.set(title="holdout loss", xlabel=x, ylabel="loss")
    acc_ax.set(title="holdout accuracy", xlabel=x, ylabel="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if x == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def export_csv(document: dict[str, Any], out: Path) -> int:
    import csv

    fields = ["round", "status", "participants", "accepted", "train_loss", "holdout_loss", "holdout_accuracy",
              "train_s", "transport_s", "waiting_s", "aggregate_s", "evaluate_s", "total_s", "rejected_updates"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in document["rounds"]:
            timings = r.get("timings_s", {})
            writer.writerow({
                "round": r.get("round"), "status": r.get("status"),
                "participants": len(r.get("participants", [])), "accepted": len(r.get("accepted", [])),
                "train_loss": r.get("train", {}).get("loss"), "holdout_loss": r.get("holdout", {}).get("loss"),
                "holdout_accuracy": r.get("holdout", {}).get("accuracy"),
                **{f"{k}_s": timings.get(k) for k in ("train", "transport", "waiting", "aggregate", "evaluate",
                                                      "total")},
                "rejected_updates": r.get("rejected_updates", 0),
            })
    return len(document["rounds"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-history", description="Inspect fl-server and fl-baseline history files.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print the rounds of a history file as a table")
    show.add_argument("file", type=Path, help="history/<session>.json")
    plot = commands.add_parser("plot", help="plot holdout loss and accuracy per round, runs overlaid (PNG)")
    plot.add_argument("files", type=Path, nargs="+", help="history files")
    plot.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG to write")
    plot.add_argument("--x", choices=["round", "epsilon"], default="round",
                      help="horizontal axis: the round, or the privacy spent (epsilon; rounds without DP are left out)")
    compare = commands.add_parser("compare", help="one row per run: final/best accuracy, rounds to a target, time")
    compare.add_argument("files", type=Path, nargs="+", help="history files")
    compare.add_argument("--target", type=float, default=None, help="holdout accuracy to reach, e.g. 0.9")
    export = commands.add_parser("export", help="write the rounds as CSV")
    export.add_argument("file", type=Path, help="history file")
    export.add_argument("--csv", type=Path, required=True, help="CSV to write")
    add_logging_options(parser)
    return parser


def run_command(args: argparse.Namespace) -> None:
    out = sys.stdout
    if args.command == "show":
        out.write(format_table(load_history(args.file)) + "\n")
    elif args.command == "plot":
        plot_runs([load_history(f) for f in args.files], args.out, args.x)
        out.write(f"{args.out}\n")
    elif args.command == "compare":
        summaries = [summarize(load_history(f), args.target) for f in args.files]
        out.write(format_compare(summaries, args.target) + "\n")
    elif args.command == "export":
        count = export_csv(load_history(args.file), args.csv)
        out.write(f"{count} rounds written to {args.csv}\n")


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser(), argv, prepare=lambda args: args, run=run_command,
                        usage_errors=(HistoryFileError,))


if __name__ == "__main__":
    sys.exit(main())
