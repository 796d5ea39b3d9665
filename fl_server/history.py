"""The session history document (``history/<session>.json``, format ``fl-history/1``) and its one writer.

``SessionHistory`` owns the document: it is created with the session's settings, takes typed records
(``fl_server.records``) for rounds, resumes and the closing totals, and saves it after every change that
matters. ``load_history`` reads one back for ``fl-history`` (and anything else that reads them), checking the
structure first so that a damaged or hostile file is one clear error.

On disk a history is two files, so that what a round costs to persist does not grow with the rounds before it
(issue 19: at thousands of nodes the whole document, per-node detail of every round, was rewritten twice per
round). ``<session>.rounds.jsonl`` holds each round's full record (the one the hash chain and the signature
cover: participants, per-node metrics and samples, accepted updates), one JSON line per round, appended once
(``flush_detail``). ``<session>.json`` is the *summary*, rewritten atomically: the session's settings and
totals, and per round everything but the per-node fields (``PER_NODE_FIELDS``, counted instead in
``num_participants`` and ``num_accepted``), with ``"round_detail"`` naming the JSON Lines file. Readers that
know nothing of the detail file still read the summary (same format, same keys); ``load_history`` merges the
two (the summary's fields over the detail's, so that an edit to either shows) and checks that each detail line
is the round the summary names (``round_digest``). A history written before the split
(full rounds in the JSON, no ``round_detail``) loads as it always did.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.atomic import OWNER_ONLY, atomic_text_file
from common.wire.errors import ProtocolError
from common.wire.safe_json import finite_or_null, loads_untrusted, read_json_file
from fl_server.chain import genesis_digest, link_round
from fl_server.records import ResumeMark, RoundRecord, SessionSummary

if TYPE_CHECKING:
    from common.wire.server_key import ServerSigner

HISTORY_FORMAT = "fl-history/1"
MAX_HISTORY_BYTES = 512 * 1024 * 1024
DETAIL_SUFFIX = ".rounds.jsonl"
MAX_DETAIL_LINE_BYTES = 256 * 1024 * 1024  # one round's full record
# Fields of a round record whose size grows with the round's nodes: kept in the detail file only.
PER_NODE_FIELDS = ("participants", "accepted", "num_samples", "missing_acks", "incomplete_updates", "refused_nodes",
                   "capped_weights", "accepted_updates", "declared_samples")
PRIVACY_NUMBERS = ("epsilon", "delta", "noise_multiplier", "clip", "sampling_rate")

logger = logging.getLogger(__name__)


class HistoryFileError(ValueError):
    """A history file that cannot be used; the message names the file and the problem."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_json_atomic(path: Path, document: Any) -> None:
    """Write standard JSON to a temporary file in the same folder, fsync, then rename over ``path``.

    A non-finite number (a NaN loss, an overflowed average) is written as null, and the document lists
    where under ``non_finite_values`` (not JSON's business to carry NaN; other tools refuse it)."""
    document, replaced = finite_or_null(document)
    if replaced and isinstance(document, dict):
        document["non_finite_values"] = sorted(set(document.get("non_finite_values") or []) | set(replaced))
    with atomic_text_file(path, permissions=OWNER_ONLY) as handle:
        json.dump(document, handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


def detail_path(history_path: Path) -> Path:
    """``<session>.rounds.jsonl`` next to ``<session>.json``."""
    return Path(history_path).with_name(Path(history_path).stem + DETAIL_SUFFIX)


def summarize_round(record: dict[str, Any]) -> dict[str, Any]:
    """A round's summary: the record without its per-node fields (counted instead); ``train.per_node`` and
    ``federated_eval.per_node`` go too."""
    summary = {k: v for k, v in record.items() if k not in PER_NODE_FIELDS}
    summary["num_participants"] = len(record.get("participants") or [])
    summary["num_accepted"] = len(record.get("accepted") or [])
    for section in ("train", "federated_eval"):
        if isinstance(record.get(section), dict) and "per_node" in record[section]:
            summary[section] = {k: v for k, v in record[section].items() if k != "per_node"}
    return summary


def _detail_line(record: dict[str, Any]) -> str:
    record, _ = finite_or_null(record)
    return json.dumps(record, sort_keys=False, allow_nan=False, separators=(",", ":")) + "\n"


class SessionHistory:
    """The history document of one session and where it lives; the only code that changes the document."""

    def __init__(self, path: Path, document: dict[str, Any], detail_written: int = 0) -> None:
        self.path = Path(path)
        self.document = document  # in memory: the full rounds; on disk: the summary and the detail file
        self._signer: ServerSigner | None = None
        self._detail_written = detail_written  # rounds whose full record is in the detail file
        self._detail_lock = threading.Lock()  # flush_detail runs on the round loop's worker thread

    @property
    def detail_path(self) -> Path:
        return detail_path(self.path)

    def sign_with(self, signer: ServerSigner | None) -> None:
        """Sign every round added from now on with the server key (``--server-key``), and name its public key."""
        self._signer = signer
        if signer is not None:
            self.document["server_public_key"] = signer.public.to_pem()
            self.document["server_key_id"] = signer.key_id
        else:
            logger.warning("no --server-key: round records are hash-chained but NOT signed, and global models are "
                           "published unsigned (fl-keys create --server makes a key)")

    @classmethod
    def create(cls, directory: Path, session_id: str, config: dict[str, Any]) -> SessionHistory:
        """A new session's history (not written until ``save``)."""
        return cls(Path(directory) / f"{session_id}.json", {
            "format": HISTORY_FORMAT,
            "session_id": session_id,
            "config": config,
            "started_at": utc_now(),
            "finished_at": None,
            "status": "running",
            "rounds": [],
        })

    @classmethod
    def resumed(cls, path: Path, document: dict[str, Any], mark: ResumeMark) -> SessionHistory:
        """The history of a session picked up again (``document`` comes from its checkpoint: a summary, whose
        rounds' detail is read back from the detail file, which loses any round past the checkpoint's)."""
        path = Path(path)
        written = 0
        if document.get("round_detail") is not None:
            rounds = merge_detail(path, document["rounds"])
            document = {**document, "rounds": rounds}
            with atomic_text_file(detail_path(path), permissions=OWNER_ONLY) as handle:
                handle.writelines(_detail_line(r) for r in rounds)
            written = len(rounds)
        history = cls(path, document, detail_written=written)  # an older checkpoint's full rounds: written anew
        document.setdefault("resumes", []).append(mark.to_wire())
        document.update(status="running", finished_at=None)
        return history

    @property
    def session_id(self) -> str:
        return str(self.document["session_id"])

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.document["config"]
        return config

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """The rounds as written (read-only use; add rounds with ``add_round``)."""
        rounds: list[dict[str, Any]] = self.document["rounds"]
        return rounds

    def round_records(self) -> list[RoundRecord]:
        return [RoundRecord.from_wire(r) for r in self.rounds]

    def describe(self, **facts: Any) -> None:
        """Facts about the session learned after it started (data, model size), kept with its settings."""
        self.config.update(facts)

    def set_initial_holdout(self, metrics: dict[str, float]) -> None:
        self.document["initial_holdout"] = metrics

    def add_round(self, record: RoundRecord) -> None:
        """Append a round (in memory: the caller saves, after its checkpoint), chained to the round before it
        (``fl_server.chain``) and signed with the server key if there is one."""
        wire = record.to_wire()
        if not wire["strategy"] and "strategy" in self.config:  # the session's, as its settings name it: signed
            wire["strategy"] = {"name": self.config.get("strategy"), "params": self.config.get("strategy_params")}
        previous = self.rounds[-1].get("round_digest") if self.rounds else None
        prev_digest = previous if isinstance(previous, str) and previous else genesis_digest(self.session_id,
                                                                                              self.config)
        self.rounds.append(link_round(wire, prev_digest, self._signer))

    def set_final_model_ref(self, ref: dict[str, Any]) -> None:
        """Where the model ``end_session`` announced sits in Kafka (fl-audit checks the last round against it)."""
        self.document["final_model_ref"] = ref

    def set_privacy_state(self, state: dict[str, Any]) -> None:
        """The privacy accountant after the last recorded round (``--resume`` continues from it)."""
        self.document["privacy_accountant"] = state

    @property
    def privacy_state(self) -> dict[str, Any] | None:
        state = self.document.get("privacy_accountant")
        return state if isinstance(state, dict) else None

    def set_final_model(self, path: Path) -> None:
        self.document["final_model"] = str(path)

    def finish(self, status: str, summary: SessionSummary | None = None) -> None:
        """Close the session (``completed``, ``interrupted``, ``failed``) with its totals, and save."""
        self.document["finished_at"] = utc_now()
        self.document["status"] = status
        if summary is not None:
            self.document.update(summary.to_wire())
        self.save()

    def flush_detail(self) -> None:
        """Append the full records of the rounds not yet in the detail file (one line each, fsynced): the cost
        of a round, whatever came before it. Before the checkpoint and the summary name those rounds."""
        with self._detail_lock:
            rounds = self.rounds[self._detail_written:]
            if not rounds:
                return
            mode = "a" if self._detail_written else "w"
            self.detail_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.detail_path, mode, encoding="utf-8", opener=_owner_only) as handle:
                handle.writelines(_detail_line(r) for r in rounds)
                handle.flush()
                os.fsync(handle.fileno())
            self._detail_written += len(rounds)

    def summary_document(self) -> dict[str, Any]:
        """What ``<session>.json`` (and a checkpoint) holds: the document with the rounds summarized."""
        return {**self.document, "rounds": [summarize_round(r) for r in self.rounds],
                "round_detail": self.detail_path.name}

    def save(self) -> None:
        self.flush_detail()
        write_json_atomic(self.path, self.summary_document())


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, OWNER_ONLY)


