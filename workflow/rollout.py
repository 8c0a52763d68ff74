"""Run any policy on any ``Robot`` + ``Task``: one episode, or an evaluation over seeds.

Frames collected here are what the store keeps: the observation each action was
chosen from, the *applied* action (after the safety layer), the reward, done,
success and intervention flags, so rollouts can be appended to a store as
``offline-rollout``, ``online-rollout`` or ``deployment`` episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from robot.protocols import EpisodeSeeded, Policy, Robot, Task
from robot.store import ZarrEpisodeStore
from robot.types import ACTION, DONE, INTERVENTION, REWARD, SUCCESS, EpisodeMeta, Feature

if TYPE_CHECKING:
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


class EpisodeFrames:
    """Accumulates one episode's per-step frames in the layout the store keeps."""

    def __init__(self, observation_keys: list[str]):
        self.keys = list(observation_keys)
        self.rows: dict[str, list] = {k: [] for k in [*self.keys, ACTION, REWARD, DONE, SUCCESS, INTERVENTION]}

    def add(self, observation: Mapping[str, np.ndarray], applied: np.ndarray, reward: float, success: bool, done: bool, intervention: bool = False) -> None:
        """One step: the observation the action was chosen from, the applied action and what followed."""
        for k in self.keys:
            self.rows[k].append(observation[k])
        self.rows[ACTION].append(applied)
        self.rows[REWARD].append(reward)
        self.rows[SUCCESS].append(success)
        self.rows[DONE].append(done)
        self.rows[INTERVENTION].append(intervention)

    def __len__(self) -> int:
        return len(self.rows[ACTION])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.rows.items()}


def run_episode(
    robot: Robot,
    task: Task,
    policy: Policy,
    *,
    seed: int,
    max_steps: int | None = None,
    on_step: Callable[[int, Mapping[str, np.ndarray], np.ndarray, float], None] | None = None,
) -> EpisodeResult:
    """One episode from ``robot.reset(seed)`` until success or ``max_steps`` (the task's by default)."""
    frames = EpisodeFrames(list(robot.observation_features))
    terms: dict[str, float] = {}
    latencies = []
    policy.reset()
    if isinstance(policy, EpisodeSeeded):  # its noise depends on this episode's seed only
        policy.seed_episode(seed)
    obs = robot.reset(seed)
    success, ret, steps = False, 0.0, max_steps or task.max_steps
    for t in range(steps):
        action = policy.select_action(obs)
        if getattr(policy, "last_chunk_started", False):
            latencies.append(1e3 * getattr(policy, "last_inference_s", 0.0))
        applied = robot.send_action(action)
        next_obs = robot.get_observation()
        outcome = task.evaluate(next_obs, applied)
        success = outcome.success
        frames.add(obs, applied, outcome.reward, success, success or t == steps - 1, bool(getattr(policy, "last_was_intervention", False)))
        for name, value in outcome.terms.items():
            terms[name] = terms.get(name, 0.0) + value
        ret += outcome.reward
        if on_step is not None:
            on_step(t, obs, applied, outcome.reward)
        obs = next_obs
        if success:
            break
    return EpisodeResult(seed=seed, success=success, ret=ret, length=len(frames), frames=frames.arrays(), terms=terms, inference_ms=latencies)


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
    on_step: Callable[[int, Mapping[str, np.ndarray], np.ndarray, float], None] | None = None,
    ddp: "Distributed | None" = None,
) -> EvalReport:
    """Success rate, return and inference latency over ``episodes`` seeds ``seed, seed + 1, ...``.

    With ``store``, every episode is appended to it with ``source``. With ``ddp`` (a
    torchrun job), each rank runs its share of the seeds in its own sim and every rank
    gets the whole report; only rank 0 writes to ``store``. The report is the same for
    any number of ranks when the policy seeds its noise per episode (``EpisodeSeeded``).
    """
    from workflow.distributed import Distributed
    from workflow.run import progress

    ddp = ddp or Distributed()
    mine = ddp.shard(episodes)
    local, frames = [], {}
    bar = progress(len(mine), 0, f"eval {task.name}", show_progress and ddp.is_main)
    for i in mine:
        res = run_episode(robot, task, policy, seed=seed + i, on_step=on_step)
        if store is not None and not ddp.enabled:  # one process: stored as it ends (a kill loses no finished episode)
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
    return EvalReport(
        task=task.name,
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
    )


def _store_episode(store: ZarrEpisodeStore, robot: Robot, task: Task, res: EpisodeResult, source: str) -> None:
    store.append_episode(res.frames, EpisodeMeta(task=task.name, robot=robot.name, fps=task.fps, success=res.success, source=source, seed=res.seed))
