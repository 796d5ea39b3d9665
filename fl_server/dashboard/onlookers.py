"""The dashboard and the metrics of one server, built from its settings and the parts they read."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from fl_server.config import ServerConfig
from fl_server.dashboard.access import is_loopback
from fl_server.dashboard.routes import ConnectionsPoller, Dashboard, dashboard_url
from fl_server.dashboard.state import LiveSession
from fl_server.inbox import Inbox
from fl_server.metrics import LiveCounts, ServerMetrics
from fl_server.observe import Observers
from fl_server.records import RoundRecord
from fl_server.registry import NodeRegistry
from fl_server.transport.socketio import SocketIOFrontend

logger = logging.getLogger(__name__)


@dataclass
class Onlookers:
    """What watches a session: its live state, its metrics, the routes serving both, as one observer."""

    live: LiveSession
    metrics: ServerMetrics
    dashboard: Dashboard
    poller: ConnectionsPoller
    observer: Observers

    def add_routes(self, app: web.Application) -> None:
        self.dashboard.add_routes(app)
        self.poller.add_to(app)

    def replay(self, records: Iterable[RoundRecord]) -> None:
        """A resumed session's earlier rounds, for the dashboard's table and curves (the metrics count only what
        this process runs: Prometheus counters start again with the process)."""
        for record in records:
            self.live.round_closed(record)

    def announce(self, host: str, port: int, tls: bool) -> str:
        """Log where the dashboard is (and who may read it); returns its URL."""
        url = dashboard_url(host, port, tls)
        logger.info("dashboard at %s (metrics at %s)", url, url.replace("/dashboard/", "/metrics"))
        if self.dashboard.token_configured:
            logger.info("dashboard and /metrics require the --dashboard-token (open it as %s#token=...)", url)
        elif not is_loopback(host):
            logger.warning("listening on %s without --dashboard-token: the dashboard and /metrics answer only "
                           "clients on this machine (set --dashboard-token or FL_DASHBOARD_TOKEN to open them)", host)
        return url


def make_onlookers(config: ServerConfig, session_id: str, *, registry: NodeRegistry, frontend: SocketIOFrontend,
                   inbox: Inbox, files: Callable[[], dict[str, Path | None]]) -> Onlookers:
    dataset = config.holdout.name if config.holdout is not None else config.dataset
    live = LiveSession(session_id=session_id, strategy=config.strategy, rounds=config.rounds, model=config.model,
                       dataset=dataset)
    metrics = ServerMetrics(live=LiveCounts(connected=lambda: len(registry),
                                            refused=lambda: frontend.refused_by_reason,
                                            malformed=lambda: frontend.malformed_by_reason,
                                            inbox_bytes=lambda: inbox.stats().kafka_bytes))
    metrics.describe_session(session_id=session_id, strategy=config.strategy, rounds=config.rounds)
    token = config.dashboard_token.reveal() if config.dashboard_token is not None else None
    dashboard = Dashboard(live, metrics, listen_host=config.host, token=token, history_dir=config.history_dir,
                          files=files)
    poller = ConnectionsPoller(live, nodes=lambda: [n.node_id for n in registry.snapshot()],
                               refused=lambda: frontend.refused_by_reason, wait_changed=registry.wait_changed)
    return Onlookers(live, metrics, dashboard, poller, Observers(live, metrics))
