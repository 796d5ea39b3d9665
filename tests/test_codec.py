import base64

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.wire.codec import ArraySpec, array_from_bytes, array_to_bytes, decode_array, encode_array
from common.wire.errors import ProtocolError


@pytest.mark.parametrize(
    "array",
    [
        np.array(3.5, dtype=np.float32),  # scalar
        np.zeros((0,), dtype=np.float64),  # empty
        np.zeros((3, 0, 2), dtype=np.int32),  # empty with odd shape
        np.arange(24, dtype=np.int64).reshape(2, 3, 4),
        np.array([[-1.5, np.inf], [np.nan, 0.0]], dtype=np.float64),
        np.arange(7, dtype=np.uint8),
        np.array([True, False]),
        np.random.default_rng(0).standard_normal((513, 1031)).astype(np.float32),  # large, odd
        np.arange(6, dtype=np.float32).reshape(2, 3).T,  # non-contiguous
        np.arange(4, dtype=">f4"),  # big-endian input still travels little-endian
    ],
)
def test_round_trip(array):
    decoded = decode_array(encode_array(array))
    assert decoded.dtype.name == array.dtype.name
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint16]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    )
)
def test_round_trip_property(array):
    decoded = decode_array(encode_array(array))
    assert decoded.shape == array.shape and decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_wire_bytes_are_little_endian():
    _, raw = array_to_bytes(np.array([1], dtype=np.int32))
    assert raw == b"\x01\x00\x00\x00"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"dtype": "float32", "shape": [2], "data": "!!not base64!!"}, "bad_base64"),
        ({"dtype": "float32", "shape": [2], "data": "AAAA"}, "bad_length"),  # valid base64 of 3 bytes: truncated
        ({"dtype": "float32", "shape": [2], "data": "AAA"}, "bad_base64"),  # truncated base64 text
        ({"dtype": "float32", "shape": [2], "data": base64.b64encode(b"\0" * 12).decode()}, "bad_length"),
        ({"dtype": "object", "shape": [1], "data": ""}, "bad_dtype"),
        ({"dtype": "complex64", "shape": [1], "data": ""}, "bad_dtype"),
        ({"dtype": "float32", "shape": [-1], "data": ""}, "bad_shape"),
        ({"dtype": "float32", "shape": [True], "data": ""}, "bad_shape"),
        ({"dtype": "float32", "shape": "3", "data": ""}, "bad_shape"),
        ({"dtype": "float32", "shape": [1 << 20, 1 << 20], "data": ""}, "oversize"),
        ({"dtype": "float32", "shape": [1], "data": 12}, "bad_base64"),
        ("not a dict", "bad_schema"),
    ],
)
def test_malformed_input_is_rejected_with_a_reason(fields, reason):
    with pytest.raises(ProtocolError) as info:
        decode_array(fields)
    assert info.value.reason == reason


def test_decoded_array_is_writable():
    decoded = array_from_bytes(b"\0" * 8, ArraySpec("float32", (2,)))
    decoded[0] = 1.0
    assert decoded.tolist() == [1.0, 0.0]
