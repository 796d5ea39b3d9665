"""``fl-decryptor``: the only holder of the federation's Paillier private key (``--secure-aggregation paillier``).

    fl-decryptor --key keys/paillier.key.json --node-keys keys/registry.json --kafka host:port --listen 0.0.0.0:8470

Serves ``POST /decrypt`` (``common.paillier.messages``) and ``GET /health``. For each request it reads the round's
update records from Kafka itself (within the offsets the server names, at most ``--max-records``), checks every
node signature, recomputes the homomorphic sum of the updates the server says it accepted and decrypts only if
that equals the server's sum, the sum covers at least ``--min-updates`` nodes and the round was not decrypted
before (``fl_server.decryptor``). The answer is signed with the decryptor's Ed25519 key. Run it where the server's
operator cannot read its key: the protection rests on the two not colluding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from common.atomic import write_text_atomic
from common.cli import UsageError, command_main, run_until_signal
from common.config import (
    DEFAULT_KAFKA,
    DEFAULT_UPDATES_TOPIC,
    add_logging_options,
    add_option,
    positive_int,
)
from common.paillier.keys import PaillierPrivate
from common.paillier.messages import DecryptedSum, DecryptRequest
from common.ratelog import RateLimitedLog
from common.transport import kafka_io
from common.transport.kafka_security import KafkaSecurity, add_kafka_security_options
from common.wire.errors import ProtocolError
from common.wire.integrity import KeyRegistry
from common.wire.protocol import MAX_RECORD_BYTES, RawRecord
from common.wire.safe_json import loads_untrusted, read_json_file
from fl_server.decryptor import Refusal, check_request, decrypt, judge_sum, topic_sum

logger = logging.getLogger("fl_decryptor")
refusal_log = RateLimitedLog(logger)
MAX_REMEMBERED_ROUNDS = 100_000  # (session, round) pairs decrypted, kept so none is decrypted twice


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-decryptor",
        description="Decrypt the sums of Paillier-encrypted updates for fl-server --secure-aggregation paillier, "
        "after checking them against the updates topic. Holds the federation's private key: run it apart from "
        "the server.")
    add_option(parser, "--key", type=Path, default=None, env="FL_DECRYPTOR_KEY", required=True,
               help="the federation's private key (paillier.key.json from fl-keys create --paillier)")
    add_option(parser, "--listen", default="127.0.0.1:8470", help="HOST:PORT to serve POST /decrypt on")
    add_option(parser, "--node-keys", type=Path, default=None, required=True,
               help="the node key registry (fl-keys): every update record summed must carry its node's signature")
    add_option(parser, "--kafka", default=DEFAULT_KAFKA, help="Kafka bootstrap servers holding the updates topic")
    add_option(parser, "--updates-topic", default=DEFAULT_UPDATES_TOPIC, help="Kafka topic of node updates")
    add_option(parser, "--state-file", type=Path, default=None,
               help="JSON file of the rounds already decrypted, kept across restarts (without it a restarted "
               "decryptor could be asked for a second sum of a round, over other nodes)")
    add_option(parser, "--min-updates", type=positive_int, default=2,
               help="refuse to decrypt a sum of fewer updates (at least 2: one would be a node's update in clear)")
    add_option(parser, "--max-records", type=positive_int, default=100_000,
               help="most update records one request may make the decryptor read")
    add_option(parser, "--max-request-bytes", type=positive_int, default=64 * 1024 * 1024,
               help="largest POST /decrypt body accepted")
    add_option(parser, "--max-record-bytes", type=positive_int, default=MAX_RECORD_BYTES,
               help="largest update record accepted (as fl-server's)")
    add_kafka_security_options(parser)
    add_logging_options(parser)
    return parser


@dataclass(frozen=True)
class DecryptorPlan:
    key: PaillierPrivate
    keys: KeyRegistry
    host: str
    port: int
    kafka: str
    kafka_config: dict[str, Any]
    updates_topic: str
    min_updates: int
    max_records: int
    max_request_bytes: int
    max_record_bytes: int
    state_file: Path | None = None
    decrypted_before: frozenset[tuple[str, int]] = frozenset()  # read from the state file


def load_state(path: Path | None) -> set[tuple[str, int]]:
    """The rounds decrypted before (``--state-file``); a missing file is an empty state."""
    if path is None:
        logger.warning("no --state-file: the rounds decrypted are remembered only until this process stops")
        return set()
    if not path.exists():
        return set()
    try:
        document = read_json_file(path, max_bytes=64 * 1024 * 1024)
        pairs = {(str(session), int(server_round)) for session, server_round in document["decrypted"]}
    except (OSError, ValueError, ProtocolError, KeyError, TypeError) as exc:
        raise UsageError(f"--state-file {path}: unreadable ({exc}); refusing to start without knowing what was "
                         "decrypted") from None
    logger.info("%d round(s) decrypted before (from %s)", len(pairs), path)
    return pairs


def save_state(path: Path, decrypted: set[tuple[str, int]]) -> None:
    write_text_atomic(path, json.dumps({"decrypted": sorted([s, r] for s, r in decrypted)}) + "\n")


def prepare(args: argparse.Namespace) -> DecryptorPlan:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {args.listen!r:.80}: expected HOST:PORT")
    if args.min_updates < 2:
        raise UsageError("--min-updates must be at least 2: the sum of one update is that update")
    try:
        key = PaillierPrivate.load(args.key)
    except ValueError as exc:
        raise UsageError(f"--key: {exc}") from None
    return DecryptorPlan(key, KeyRegistry.load(args.node_keys), host, int(port), args.kafka,
                         KafkaSecurity.from_args(args).to_client_config(), args.updates_topic, args.min_updates,
                         args.max_records, args.max_request_bytes, args.max_record_bytes, args.state_file,
                         frozenset(load_state(args.state_file)))


class Decryptor:
    """The service: one decryption at a time (so no round can be decrypted twice by racing requests)."""

    def __init__(self, plan: DecryptorPlan) -> None:
        self.plan = plan
        self.public = plan.key.public
        self.decrypted: set[tuple[str, int]] = set(plan.decrypted_before)
        self._lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.plan.max_request_bytes)
        app.router.add_post("/decrypt", self.handle_decrypt)
        app.router.add_get("/health", self.handle_health)
        return app

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "key_id": self.public.key_id, "key_bits": self.public.key_bits,
                                  "decrypted_rounds": len(self.decrypted)})

    async def handle_decrypt(self, request: web.Request) -> web.Response:
        try:
            document = loads_untrusted(await request.read(), max_bytes=self.plan.max_request_bytes,
                                       what="decrypt request")
            decrypt_request = DecryptRequest.from_wire(document)
        except ProtocolError as exc:
            return self._refuse(400, exc.reason, str(exc)[:300])
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "too_large", f"the request exceeds {self.plan.max_request_bytes} bytes")
        async with self._lock:
            try:
                check_request(decrypt_request, key_id=self.public.key_id, min_updates=self.plan.min_updates,
                              decrypted=self.decrypted)
                answer = await asyncio.get_running_loop().run_in_executor(None, self._decrypt, decrypt_request)
            except Refusal as refusal:
                return self._refuse(409, refusal.reason, str(refusal), decrypt_request)
            if len(self.decrypted) >= MAX_REMEMBERED_ROUNDS:
                self.decrypted.pop()
            self.decrypted.add((decrypt_request.session_id, decrypt_request.server_round))
            if self.plan.state_file is not None:  # written before the answer leaves: a crash cannot forget it
                await asyncio.get_running_loop().run_in_executor(None, save_state, self.plan.state_file,
                                                                 set(self.decrypted))
        logger.info("session %s round %d: decrypted the sum of %d update(s): %s", decrypt_request.session_id,
                    decrypt_request.server_round, len(decrypt_request.nodes), ", ".join(decrypt_request.nodes))
        return web.json_response(answer.to_wire())

    def _refuse(self, status: int, reason: str, detail: str, request: DecryptRequest | None = None) -> web.Response:
        where = f"session {request.session_id} round {request.server_round}" if request else "a request"
        refusal_log.warning(reason, "refused to decrypt %s (%s): %s", where, reason, detail)
        return web.json_response({"type": "paillier/refused", "reason": reason, "detail": detail}, status=status)

    def _decrypt(self, request: DecryptRequest) -> DecryptedSum:
        """Worker thread: read the round's records, recompute and compare the sum, decrypt, sign."""
        spans = sum(end - start for start, end in request.offsets.values())
        if spans > self.plan.max_records:
            raise Refusal("too_many_records", f"the offsets span {spans} records (--max-records "
                                              f"{self.plan.max_records})")
        from fl_server.audit.audit import MissingRecords
        from fl_server.audit.source import KafkaSource

        with KafkaSource(self.plan.kafka, config=self.plan.kafka_config, poll_timeout_s=30.0) as source:
            def records() -> Iterator[RawRecord]:
                for partition, (start, end) in sorted(request.offsets.items()):
                    yield from source.records(self.plan.updates_topic, partition, start, end)

            try:
                total = topic_sum(request, records(), public_key=self.public.public_key, keys=self.plan.keys,
                                  max_records=self.plan.max_records, max_record_bytes=self.plan.max_record_bytes)
            except MissingRecords as exc:
                raise Refusal("records_unavailable", str(exc)) from None
        judge_sum(request, total)
        return decrypt(request, self.plan.key.private_key).signed_by(self.plan.key.signer)


async def serve(plan: DecryptorPlan) -> None:
    runner = web.AppRunner(Decryptor(plan).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, plan.host, plan.port)
    await site.start()
    logger.info("fl-decryptor: key %s (%d bits), serving POST /decrypt on %s:%d; updates from %s topic %s",
                plan.key.public.key_id, plan.key.public.key_bits, plan.host, plan.port, plan.kafka,
                plan.updates_topic)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(plan: DecryptorPlan) -> int:
    kafka_io.check_broker(plan.kafka)
    run_until_signal(lambda: serve(plan))
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser(), argv, prepare=prepare, run=run, usage_errors=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
