"""Settings files: every flag has a key, flags > environment > file > defaults, mistakes are one-line errors."""

import os
import subprocess
import sys
import tomllib

import pytest

from common.config_file import config_template, parse_with_config
from fl_node.cli import build_parser as node_parser
from fl_server.cli import build_parser as server_parser
from tests.test_server_startup import free_port


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("FL_") or name == "KAFKA_BOOTSTRAP":
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("parser", "section"), [(server_parser, "server"), (node_parser, "node")])
def test_the_printed_config_is_complete_and_reads_back_as_the_defaults(tmp_path, parser, section):
    text = config_template(parser(), section)
    path = tmp_path / "all.toml"
    path.write_text(text)
    keys = set(tomllib.loads(text))
    dests = {a.dest for a in parser()._actions if a.option_strings} - {"help", "config", "print_config"}
    commented = {d for d in dests if f"# {d} =" in text}
    assert keys | commented == dests  # every flag has a key (set, or shown commented when it has no default)
    from_file, _ = parse_with_config(parser(), ["--config", str(path)], section)
    plain, _ = parse_with_config(parser(), [], section)
    assert vars(from_file) | {"config": None} == vars(plain)


def test_values_are_converted_and_checked_like_flags(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('rounds = 7\nexclude_columns = ["ssn", "mrn"]\nallow_unauthenticated = true\n'
                    '[server]\nmin_nodes = 3\n[node]\nnode_id = "site-a"\n')
    args, sources = parse_with_config(server_parser(), ["--config", str(path)], "server")
    assert (args.rounds, args.exclude_columns, args.allow_unauthenticated, args.min_nodes) == (7, ("ssn", "mrn"),
                                                                                               True, 3)
    assert sources["rounds"] == f"file {path}" and sources["port"] == "default"


@pytest.mark.parametrize(("text", "says"), [
    ("rounds = 0\n", "rounds: must be a positive integer"),
    ("roundz = 3\n", "no setting 'roundz'"),
    ("optimizer = \"adagrad\"\n", "'adagrad' is not one of"),
    ("allow_unauthenticated = \"yes\"\n", "must be true or false"),
    ("rounds = [\n", "not valid TOML"),
    ("strategy = \"nonesuch\"\n", "unknown strategy 'nonesuch'"),
])
def test_mistakes_in_a_config_file_are_one_line_usage_errors(tmp_path, capsys, text, says):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        parse_with_config(server_parser(), ["--config", str(path)], "server")
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_precedence_across_a_real_process(tmp_path):
    """flags > environment > file > defaults, as the server states them at start-up (secrets masked)."""
    path = tmp_path / "federation.toml"
    path.write_text('rounds = 4\nepochs = 2\nmin_nodes = 4\nkafka_sasl_password = "hunter2"\n'
                    f'kafka = "127.0.0.1:{free_port()}"\nallow_unauthenticated = true\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_")} | {"FL_EPOCHS": "3", "FL_MIN_NODES": ""}
    result = subprocess.run([sys.executable, "-m", "fl_server", "--config", str(path), "--rounds", "7",
                             "--port", "0", "--history-dir", str(tmp_path / "h")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode != 0  # no broker: it stops right after stating its settings
    said = result.stderr
    assert "setting rounds = 7 (flag)" in said
    assert "setting epochs = 3 (environment)" in said
    assert f"setting min_nodes = 4 (file {path})" in said
    assert "setting kafka_sasl_password = *** (file" in said and "hunter2" not in said
    assert "setting batch_size" not in said  # defaults are not listed


def test_one_file_serves_server_and_nodes(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('kafka = "broker:9092"\n[server]\nmin_nodes = 3\n[node]\nnode_id = "site-a"\n')
    server, _ = parse_with_config(server_parser(), ["--config", str(path)], "server")
    node, _ = parse_with_config(node_parser(), ["--config", str(path)], "node")
    assert (server.kafka, server.min_nodes) == ("broker:9092", 3)
    assert (node.kafka, node.node_id) == ("broker:9092", "site-a")
