"""The server raises its soft file-descriptor limit to the hard one at start-up, and refuses to start when even
the hard limit cannot hold ``--min-nodes`` (issue 19: one coordinator holds 10,000 nodes)."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from fl_server.admission import FD_MARGIN, FD_TARGET_WHEN_UNLIMITED, plan_fd_limit

ROOT = Path(__file__).resolve().parents[1]
UNLIMITED = -1


@pytest.mark.parametrize(("soft", "hard", "min_nodes", "new_soft", "refused"), [
    (1024, 1_048_576, 10_000, 1_048_576, False),  # the common default: raised to the hard limit
    (1024, 4096, 2, 4096, False),
    (4096, 4096, 2, None, False),  # already there
    (1024, 1024, 10_000, None, True),  # the hard limit cannot hold the nodes
    (256, 10_000 + FD_MARGIN - 1, 10_000, None, True),  # one short of the margin
    (256, 10_000 + FD_MARGIN, 10_000, 10_000 + FD_MARGIN, False),  # just enough
    (1024, UNLIMITED, 10_000, FD_TARGET_WHEN_UNLIMITED, False),
    (UNLIMITED, UNLIMITED, 10_000, None, False),
])
def test_plan_fd_limit(soft, hard, min_nodes, new_soft, refused):
    plan = plan_fd_limit(soft, hard, min_nodes, unlimited=UNLIMITED)
    assert plan.new_soft == new_soft
    assert (plan.refusal is not None) == refused
    if refused:
        assert f"--min-nodes {min_nodes}" in plan.refusal and str(hard) in plan.refusal


def run_with_limits(soft: int, hard: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, preexec_fn=lower,
                          env=env, cwd=ROOT, check=False)


def test_raise_fd_limit_raises_the_soft_limit_of_a_process_to_its_hard_limit():
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 8192)
    if hard == resource.RLIM_INFINITY:
        hard = 8192
    code = ("import logging, resource; logging.basicConfig(level=logging.INFO);"
            "from fl_server.admission import raise_fd_limit; raise_fd_limit(2);"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    result = run_with_limits(300, hard, ["-c", code])
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == hard
    assert f"raised the file-descriptor limit from 300 to {hard}" in result.stderr


def test_fl_server_refuses_to_start_when_the_hard_limit_is_below_min_nodes():
    result = run_with_limits(300, 600, ["-m", "fl_server", "--min-nodes", "1000", "--allow-unauthenticated"])
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert "hard limit is 600" in errors[0] and "--min-nodes 1000" in errors[0]
