"""The guarded JSON path: every unfit input becomes one ProtocolError with a reason, nothing else escapes."""

import json
import logging

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from common.ratelog import RateLimitedLog
from common.wire.errors import ProtocolError
from common.wire.safe_json import MALFORMED_EVENT, MAX_DEPTH, SocketIOJson, loads_untrusted, read_json_file

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(("text", "reason"), [
    ('{"round": ' + "9" * 5000 + "}", "bad_number"),  # int() refuses > 4,300 digits with ValueError
    ('{"round": -' + "9" * 65 + "}", "bad_number"),
    ('{"loss": 1e999}', "bad_number"),  # parses to inf
    ('{"loss": -1e999}', "bad_number"),
    (DEEP, "too_deep"),  # RecursionError in the C parser
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "too_deep"),  # parses, then the depth check
    ('{"a": ' * 40 + "1" + "}" * 40, "too_deep"),
    ("not json {", "not_json"),
    (b"\xff\xfe\x00garbage", "not_json"),
    (b'{"a": "\xc3\x28"}', "not_json"),  # invalid UTF-8
    ("", "not_json"),
    ("x" * 2000, "oversize"),
])
def test_unfit_json_is_refused_with_its_reason(text, reason):
    with pytest.raises(ProtocolError) as info:
        loads_untrusted(text, max_bytes=1000 if reason == "oversize" else 1 << 20)
    assert info.value.reason == reason


def test_fit_json_parses_as_the_standard_library_does():
    text = '{"round": 12, "shape": [3, 4], "loss": 0.25, "nan": NaN, "deep": ' + "[" * 30 + "]" * 30 + "}"
    assert json.dumps(loads_untrusted(text, max_bytes=1 << 20)) == json.dumps(json.loads(text))
    assert loads_untrusted("9" * 64, max_bytes=100) == int("9" * 64)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@given(st.one_of(JSON_VALUES.map(json.dumps), st.text(max_size=200), st.binary(max_size=200)))
@example("9" * 5000)
@example(DEEP)
@example("1e999")
def test_anything_parses_or_raises_protocol_error_only(data):
    try:
        loads_untrusted(data, max_bytes=1 << 20)
    except ProtocolError as exc:
        assert exc.reason in {"bad_number", "too_deep", "not_json", "oversize"}


def test_socketio_packets_that_are_unfit_decode_to_the_marker_event():
    assert SocketIOJson.loads(DEEP) == [MALFORMED_EVENT, "too_deep"]
    assert SocketIOJson.loads('["fl_update", {"round": ' + "1" * 5000 + "}]") == [MALFORMED_EVENT, "bad_number"]
    assert SocketIOJson.loads('["fl_update", {"round": 3}]') == ["fl_update", {"round": 3}]


def test_files_are_size_checked_before_they_are_read(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "1," * 1000 + "1]")
    with pytest.raises(ProtocolError) as info:
        read_json_file(path, max_bytes=100)
    assert info.value.reason == "oversize"
    path.write_text(DEEP)
    with pytest.raises(ProtocolError) as info:
        read_json_file(path, max_bytes=1 << 20)
    assert info.value.reason == "too_deep"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rate_limited_log_writes_a_burst_then_counts_what_it_left_out(caplog):
    clock = FakeClock()
    log = RateLimitedLog(logging.getLogger("test.ratelog"), burst=3, interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        written = [log.warning("bad", "record %d rejected", i) for i in range(100)]
        log.warning("other", "another reason")  # keys have their own budgets
        clock.now = 10.0
        log.warning("bad", "record %d rejected", 100)
    assert written == [True] * 3 + [False] * 97 and log.suppressed_total == 97
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:4] == ["record 0 rejected", "record 1 rejected", "record 2 rejected", "another reason"]
    assert lines[4].startswith("record 100 rejected (and 97 more like it")
    assert len(lines) == 5


def test_rate_limited_log_flush_reports_pending_counts(caplog):
    log = RateLimitedLog(logging.getLogger("test.ratelog2"), burst=1, interval_s=10, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="test.ratelog2"):
        for _ in range(5):
            log.warning("oversize", "too big")
        log.flush()
    assert [r.getMessage() for r in caplog.records] == ["too big", "4 more oversize message(s) were not logged "
                                                                    "(rate limit)"]
