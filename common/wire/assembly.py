"""Reassembly of chunked weights (pure: no I/O).

A sender's weights arrive as ``WeightChunk`` records, possibly duplicated (Kafka
delivers at least once) and, for hostile senders, inconsistent. ``WeightAssembler``
collects one sender's chunks, rejects what does not fit, and yields the layer arrays
once every chunk of every layer is there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.wire.codec import ArraySpec, array_from_bytes
from common.wire.protocol import ProtocolError, WeightChunk


class WeightAssembler:
    """Collects the chunks of one sender's weights for one round."""

    def __init__(self, expected_specs: Sequence[ArraySpec] | None = None) -> None:
        self._expected = list(expected_specs) if expected_specs is not None else None
        self._num_layers: int | None = len(self._expected) if self._expected is not None else None
        self._num_samples: int | None = None
        self._layer_specs: dict[int, tuple[ArraySpec, int]] = {}
        self._chunks: dict[int, dict[int, bytes]] = {}
        self._layer_bytes: dict[int, int] = {}

    @property
    def num_samples(self) -> int:
        return self._num_samples or 0

    def add(self, chunk: WeightChunk) -> bool:
        """Add a chunk. Returns False for an exact duplicate; raises ``ProtocolError`` if it does not fit."""
        if self._num_layers is None:
            self._num_layers = chunk.num_layers
        if chunk.num_layers != self._num_layers:
            raise ProtocolError(
                "shape_mismatch", f"{chunk.num_layers} layers announced, {self._num_layers} expected"
            )
        if self._expected is not None and chunk.spec != self._expected[chunk.layer_index]:
            want = self._expected[chunk.layer_index]
            raise ProtocolError(
                "shape_mismatch",
                f"layer {chunk.layer_index} is {chunk.spec.dtype}{list(chunk.spec.shape)}, "
                f"model has {want.dtype}{list(want.shape)}",
            )
        if self._num_samples is None:
            self._num_samples = chunk.num_samples
        elif chunk.num_samples != self._num_samples:
            raise ProtocolError("inconsistent_chunk", "num_samples differs between chunks of one update")
        layer_spec = self._layer_specs.setdefault(chunk.layer_index, (chunk.spec, chunk.num_chunks))
        if layer_spec != (chunk.spec, chunk.num_chunks):
            raise ProtocolError("inconsistent_chunk", f"layer {chunk.layer_index} chunks disagree on spec or count")
        layer_chunks = self._chunks.setdefault(chunk.layer_index, {})
        seen = layer_chunks.get(chunk.chunk_index)
        if seen is not None:
            if seen != chunk.data:
                raise ProtocolError(
                    "conflicting_duplicate",
                    f"layer {chunk.layer_index} chunk {chunk.chunk_index} resent with other bytes",
                )
            return False
        received = self._layer_bytes.get(chunk.layer_index, 0) + len(chunk.data)
        if received > chunk.spec.num_bytes:
            raise ProtocolError("bad_length", f"layer {chunk.layer_index} chunks exceed the layer's size")
        layer_chunks[chunk.chunk_index] = chunk.data
        self._layer_bytes[chunk.layer_index] = received
        return True

    @property
    def complete(self) -> bool:
        if self._num_layers is None or len(self._chunks) != self._num_layers:
            return False
        return all(len(self._chunks[i]) == self._layer_specs[i][1] for i in self._chunks)

    def result(self) -> list[np.ndarray]:
        """The layer arrays; only valid once ``complete``. Raises ``ProtocolError`` on a length mismatch."""
        if not self.complete:
            raise RuntimeError("weights are not complete yet")
        arrays = []
        for layer_index in range(len(self._chunks)):
            spec, num_chunks = self._layer_specs[layer_index]
            raw = b"".join(self._chunks[layer_index][i] for i in range(num_chunks))
            try:
                arrays.append(array_from_bytes(raw, spec))
            except ProtocolError as exc:
                raise ProtocolError(exc.reason, f"layer {layer_index}: {exc}") from exc
        return arrays
