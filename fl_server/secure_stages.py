"""The round loop's secure-aggregation stages (``--secure-aggregation``), a part of ``Coordinator`` kept apart.

``SecureRound`` (pure) says what each stage expects and sends; this drives it over the coordinator's inbox,
registry and emit: wait for a stage's messages (a node gone for ``DROPOUT_GRACE_S`` is not waited for), close the
stage and send its results, and at the end unmask and fold the survivors' mean into the strategy. The key stages
run before the coordinator collects the masked updates; the unmask stage after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from common.ratelog import RateLimitedLog
from common.secagg.protocol import SecAggFailure
from common.wire.errors import ProtocolError
from fl_server.inbox import Inbox
from fl_server.registry import NodeRegistry
from fl_server.rounds import RoundState
from fl_server.secure_round import SecAggInput, SecureRound
from fl_server.strategies import Strategy

logger = logging.getLogger(__name__)
secure_log = RateLimitedLog(logger)  # secure-aggregation refusals: a node can repeat them
SECURE_SUM_ID = "secure-aggregate"  # the strategy's one "update" of a secure round: the survivors' mean
# Refusals that do not make a node drop out (a late or repeated message, not a broken one).
HARMLESS_SECAGG_REFUSALS = frozenset({"wrong_round", "wrong_session", "duplicate", "out_of_stage"})
DROPOUT_GRACE_S = 5.0  # how long a disconnected participant may take to come back
DROPOUT_POLL_S = 1.0


class SecureStages:
    """The secure-aggregation stages of ``Coordinator`` (which provides these attributes)."""

    inbox: Inbox
    registry: NodeRegistry
    strategy: Strategy
    weights: list[np.ndarray]
    _emit: Callable[[str, dict[str, Any], str], Awaitable[None]]

    async def _dispatch(self, state: RoundState, item: object) -> None:
        raise NotImplementedError

    def _take_secure(self, state: RoundState, item: SecAggInput) -> None:
        secure, node_id = state.secure, item.node_id
        if secure is None:
            secure_log.warning("no_secure_round", "round %d: ignored a secure-aggregation message from %s (this round "
                               "does not use secure aggregation)", state.server_round, node_id)
            return
        try:
            secure.offer(item)
        except SecAggFailure:
            return  # the round already failed; its reason is recorded
        except ProtocolError as exc:
            secure.refuse(exc.reason)
            secure_log.warning(exc.reason, "round %d: refused a secure-aggregation message from %s (%s): %s",
                               state.server_round, node_id, exc.reason, exc)
            if exc.reason not in HARMLESS_SECAGG_REFUSALS and node_id in state.collector.participants:
                state.collector.failed.setdefault(node_id, f"secagg_{exc.reason}")  # it drops out of the round

    async def _secure_stage(self, state: RoundState, timeout_s: float) -> float:
        """Take inbox items until the secure stage has what it waits for, or ``timeout_s``; returns the time taken."""
        secure, collector = state.secure, state.collector
        assert secure is not None
        loop, t0 = asyncio.get_running_loop(), time.perf_counter()
        deadline = loop.time() + timeout_s
        while (waiting := secure.missing(state.gone | set(collector.failed))) and (
                remaining := deadline - loop.time()) > 0:
            self._drop_disconnected(state, waiting)
            try:
                item = await asyncio.wait_for(self.inbox.get(), min(remaining, DROPOUT_POLL_S))
            except TimeoutError:
                continue
            await self._dispatch(state, item)
        missing = secure.missing(state.gone | set(collector.failed))
        if missing:
            logger.warning("round %d: secure aggregation stage %s closed without %s", state.server_round, secure.stage,
                           ", ".join(sorted(missing)))
        return time.perf_counter() - t0

    def _drop_disconnected(self, state: RoundState, waiting: set[str] | frozenset[str]) -> None:
        """Secure rounds wait for stages in turn, so a node gone for good (not reconnected within
        ``DROPOUT_GRACE_S``) drops out now rather than at the stage's deadline. A node whose masked input is in
        stays in the sum; its absence only counts at the unmask stage."""
        now = time.monotonic()
        for node_id in waiting:
            if self.registry.info(node_id) is not None:
                state.away_since.pop(node_id, None)
            elif now - state.away_since.setdefault(node_id, now) >= DROPOUT_GRACE_S and node_id not in state.gone:
                state.gone.add(node_id)
                if node_id not in state.collector.completed:
                    state.collector.failed.setdefault(node_id, "secagg_disconnected")
                logger.warning("round %d: node %s disconnected over %.0fs ago; secure aggregation goes on without "
                               "it", state.server_round, node_id, DROPOUT_GRACE_S)

    async def _close_secure_stage(self, state: RoundState, elapsed_s: float) -> bool:
        """End the stage, send its results; False (the round failed) when too few nodes are left."""
        secure = state.secure
        assert secure is not None
        stage = secure.stage
        try:
            outgoing = secure.close_stage(elapsed_s)
        except SecAggFailure as failure:
            state.failure = secure.fail(failure)
            return False
        for node_id in state.collector.participants - set(outgoing) - set(state.collector.completed):
            state.collector.failed.setdefault(node_id, f"secagg_dropped_at_{stage}")
        for node_id, (event, payload) in sorted(outgoing.items()):
            info = self.registry.info(node_id)
            if info is not None:  # a node away now misses the stage and drops out: the protocol allows that
                await self._emit(event, payload, info.sid)
        return True

    async def _secure_key_stages(self, state: RoundState) -> bool:
        """Advertise keys, then share keys; False if the round failed at either."""
        assert state.secure is not None
        for _ in ("advertise", "share_keys"):
            elapsed_s = await self._secure_stage(state, state.secure.settings.stage_timeout_s)
            if not await self._close_secure_stage(state, elapsed_s):
                return False
        return True

    async def _secure_unmask(self, state: RoundState) -> None:
        """Ask the survivors for their shares, rebuild the masks and fold the unmasked mean into the strategy."""
        secure = state.secure
        assert secure is not None
        if not await self._close_secure_stage(state, state.updates_s):
            return
        elapsed_s = await self._secure_stage(state, secure.settings.stage_timeout_s)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._unmask_and_fold, secure, elapsed_s)
        except SecAggFailure as failure:
            state.failure = secure.fail(failure)
        except ValueError as exc:  # a sum no honest inputs produce
            state.failure = secure.fail(SecAggFailure("bad_sum", str(exc)))

    def _unmask_and_fold(self, secure: SecureRound, elapsed_s: float) -> None:
        """Worker thread: remove the masks; the strategy gets the survivors' FedAvg as the round's one update."""
        t0 = time.thread_time()  # CPU of this thread: what the unmasking costs, whatever else the machine does
        weights, num_samples = secure.finish(elapsed_s, self.weights)
        secure.timings_s["unmask_cpu"] = round(time.thread_time() - t0, 4)
        self.strategy.accumulate(SECURE_SUM_ID, weights, num_samples)
