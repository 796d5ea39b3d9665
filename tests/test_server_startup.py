"""What a first user hits at start-up: every mistake found before the slow part, in one line, no traceback.

Real ``fl-server`` processes; they fail before TensorFlow loads, so each takes a second or two."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fl_server(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_")}
    return subprocess.run([sys.executable, "-m", "fl_server", "--allow-unauthenticated", "--history-dir",
                           str(tmp_path / "history"), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("fl-server: error: ")]


def test_a_port_in_use_is_one_line_before_tensorflow_loads(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = fl_server(tmp_path, "--port", str(port), "--kafka", f"127.0.0.1:{free_port()}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
    assert "loading TensorFlow" not in result.stderr and not (tmp_path / "history").exists()


def test_an_unreachable_broker_says_how_to_start_one(tmp_path):
    result = fl_server(tmp_path, "--port", "0", "--kafka", f"127.0.0.1:{free_port()}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert "no Kafka broker answers at 127.0.0.1:" in line and "scripts/kafka-local.sh start" in line
    assert "loading TensorFlow" not in result.stderr
    listening = re.search(r"Socket.IO listening on http://127.0.0.1:(\d+)", result.stderr)
    assert listening and int(listening.group(1)) > 0  # --port 0: the port it really bound, not ":0"


@pytest.mark.parametrize(("args", "says"), [
    (["--holdout", "h.csv"], "--holdout needs --target"),
    (["--holdout", "missing.csv", "--target", "y"], "--holdout missing.csv: no such file"),
])
def test_argument_mistakes_are_found_before_anything_starts(tmp_path, args, says):
    result = fl_server(tmp_path, "--port", "0", "--kafka", f"127.0.0.1:{free_port()}", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert says in line and "listening" not in result.stderr