def read_detail(history_path: Path) -> dict[int, dict[str, Any]]:
    """The detail file's full round records by round number (``HistoryFileError`` when unusable)."""
    path = detail_path(history_path)
    try:
        if path.stat().st_size > MAX_HISTORY_BYTES:
            raise HistoryFileError(f"{path}: larger than {MAX_HISTORY_BYTES} bytes")
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise HistoryFileError(f"{path}: no such file (the summary names it for the rounds' detail)") from None
    except OSError as exc:
        raise HistoryFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    rounds: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = loads_untrusted(line, max_bytes=MAX_DETAIL_LINE_BYTES, what="round detail")
        except ProtocolError as exc:
            if number == len(lines):
                break  # a last line cut short by a crash: that round was never named by the summary
            raise HistoryFileError(f"{path}:{number}: not a round record ({exc})") from None
        problem = round_problem(record)
        if problem is not None:
            raise HistoryFileError(f"{path}:{number}: not a usable round record (round{problem})")
        rounds[record["round"]] = record
    return rounds


def merge_detail(history_path: Path, summaries: list[Any]) -> list[dict[str, Any]]:
    """The summary's rounds with their full records from the detail file, each checked against the summary's
    ``round_digest`` (a detail line that is not the summarized round is refused)."""
    if not summaries:
        return []  # before round 1 the detail file need not exist yet
    detail = read_detail(history_path)
    rounds = []
    for summary in summaries:
        number = summary.get("round") if isinstance(summary, dict) else None
        record = detail.get(number) if isinstance(number, int) else None
        if record is None:
            raise HistoryFileError(f"{detail_path(history_path)}: no detail for round {number}")
        if record.get("round_digest") != summary.get("round_digest"):
            raise HistoryFileError(f"{detail_path(history_path)}: round {number} is not the round the summary "
                                   "names (round_digest differs)")
        rounds.append(_merged(summary, record))
    return rounds


