"""Strategies from the user's own code: ``package.module:Class``, an entry-point name, ``--strategy-param``."""

import sys

import numpy as np
import pytest

from fl_server.cli import build_parser
from fl_server.strategies import make_strategy
from fl_server.strategy_options import strategy_from_args

PLUGIN = "tests.plugins.clipped:ClippedFedAvg"


def test_an_import_path_strategy_with_typed_params_aggregates_by_hand_computed_values():
    args = build_parser().parse_args(["--strategy", PLUGIN, "--strategy-param", "max_norm=2.5"])
    strategy = strategy_from_args(args)
    assert strategy.params() == {"max_norm": 2.5}  # a float, as the constructor's default is
    strategy.begin_round(1, [np.zeros(2, np.float32)])
    strategy.accumulate("a", [np.array([3.0, 4.0], np.float32)], 1)  # norm 5 -> clipped to 2.5: (1.5, 2)
    strategy.accumulate("b", [np.array([0.0, 1.0], np.float32)], 3)  # norm 1: kept
    np.testing.assert_allclose(strategy.aggregate()[0], [(1.5 + 0) / 4, (2.0 + 3.0) / 4])
    assert strategy.last_round_info() == {"clipped_updates": 1}


@pytest.mark.parametrize(("argv", "says"), [
    (["--strategy", "tests.plugins.clipped:Missing"], "has no 'Missing'"),
    (["--strategy", "no_such_module:Thing"], "cannot import 'no_such_module'"),
    (["--strategy", "numpy:ndarray"], "is not a subclass"),
    (["--strategy", PLUGIN, "--strategy-param", "max_norm=wide"], "max_norm=wide"),
    (["--strategy", PLUGIN, "--strategy-param", "radius=3"], "does not take radius"),
])
def test_plugin_mistakes_are_clear_errors(argv, says):
    with pytest.raises(ValueError, match=says):
        strategy_from_args(build_parser().parse_args(argv))


def test_an_installed_package_can_register_a_strategy_by_name(tmp_path, monkeypatch):
    dist = tmp_path / "clipper-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clipper\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[fl_kafka.strategies]\nclipper = {PLUGIN}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    strategy = make_strategy("clipper", max_norm=3.0)
    assert type(strategy).__name__ == "ClippedFedAvg" and strategy.params() == {"max_norm": 3.0}


def test_an_unknown_strategy_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--strategy", "nonesuch"])
    assert "unknown strategy 'nonesuch'" in capsys.readouterr().err
