"""ServerConfig: one home for the server's settings and defaults; what the history may record."""

import json
from dataclasses import fields
from pathlib import Path

import pytest

from common.transport.kafka_security import PASSWORD_ENV, Secret
from fl_server.cli import build_parser
from fl_server.config import (
    DEFAULTS,
    HISTORY_SETTINGS,
    NOT_RECORDED,
    SESSION_SETTINGS,
    ServerConfig,
    json_ready,
    resume_config,
)


def test_every_setting_is_either_recorded_or_listed_as_not_recorded():
    names = {f.name for f in fields(ServerConfig)}
    assert set(HISTORY_SETTINGS) | set(NOT_RECORDED) == names
    assert not set(HISTORY_SETTINGS) & set(NOT_RECORDED)
    assert len(HISTORY_SETTINGS) == len(set(HISTORY_SETTINGS))


def test_every_flag_is_a_setting_and_its_default_is_the_configs(monkeypatch):
    for action in build_parser()._actions:
        if action.dest in ("help", "print_config") or not action.option_strings:
            continue
        assert hasattr(DEFAULTS, action.dest), action.dest
    parsed = ServerConfig.from_args(build_parser().parse_args([]))
    environment_set = {"kafka"}  # KAFKA_BOOTSTRAP may be set by the test run
    for f in fields(ServerConfig):
        if f.name not in environment_set:
            assert getattr(parsed, f.name) == getattr(DEFAULTS, f.name), f.name


def test_the_password_never_reaches_the_history_settings(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "hunter2-secret")
    config = ServerConfig.from_args(build_parser().parse_args(["--kafka-sasl-username", "fl"]))
    assert isinstance(config.kafka_sasl_password, Secret)
    text = json.dumps(config.history_settings())
    assert "hunter2" not in text and '"kafka_sasl_username": "fl"' in text
    with pytest.raises(TypeError):
        json_ready({"nested": [config.kafka_sasl_password]})


def test_resume_config_takes_session_settings_and_says_what_differed():
    first = ServerConfig(rounds=9, min_nodes=3, strategy="fedprox", proximal_mu=0.1, holdout=Path("h.csv"),
                         strategy_param=(("a", "1"),), exclude_columns=("ssn",))
    now = ServerConfig(rounds=5, round_timeout=30.0, port=7000)
    saved = json.loads(json.dumps(first.history_settings()))  # as read back from the JSON file
    resumed, differed = resume_config(now, saved)
    assert {name: getattr(resumed, name) for name in SESSION_SETTINGS} == {
        name: getattr(first, name) for name in SESSION_SETTINGS}
    assert resumed.round_timeout == 30.0 and resumed.port == 7000  # operational: the command line's
    assert differed["rounds"] == (9, 5) and "round_timeout" not in differed
    assert now.rounds == 5  # pure: the input is not changed


def test_resume_config_reads_an_older_history_without_strategy_param():
    resumed, _ = resume_config(ServerConfig(), {"rounds": 3, "strategy_param": None})
    assert resumed.rounds == 3 and resumed.strategy_param == ()
