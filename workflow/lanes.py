"""Sim episodes side by side: each lane a sim of its own, their policy's chunks planned in one batch.

A diffusion policy's chunk at batch 1 is mostly per-call overhead: 10 denoising steps of the small
U-Net cost about 32 ms for one row and 111 ms for 32 (3.5 ms a row; session 25). Run one at a time,
sim episodes spend almost all their CPU there. Lanes run ``count`` episodes at once, each on its own
thread with its own robot and task (a sim scene), its own copy of the controller (history, action queue,
noise generator: :meth:`~workflow.policy.DiffusionController.for_lane`), and one :class:`Batcher`
computing their plans together once every lane still running has asked for one.

What an episode does depends on its seed alone, as it would run by itself: the lanes step in lockstep
(a batch forms only when every running lane waits), each lane takes a fixed share of the seeds (lane i:
seeds i, i + count, ...), a row's noise comes from its own episode's generator, and results are handed
on in seed order. Only float rounding differs from a batch of one (about 5e-7 on the actions), so lanes
give the same episodes on every run, though not bit for bit those of one lane or of another count.
"""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from workflow.planner import ChunkPlan

R = TypeVar("R")
Frames = list[dict[str, Any]]

DEFAULT_LANES = 32
"""Sim episodes a process runs side by side by default (one online iteration's). 200 evaluation episodes of the
main job's online policy took 27 CPU s in 32 lanes, 32 s in 16 and 65 s one at a time, with the same 79.0%
success (session 25): past the batched network, each step's sim and engine cost is left."""


class LanesStopped(RuntimeError):
    """Raised in a lane whose siblings failed or whose results are no longer wanted."""


class Batcher:
    """Plans the chunks ``lanes`` controller copies ask for, all at once, when every lane still running waits."""

    def __init__(self, lanes: int):
        self._cv = threading.Condition()
        self._running = lanes
        self._waiting: dict[int, tuple[Any, Frames]] = {}
        self._plans: dict[int, ChunkPlan] = {}
        self._stopped = False
        self.batches = 0
        """Batched passes run so far (rows per pass: requests / batches)."""
        self.requests = 0

    def plan(self, lane: int, controller: Any, frames: Frames) -> ChunkPlan:
        with self._cv:
            if self._stopped:
                raise LanesStopped("the other lanes stopped")
            self._waiting[lane] = (controller, frames)
            self._run_if_all_wait()
            while lane not in self._plans:
                if self._stopped:
                    raise LanesStopped("the other lanes stopped")
                self._cv.wait()
            return self._plans.pop(lane)

    def leave(self) -> None:
        """A lane has run all its episodes (or failed): the others no longer wait for it."""
        with self._cv:
            self._running -= 1
            self._run_if_all_wait()

    def stop(self) -> None:
        """Every lane raises :class:`LanesStopped` at its next plan."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def _run_if_all_wait(self) -> None:
        from workflow.policy import plan_together

        if self._stopped or not self._waiting or len(self._waiting) < self._running:
            return
        lanes = sorted(self._waiting)  # rows in lane order: the same batch on every run
        try:
            plans = plan_together([self._waiting[i][0] for i in lanes], [self._waiting[i][1] for i in lanes])
        except BaseException:
            self._stopped = True
            self._cv.notify_all()
            raise
        self.batches += 1
        self.requests += len(lanes)
        self._waiting.clear()
        self._plans.update(zip(lanes, plans))
        self._cv.notify_all()


@dataclass(frozen=True)
class Lane:
    """What a lane's controller copy plans through."""

    batcher: Batcher
    index: int

    def plan(self, controller: Any, frames: Frames) -> ChunkPlan:
        return self.batcher.plan(self.index, controller, frames)


class SimLanes:
    """How many episodes to run side by side, and the sims of the lanes past the first: built by ``make() ->
    (robot, task)`` (not yet connected) when a run first needs them, then kept, connected, for every later run until
    :meth:`close`. Built per run, 31 robosuite lift sims cost 8-12 CPU s at every online iteration and evaluation,
    and each closed set held about 3 GB until the cyclic garbage collector ran: a lift benchmark's process swung
    between 7.5 and 18 GB (docs/RESULTS.md, sessions 32-33). An episode depends on its seed alone (its
    sim is reset from it), so a lane's sim serves any number of runs."""

    def __init__(self, count: int, make: Callable[[], tuple[Any, Any]]):
        if count < 1:
            raise ValueError(f"lanes must be >= 1, got {count}")
        self.count = count
        self.make = make
        self._sims: list[tuple[Any, Any]] = []
        self._opened = ExitStack()
        self._closed = False

    def sims(self, n: int) -> list[tuple[Any, Any]]:
        """``n`` connected ``(robot, task)`` pairs, building only those no earlier run built."""
        if self._closed:
            raise RuntimeError("these sim lanes are closed; make new ones (workflow.envs.sim_lanes)")
        while len(self._sims) < n:
            robot, task = self.make()
            self._sims.append((self._opened.enter_context(robot), task))
        return self._sims[:n]

    @property
    def built(self) -> int:
        """Sims built so far (each once)."""
        return len(self._sims)

    def close(self) -> None:
        """Disconnect and drop every sim, and return their memory now (MuJoCo models sit in reference cycles)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._opened.close()
        finally:
            self._sims.clear()
            gc.collect()

    def __enter__(self) -> "SimLanes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def can_run_in_lanes(lanes: SimLanes | None, policy: Any, episodes: int) -> bool:
    """Whether episodes of ``policy`` can go side by side: more than one lane and one episode, and a policy that
    plans through batches (a diffusion controller, with any sampler; any other policy runs one at a time)."""
    return lanes is not None and lanes.count > 1 and episodes > 1 and callable(getattr(policy, "for_lane", None))


def run_in_lanes(
    controller: Any, seeds: Sequence[int], first: tuple[Any, Any], lanes: SimLanes, run: Callable[[Any, Any, Any, int], R]
) -> Iterator[R]:
    """``run(robot, task, controller_copy, seed)`` for every seed, ``lanes.count`` at a time (``first``: the
    caller's connected ``(robot, task)``, lane 0's), yielded in the order of ``seeds`` as they finish.
    A failing episode stops the others and its error is raised here; closing the iterator early stops them too."""
    n = min(lanes.count, len(seeds))
    batcher = Batcher(n)
    results: queue.Queue = queue.Queue()
    sims = [first, *lanes.sims(n - 1)]

    def work(i: int) -> None:
        try:
            mine = controller.for_lane(Lane(batcher, i))
            robot, task = sims[i]
            for k in range(i, len(seeds), n):
                results.put((k, run(robot, task, mine, seeds[k])))
        except BaseException as e:  # the first error in the queue is the one that stopped the others
            results.put((-1, e))
            batcher.stop()
        finally:
            batcher.leave()

    threads = [threading.Thread(target=work, args=(i,), name=f"lane-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        ready: dict[int, R] = {}
        for k in range(len(seeds)):
            while k not in ready:
                index, value = results.get()
                if index < 0:
                    raise value
                ready[index] = value
            yield ready.pop(k)
    finally:
        batcher.stop()
        for t in threads:
            t.join()