def _merged(summary: dict[str, Any], detail: dict[str, Any]) -> dict[str, Any]:
    """The round as the two files say it: the detail's per-node fields, the summary's everything else (so an
    edit to either file shows in the merged round, and the hash chain catches it)."""
    merged = dict(detail)
    for key, value in summary.items():
        if key in ("num_participants", "num_accepted"):
            continue
        if key in ("train", "federated_eval") and isinstance(value, dict) and isinstance(detail.get(key), dict):
            merged[key] = {**detail[key], **value}
        else:
            merged[key] = value
    return merged


def load_history(path: Path) -> dict[str, Any]:
    """Load and sanity-check a history file; raises ``HistoryFileError`` with a clear message."""
    try:
        document = read_json_file(path, max_bytes=MAX_HISTORY_BYTES)
    except FileNotFoundError:
        raise HistoryFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise HistoryFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ProtocolError as exc:
        raise HistoryFileError(f"{path}: not a history file (invalid or truncated JSON: {exc})") from None
    if not isinstance(document, dict) or document.get("format") != HISTORY_FORMAT:
        raise HistoryFileError(f"{path}: not a history file (no \"format\": \"{HISTORY_FORMAT}\")")
    if not isinstance(document.get("rounds"), list):
        raise HistoryFileError(f"{path}: history file has no rounds list")
    if document.get("round_detail") is not None:  # the summary: the rounds' full records are next to it
        document["rounds"] = merge_detail(Path(path), document["rounds"])
    problem = history_problem(document)
    if problem is not None:
        raise HistoryFileError(f"{path}: not a usable history file ({problem})")
    return document


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def history_problem(document: dict[str, Any]) -> str | None:
    """The first field whose type the readers cannot use, or None: a hostile or damaged file is one line, never
    a traceback. Numbers may be null (not finite when measured)."""
    if not isinstance(document.get("config", {}), dict):
        return "config must be an object"
    for index, record in enumerate(document["rounds"]):
        problem = round_problem(record)
        if problem is not None:
            return f"rounds[{index}]{problem}"
    return None


def round_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return " must be an object"
    if not isinstance(record.get("round"), int) or isinstance(record.get("round"), bool):
        return ".round must be an integer"
    for name in ("accepted", "participants"):
        if not isinstance(record.get(name, []), list):
            return f".{name} must be a list"
    if not isinstance(record.get("rejected_updates", 0), int):
        return ".rejected_updates must be an integer"
    if not isinstance(record.get("secure_aggregation") or {}, dict):
        return ".secure_aggregation must be an object or null"
    federated = record.get("federated_eval", {})
    if not isinstance(federated, dict):
        return ".federated_eval must be an object"
    for name in ("weighted", "weighted_personalized"):
        section = federated.get(name) or {}
        if not isinstance(section, dict) or not all(v is None or is_number(v) for v in section.values()):
            return f".federated_eval.{name} must be an object of numbers or nulls"
    for name in ("train", "holdout", "timings_s", "privacy"):
        section = record.get(name, {}) if name != "privacy" else record.get(name) or {}
        if not isinstance(section, dict):
            return f".{name} must be an object"
        for key, value in section.items():
            numeric = key != "per_node" if name != "privacy" else key in PRIVACY_NUMBERS
            if numeric and value is not None and not is_number(value):
                return f".{name}.{key} must be a number or null"
    return None
