"""Fault injection for the project's own end-to-end tests, off unless their environment variables are set.

``FL_NODE_TEST_EXIT_AFTER=shares|masked`` makes the node SIGKILL itself right after its encrypted shares were
accepted, or right after its masked update was published, so a test can drop a node at an exact stage of
secure aggregation. ``FL_NODE_TEST_CLEAR_UPDATES=DIR`` writes each secure round's clear update to
``DIR/<node>-round<r>.npz`` (this machine only, never the network) so a test can check the unmasked sum.
Never set them outside tests: the second defeats the point of secure aggregation.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EXIT_AFTER_ENV = "FL_NODE_TEST_EXIT_AFTER"
CLEAR_UPDATES_ENV = "FL_NODE_TEST_CLEAR_UPDATES"

logger = logging.getLogger(__name__)


def test_exit_point(stage: str) -> None:
    if os.environ.get(EXIT_AFTER_ENV) == stage:
        logger.warning("%s=%s: killing this node now (fault injection)", EXIT_AFTER_ENV, stage)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def dump_clear_update(node_id: str, server_round: int, reference: Sequence[np.ndarray],
                      trained: Sequence[np.ndarray], num_examples: int) -> None:
    directory = os.environ.get(CLEAR_UPDATES_ENV)
    if not directory:
        return
    arrays = {f"reference_{i}": np.asarray(w) for i, w in enumerate(reference)}
    arrays.update({f"trained_{i}": np.asarray(w) for i, w in enumerate(trained)})
    arrays["num_examples"] = np.asarray(num_examples, dtype=np.int64)
    np.savez(Path(directory) / f"{node_id}-round{server_round}.npz", **arrays)  # type: ignore[arg-type]
