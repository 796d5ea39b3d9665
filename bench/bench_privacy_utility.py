"""Privacy-utility table on digits: final holdout accuracy and epsilon (delta 1e-5) per DP setting.

Light nodes: each of ``--nodes`` trains a softmax regression in numpy on its share of scikit-learn's
bundled digits (IID, and Dirichlet alpha 0.3), so dozens of sessions run in seconds. The privacy code
is the system's own: ``DPAggregation`` (central), ``privatize_update`` (local), ``PrivacyLedger`` and the
dp-accounting accountant. Transport is left out: it changes no number here.

Also prints epsilon after 100 rounds at q = 1 and q = 0.1 with z = 1, from the ledger's accountant and
from the library called directly.

    .venv/bin/python bench/bench_privacy_utility.py [--nodes 10 --rounds 30]
"""

from __future__ import annotations

import argparse
import math

import dp_accounting
import numpy as np
from dp_accounting import rdp

from common.data.datasets import TARGET, load_builtin
from common.data.partition import partition
from common.privacy.accountant import PrivacyAccountant
from common.privacy.local import privatize_update
from fl_server.privacy.aggregation import DPAggregation
from fl_server.privacy.ledger import PrivacyLedger, PrivacySettings
from fl_server.strategies import FedAvg

DELTA = 1e-5
CLIP = 1.0
NOISE_LEVELS = (0.5, 1.0, 2.0, 4.0)


def softmax_sgd(w: np.ndarray, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, rng: np.random.Generator,
                batch: int = 32) -> np.ndarray:
    w = w.copy()
    onehot = np.eye(w.shape[1])[y]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            xb = np.hstack([x[rows], np.ones((len(rows), 1))])
            logits = xb @ w
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            w -= lr * xb.T @ (p - onehot[rows]) / len(rows)
    return w


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.hstack([x, np.ones((len(x), 1))]) @ w, axis=1) == y))


def run(mode: str | None, z: float, shares: list[tuple[np.ndarray, np.ndarray]], holdout: tuple[np.ndarray, np.ndarray],
        *, rounds: int, seed: int) -> tuple[float, float | None]:
    rng = np.random.default_rng(seed)
    w = np.zeros((holdout[0].shape[1] + 1, 10))
    strategy = FedAvg() if mode is None else DPAggregation(FedAvg(), mode=mode, clip_norm=CLIP, noise_multiplier=z)
    ledger = None if mode is None else PrivacyLedger(PrivacySettings(mode, z, DELTA, clip_norm=CLIP))
    epsilon = None
    for server_round in range(1, rounds + 1):
        strategy.begin_round(server_round, [w])
        local_stddev = ledger.node_config(len(shares)).get("dp_noise_stddev", 0.0) if ledger else 0.0
        for index, (x, y) in enumerate(shares):
            local = softmax_sgd(w, x, y, epochs=1, lr=0.5, rng=rng)
            update = [local]
            if mode == "local":
                update, _ = privatize_update([w], [local], clip_norm=CLIP, noise_stddev=local_stddev)
            strategy.accumulate(f"n{index}", update, len(y))
        (w,) = strategy.aggregate()
        if ledger is not None:
            epsilon = ledger.record_round(clip_norm=CLIP, delivered=len(shares), asked=len(shares))["epsilon"]
    return accuracy(w, *holdout), epsilon


def library_epsilon(q: float, z: float, rounds: int) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return float(rdp.RdpAccountant().compose(event).get_epsilon(DELTA))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    data = load_builtin("digits", seed=args.seed)
    x_train = data.train.drop(columns=[TARGET]).to_numpy(np.float64) / 16
    y_train = data.train[TARGET].to_numpy()
    holdout = (data.holdout.drop(columns=[TARGET]).to_numpy(np.float64) / 16, data.holdout[TARGET].to_numpy())
    print(f"digits, {args.nodes} nodes, {args.rounds} rounds, softmax regression, clip C = {CLIP}, "
          f"delta = {DELTA}, sampling rate q = 1")
    print(f"{'partition':<16} {'mode':<8} {'z':>5} {'accuracy':>9} {'epsilon':>10}")
    for scheme, alpha in (("iid", 0.5), ("dirichlet", 0.3)):
        parts = partition(y_train, args.nodes, scheme=scheme, seed=args.seed, alpha=alpha)
        shares = [(x_train[rows], y_train[rows]) for rows in parts if len(rows)]
        name = scheme if scheme == "iid" else f"dirichlet {alpha}"
        acc, _ = run(None, 0.0, shares, holdout, rounds=args.rounds, seed=args.seed)
        print(f"{name:<16} {'none':<8} {'-':>5} {acc:>9.4f} {'-':>10}")
        for mode in ("central", "local"):
            for z in NOISE_LEVELS:
                acc, eps = run(mode, z, shares, holdout, rounds=args.rounds, seed=args.seed)
                print(f"{name:<16} {mode:<8} {z:>5} {acc:>9.4f} {eps:>10.3f}")
    print("\nepsilon after 100 rounds, z = 1, delta 1e-5: ledger accountant vs dp-accounting called directly")
    for q in (1.0, 0.1):
        accountant = PrivacyAccountant()
        for _ in range(100):
            accountant.record_round(sampling_rate=q, noise_multiplier=1.0)
        print(f"  q = {q:<4} accountant {accountant.epsilon(DELTA):.6f}   library {library_epsilon(q, 1.0, 100):.6f}")
    assert math.isfinite(library_epsilon(1.0, 1.0, 100))


if __name__ == "__main__":
    main()
