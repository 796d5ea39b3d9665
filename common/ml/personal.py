"""Personalization (FedPer, ``fl-server --personal-layers K``): which weight arrays belong to the last K layers,
which stay on each node and are never uploaded nor averaged (pure: no Keras)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def personal_indices(weights_per_layer: Sequence[int], personal_layers: int) -> list[int]:
    """Positions, in ``model.get_weights()`` (the layers' weights in layer order), of the arrays of the last
    ``personal_layers`` layers that have weights. Layers without weights (Flatten, Dropout) do not count."""
    with_weights = [i for i, count in enumerate(weights_per_layer) if count > 0]
    if personal_layers < 0 or personal_layers >= len(with_weights):
        raise ValueError(f"personal layers {personal_layers}: the model has {len(with_weights)} layers with weights; "
                         "at least one must stay shared")
    if personal_layers == 0:
        return []
    first = sum(weights_per_layer[: with_weights[-personal_layers]])
    return list(range(first, sum(weights_per_layer)))


def shared_part(weights: Sequence[T], personal: Sequence[int]) -> list[T]:
    """The arrays that are uploaded and averaged: all but the personal ones, in order."""
    skip = set(personal)
    return [w for i, w in enumerate(weights) if i not in skip]


def with_shared(weights: Sequence[T], personal: Sequence[int], shared: Sequence[T]) -> list[T]:
    """``weights`` with its shared arrays replaced by ``shared`` (in order); the personal ones kept."""
    skip = set(personal)
    if len(shared) != len(weights) - len(skip):
        raise ValueError(f"{len(shared)} shared arrays for a model with {len(weights) - len(skip)}")
    replacements = iter(shared)
    return [w if i in skip else next(replacements) for i, w in enumerate(weights)]


def with_personal(weights: Sequence[T], personal: Sequence[int], values: Sequence[T]) -> list[T]:
    """``weights`` with its personal arrays replaced by ``values`` (a node's own, in order)."""
    if len(values) != len(personal):
        raise ValueError(f"{len(values)} personal arrays for {len(personal)} personal positions")
    own = dict(zip(personal, values, strict=True))
    return [own.get(i, w) for i, w in enumerate(weights)]
