"""Weight codec: numpy arrays <-> raw little-endian bytes <-> base64 text.

An array travels as three fields: ``dtype`` (a name from ``ALLOWED_DTYPES``),
``shape`` (a list of non-negative ints) and its raw C-order little-endian bytes,
base64-encoded when it sits in JSON. Decoding never executes anything it reads:
no pickle, no object dtypes. Every failure raises ``ProtocolError`` (``common.wire.errors``) with a reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.wire.errors import ProtocolError

ALLOWED_DTYPES: frozenset[str] = frozenset(
    {
        "float16", "float32", "float64",
        "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
        "bool",
    }
)
MAX_NDIM = 8
MAX_ARRAY_BYTES = 1 << 30


@dataclass(frozen=True)
class ArraySpec:
    """What an array must look like: dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def num_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @classmethod
    def of(cls, array: np.ndarray) -> ArraySpec:
        return cls(dtype=array.dtype.name, shape=tuple(int(d) for d in array.shape))


def validate_spec(dtype: object, shape: object) -> ArraySpec:
    """Check untrusted dtype/shape fields and return them as an ``ArraySpec``."""
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError("bad_dtype", f"dtype {dtype!r} is not one of {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise ProtocolError("bad_shape", f"shape must be a list of at most {MAX_NDIM} ints, got {shape!r}")
    dims: list[int] = []
    for dim in shape:
        # bool is an int subclass; a shape of [True] is not a shape.
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise ProtocolError("bad_shape", f"shape entries must be non-negative ints, got {shape!r}")
        dims.append(dim)
    spec = ArraySpec(dtype=dtype, shape=tuple(dims))
    if spec.num_bytes > MAX_ARRAY_BYTES:
        raise ProtocolError("oversize", f"array of {spec.num_bytes} bytes exceeds {MAX_ARRAY_BYTES}")
    return spec


def array_to_bytes(array: np.ndarray) -> tuple[ArraySpec, bytes]:
    """Raw little-endian C-order bytes of ``array`` and its spec."""
    array = np.asarray(array)
    spec = validate_spec(array.dtype.name, list(array.shape))
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return spec, little.tobytes()


def array_from_bytes(raw: bytes | bytearray | memoryview, spec: ArraySpec) -> np.ndarray:
    """Rebuild an array from raw little-endian bytes; the length must match the spec exactly."""
    spec = validate_spec(spec.dtype, list(spec.shape))
    if len(raw) != spec.num_bytes:
        raise ProtocolError(
            "bad_length",
            f"{len(raw)} bytes do not fit dtype {spec.dtype} and shape {list(spec.shape)} "
            f"({spec.num_bytes} bytes expected)",
        )
    wire_dtype = np.dtype(spec.dtype).newbyteorder("<")
    flat = np.frombuffer(bytes(raw), dtype=wire_dtype)
    # astype to the native byte order gives a writable array that owns its memory.
    return flat.reshape(spec.shape).astype(np.dtype(spec.dtype), copy=True)


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: object) -> bytes:
    """Strict base64 decoding of untrusted text (no ignored characters)."""
    if not isinstance(text, str):
        raise ProtocolError("bad_base64", f"expected base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ProtocolError("bad_base64", f"invalid base64 ({exc})") from exc


def encode_array(array: np.ndarray) -> dict[str, object]:
    """JSON-ready form of one array: ``{"dtype", "shape", "data"}``."""
    spec, raw = array_to_bytes(array)
    return {"dtype": spec.dtype, "shape": list(spec.shape), "data": b64encode(raw)}


def decode_array(fields: object) -> np.ndarray:
    """Inverse of ``encode_array`` for untrusted input."""
    if not isinstance(fields, dict):
        raise ProtocolError("bad_schema", "an encoded array must be an object")
    spec = validate_spec(fields.get("dtype"), fields.get("shape"))
    return array_from_bytes(b64decode(fields.get("data")), spec)


def weights_digest(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over every layer's dtype, shape and little-endian bytes: equal digests, equal models."""
    digest = hashlib.sha256()
    for array in weights:
        spec, raw = array_to_bytes(np.asarray(array))
        digest.update(f"{spec.dtype}{list(spec.shape)}:{len(raw)}:".encode())
        digest.update(raw)
    return digest.hexdigest()
