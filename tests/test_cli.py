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
