"""Past sessions of ``--history-dir`` for the dashboard: listed, and one at a time as curves to overlay.

Reads with ``fl_server.history.load_history`` (the structure checked, hostile files refused with a reason)
and summarises with what ``fl-history compare`` uses. Only ``*.json`` files directly in the folder, named
plainly, smaller than ``MAX_RUN_BYTES``; at most ``MAX_RUNS`` (the newest); parsed documents are cached by
(size, mtime) in a bounded cache. Blocking: call from a worker thread.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fl_server.history import HistoryFileError, load_history
from fl_server.history_cli import accuracy_curve, summarize

logger = logging.getLogger(__name__)

MAX_RUNS = 100
MAX_RUN_BYTES = 64 * 1024 * 1024
CACHE_ENTRIES = 32
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.json$")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class PastRuns:
    def __init__(self, history_dir: Path) -> None:
        self.history_dir = Path(history_dir)
        self._cache: OrderedDict[str, tuple[tuple[int, int], dict[str, Any] | str]] = OrderedDict()

    def _path(self, name: str) -> Path | None:
        """The file ``name`` names in the folder, or None (a bad name, a link out, not a regular file)."""
        if not RUN_NAME.match(name):
            return None
        path = self.history_dir / name
        try:
            if path.is_symlink() or not path.is_file():
                return None
        except OSError:
            return None
        return path

    def _load(self, name: str) -> dict[str, Any] | str:
        """The document, or why it cannot be used (cached per size and mtime)."""
        path = self._path(name)
        if path is None:
            return "no such history file"
        try:
            stat = path.stat()
        except OSError as exc:
            return f"cannot read ({exc.strerror or exc})"
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            self._cache.move_to_end(name)
            return cached[1]
        result: dict[str, Any] | str
        if stat.st_size > MAX_RUN_BYTES:
            result = f"{stat.st_size} bytes, more than the dashboard reads ({MAX_RUN_BYTES})"
        else:
            try:
                result = load_history(path)
            except HistoryFileError as exc:
                logger.info("dashboard: skipped %s", exc)
                result = str(exc).replace(f"{self.history_dir}/", "")[:300]  # no server paths to the page
        self._cache[name] = (key, result)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return result

    def names(self) -> list[str]:
        try:
            files = [p for p in self.history_dir.glob("*.json")
                     if RUN_NAME.match(p.name) and not p.is_symlink() and p.is_file()]
        except OSError:
            return []
        files.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        return [p.name for p in files[:MAX_RUNS]]

    def listing(self) -> list[dict[str, Any]]:
        """One row per past session (newest first): its summary, or the reason it cannot be shown."""
        rows: list[dict[str, Any]] = []
        for name in self.names():
            document = self._load(name)
            if isinstance(document, str):
                rows.append({"name": name, "error": document})
                continue
            summary = summarize(document, None)
            rows.append({"name": name, "session_id": str(document.get("session_id"))[:200],
                         "status": str(document.get("status"))[:40],
                         "strategy": str(document.get("config", {}).get("strategy", ""))[:80],
                         "started_at": str(document.get("started_at"))[:40], "rounds": summary["rounds"],
                         "final_accuracy": _number(summary["final_accuracy"]),
                         "best_accuracy": _number(summary["best_accuracy"])})
        return rows

    def curve(self, name: str) -> dict[str, Any] | None:
        """A past session's holdout curve (round, accuracy, loss), as ``fl-history plot`` draws it; None if unusable."""
        document = self._load(name)
        if isinstance(document, str):
            return None
        points = [{"round": _number(x), "accuracy": _number(acc), "loss": _number(loss)}
                  for x, acc, loss in accuracy_curve(document)]
        return {"name": name, "session_id": str(document.get("session_id"))[:200], "points": points}
