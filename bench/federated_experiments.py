"""Accuracy experiments with real processes: federated runs (several strategies, partitions, attacks)
side by side with the central baseline, on the bundled digits data.

    KAFKA_BOOTSTRAP=127.0.0.1:9092 python bench/federated_experiments.py --rounds 20 --nodes 5 \\
        --scheme dirichlet --alpha 0.3 --strategies fedavg median

Needs a running broker (scripts/kafka-local.sh start). Prints one row per run; writes every history
file under --out so fl-history plot/compare can overlay them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.metrics_format import format_number
from fl_server.history_cli import load_history, summarize
from tests.integration.harness import Federation


def run_federated(kafka: str, out: Path, args: argparse.Namespace, strategy: str, attacked: bool) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f"fl-exp-{strategy}-", dir=out))
    federation = Federation(work, kafka)
    try:
        server = federation.start_server("--min-nodes", str(args.nodes), "--rounds", str(args.rounds),
                                         "--strategy", strategy, "--round-timeout", "300", "--seed", "42",
                                         "--session-id", f"{strategy}{'-attacked' if attacked else ''}-{args.scheme}",
                                         *args.server_flag)
        for i in range(args.nodes):
            node_args = ["--partition", f"{i}/{args.nodes}", "--scheme", args.scheme, "--alpha", str(args.alpha)]
            if attacked and i == args.nodes - 1:
                node_args += ["--attack", "sign-flip", "--attack-scale", str(args.attack_scale)]
            federation.start_node(f"n{i}", *node_args)
        if server.wait(args.timeout) != 0:
            raise RuntimeError(f"server failed:\n{server.log()[-2000:]}")
        return next((work / "history").glob("*.json"))
    finally:
        federation.close()


def run_baseline(out: Path, args: argparse.Namespace) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "fl_server.baseline", "--rounds", str(args.rounds), "--history-dir", str(out),
         "--session-id", "central-baseline", "--log-level", "WARNING"],
        check=True, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return Path(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--scheme", default="dirichlet")
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--strategies", nargs="+", default=["fedavg"])
    parser.add_argument("--attack", action="store_true", help="also run each strategy with one sign-flip attacker")
    parser.add_argument("--attack-scale", type=float, default=10.0)
    parser.add_argument("--baseline", action="store_true", help="also train the central baseline")
    parser.add_argument("--server-flag", action="append", default=[], help="extra fl-server argument (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, Path, float]] = []
    for strategy in args.strategies:
        for attacked in ([False, True] if args.attack else [False]):
            started = time.perf_counter()
            path = run_federated(args.kafka, args.out, args, strategy, attacked)
            files.append((f"{strategy}{' +attacker' if attacked else ''}", path, time.perf_counter() - started))
            print(f"done: {files[-1][0]} -> {path}", file=sys.stderr, flush=True)
    if args.baseline:
        started = time.perf_counter()
        files.append(("central baseline", run_baseline(args.out, args), time.perf_counter() - started))
    print(f"{args.nodes} nodes, {args.rounds} rounds, scheme {args.scheme}"
          + (f" alpha {args.alpha}" if args.scheme in ("dirichlet", "quantity") else ""))
    print(f"{'run':<24}{'final_acc':>10}{'best_acc':>10}{'wall_s':>9}  history")
    for label, path, wall_s in files:
        summary = summarize(load_history(path), None)
        print(f"{label:<24}{format_number(summary['final_accuracy']):>10}{format_number(summary['best_accuracy']):>10}"
              f"{wall_s:>9.1f}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
