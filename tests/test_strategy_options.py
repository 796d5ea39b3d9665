"""``fl-server`` strategy flags: parameters from flags and environment, refusals before anything starts."""

import pytest

from fl_server.cli import build_parser, main
from fl_server.strategies import FedAdam, FedProx, Krum, MultiKrum, TrimmedMean
from fl_server.strategy_options import strategy_from_args


def build(*argv):
    return strategy_from_args(build_parser().parse_args(list(argv)))


def test_defaults_come_from_the_strategy_and_flags_override_them():
    adam = build("--strategy", "fedadam", "--server-lr", "0.1", "--beta2", "0.9")
    assert isinstance(adam, FedAdam)
    assert adam.params() == {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.9, "tau": 1e-3}
    assert isinstance(build("--strategy", "trimmed_mean"), TrimmedMean)
    assert build("--strategy", "trimmed_mean", "--trim-fraction", "0.3").params() == {"trim_fraction": 0.3}


def test_parameters_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FL_STRATEGY", "fedprox")
    monkeypatch.setenv("FL_MU", "0.5")
    strategy = build()
    assert isinstance(strategy, FedProx) and strategy.proximal_mu == 0.5


def test_krum_parameters():
    krum = build("--strategy", "krum", "--byzantine", "2", "--min-nodes", "7")
    assert isinstance(krum, Krum) and krum.num_byzantine == 2
    multi = build("--strategy", "multi_krum", "--byzantine", "0", "--multi-krum-m", "2", "--min-nodes", "3")
    assert isinstance(multi, MultiKrum) and multi.params() == {"num_byzantine": 0, "num_selected": 2}


def test_a_flag_the_strategy_does_not_take_is_an_error():
    with pytest.raises(ValueError, match=r"--mu \(FL_MU\) does not apply to --strategy fedavg, which takes no options"):
        build("--mu", "0.1")
    with pytest.raises(ValueError, match="which takes --server-lr, --beta1, --tau"):
        build("--strategy", "fedadagrad", "--beta2", "0.9")


@pytest.mark.parametrize(("argv", "message"), [
    (["--strategy", "krum"], r"--min-nodes 2 update\(s\): krum with 1 Byzantine node\(s\) needs more than "
                             r"2f \+ 2 = 4 updates, got 2; use --min-nodes 5 or more \(or a smaller --byzantine\)"),
    (["--strategy", "multi_krum", "--byzantine", "2", "--min-nodes", "6"], "use --min-nodes 7 or more"),
])
def test_min_nodes_the_strategy_cannot_aggregate_is_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        build(*argv)


def test_server_refuses_to_start_with_a_clear_error(tmp_path, capsys):
    assert main(["--strategy", "krum", "--min-nodes", "4", "--history-dir", str(tmp_path / "h"), "--port", "0"]) == 2
    assert "needs more than 2f + 2 = 4 updates, got 4; use --min-nodes 5" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()  # nothing started, nothing written


@pytest.mark.parametrize("argv", [["--trim-fraction", "0.5"], ["--byzantine", "-1"], ["--server-momentum", "1"],
                                  ["--mu", "-1"], ["--multi-krum-m", "0"], ["--strategy", "fedsgd"]])
def test_bad_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert argv[0] in capsys.readouterr().err
