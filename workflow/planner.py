"""Policy inference for a control loop: inline, or on a background thread so the loop keeps its rate.

The loop asks for a plan with the observation history of tick ``k``
(:meth:`Planner.request`) and collects it later (:meth:`Planner.poll`) with the
tick it was planned from, so :class:`workflow.chunks.ChunkQueue` can drop the
actions whose moment passed while the network ran (LeRobot's async inference
and diffusion_policy's timestamped actions, in one process).

Inline (``asynchronous=False``) the plan is computed inside :meth:`request`:
simple and deterministic, and right when inference is much shorter than a
control period (the one-step head). The thread is started by the first
request, never at construction or import.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

Frames = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class ChunkPlan:
    """What a policy plans from one observation history."""

    actions: np.ndarray
    """(H, Da) robot actions."""
    chain: np.ndarray | None = None
    """(K+1, H, Da) normalised denoising chain, when kept for viewing."""
    decision: Any = None
    """The stochastic chain with its log-probs, when the policy is learning (``workflow.policy.ChainDecision``)."""


PlanFn = Callable[[Frames], ChunkPlan]  # history -> plan


@dataclass(frozen=True)
class Plan:
    chunk: np.ndarray  # (H, Da) robot actions
    planned_at: int  # control tick of the newest observation it saw
    inference_s: float  # wall time the network took
    chain: np.ndarray | None = None  # (K+1, H, Da) normalised denoising chain, when kept
    decision: Any = None  # the learning policy's chain decision (ChunkPlan.decision)


class Planner:
    """One plan in flight at a time. ``plan_fn`` is e.g. ``DiffusionController.plan``."""

    def __init__(self, plan_fn: PlanFn, *, asynchronous: bool):
        self.plan_fn = plan_fn
        self.asynchronous = asynchronous
        self._requests: queue.Queue = queue.Queue(maxsize=1)
        self._done: Plan | BaseException | None = None
        self._busy = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        """A plan has been requested and not yet collected."""
        return self._busy

    def request(self, frames: Frames, tick: int) -> None:
        """Start planning from ``frames`` (the history at ``tick``); inline planners finish here."""
        if self._busy:
            raise RuntimeError("a plan is already in flight; poll() it before requesting another")
        if self._closed:
            raise RuntimeError("this planner was closed")
        self._busy = True
        if not self.asynchronous:
            self._done = self._run(frames, tick)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="policy-inference", daemon=True)
            self._thread.start()
        self._requests.put((frames, tick))

    def poll(self) -> Plan | None:
        """The finished plan (once), or None while it is still running or none was requested.

        An exception raised by the policy is re-raised here, in the loop's thread.
        """
        with self._lock:
            done, self._done = self._done, None
        if done is None:
            return None
        self._busy = False
        if isinstance(done, BaseException):
            raise RuntimeError(f"policy inference failed: {done}") from done
        return done

    def wait(self, timeout_s: float | None = None) -> Plan | None:
        """Block until the plan in flight is done (an episode's first plan has nothing to execute meanwhile)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._busy:
            plan = self.poll()
            if plan is not None:
                return plan
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.0005)
        return None

    def discard(self) -> None:
        """Forget the plan in flight (episode over, operator took over); waits for a running one to end."""
        if self._busy:
            self.wait()
        self._busy = False

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(timeout=5.0)

    def _serve(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            result = self._run(*item)
            with self._lock:
                self._done = result

    def _run(self, frames: Frames, tick: int) -> Plan | BaseException:
        start = time.perf_counter()
        try:
            planned = self.plan_fn(frames)
        except Exception as exc:  # handed to the loop's thread by poll()
            return exc
        return Plan(np.asarray(planned.actions), tick, time.perf_counter() - start, planned.chain, planned.decision)
