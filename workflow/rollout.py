"""Run any policy on any ``Robot`` + ``Task`` (on the episode engine, :mod:`workflow.episode`): one
episode, or an evaluation over seeds.

Frames collected here are what the store keeps: the observation each action was
chosen from, the *applied* action (after the safety layer), the reward, done,
success and intervention flags, so rollouts can be appended to a store as
``offline-rollout``, ``online-rollout`` or ``deployment`` episodes.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from robot.protocols import Policy, Robot, Task
from robot.store import ZarrEpisodeStore
from robot.types import ACTION, DONE, INTERVENTION, REWARD, SUCCESS, EpisodeMeta, Feature
from workflow.episode import Episode, PolicyActor, Step
from workflow.lanes import SimLanes, can_run_in_lanes, run_in_lanes
from workflow.takeover import OperatorStop

if TYPE_CHECKING:
    from workflow.control import ControlStack
    from workflow.distributed import Distributed


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    ret: float
    length: int
    frames: dict[str, np.ndarray] = field(repr=False)
    terms: dict[str, float] = field(default_factory=dict)
    inference_ms: list[float] = field(default_factory=list, repr=False)
    safety: dict[str, int] = field(default_factory=dict)
    """Safety-layer interventions per guard in this episode, those that fired."""
    seconds: float = 0.0
    """Wall time of the episode, from its reset (an arm's move home, the operator's start) to its end."""
    stop: str | None = None
    """``estop`` or ``quit`` when the operator stopped the session in this episode (an arm's, through a control stack)."""


@dataclass(frozen=True)
class EvalReport:
    task: str
    episodes: int
    success_rate: float
    mean_return: float
    mean_length: float
    inference_ms_mean: float | None
    inference_ms_p95: float | None
    seeds: tuple[int, ...]
    successes: tuple[bool, ...]
    sampler: str | None = None
    """The diffusion policy's sampler these episodes ran (ddim, ddpm-mean, consistency); None for other policies."""
    lengths: tuple[int, ...] = ()
    """Steps of each episode, in ``seeds`` order (a successful episode ends at the step it succeeded)."""
    returns: tuple[float, ...] = ()
    """Return of each episode, in ``seeds`` order."""
    safety: dict[str, int] = field(default_factory=dict)
    """Safety-layer interventions per guard over these episodes, those that fired (``robot.counters``)."""
    seconds: float = 0.0
    """Wall time of this process's episodes (a robot's time, on an arm: resets and the operator's starts included)."""


def episode_features(robot: Robot) -> dict[str, Feature]:
    """Every per-step key a rollout of ``robot`` stores."""
    return {
        **{k: f for k, f in robot.observation_features.items()},
        ACTION: robot.action_features[ACTION],
        REWARD: Feature(()),
        DONE: Feature((), "bool"),
        SUCCESS: Feature((), "bool"),
        INTERVENTION: Feature((), "bool"),
    }


def run_episode(
    robot: Robot,
    task: Task,
    policy: Policy,
    *,
    seed: int,
    max_steps: int | None = None,
    on_step: Callable[[Step], None] | None = None,
    control: "ControlStack | None" = None,
) -> EpisodeResult:
    """One episode of ``policy`` alone from ``robot.reset(seed)`` until success or ``max_steps`` (the task's by default);
    with ``control``, of its policy through its rate loop, chunk queue and operator (an arm, ``workflow.control``)."""
    started = time.perf_counter()
    episode = control.episode(seed) if control is not None else Episode(robot, task, PolicyActor(policy), seed=seed, max_steps=max_steps)
    counters = getattr(robot, "counters", None)  # a safety layer's; a bare robot has none
    before = counters.as_dict() if counters is not None else {}
    latencies = []
    for step in episode:
        if step.policy is not None and step.policy.chunk_started:
            latencies.append(1e3 * step.policy.inference_s)
        if on_step is not None:
            on_step(step)
    after = counters.as_dict() if counters is not None else {}
    return EpisodeResult(seed=seed, success=episode.success, ret=episode.ret, length=episode.length, frames=episode.frames.arrays(),
                         terms=episode.terms, inference_ms=latencies, safety={k: v - before[k] for k, v in after.items() if v != before[k]},
                         seconds=time.perf_counter() - started, stop=episode.ending.stop if episode.ending is not None else None)  # fmt: skip


def evaluate(
    robot: Robot,
    task: Task,
    policy: Policy,
    *,
    episodes: int,
    seed: int = 0,
    store: ZarrEpisodeStore | None = None,
    source: str = "offline-rollout",
    show_progress: bool = False,
    on_step: Callable[[Step], None] | None = None,
    ddp: "Distributed | None" = None,
    control: "ControlStack | None" = None,
    done: Mapping[int, EpisodeResult] | None = None,
    commit: Callable[[EpisodeResult], None] | None = None,
    lanes: SimLanes | None = None,
) -> EvalReport:
    """Success rate, return and inference latency over ``episodes`` seeds ``seed, seed + 1, ...``; with
    ``control`` every episode runs through it (an arm: its rate loop, chunk queue and operator; ``task`` may then be
    None, the operator's label scoring each episode).

    With ``store``, every episode is appended to it with ``source``. With ``ddp`` (a
    torchrun job), each rank runs its share of the seeds in its own sim and every rank
    gets the whole report; only rank 0 writes to ``store``. The report is the same for
    any number of ranks when the policy seeds its noise per episode (``EpisodeSeeded``).

    A resumed session passes the episodes it already ran as ``done`` (by seed: not run again, counted in the
    report) and ``commit`` gets each episode it runs as soon as it ends (one process), frames included.

    With ``lanes`` (sim only) a diffusion controller's episodes run ``lanes.count`` side by side, their chunks
    planned in one batch (``workflow.lanes``); they are committed and stored in seed order all the same.

    An episode the operator stopped the session in (an e-stop, or a quit, before or during it) is neither
    committed nor stored: the session ends there with :class:`~workflow.takeover.OperatorStop`, and a rerun
    runs that seed again. Whatever stopped it, the operator did not let the policy finish it.
    """
    from workflow.distributed import Distributed
    from workflow.run import progress

    ddp = ddp or Distributed()
    started = time.perf_counter()
    mine = ddp.shard(episodes)
    local, frames = [], {}
    bar = progress(len(mine), 0, f"eval {_name(robot, task)}", show_progress)
    done = done or {}
    todo = [seed + i for i in mine if seed + i not in done]
    if control is None and on_step is None and can_run_in_lanes(lanes, policy, len(todo)):  # untimed: a plan's wall time is its batch's
        fresh = run_in_lanes(policy, todo, (robot, task), lanes, lambda r, t, p, s: replace(run_episode(r, t, p, seed=s), inference_ms=[]))
    else:
        fresh = (run_episode(robot, task, policy, seed=s, on_step=on_step, control=control) for s in todo)
    with closing(fresh):  # a stop or an error here stops the lanes too
        for i in mine:
            if seed + i in done:
                res = done[seed + i]
            else:
                res = next(fresh)
                if res.stop is not None:
                    bar.close()
                    what = "the e-stop was pressed" if res.stop == "estop" else "the operator quit"
                    raise OperatorStop(f"{what} in episode {len(local) + 1} of {len(mine)} (seed {res.seed}); the episodes before it ({len(local)}) are kept")
                if commit is not None:
                    commit(res)
            if store is not None and not ddp.enabled and seed + i not in done:  # one process: stored as it ends (a kill loses no finished episode)
                _store_episode(store, robot, task, res, source)
            if ddp.enabled:  # to rank 0 once every rank is done
                frames[res.seed] = res.frames
            res.frames = {}
            local.append(res)
            bar.update(1)
            bar.set_postfix(success=f"{np.mean([r.success for r in local]):.2f}")
    bar.close()
    results = sorted((r for part in ddp.gather(local) for r in part), key=lambda r: r.seed)
    if ddp.enabled and ddp.broadcast(store is not None):  # rank 0 stores every rank's episodes, in seed order
        gathered = ddp.gather_to_main(frames)
        if gathered is not None:
            by_seed = {s: f for part in gathered for s, f in part.items()}
            for res in results:
                res.frames = by_seed[res.seed]
                _store_episode(store, robot, task, res, source)
    latencies = [ms for r in results for ms in r.inference_ms]
    safety: dict[str, int] = {}
    for res in results:
        for k, v in res.safety.items():
            safety[k] = safety.get(k, 0) + v
    return EvalReport(
        task=_name(robot, task),
        episodes=episodes,
        success_rate=float(np.mean([r.success for r in results])),
        mean_return=float(np.mean([r.ret for r in results])),
        mean_length=float(np.mean([r.length for r in results])),
        inference_ms_mean=float(np.mean(latencies)) if latencies else None,
        inference_ms_p95=float(np.percentile(latencies, 95)) if latencies else None,
        seeds=tuple(r.seed for r in results),
        successes=tuple(r.success for r in results),
        lengths=tuple(int(r.length) for r in results),
        returns=tuple(float(r.ret) for r in results),
        safety=safety,
        seconds=time.perf_counter() - started + sum(r.seconds for r in done.values() if r.seed in {seed + i for i in mine}),
    )


def _store_episode(store: ZarrEpisodeStore, robot: Robot, task: Task | None, res: EpisodeResult, source: str) -> None:
    fps = task.fps if task is not None else 0.0
    store.append_episode(res.frames, EpisodeMeta(task=_name(robot, task), robot=robot.name, fps=fps, success=res.success, source=source, seed=res.seed))


def _name(robot: Robot, task: Task | None) -> str:
    return task.name if task is not None else robot.name
