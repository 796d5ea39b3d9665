"""Secure-aggregation cost in one process: per-stage client CPU, server CPU and bytes per node.

For n = 5, 10, 20 nodes (all pairs, threshold ⌈2n/3⌉) and two update sizes (the digits MLP of ``mlp`` with one
hidden layer of 64: 64·64+64+64·10+10 = 4,810 parameters, and 20,000), one round with no dropout and one with
a node dropping before its masked input, timed with ``time.process_time`` around each call. Bytes are the
JSON wire forms a node sends and receives; the expansion factor compares what a node sends with its plain
float32 update. Nothing here is a test.

    PYTHONPATH=. .venv/bin/python bench/bench_secagg.py
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from common.secagg.crypto import HmacAdvertSigner, HmacAdvertVerifier
from common.secagg.messages import SecAggConfig
from common.secagg.protocol import SecAggClient, SecAggServer
from common.secagg.quantize import Quantizer

DIGITS_MLP_PARAMETERS = 64 * 64 + 64 + 64 * 10 + 10


def wire_bytes(message: Any) -> int:
    return len(json.dumps(message.to_wire(), separators=(",", ":")).encode())


def run(count: int, parameters: int, dropped: int) -> dict[str, float]:
    nodes = tuple(f"node-{i:02d}" for i in range(count))
    keys = {node: node.encode().ljust(32, b"k") for node in nodes}
    config = SecAggConfig("bench", 1, nodes, math.ceil(2 * count / 3), parameters + 1)
    quantizer = Quantizer(max_abs_value=1000.0, bits=16, max_examples=1000)
    rng = np.random.default_rng(0)
    inputs = {node: quantizer.encode(rng.normal(0, 0.1, parameters), 100, rng=rng) for node in nodes}
    cpu: dict[str, list[float]] = defaultdict(list)
    sent: dict[str, int] = defaultdict(int)
    received: dict[str, int] = defaultdict(int)

    def timed(stage: str, call: Callable[..., Any], *args: Any) -> Any:
        start = time.process_time()
        result = call(*args)
        cpu[stage].append(time.process_time() - start)
        return result

    server = SecAggServer(config, verifier=HmacAdvertVerifier(keys))
    clients = {node: SecAggClient(config, node, signer=HmacAdvertSigner(keys[node])) for node in nodes}
    for node, client in clients.items():
        advert = timed("advertise", client.advertise)
        sent[node] += wire_bytes(advert)
        server.receive_advert(advert)
    broadcasts = server.close_adverts()
    for node, client in clients.items():
        received[node] += wire_bytes(broadcasts[node])
        package = timed("share_keys", client.share_keys, broadcasts[node])
        sent[node] += wire_bytes(package)
        server.receive_shares(package)
    deliveries = server.close_shares()
    for node in nodes[dropped:]:
        received[node] += wire_bytes(deliveries[node])
        masked = timed("mask_input", clients[node].mask_input, deliveries[node], inputs[node])
        sent[node] += wire_bytes(masked)
        server.receive_masked(masked)
    requests = server.close_masked()
    for node in requests:
        received[node] += wire_bytes(requests[node])
        response = timed("unmask", clients[node].unmask, requests[node])
        sent[node] += wire_bytes(response)
        server.receive_unmask(response)
    start = time.process_time()
    result = server.finish()
    server_s = time.process_time() - start
    plain = np.zeros(parameters + 1, dtype=np.uint32)
    for node in result.survivors:
        plain = plain + inputs[node]
    assert np.array_equal(result.total, plain)
    survivor = nodes[-1]
    return {**{stage: float(np.median(times)) for stage, times in cpu.items()}, "server": server_s,
            "sent": sent[survivor], "received": received[survivor], "expansion": sent[survivor] / (4 * parameters)}


def main() -> None:
    header = (f"{'n':>3} {'params':>7} {'drop':>4} | client CPU ms (median): {'adv':>5} {'share':>6} {'mask':>7} "
              f"{'unmask':>6} | {'server ms':>9} | {'sent B':>9} {'recv B':>9} {'x float32':>9}")
    print(header)
    print("-" * len(header))
    for parameters in (DIGITS_MLP_PARAMETERS, 20_000):
        for count in (5, 10, 20):
            for dropped in (0, 1):
                r = run(count, parameters, dropped)
                print(f"{count:>3} {parameters:>7} {dropped:>4} | {'':>23} {1e3 * r['advertise']:>5.2f} "
                      f"{1e3 * r['share_keys']:>6.2f} {1e3 * r['mask_input']:>7.2f} {1e3 * r['unmask']:>6.2f} | "
                      f"{1e3 * r['server']:>9.1f} | {r['sent']:>9,} {r['received']:>9,} {r['expansion']:>9.2f}")


if __name__ == "__main__":
    main()
