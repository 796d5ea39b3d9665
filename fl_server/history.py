"""Round history: one JSON document per session, rewritten atomically after every round."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.config_file import SECRET_SETTINGS
from common.wire.safe_json import finite_or_null

HISTORY_FORMAT = "fl-history/1"
MAX_HISTORY_BYTES = 512 * 1024 * 1024


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")




def config_from_args(args: Any) -> dict[str, Any]:
    """The command-line settings of a run, JSON-ready, for the history's ``config`` (secrets left out)."""
    return {k: json_ready(v) for k, v in vars(args).items() if k not in SECRET_SETTINGS and k != "print_config"}


def json_ready(value: Any) -> Any:
    """Paths as text, tuples and sets as lists, at any depth (``fl-baseline --data a.csv b.csv`` is a list)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    return value


def write_json_atomic(path: Path, document: Any) -> None:
    """Write standard JSON to a temporary file in the same folder, fsync, then rename over ``path``.

    A non-finite number (a NaN loss, an overflowed average) is written as null, and the document lists
    where under ``non_finite_values`` (not JSON's business to carry NaN; other tools refuse it)."""
    document, replaced = finite_or_null(document)
    if replaced and isinstance(document, dict):
        document["non_finite_values"] = sorted(set(document.get("non_finite_values") or []) | set(replaced))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=False, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class SessionHistory:
    """The history document of one session and where it lives."""

    def __init__(self, directory: Path, session_id: str, config: dict[str, Any]) -> None:
        self.path = Path(directory) / f"{session_id}.json"
        self.document: dict[str, Any] = {
            "format": HISTORY_FORMAT,
            "session_id": session_id,
            "config": config,
            "started_at": utc_now(),
            "finished_at": None,
            "status": "running",
            "rounds": [],
        }

    @classmethod
    def restore(cls, path: Path, document: dict[str, Any]) -> SessionHistory:
        """The history of a session being resumed (the document comes from its checkpoint)."""
        history = cls.__new__(cls)
        history.path = Path(path)
        history.document = document
        return history

    @property
    def rounds(self) -> list[dict[str, Any]]:
        rounds: list[dict[str, Any]] = self.document["rounds"]
        return rounds

    def add_round(self, record: dict[str, Any]) -> None:
        self.rounds.append(record)
        self.save()

    def finish(self, status: str = "completed", **extra: Any) -> None:
        self.document["finished_at"] = utc_now()
        self.document["status"] = status
        self.document.update(extra)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.document)
