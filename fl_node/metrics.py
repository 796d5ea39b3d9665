"""A node's own Prometheus metrics (``fl-node --metrics-port P`` serves them at ``/metrics``): local training
time, updates and records published, reconnections. ``prometheus-client`` with a registry of the node's own;
served by the library's HTTP server on a thread of its own, so the node's event loop never waits on a scrape.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.exposition import generate_latest

logger = logging.getLogger(__name__)

TRAIN_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("fl_node", "This node", registry=r).info({"node_id": node_id[:128]})
        self.train_seconds = Histogram("fl_node_train_seconds", "Local training time per round",
                                       buckets=TRAIN_BUCKETS_S, registry=r)
        self.updates = Counter("fl_node_updates_published", "Updates published to Kafka", registry=r)
        self.records = Counter("fl_node_published_records", "Update records published to Kafka", registry=r)
        self.reconnects = Counter("fl_node_reconnects", "Reconnections to the server after the first connection",
                                  registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def update_published(self, train_s: float, num_records: int) -> None:
        self.train_seconds.observe(max(train_s, 0.0))
        self.updates.inc()
        self.records.inc(num_records)

    def reconnected(self) -> None:
        self.reconnects.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: a free port); returns the port. ``OSError`` says why it cannot."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        bound = int(self._server.server_address[1])
        logger.info("metrics at http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
