"""NaN and Infinity are not JSON: every file and message we write carries null instead, with a flag."""

import json
import math

import pytest

from common.wire.protocol import ProtocolError, UpdateAck
from common.wire.safe_json import SocketIOJson, finite_or_null
from fl_server.history import write_json_atomic


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_history_files_are_standard_json_with_the_non_finite_places_listed(tmp_path):
    path = tmp_path / "h.json"
    document = {"rounds": [{"holdout": {"loss": math.nan, "accuracy": 0.5}, "train": {"loss": 1e308 * 10}}]}
    write_json_atomic(path, document)
    saved = strict_loads(path.read_text())
    assert saved["rounds"][0]["holdout"] == {"loss": None, "accuracy": 0.5}
    assert saved["rounds"][0]["train"]["loss"] is None
    assert saved["non_finite_values"] == ["$.rounds[0].holdout.loss", "$.rounds[0].train.loss"]


def test_socketio_messages_carry_null_and_the_server_takes_it():
    wire = UpdateAck("s", 1, "n1", 10, 1, {"loss": math.nan, "accuracy": 0.9}, {"train": math.inf}).to_wire()
    text = SocketIOJson.dumps(wire)
    assert "NaN" not in text and "Infinity" not in text
    ack = UpdateAck.from_wire(SocketIOJson.loads(text))
    assert ack.metrics == {"loss": None, "accuracy": 0.9} and ack.timings_s == {"train": None}
    with pytest.raises(ProtocolError):  # a NaN sent as a number (an older node) is still not a number we take
        UpdateAck.from_wire({**wire, "metrics": {"loss": math.nan}})


def test_finite_or_null_leaves_finite_values_alone():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": -0.0}}
    assert finite_or_null(value) == (value, [])
