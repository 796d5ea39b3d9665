"""The set-up scripts never take something that is not ours for a broker."""

import http.server
import os
import subprocess
import threading

from tests.integration.harness import REPO


def test_a_port_held_by_something_else_gets_our_broker_on_a_free_port(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    busy = server.server_address[1]
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "KAFKA_CONTROLLER_PORT")}
    env.update(KAFKA_PORT=str(busy), KAFKA_DATA_DIR=str(tmp_path / "kafka"))
    script = (f'source "{REPO}/scripts/_venv.sh"; ensure_broker; echo "BOOTSTRAP=$KAFKA_BOOTSTRAP"; '
              "stop_broker_if_started")
    try:
        result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()  # shutdown() only stops serve_forever; the listening socket needs closing too
    assert result.returncode == 0, result.stderr[-2000:]
    bootstrap = next(line for line in result.stdout.splitlines() if line.startswith("BOOTSTRAP="))
    assert bootstrap != f"BOOTSTRAP=127.0.0.1:{busy}"  # not the HTTP server
    assert "is taken by something that is not a Kafka broker" in result.stderr and "ready at" in result.stderr
