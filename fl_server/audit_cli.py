"""``fl-audit``: check a finished (or running) session's history against what Kafka kept, round by round.

    fl-audit history/<session>.json --kafka host:port [--node-keys keys/registry.json] [--server-key keys/server.pub]

Prints one verdict per round (``ok``, ``MISMATCH`` with what failed, or ``not_checked: why``) and exits 0 when
no round mismatches, 3 when one does (1: Kafka could not be read; 2: a flag or an input file is wrong).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import UsageError, command_main
from common.config import DEFAULT_KAFKA, add_logging_options, add_option, non_negative_float
from common.transport import kafka_io
from common.transport.kafka_security import KafkaSecurity, add_kafka_security_options
from common.wire.integrity import KeyRegistry
from common.wire.safe_json import read_json_file
from common.wire.server_key import ServerPublicKey
from fl_server.audit.audit import AuditReport, RoundVerdict, audit_session
from fl_server.checkpoint import MAX_CHECKPOINT_BYTES, checkpoint_path
from fl_server.history import HistoryFileError, load_history

logger = logging.getLogger("fl_audit")
EXIT_MISMATCH = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-audit",
        description="Replay a session from Kafka: verify the hash chain and the server's signatures, every node "
        "signature, the rejected records, and that each published model is the recorded strategy applied to "
        "exactly the accepted updates. Needs only read access to the topics.")
    parser.add_argument("history", type=Path, help="the session's history file (history/<session>.json)")
    add_option(parser, "--kafka", default=DEFAULT_KAFKA, help="Kafka bootstrap servers holding the session's topics")
    add_option(parser, "--node-keys", type=Path, default=None,
               help="the node key registry (fl-keys): checks every update record's signature and the rejections; "
               "without it only the accepted updates are re-read")
    add_option(parser, "--server-key", type=Path, default=None,
               help="the server's public key (server.pub): checks the signature of every round record and model "
               "record (default: the key the history names, which proves nothing against its author)")
    add_option(parser, "--checkpoint", type=Path, default=None,
               help="the session's checkpoint JSON (default: <history dir>/checkpoints/<session>.json, if there)")
    add_option(parser, "--tolerance", type=non_negative_float, default=0.0,
               help="largest absolute difference accepted between the re-computed and the published model "
               "(default 0: bit for bit, which the built-in strategies give)")
    add_kafka_security_options(parser)
    add_logging_options(parser)
    return parser


@dataclass(frozen=True)
class AuditPlan:
    history_path: Path
    document: dict[str, Any]
    kafka: str
    kafka_config: dict[str, Any]
    keys: KeyRegistry | None
    server_key: ServerPublicKey | None
    server_key_source: str
    checkpoint: dict[str, Any] | None
    tolerance: float


def prepare(args: argparse.Namespace) -> AuditPlan:
    try:
        document = load_history(args.history)
    except HistoryFileError as exc:
        raise UsageError(str(exc)) from None
    keys = KeyRegistry.load(args.node_keys) if args.node_keys is not None else None
    server_key, source = None, "none"
    if args.server_key is not None:
        server_key, source = ServerPublicKey.load(args.server_key), str(args.server_key)
    elif isinstance(document.get("server_public_key"), str):
        server_key = ServerPublicKey.from_pem(document["server_public_key"].encode(), where="the history's key")
        source = "named by the history itself (give --server-key for a check that does not trust it)"
    return AuditPlan(args.history, document, args.kafka, KafkaSecurity.from_args(args).to_client_config(), keys,
                     server_key, source, read_checkpoint(args.checkpoint, args.history, document), args.tolerance)


def read_checkpoint(given: Path | None, history_path: Path, document: dict[str, Any]) -> dict[str, Any] | None:
    path = given or checkpoint_path(history_path.parent, str(document.get("session_id", "")))
    if given is None and not path.is_file():
        return None
    try:
        checkpoint = read_json_file(path, max_bytes=MAX_CHECKPOINT_BYTES)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--checkpoint {path}: cannot read ({exc})") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"--checkpoint {path}: not a checkpoint")
    return checkpoint


def run(plan: AuditPlan) -> int:
    from fl_server.audit.source import KafkaSource  # kafka-python only once the flags and files are good

    kafka_io.check_broker(plan.kafka)
    t0 = time.perf_counter()
    with KafkaSource(plan.kafka, config=plan.kafka_config) as source:
        report = audit_session(plan.document, source, keys=plan.keys, server_key=plan.server_key,
                               tolerance=plan.tolerance, checkpoint=plan.checkpoint)
        elapsed_s = time.perf_counter() - t0
        footer = (f"read {source.records_read} record(s), {source.bytes_read / 1e6:.1f} MB from {plan.kafka} in "
                  f"{elapsed_s:.2f}s")
    sys.stdout.write(format_report(report, plan) + footer + "\n")
    return 0 if report.ok else EXIT_MISMATCH


def format_report(report: AuditReport, plan: AuditPlan) -> str:
    key = plan.server_key
    lines = [f"session {report.session_id}: {len(report.rounds)} round(s); server key "
             f"{key.key_id + ' ' + plan.server_key_source if key else 'none'}; node keys "
             f"{len(plan.keys) if plan.keys is not None else 'none'}"]
    lines += [f"note: {note}" for note in report.notes]
    lines.append(f"{'round':>5}  {'status':<9}  {'accepted':<16}  {'model':<12}  verdict")
    for verdict in report.rounds:
        lines.append(f"{verdict.server_round:>5}  {verdict.status:<9}  {_short(verdict):<16}  "
                     f"{verdict.model_sha256[:12]:<12}  {verdict.verdict}")
    for verdict in report.rounds:
        lines += [f"round {verdict.server_round}: {problem}" for problem in verdict.problems]
        lines += [f"round {verdict.server_round}: note: {note}" for note in verdict.notes]
    counts = {"ok": 0, "MISMATCH": 0, "not checked": 0}
    for verdict in report.rounds:
        counts["MISMATCH" if verdict.problems else "not checked" if verdict.not_checked else "ok"] += 1
    outcome = "AUDIT FAILED" if not report.ok else "AUDIT INCOMPLETE" if counts["not checked"] else "AUDIT PASSED"
    lines.append(f"{outcome}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return "\n".join(lines) + "\n"


def _short(verdict: RoundVerdict) -> str:
    text = ",".join(verdict.accepted) or "-"
    return text if len(text) <= 16 else text[:13] + "..."


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser(), argv, prepare=prepare, run=run)


if __name__ == "__main__":
    sys.exit(main())
