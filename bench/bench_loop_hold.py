"""How long one update record holds the server's event loop: everything on the loop vs. the split path.

One signed update of a ``--model-mb`` MiB float32 model, cut into the protocol's 512 KiB chunks, is fed
to a round collector twice, side by side in one run:

* ``on the loop`` is what the server did before: for every record, size check, HMAC, JSON, strict
  base64 and bookkeeping on the event loop, and for the last record also joining the chunks,
  rebuilding the arrays and the finiteness check (``RoundCollector.offer_record``);
* ``split`` is what it does now: ``inspect_record`` on the Kafka consumer's thread, ``offer`` (the
  only part left on the loop) per record, ``assemble_update`` in a worker.

Printed: the longest and the total time the loop is held per update, and the time moved to other
threads. Acknowledgements, connects and heartbeats wait for the loop as long as it is held.

    .venv/bin/python bench/bench_loop_hold.py [--model-mb 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.wire.codec import ArraySpec
from common.wire.integrity import KeyRegistry, signed_headers
from common.wire.protocol import KIND_UPDATE, RawRecord, encode_chunk, split_weights
from fl_server.collector import RoundCollector, assemble_update, inspect_record

KEY = b"k" * 32
MB = 1024 * 1024


def signed_records(model: list[np.ndarray]) -> list[RawRecord]:
    out = []
    for chunk in split_weights(model, kind=KIND_UPDATE, session_id="s", server_round=1, node_id="n0",
                               num_samples=100):
        value = encode_chunk(chunk)
        out.append(RawRecord(value, b"n0", tuple(signed_headers(KEY, chunk, value))))
    return out


def collector(model: list[np.ndarray], keys: KeyRegistry) -> RoundCollector:
    return RoundCollector(session_id="s", server_round=1, participants=["n0"],
                          expected_specs=[ArraySpec.of(w) for w in model], keys=keys, max_record_bytes=8 * MB)


def on_the_loop(model, records, keys) -> tuple[list[float], float]:
    c = collector(model, keys)
    holds = []
    for record in records:
        t = time.perf_counter()
        c.offer_record(record)
        holds.append(time.perf_counter() - t)
    assert c.completed, "the update was not accepted"
    return holds, 0.0


def split(model, records, keys) -> tuple[list[float], float]:
    c = collector(model, keys)
    holds, elsewhere = [], 0.0
    for record in records:
        t = time.perf_counter()
        item = inspect_record(record, keys=keys, max_record_bytes=8 * MB)  # the consumer's thread
        elsewhere += time.perf_counter() - t
        t = time.perf_counter()
        pending = c.offer(item)  # the event loop
        holds.append(time.perf_counter() - t)
        if pending is not None:
            t = time.perf_counter()
            outcome = assemble_update(pending)  # a worker
            elsewhere += time.perf_counter() - t
            t = time.perf_counter()
            c.conclude(pending, outcome)  # the event loop
            holds[-1] += time.perf_counter() - t
    assert c.completed, "the update was not accepted"
    return holds, elsewhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-mb", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    elements = int(args.model_mb * MB / 4)
    model = [rng.standard_normal(elements - 1000, dtype=np.float32), rng.standard_normal(1000, dtype=np.float32)]
    records = signed_records(model)
    keys = KeyRegistry({"n0": KEY})
    print(f"update: {args.model_mb:g} MiB float32 in {len(records)} records, best of {args.repeats} runs")
    results = {}
    for name, run in (("on the loop", on_the_loop), ("split", split)):
        best = min((run(model, records, keys) for _ in range(args.repeats)), key=lambda r: max(r[0]))
        results[name] = best
        holds, elsewhere = best
        print(f"{name:12s} longest hold {max(holds) * 1000:9.2f} ms   total on loop {sum(holds) * 1000:9.2f} ms"
              f"   in other threads {elsewhere * 1000:9.2f} ms")
    old, new = results["on the loop"][0], results["split"][0]
    print(f"ratio: longest hold {max(old) / max(new):.0f}x shorter, total loop time {sum(old) / sum(new):.0f}x less")


if __name__ == "__main__":
    main()
