"""``fl-history``: read round history files written by fl-server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fl_server.history import HISTORY_FORMAT


class HistoryFileError(ValueError):
    pass


def load_history(path: Path) -> dict[str, Any]:
    """Load and sanity-check a history file; raises ``HistoryFileError`` with a clear message."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HistoryFileError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HistoryFileError(f"{path}: not a history file (invalid or truncated JSON: {exc})") from None
    if not isinstance(document, dict) or document.get("format") != HISTORY_FORMAT:
        raise HistoryFileError(f"{path}: not a history file (no \"format\": \"{HISTORY_FORMAT}\")")
    if not isinstance(document.get("rounds"), list):
        raise HistoryFileError(f"{path}: history file has no rounds list")
    return document


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(document: dict[str, Any]) -> str:
    header = ["round", "status", "nodes", "train_loss", "holdout_loss", "holdout_acc", "train_s", "transport_s",
              "aggregate_s", "evaluate_s", "total_s", "rejected"]
    rows = [header]
    for r in document["rounds"]:
        t = r.get("timings_s", {})
        holdout = r.get("holdout", {})
        rows.append([
            str(r.get("round")), str(r.get("status", "")),
            f"{len(r.get('accepted', []))}/{len(r.get('participants', []))}",
            _num(r.get("train", {}).get("loss")), _num(holdout.get("loss")), _num(holdout.get("accuracy")),
            _num(t.get("train"), 2), _num(t.get("transport"), 2), _num(t.get("aggregate"), 3),
            _num(t.get("evaluate"), 2), _num(t.get("total"), 2), str(r.get("rejected_updates", 0)),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    title = (f"session {document.get('session_id')}  status {document.get('status')}  "
             f"started {document.get('started_at')}  finished {document.get('finished_at')}")
    return "\n".join([title, *lines])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-history", description="Inspect fl-server round history files.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print the rounds of a history file as a table")
    show.add_argument("file", type=Path, help="history/<session>.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        document = load_history(args.file)
    except HistoryFileError as exc:
        sys.stderr.write(f"fl-history: {exc}\n")
        return 2
    sys.stdout.write(format_table(document) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
