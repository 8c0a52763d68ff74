"""Evaluate a saved policy in sim: the job behind `robot eval`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from robot.store import ZarrEpisodeStore
from workflow.distributed import init_distributed
from workflow.critic_checkpoint import load_critics
from workflow.envs import make_sim_for, sim_lanes
from workflow.episode import Step
from workflow.policy import DiffusionController, policy_task
from workflow.lanes import DEFAULT_LANES
from workflow.rollout import EvalReport, episode_features, evaluate
from workflow.run import resolve_device


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation in sim (the ``robot eval`` options)."""

    policy: Path
    """Run directory or policy checkpoint."""
    task: str | None = None
    """Simulated task (any name `robot tasks` lists, or pkg.module:factory); None: the checkpoint's task."""
    episodes: int = 50
    """Episodes, on seeds seed, seed + 1, ..."""
    seed: int = 1000
    """First evaluation seed."""
    sampler: str | None = None
    """ddim (K-step), ddpm-mean (K-step through the stochastic chain's means), ddpm (the stochastic chain) or consistency
    (one step); None: the policy's own K-step sampler. Several, comma-separated (ddim,ddpm-mean,ddpm): each on the
    same seeds, compared episode by episode."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""
    lanes: int = DEFAULT_LANES
    """Episodes run side by side, their chunks planned in one batch (``workflow.lanes``; 1: one at a time; a policy
    that reads cameras runs one at a time)."""
    save: Path | None = None
    """Append the evaluation episodes to this store."""
    view: bool = False
    """Stream every step and each chunk's denoising chain to a Rerun viewer."""
    rrd: Path | None = None
    """Write the same live view to this .rrd file (headless)."""
    critics: Path | None = None
    """Offline critics (runs/x/round-M/critics): show Q of each chunk and V in the view."""
    outcomes: Path | None = None
    """Write every episode's seed, success, length and return to this JSON file, for a later ``--against``."""
    against: Path | None = None
    """Outcomes of another policy on the same seeds (an earlier ``--outcomes`` file, or a ``python -m bench.recipe``
    stage's ``.paired.json``): print success, mean steps to success, and this policy's wins, losses and the
    sign-test p against it, episode by episode."""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.lanes < 1:
            raise ValueError(f"episodes and lanes must be >= 1, got {self.episodes} and {self.lanes}")
        if (self.outcomes or self.against) and self.samplers:
            raise ValueError("--outcomes and --against follow one sampler's episodes; give one --sampler with them")

    @property
    def samplers(self) -> list[str] | None:
        """The samplers to compare when ``sampler`` names several, else None."""
        return [x.strip() for x in self.sampler.split(",")] if self.sampler and "," in self.sampler else None


def evaluate_policy(
    policy: str | Path,
    task: str | None = None,
    *,
    episodes: int,
    seed: int = 1000,
    sampler: str | None = None,
    device: str = "cpu",
    save: str | Path | None = None,
    show_progress: bool = True,
    view: bool = False,
    rrd: str | Path | None = None,
    critics: str | Path | None = None,
    lanes: int = DEFAULT_LANES,
) -> EvalReport:
    """Evaluate in sim; ``view`` streams every step and the denoising chain of each executed
    chunk to a Rerun viewer, ``rrd`` writes the same to a file; with ``critics`` (an offline
    round's ``critics`` checkpoint) the view also shows Q of each executed chunk and V. ``task`` None: the
    checkpoint's task (no warning here when they differ: commands warn once, with ``workflow.policy.policy_task``).
    ``lanes``: episodes run side by side (``workflow.lanes``; one at a time when the policy reads cameras or a point cloud)."""
    ddp, torch_device = init_distributed(resolve_device(device))  # torchrun: the seeds are split over the ranks' sims
    controller = DiffusionController.load(policy, sampler=sampler, device=str(torch_device))
    task = policy_task(policy, task, meta=controller.meta, warn=False)
    robot, sim_task = make_sim_for(task, controller.input_features)
    controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    if (view or rrd) and ddp.enabled:
        raise ValueError("--view/--rrd follow one process's episodes; evaluate without torchrun to watch them")
    on_step = LiveEvalView(controller, robot, sim_task.fps, spawn=view, save=rrd, critics=critics) if view or rrd else None
    side_by_side = sim_lanes(task, controller.input_features, lanes)
    with robot, side_by_side or contextlib.nullcontext():
        store = ZarrEpisodeStore.open_or_create(save, episode_features(robot)) if save and ddp.is_main else None
        try:
            report = evaluate(robot, sim_task, controller, episodes=episodes, seed=seed, store=store, source="offline-rollout",
                              show_progress=show_progress, on_step=on_step, ddp=ddp, lanes=side_by_side)  # fmt: skip
            return replace(report, sampler=controller.sampler)
        finally:
            if store is not None:
                store.close()
            if on_step is not None:
                on_step.close()


class LiveEvalView:
    """``on_step`` callback logging each step, chunk boundaries and the executed chunk's denoising chain."""

    def __init__(self, controller: DiffusionController, robot, fps: float, *, spawn: bool, save: str | Path | None, critics: str | Path | None = None):
        from robot.viewer import LiveLogger, episode_blueprint, open_recording

        features = episode_features(robot)
        self.recording = open_recording("robot-eval", spawn=spawn, save=Path(save) if save else None,
                                        blueprint=episode_blueprint(features, policy_internals=True))  # fmt: skip
        self.logger = LiveLogger(self.recording, features, fps=fps)
        self.controller = controller
        controller.keep_chain = True
        self.critics = load_critics(critics) if critics else None
        self.step = 0

    def __call__(self, step: Step) -> None:
        if step.t == 0:
            self.logger.log_event(self.step, "episode starts")
        chunk_start = step.policy is not None and step.policy.chunk_started
        chain = step.policy.chain if chunk_start else None
        q = v = None
        if chain is not None and self.critics is not None:
            with torch.no_grad():
                cond = self.controller.condition()
                executed = torch.as_tensor(chain[-1][: self.controller.n_action_steps]).reshape(1, -1)  # (1, Ta * Da) normalised
                q = np.array([float(x) for x in self.critics.q(cond, executed)])
                v = float(self.critics.value(cond))
        self.logger.log_policy_internals(self.step, chain, chunk_start=chunk_start, q=q, v=v)
        self.logger.log_step(self.step, step.observation, step.action, step.reward)
        self.step += 1

    def close(self) -> None:
        self.recording.flush()
        self.recording.disconnect()
