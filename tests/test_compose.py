"""docker-compose.yml checked statically (no Docker engine on CI): it parses and agrees with the CLIs."""

import re
from pathlib import Path

import pytest
import yaml

from common.config import env_name
from fl_node.cli import build_parser as node_parser
from fl_server.aggregator.cli import build_parser as aggregator_parser
from fl_server.cli import build_parser as server_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def known_env(parser) -> set[str]:
    return {env_name(a.option_strings[0]) for a in parser()._actions if a.option_strings and a.dest != "help"}


def test_services_and_images(compose):
    services = compose["services"]
    assert {"kafka", "server", "node-0", "node-1", "node-2"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert (ROOT / services["server"]["build"] / "Dockerfile").is_file()


def test_environment_names_are_real_flags(compose):
    services = compose["services"]
    assert set(services["server"]["environment"]) <= known_env(server_parser)
    for name in ("node-0", "node-1", "node-2"):
        assert set(services[name]["environment"]) <= known_env(node_parser), name


def test_addresses_and_ports_agree(compose):
    services = compose["services"]
    kafka_env = services["kafka"]["environment"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    server_env = services["server"]["environment"]
    assert f"//{server_env['FL_KAFKA']}" in advertised
    assert server_env["FL_HOST"] == "0.0.0.0"
    assert f"{server_env['FL_PORT']}:{server_env['FL_PORT']}" in services["server"]["ports"]
    nodes = [services[f"node-{i}"] for i in range(3)]
    partitions = sorted(n["environment"]["FL_PARTITION"] for n in nodes)
    assert partitions == ["0/3", "1/3", "2/3"]
    assert int(server_env["FL_MIN_NODES"]) == len(nodes)
    for node in nodes:
        env = node["environment"]
        assert env["FL_SERVER"] == f"http://server:{server_env['FL_PORT']}"
        assert f"//{env['FL_KAFKA']}" in advertised
        assert env["FL_DATASET"] == server_env["FL_DATASET"]
    assert len({n["environment"]["FL_NODE_ID"] for n in nodes}) == 3
    host_port = re.search(r"EXTERNAL://localhost:(\d+)", advertised).group(1)
    assert f"{host_port}:{host_port}" in services["kafka"]["ports"]


def test_every_node_has_the_key_the_registry_issues(compose):
    services = compose["services"]
    issued = services["keys"]["command"][0]
    assert services["server"]["environment"]["FL_NODE_KEYS"] == "/app/keys/registry.json" in issued
    assert services["server"]["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    for i in range(3):
        env = services[f"node-{i}"]["environment"]
        assert env["FL_KEY_FILE"] == f"/app/keys/{env['FL_NODE_ID']}.key" and env["FL_NODE_ID"] in issued


def test_prometheus_scrapes_the_servers_metrics_with_the_dashboard_token(compose):
    services = compose["services"]
    prometheus, server = services["prometheus"], services["server"]
    assert prometheus["image"].startswith("prom/prometheus:")  # the official image
    mounts = dict(volume.removesuffix(":ro").split(":", 1) for volume in prometheus["volumes"])  # host -> container
    config_file = prometheus["command"][0].split("=", 1)[1]
    assert {c: h for h, c in mounts.items()}[config_file] == "./prometheus.yml"
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"server:{server['environment']['FL_PORT']}"]
    # The server listens beyond loopback, so /metrics needs the token: the one the keys service writes, which
    # the server reads into FL_DASHBOARD_TOKEN and Prometheus presents as a bearer token.
    assert server["environment"]["FL_HOST"] == "0.0.0.0"
    token_in_container = job["authorization"]["credentials_file"]
    assert job["authorization"]["type"] == "Bearer"
    assert {c: h for h, c in mounts.items()}[token_in_container] == "./keys/dashboard.token"
    assert "/app/keys/dashboard.token" in services["keys"]["command"][0]
    assert "FL_DASHBOARD_TOKEN=$(cat /app/keys/dashboard.token) exec fl-server" == server["command"][0].replace(
        "$$", "$")
    assert env_name("--dashboard-token") == "FL_DASHBOARD_TOKEN" in known_env(server_parser)
    assert prometheus["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    assert int(server["environment"]["FL_LINGER"]) >= 2 * int(config["global"]["scrape_interval"].rstrip("s"))
    assert "9090:9090" in prometheus["ports"]


def test_two_aggregators_share_the_servers_key_topic_and_node_keys(compose):
    services = compose["services"]
    server = services["server"]["environment"]
    workers = [services[f"aggregator-{i}"] for i in range(2)]
    assert int(server["FL_AGGREGATORS"]) == len(workers)
    assert "/app/keys/aggregation.key" in services["keys"]["command"][0]
    for worker in workers:
        env = worker["environment"]
        assert worker["command"] == ["fl-aggregator"]
        assert set(env) <= known_env(aggregator_parser)
        assert env["FL_AGGREGATOR_KEY"] == server["FL_AGGREGATOR_KEY"] == "/app/keys/aggregation.key"
        assert env["FL_NODE_KEYS"] == server["FL_NODE_KEYS"] and env["FL_KAFKA"] == server["FL_KAFKA"]
        assert env.get("FL_UPDATES_TOPIC") == server.get("FL_UPDATES_TOPIC")
        assert worker["depends_on"]["keys"]["condition"] == "service_completed_successfully"
        assert "./keys:/app/keys:ro" in worker["volumes"]
    assert len({w["environment"]["FL_AGGREGATOR_ID"] for w in workers}) == 2
