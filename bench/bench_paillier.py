"""What Paillier aggregation really costs, next to plain FedAvg and masking secure aggregation.

Two parts, on the digits logistic regression (650 parameters) and the 64-unit MLP (4,810), with 3 and 5 nodes:

1. **Crypto, in process** (no broker): per node, the time to quantize, pack and encrypt one update; at the
   server, the time to multiply the N updates' ciphertexts; at the decryptor, the time to decrypt the sum; and
   the bytes of one update's records on the wire against the raw float32 update and against the plain update's
   records. With and without packing. Unpacked encryption of the MLP (4,811 ciphertexts per node) is timed on
   ``--sample`` ciphertexts and scaled (marked ``~``).
2. **Rounds, end to end**: real ``fl-server`` and ``fl-decryptor`` processes and a real broker, N light nodes in
   this process (the real ``FederatedNode`` with a numpy "trainer", as ``bench_secure_rounds.py``), one session
   per mode: ``off``, ``secagg`` (masking), ``paillier`` packed and (logreg only: the MLP would take ~a minute
   per node per round) unpacked. The round time is the history's ``timings_s.total``, median of rounds 2..R.
   The light nodes share this process's GIL, so their encryptions run one after another: the Paillier round
   times include about N x one node's encryption, where nodes on their own machines would encrypt in parallel.

Needs a broker for part 2; nothing here is a test.

    .venv/bin/python bench/bench_paillier.py --kafka 127.0.0.1:9092 [--key-bits 2048] [--rounds 3] [--crypto-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_secure_rounds import CountingNode, LightTrainer, free_port
from common.data.datasets import DEFAULT_DATASET, DEFAULT_SEED, load_builtin, node_rows
from common.paillier.keys import PaillierPrivate, PaillierPublic
from common.paillier.packing import PackingLayout, PaillierSpec
from common.paillier.round import add_encrypted, encrypt_encoded
from common.secagg.messages import SecAggConfig
from common.secagg.round import SecureRoundSpec, encode_update
from common.wire.integrity import read_key_file
from common.wire.protocol import KIND_UPDATE, encode_chunk, split_weights
from fl_node.client import NodeSettings
from fl_node.data import LocalData
from fl_server.keys_cli import create_keys

REPO = Path(__file__).resolve().parents[1]
MODELS = {"logreg": [(64, 10), (10,)], "mlp": [(64, 64), (64,), (64, 10), (10,)]}  # digits: 64 features, 10 classes
SAMPLES = 360  # a node's rows with 5 nodes (digits: 1,797 rows, 80 % for training)


def record_bytes(arrays: list[np.ndarray]) -> int:
    return sum(len(encode_chunk(chunk)) for chunk in split_weights(
        arrays, kind=KIND_UPDATE, session_id="s", server_round=1, node_id="n0", num_samples=SAMPLES,
        chunk_bytes=512 * 1024))


def crypto_figures(model: str, nodes: int, packed: bool, key: PaillierPrivate, sample: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    reference = [rng.normal(0, 0.1, shape).astype(np.float32) for shape in MODELS[model]]
    length = sum(int(np.prod(shape)) for shape in MODELS[model]) + 1
    config = SecAggConfig("s", 1, tuple(f"n{i}" for i in range(nodes)), threshold=nodes, vector_length=length)
    layout = PackingLayout.plan(length=length, max_value=(1 << 16) - 1, num_nodes=nodes,
                                key_bits=key.public.key_bits, packed=packed)
    spec = SecureRoundSpec(protocol="paillier", config=config, clip=1.0, bits=16, max_examples=SAMPLES,
                           paillier=PaillierSpec(key_id=key.public.key_id, packing=layout))
    public = key.public.public_key
    encrypt_s, layers, scaled = [], [], False
    for _ in range(nodes):
        trained = [w + rng.normal(0, 0.01, w.shape).astype(np.float32) for w in reference]
        t0 = time.process_time()
        encoded = encode_update(spec, reference, trained, SAMPLES)
        if layout.num_plaintexts > sample:  # time `sample` encryptions, scale to all; reuse them for the sum
            part = PackingLayout(length=sample * layout.slots, max_value=layout.max_value, num_nodes=nodes,
                                 slot_bits=layout.slot_bits, slots=layout.slots, key_bits=layout.key_bits)
            layer = encrypt_encoded(part, public, encoded[:part.length])
            encrypt_s.append((time.process_time() - t0) * layout.num_plaintexts / sample)
            layer = np.concatenate([layer] * (-(-layout.num_plaintexts // sample)))[:layout.num_plaintexts]
            scaled = True
        else:
            layer = encrypt_encoded(layout, public, encoded)
            encrypt_s.append(time.process_time() - t0)
        layers.append(layer)
    t0 = time.process_time()
    total = None
    for layer in layers:
        total = add_encrypted(public, total, layer)
    aggregate_s = time.process_time() - t0
    assert total is not None
    t0 = time.process_time()
    for ciphertext in total[:sample]:
        key.private_key.raw_decrypt(ciphertext)
    decrypt_s = (time.process_time() - t0) * len(total) / min(len(total), sample)
    return {"encrypt_s": statistics.mean(encrypt_s), "aggregate_s": aggregate_s, "decrypt_s": decrypt_s,
            "scaled": scaled or len(total) > sample, "ciphertexts": layout.num_plaintexts, "slots": layout.slots,
            "wire_bytes": record_bytes([layers[0]]), "plain_bytes": record_bytes(reference),
            "float32_bytes": 4 * (length - 1)}


def run_session(model: str, nodes_count: int, mode: str, args: argparse.Namespace, workdir: Path,
                key_files: tuple[Path, Path]) -> dict[str, Any]:
    keys_dir = workdir / "keys"
    node_ids = [f"n{i}" for i in range(nodes_count)]
    create_keys(keys_dir / "registry.json", keys_dir, node_ids)
    suffix = uuid.uuid4().hex[:8]
    updates, models, port = f"bench.updates.{suffix}", f"bench.models.{suffix}", free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FL_TF_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    extra: list[str] = ["--secure-aggregation", mode.split(":")[0]]
    procs = []
    logs = [(workdir / "server.log").open("w"), (workdir / "decryptor.log").open("w")]
    if mode.startswith("paillier"):
        decryptor_port = free_port()
        extra += ["--paillier-public-key", str(key_files[1]), "--paillier-decryptor",
                  f"http://127.0.0.1:{decryptor_port}", "--secagg-stage-timeout", "600"]
        if mode == "paillier:unpacked":
            extra.append("--paillier-no-packing")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fl_server.decryptor_cli", "--key", str(key_files[0]), "--node-keys",
             str(keys_dir / "registry.json"), "--kafka", args.kafka, "--updates-topic", updates, "--listen",
             f"127.0.0.1:{decryptor_port}"], env=env, stdout=logs[1], stderr=subprocess.STDOUT, cwd=workdir))
    server = subprocess.Popen(
        [sys.executable, "-m", "fl_server", "--port", str(port), "--kafka", args.kafka, "--updates-topic", updates,
         "--models-topic", models, "--min-nodes", str(nodes_count), "--rounds", str(args.rounds), "--model", model,
         "--node-keys", str(keys_dir / "registry.json"), "--history-dir", str(workdir / "history"),
         "--end-grace", "20", "--round-timeout", "900", *extra],
        env=env, stdout=logs[0], stderr=subprocess.STDOUT, cwd=workdir)
    procs.append(server)
    dataset = load_builtin(DEFAULT_DATASET, seed=DEFAULT_SEED)
    public = PaillierPublic.load(key_files[1])
    nodes = []
    for index, node_id in enumerate(node_ids):
        rows = node_rows(dataset, index, nodes_count, scheme="iid", alpha=0.5, seed=DEFAULT_SEED)
        data = LocalData(frame=dataset.train.iloc[rows].reset_index(drop=True), target=dataset.target)  # type: ignore[union-attr]
        settings = NodeSettings(node_id=node_id, server_url=f"http://127.0.0.1:{port}", kafka=args.kafka,
                                updates_topic=updates, out_dir=workdir / "models", chunk_bytes=512 * 1024,
                                key=read_key_file(keys_dir / f"{node_id}.key"), paillier_public=public,
                                publish_timeout_s=900)
        nodes.append(CountingNode(settings, data, LightTrainer(index), None))  # type: ignore[arg-type]

    async def run_all() -> None:
        await asyncio.gather(*(node.run() for node in nodes))

    try:
        asyncio.run(run_all())
        if server.wait(900) != 0:
            raise RuntimeError(f"the server failed: see {workdir / 'server.log'}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        for log in logs:
            log.close()
    history = json.loads(next((workdir / "history").glob("*.json")).read_text())
    history["bench_bytes"] = {"update": statistics.mean(n.update_bytes for n in nodes) / args.rounds,
                              "control": statistics.mean(n.control_bytes for n in nodes) / args.rounds}
    return history


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", type=int, default=200, help="ciphertexts timed before scaling (unpacked MLP)")
    parser.add_argument("--crypto-only", action="store_true", help="part 1 only (no broker needed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    key = PaillierPrivate.generate(args.key_bits)
    print(f"Paillier {args.key_bits}-bit key (phe, gmpy2), 16-bit quantization; CPU seconds of one process\n")
    print("| model | nodes | packing | ciphertexts/update | encrypt/node | aggregate (server) | decrypt | "
          "bytes/update | vs float32 | vs plain records |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in MODELS:
        for count in args.nodes:
            for packed in (True, False):
                f = crypto_figures(model, count, packed, key, args.sample)
                mark = "~" if f["scaled"] else ""
                packing = f"{f['slots']} per ciphertext" if packed else "none"
                print(f"| {model} | {count} | {packing} | {f['ciphertexts']} | {mark}{f['encrypt_s']:.3f} s "
                      f"| {f['aggregate_s'] * 1000:.1f} ms | {mark}{f['decrypt_s']:.3f} s | {f['wire_bytes']:,} "
                      f"| {f['wire_bytes'] / f['float32_bytes']:.1f}x | {f['wire_bytes'] / f['plain_bytes']:.1f}x |",
                      flush=True)
    if args.crypto_only:
        return
    print(f"\nRound time (history timings_s.total, median of rounds 2..{args.rounds}); light nodes in one process, "
          "real fl-server, fl-decryptor and broker\n")
    print("| model | nodes | off | secagg | paillier packed | paillier unpacked | packed/off | packed/secagg "
          "| decrypt (HTTP) | update bytes off / secagg / paillier |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-paillier-keys-") as key_dir:
        key_files = (Path(key_dir) / "paillier.key.json", Path(key_dir) / "paillier.pub.json")
        key.save(*key_files)
        for model in MODELS:
            for count in args.nodes:
                modes = ["off", "secagg", "paillier"] + (["paillier:unpacked"] if model == "logreg" else [])
                runs = {}
                for mode in modes:
                    with tempfile.TemporaryDirectory(prefix=f"bench-paillier-{mode.replace(':', '-')}-") as tmp:
                        runs[mode] = run_session(model, count, mode, args, Path(tmp), key_files)
                total = {m: median([r["timings_s"]["total"] for r in h["rounds"][1:]]) for m, h in runs.items()}
                decrypt = median([r["secure_aggregation"]["timings_s"]["decrypt"]
                                  for r in runs["paillier"]["rounds"][1:]])
                byte = {m: h["bench_bytes"]["update"] + h["bench_bytes"]["control"] for m, h in runs.items()}
                unpacked = f"{total['paillier:unpacked']:.2f} s" if "paillier:unpacked" in total else "-"
                print(f"| {model} | {count} | {total['off']:.2f} s | {total['secagg']:.2f} s "
                      f"| {total['paillier']:.2f} s | {unpacked} | {total['paillier'] / total['off']:.1f}x "
                      f"| {total['paillier'] / total['secagg']:.1f}x | {decrypt:.3f} s "
                      f"| {byte['off']:,.0f} / {byte['secagg']:,.0f} / {byte['paillier']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
