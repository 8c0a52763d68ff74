"""``robot deploy``: run a trained policy on a robot at a fixed rate, safely, and record what it does.

Each episode runs on the episode engine (:mod:`workflow.episode`): the robot resets (sim: from the
episode's seed; real arm: moves home, then the operator starts the episode), then every control tick:

1. the operator's device, when there is one (:class:`workflow.takeover.Takeover`): e-stop (latches the
   robot's e-stop and ends the session), takeover toggle, success / failure labels, quit;
2. the policy (:class:`workflow.control.ChunkActor`): collect a finished plan and queue its chunk against the tick it was
   planned from (stale actions are dropped, :mod:`workflow.chunks`); ask for the next plan early enough
   that it lands before the queue drains (inference runs on a background thread at a fixed rate,
   :mod:`workflow.planner`);
3. send the due action through the safety layer (the operator's while they drive, flagged
   ``intervention``); with nothing due the arm holds;
4. sleep to the next tick (:class:`workflow.rate.RateLoop` measures rate and jitter), observe, and score
   the step with the task when there is one (sim and vendor stand-ins).

The robot, loop, planner, queue and operator are a :class:`workflow.control.ControlStack`, the one online
RL collects with. Every episode goes to the store with ``source = deployment``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from hardware.teleop import TeleopDevice
from robot.protocols import Robot, Task
from robot.report import format_table
from robot.store import ZarrEpisodeStore
from robot.types import EpisodeMeta
from workflow.chunks import ChunkQueueConfig
from workflow.control import INFERENCE_MODES, ControlStack, loop_rate, open_robot_for
from workflow.policy import DiffusionController, policy_task
from workflow.rate import RateStats
from workflow.rollout import episode_features
from workflow.takeover import NOT_STARTED


@dataclass(frozen=True)
class DeployConfig:
    """One deployment session (the ``robot deploy`` options)."""

    policy: Path
    """Run directory or policy checkpoint directory to deploy."""
    robot: str | None = None
    """Robot spec (hardware.registry): sim:push, ur5e:IP, ur5e:standin:push, remote:HOST:PORT...; None: sim:<the checkpoint's task>."""
    episodes: int = 10
    """Episodes to run."""
    hz: float | None = None
    """Control rate; None means the rate the policy was trained at (its data's fps). 0 runs unthrottled
    (sim only: one tick is one control period of sim time), with inline inference."""
    max_steps: int | None = None
    """Ticks per episode; None means the task's limit (real arms: 600)."""
    sampler: str | None = None
    """ddim or ddpm-mean (K-step deterministic chains), consistency (the one-step head); None: the policy's own K-step sampler."""
    chunks: str = "receding"
    """receding (execute n_action_steps of each chunk, then re-plan) or ensemble (temporal ensembling, a plan every tick)."""
    ensemble_decay: float = 0.01
    """Temporal-ensembling weight exp(-decay * i), i = 0 the oldest prediction."""
    inference: str = "auto"
    """inline (plan inside the tick), background (a thread plans while the loop runs; late plans lose their
    stale actions), or auto: background when the first plan took more than half a control period.
    Unthrottled loops always plan inline."""
    device: str | None = None
    """Operator device for e-stop, takeover and success labels: keyboard, gamepad, spacemouse; None for none."""
    out: Path | None = None
    """Episode store for what the robot did; None means data/deploy-<task>.zarr."""
    seed: int = 0
    """Episode i resets the sim from seed + i (real arms ignore it); also seeds the policy's noise."""
    torch_device: str = "cpu"
    """Where the policy runs: cpu, cuda, mps."""
    view: bool = False
    """Stream steps, chunk starts and denoising chains to a live Rerun viewer."""
    rrd: Path | None = None
    """Write the same view to this .rrd file."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.hz is not None and not self.hz >= 0:
            raise ValueError(f"hz must be >= 0 (0 = unthrottled), got {self.hz}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        ChunkQueueConfig(mode=self.chunks, ensemble_decay=self.ensemble_decay)  # validates both
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {self.inference!r}")


@dataclass(frozen=True)
class DeployedEpisode:
    seed: int
    success: bool
    label: str  # task, operator, e-stop, max-steps
    length: int
    ret: float
    interventions: int
    held: int  # ticks with no action due (the arm held position)


@dataclass
class DeployReport:
    robot: str
    hz: float
    episodes: list[DeployedEpisode]
    rate: RateStats
    inference_ms: list[float] = field(repr=False)
    action_age_ticks: list[int] = field(repr=False)  # per adopted plan: ticks between its observation and its arrival
    stale_dropped: int = 0
    chunks_dropped: int = 0
    safety: dict[str, int] = field(default_factory=dict)
    store: str = ""
    stopped_by: str | None = None  # estop, quit, or None when every episode ran

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    def table(self) -> str:
        inf = np.asarray(self.inference_ms or [np.nan])
        age = np.asarray(self.action_age_ticks or [0])
        return format_table(
            ["robot", "episodes", "success", "rate", "jitter p50/p99 ms", "overruns", "inference ms mean/p95", "plan age ticks (max)", "stale dropped", "held ticks", "interventions"],
            [[self.robot, len(self.episodes), f"{self.success_rate:.1%}", f"{self.rate.mean_hz:.1f} of {self.hz:g} Hz" if self.hz else f"{self.rate.mean_hz:.1f} Hz unthrottled",
              f"{self.rate.jitter_p50_ms:.2f}/{self.rate.jitter_p99_ms:.2f}", self.rate.overruns,
              f"{np.nanmean(inf):.1f}/{np.nanpercentile(inf, 95):.1f}", f"{age.mean():.2f} ({age.max()})",
              self.stale_dropped, sum(e.held for e in self.episodes), sum(e.interventions for e in self.episodes)]],
        )  # fmt: skip


def deploy(
    config: DeployConfig,
    *,
    robot: Robot | None = None,
    task: Task | None = None,
    device: TeleopDevice | None = None,
    stream: TextIO | None = None,
) -> DeployReport:
    """Run ``config.episodes`` episodes; pass ``robot`` (and its ``task``) to skip the registry."""
    stream = stream or sys.stderr
    controller = DiffusionController.load(config.policy, sampler=config.sampler, device=config.torch_device, seed=config.seed)
    trained_task = str(controller.meta.get("task", ""))
    if robot is None:
        robot, task = open_robot_for(config.robot or f"sim:{policy_task(config.policy, meta=controller.meta)}", controller)
        if config.robot is not None and task is not None and trained_task and task.name != trained_task:
            print(f"warning: {config.policy} was trained on task {trained_task}; running it on {task.name} as --robot says", file=stream)
    controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    if device is None and config.device is not None:
        from hardware.teleop import make_device

        device = make_device(config.device, action_features=robot.action_features, task=task)
    hz = loop_rate(config.hz, controller, task, robot, stream)
    control = ControlStack(robot, task, controller, hz=hz, chunks=config.chunks, ensemble_decay=config.ensemble_decay,
                           inference=config.inference, operator=device, max_steps=config.max_steps)  # fmt: skip
    out = Path(config.out) if config.out else Path("data") / f"deploy-{trained_task or 'robot'}.zarr"
    view = _open_view(config, controller, robot, hz)
    loop, policy = control.loop, control.policy
    episodes: list[DeployedEpisode] = []
    stopped_by = None
    with robot:
        store = None
        try:
            if device is not None:
                device.connect()  # before the store: a missing device must not leave an empty store behind
                print(device.controls, file=stream)
            store = ZarrEpisodeStore.open_or_create(out, episode_features(robot))
            for i in range(config.episodes):
                seed = config.seed + i
                run = control.episode(seed)
                interventions = 0
                for step in run:
                    interventions += step.intervention
                    if view is not None:
                        view(step)
                stopped_by = run.ending.stop
                if run.ending.label == NOT_STARTED:
                    break
                episode = DeployedEpisode(seed, run.success, run.ending.label, run.length, run.ret, interventions, policy.held)
                episodes.append(episode)
                store.append_episode(run.frames.arrays(), EpisodeMeta(task=trained_task or robot.name, robot=robot.name, fps=hz or controller.meta.get("fps", 0.0),
                                                         success=episode.success, source="deployment", seed=seed))  # fmt: skip
                print(f"episode {i + 1}/{config.episodes}: {'success' if episode.success else 'failure'} ({episode.label}), "
                      f"{episode.length} steps, {loop.stats(last=episode.length).describe()}", file=stream)  # fmt: skip
                if stopped_by is not None:
                    break
        finally:
            control.close()
            if store is not None:
                store.close()
            if view is not None:
                view.close()
            if device is not None:
                device.close()
        counters = robot.counters.as_dict()
    return DeployReport(
        robot=robot.name, hz=hz, episodes=episodes, rate=loop.stats(), inference_ms=policy.inference_ms,
        action_age_ticks=policy.plan_ages, stale_dropped=control.queue.stale_dropped, chunks_dropped=control.queue.chunks_dropped,
        safety=counters, store=str(out), stopped_by=stopped_by,
    )  # fmt: skip


def _open_view(config: DeployConfig, controller: DiffusionController, robot: Robot, hz: float):
    if not (config.view or config.rrd):
        return None
    from workflow.evaluate import LiveEvalView

    return LiveEvalView(controller, robot, hz or 10.0, spawn=config.view, save=config.rrd)
