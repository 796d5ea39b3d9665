"""Model-poisoning attacks a node can simulate, for robustness experiments only.

``--attack sign-flip --attack-scale S`` publishes ``w_global - S * (w_local - w_global)``
instead of ``w_local``: the honest update, reversed and scaled. It exists so that the
robust strategies (median, trimmed mean, Krum) can be tested end to end against a real
attacker; never turn it on in a federation you care about.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ATTACKS = ("none", "sign-flip")


def sign_flip(global_weights: Sequence[np.ndarray], local_weights: Sequence[np.ndarray], *,
              scale: float) -> list[np.ndarray]:
    """``w_global - scale * (w_local - w_global)`` per layer, in each local layer's dtype."""
    return [
        (np.asarray(g, dtype=np.float64) - scale * (np.asarray(w, dtype=np.float64) - g)).astype(np.asarray(w).dtype)
        for g, w in zip(global_weights, local_weights, strict=True)
    ]


def apply_attack(name: str, global_weights: Sequence[np.ndarray], local_weights: Sequence[np.ndarray], *,
                 scale: float) -> list[np.ndarray]:
    """The weights to publish: ``local_weights`` unchanged for ``"none"``, else the attacked update."""
    if name == "none":
        return list(local_weights)
    if name == "sign-flip":
        return sign_flip(global_weights, local_weights, scale=scale)
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
