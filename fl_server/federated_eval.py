"""Federated evaluation (``fl-server --federated-eval``): the nodes' evaluations of a round's global model on
their own local test rows, summed up as the history records them (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.wire.protocol import LocalEvaluation


def weighted_metrics(per_node: Mapping[str, tuple[int, Mapping[str, float | None]]]) -> dict[str, float | None]:
    """Each metric's mean over the nodes, weighted by their test rows: ``sum(n_i * m_i) / sum(n_i)`` over the
    nodes that reported it as a number (a node's null, e.g. a diverged loss, makes the metric null)."""
    names = sorted({name for _, metrics in per_node.values() for name in metrics})
    out: dict[str, float | None] = {}
    for name in names:
        pairs = [(n, metrics[name]) for n, metrics in per_node.values() if name in metrics]
        if any(value is None for _, value in pairs):
            out[name] = None
            continue
        total = sum(n for n, _ in pairs)
        out[name] = sum(n * float(value) for n, value in pairs if value is not None) / total if total else None
    return out


def federated_record(evaluations: Mapping[str, LocalEvaluation]) -> dict[str, Any]:
    """The round's ``federated_eval`` section: per node (test rows, metrics, personalized metrics where the node
    has personal layers) and the sample-weighted means; ``{}`` when no node evaluated."""
    if not evaluations:
        return {}
    record: dict[str, Any] = {
        "num_samples": sum(e.num_samples for e in evaluations.values()),
        "weighted": weighted_metrics({n: (e.num_samples, e.metrics) for n, e in evaluations.items()}),
        "per_node": {n: evaluations[n].to_wire() for n in sorted(evaluations)},
    }
    personalized = {n: (e.num_samples, e.personalized) for n, e in evaluations.items() if e.personalized}
    if personalized:
        record["weighted_personalized"] = weighted_metrics(personalized)
    return record
