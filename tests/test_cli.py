import re

import pytest

from fl_node.cli import build_parser as node_parser
from fl_server.cli import build_parser as server_parser
from fl_server.history_cli import build_parser as history_parser

SERVER_FLAGS = ["--host", "--port", "--kafka", "--min-nodes", "--rounds", "--dataset", "--model", "--epochs",
                "--batch-size", "--history-dir", "--round-timeout"]
NODE_FLAGS = ["--server", "--kafka", "--node-id", "--dataset", "--partition", "--data", "--target"]


@pytest.mark.parametrize(("parser", "flags"), [(server_parser, SERVER_FLAGS), (node_parser, NODE_FLAGS)])
def test_help_documents_every_flag_with_its_environment_variable(parser, flags):
    text = " ".join(parser().format_help().split())
    for action in parser()._actions:
        if action.option_strings and action.dest != "help":
            flag = action.option_strings[0]
            assert re.search(rf"\[env FL_{flag[2:].replace('-', '_').upper()}\b", text), flag
    for flag in flags:
        assert flag in text


def test_environment_sets_defaults_and_flags_override(monkeypatch):
    monkeypatch.setenv("FL_ROUNDS", "7")
    monkeypatch.setenv("FL_KAFKA", "broker:1234")
    assert server_parser().parse_args([]).rounds == 7
    assert server_parser().parse_args([]).kafka == "broker:1234"
    assert server_parser().parse_args(["--rounds", "2"]).rounds == 2


def test_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        server_parser().parse_args(["--rounds", "0"])
    assert "--rounds" in capsys.readouterr().err


def test_history_cli_has_show():
    assert history_parser().parse_args(["show", "x.json"]).command == "show"


def test_resume_takes_every_session_setting_from_the_checkpoint():
    """The README's `fl-server --node-keys ... --resume history/<session>.json` leaves out --min-nodes and the
    rest: they must come from the checkpoint, or a resumed round starts with the first two nodes to reconnect."""
    from fl_server.config import SESSION_SETTINGS, ServerConfig, resume_config

    dests = {action.dest for action in server_parser()._actions}
    assert set(SESSION_SETTINGS) <= dests  # no misspelled setting silently skipped
    first = ServerConfig.from_args(server_parser().parse_args([
        "--min-nodes", "3", "--rounds", "9", "--exclude-columns", "ssn,mrn", "--min-category-count", "8",
        "--strategy", "fedavgm"]))
    command_line = ServerConfig.from_args(server_parser().parse_args(["--round-timeout", "30"]))
    resumed, _ = resume_config(command_line, first.history_settings())
    assert all(getattr(resumed, name) == getattr(first, name) for name in SESSION_SETTINGS), [
        name for name in SESSION_SETTINGS if getattr(resumed, name) != getattr(first, name)]
    assert resumed.min_nodes == 3 and resumed.exclude_columns == ("ssn", "mrn")
    assert resumed.round_timeout == 30  # operational settings stay the command line's


def test_the_node_finds_the_server_port_from_fl_port(monkeypatch):
    monkeypatch.delenv("FL_SERVER", raising=False)
    monkeypatch.setenv("FL_PORT", "6123")
    assert node_parser().parse_args([]).server == "http://127.0.0.1:6123"
    monkeypatch.setenv("FL_SERVER", "https://fl.example.org:443")
    assert node_parser().parse_args([]).server == "https://fl.example.org:443"
