"""The node's simulated poisoning attack (robustness experiments only)."""

import numpy as np
import pytest

from fl_node.attacks import apply_attack, sign_flip
from fl_node.cli import build_parser


def test_sign_flip_reverses_and_scales_the_update():
    global_weights = [np.array([1.0, 2.0], np.float32), np.array([[0.5]], np.float32)]
    local = [np.array([2.0, 0.0], np.float32), np.array([[0.5]], np.float32)]
    flipped = sign_flip(global_weights, local, scale=10.0)
    # 1 - 10 * (2 - 1) = -9;  2 - 10 * (0 - 2) = 22;  unchanged layer stays
    np.testing.assert_allclose(flipped[0], [-9.0, 22.0])
    np.testing.assert_allclose(flipped[1], [[0.5]])
    assert [w.dtype for w in flipped] == [np.float32, np.float32]


def test_no_attack_publishes_the_local_weights_and_unknown_attacks_are_refused():
    local = [np.array([3.0])]
    assert apply_attack("none", [np.array([0.0])], local, scale=10.0)[0] is local[0]
    np.testing.assert_allclose(apply_attack("sign-flip", [np.array([0.0])], local, scale=1.0)[0], [-3.0])
    with pytest.raises(ValueError, match="unknown attack"):
        apply_attack("label-flip", [np.array([0.0])], local, scale=1.0)


def test_node_cli_documents_the_attack_as_an_experiment():
    text = " ".join(build_parser().format_help().split())
    assert "--attack {none,sign-flip}" in text and "ROBUSTNESS EXPERIMENTS ONLY" in text
    args = build_parser().parse_args(["--attack", "sign-flip", "--attack-scale", "10"])
    assert (args.attack, args.attack_scale) == ("sign-flip", 10.0)
    assert build_parser().parse_args([]).attack == "none"
