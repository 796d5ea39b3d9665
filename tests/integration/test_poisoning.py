"""Poisoning end to end: five real nodes on digits, one publishes a sign-flipped update scaled x10.

Four sessions run one after the other against the real broker (six TensorFlow processes each):
a clean FedAvg baseline, then the same federation with the attacker under FedAvg, median and
Krum. The assertions are about ordering, not exact numbers: FedAvg collapses, the robust
strategies stay near the clean run. The trimmed mean goes through the same strategy interface as
the median (a coordinate-wise statistic of the same updates); to keep the suite's time, its
robustness is tested against hand-computed values and attacks in tests/test_strategy_robust.py,
not with a fifth session here.
"""

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Federation, expect_clean_exit

pytestmark = pytest.mark.timeout(1500)  # four sessions; typically a few minutes in all

logger = logging.getLogger(__name__)

NODES = 5
ATTACKER = "n4"
ROUNDS = 3
ATTACK = ["--attack", "sign-flip", "--attack-scale", "10"]
RUNS: dict[str, tuple[list[str], bool]] = {  # name -> (server strategy flags, attacker present)
    "clean fedavg": (["--strategy", "fedavg"], False),
    "fedavg": (["--strategy", "fedavg"], True),
    "median": (["--strategy", "median"], True),
    "krum": (["--strategy", "krum", "--byzantine", "1"], True),
}
ROBUST = ["median", "krum"]
ROBUST_TOLERANCE = 0.08  # accuracy points below the clean run a robust strategy may land
COLLAPSE_MARGIN = 0.3  # attacked FedAvg must land at least this far below the clean run


def run_session(tmp_path: Path, kafka: str, strategy_args: list[str], attacked: bool) -> dict[str, Any]:
    federation = Federation(tmp_path, kafka)
    try:
        server = federation.start_server("--min-nodes", str(NODES), "--rounds", str(ROUNDS), "--epochs", "1",
                                         "--round-timeout", "120", *strategy_args)
        nodes = [federation.start_node(f"n{i}", "--partition", f"{i}/{NODES}",
                                       *(ATTACK if attacked and f"n{i}" == ATTACKER else []))
                 for i in range(NODES)]
        expect_clean_exit(server, nodes, server_timeout_s=480, node_timeout_s=90)
        history = federation.history()
        assert history is not None
        return history
    finally:
        federation.close()


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> dict[str, dict[str, Any]]:
    """Every run's history, run sequentially (they share two CPU cores)."""
    results = {}
    for name, (strategy_args, attacked) in RUNS.items():
        results[name] = run_session(tmp_path_factory.mktemp(name.replace(" ", "-")), kafka_bootstrap, strategy_args,
                                    attacked)
        logger.info("poisoning: %-13s holdout accuracy per round %s", name,
                    [r["holdout"]["accuracy"] for r in results[name]["rounds"]])
    return results


def final_accuracy(history: dict[str, Any]) -> float:
    return float(history["rounds"][-1]["holdout"]["accuracy"])


def test_every_session_completed_with_every_update_accepted(histories: dict[str, dict[str, Any]]) -> None:
    for name, history in histories.items():
        assert history["status"] == "completed", name
        assert [r["status"] for r in history["rounds"]] == ["completed"] * ROUNDS, name
        # The attacker's update is well-formed: the collector accepts it; only the aggregation can resist it.
        assert all(len(r["accepted"]) == NODES for r in history["rounds"]), name


def test_sign_flip_attack_collapses_fedavg(histories: dict[str, dict[str, Any]]) -> None:
    clean, attacked = final_accuracy(histories["clean fedavg"]), final_accuracy(histories["fedavg"])
    assert clean > 0.6, clean  # ten classes: chance is 0.1
    assert attacked < clean - COLLAPSE_MARGIN, (clean, attacked)


@pytest.mark.parametrize("strategy", ROBUST)
def test_robust_strategy_stays_near_the_clean_run(histories: dict[str, dict[str, Any]], strategy: str) -> None:
    clean, robust = final_accuracy(histories["clean fedavg"]), final_accuracy(histories[strategy])
    assert robust >= clean - ROBUST_TOLERANCE, (strategy, clean, robust)
    assert robust > final_accuracy(histories["fedavg"]) + COLLAPSE_MARGIN, strategy


def test_krum_never_selects_the_attacker(histories: dict[str, dict[str, Any]]) -> None:
    for record in histories["krum"]["rounds"]:
        selected = record["aggregation"]["selected"]
        assert len(selected) == 1 and selected != [ATTACKER], record["aggregation"]
