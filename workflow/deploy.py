"""``robot deploy``: run a trained policy on a robot at a fixed rate, safely, and record what it does.

Each episode runs on the episode engine (:mod:`workflow.episode`): the robot resets (sim: from the
episode's seed; real arm: moves home, then the operator starts the episode), then every control tick:

1. the operator's device, when there is one (:class:`workflow.takeover.Takeover`): e-stop (latches the
   robot's e-stop and ends the session), takeover toggle, success / failure labels, quit;
2. the policy (:class:`_DeployActor`): collect a finished plan and queue its chunk against the tick it was
   planned from (stale actions are dropped, :mod:`workflow.chunks`); ask for the next plan early enough
   that it lands before the queue drains (inference runs on a background thread at a fixed rate,
   :mod:`workflow.planner`);
3. send the due action through the safety layer (the operator's while they drive, flagged
   ``intervention``); with nothing due the arm holds;
4. sleep to the next tick (:class:`workflow.rate.RateLoop` measures rate and jitter), observe, and score
   the step with the task when there is one (sim and vendor stand-ins).

Every episode goes to the store with ``source = deployment``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from hardware.teleop import TeleopDevice
from robot.protocols import Observation, PolicyStep, Robot, Task
from robot.report import format_table
from robot.store import ZarrEpisodeStore
from robot.types import EpisodeMeta
from workflow.chunks import ChunkQueue, ChunkQueueConfig
from workflow.episode import Act, Ending, Episode
from workflow.planner import Planner
from workflow.policy import DiffusionController, policy_task
from workflow.rate import RateLoop, RateStats
from workflow.rollout import episode_features
from workflow.takeover import NOT_STARTED, Takeover

REAL_ROBOT_MAX_STEPS = 600  # episode cap when the robot comes without a task (real arms)
INFERENCE_MODES = ("auto", "inline", "background")
AUTO_BACKGROUND_FRACTION = 0.5  # auto: plan on a thread when a plan takes more than this share of a period


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
        robot, task = _open_robot(config.robot or f"sim:{policy_task(config.policy, meta=controller.meta)}", controller)
        if config.robot is not None and task is not None and trained_task and task.name != trained_task:
            print(f"warning: {config.policy} was trained on task {trained_task}; running it on {task.name} as --robot says", file=stream)
    controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    if device is None and config.device is not None:
        from hardware.teleop import make_device

        device = make_device(config.device, action_features=robot.action_features, task=task)
    if task is None and device is None:
        raise ValueError(
            f"robot {robot.name} comes without a task that scores success; pass --device keyboard "
            "(or gamepad/spacemouse) so the operator labels each episode (y success, n failure)"
        )
    hz = _loop_rate(config, controller, task, robot, stream)
    max_steps = config.max_steps or (task.max_steps if task is not None else REAL_ROBOT_MAX_STEPS)
    asynchronous = config.inference == "background" and hz > 0
    queue = ChunkQueue(ChunkQueueConfig(mode=config.chunks, n_action_steps=controller.n_action_steps, ensemble_decay=config.ensemble_decay))
    planner = Planner(controller.plan, asynchronous=asynchronous)
    out = Path(config.out) if config.out else Path("data") / f"deploy-{trained_task or 'robot'}.zarr"
    view = _open_view(config, controller, robot, hz)
    loop = RateLoop(hz)
    policy = _DeployActor(robot, controller, queue, planner, loop)
    policy.choose_inference = config.inference == "auto" and hz > 0
    actor = Takeover(policy, device, robot, wait_for_start=task is None) if device is not None else policy
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
                run = Episode(robot, task, actor, seed=seed, max_steps=max_steps, pace=loop.sleep)
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
            planner.close()
            if store is not None:
                store.close()
            if view is not None:
                view.close()
            if device is not None:
                device.close()
        counters = robot.counters.as_dict()
    return DeployReport(
        robot=robot.name, hz=hz, episodes=episodes, rate=loop.stats(), inference_ms=policy.inference_ms,
        action_age_ticks=policy.plan_ages, stale_dropped=queue.stale_dropped, chunks_dropped=queue.chunks_dropped,
        safety=counters, store=str(out), stopped_by=stopped_by,
    )  # fmt: skip


NONFINITE_PATIENCE = 10
"""Non-finite policy actions in a row (each held and counted as an intervention) that end an episode."""


class _DeployActor:
    """The policy through the planner and the chunk queue (``workflow.takeover.Interruptible``), across a
    session's episodes; the operator's device, when there is one, is a :class:`Takeover` over it."""

    def __init__(self, robot, controller, queue, planner, loop):
        self.robot, self.controller, self.queue, self.planner, self.loop = robot, controller, queue, planner, loop
        self.inference_ms: list[float] = []
        self.plan_ages: list[int] = []
        self.latency_ticks = 1.0  # running estimate of how many ticks a plan takes to arrive
        self.choose_inference = False  # auto mode: decide inline vs background from the first plan
        self.held = self.nonfinite = 0  # this episode's; nonfinite: the policy's NaN/inf actions in a row
        self._adopted = None  # the plan adopted at this tick

    def begin(self, seed: int, obs: Observation) -> None:
        self.controller.reset()
        self.controller.seed_episode(seed)  # the noise `robot eval` draws for this seed
        self.interrupt()
        self.held = self.nonfinite = 0
        self.loop.restart()
        return None

    def observe(self, t: int, obs: Observation) -> None:
        self.controller.push_observation(obs)  # the history stays current while the operator drives

    def interrupt(self) -> None:
        self.queue.clear()
        self.planner.discard()

    def act(self, t: int, obs: Observation) -> Act | Ending:
        if self.robot.is_estopped:
            return Ending("e-stop", False, "estop")
        if self.nonfinite >= NONFINITE_PATIENCE:
            print(f"episode ended: the policy's last {self.nonfinite} actions were NaN or inf (each held by the safety layer); "
                  "check its checkpoint (robot info) and the observations it gets", file=sys.stderr)  # fmt: skip
            return Ending("non-finite actions", False)
        self.controller.push_observation(obs)
        action = self._policy_action(t)
        if action is None:
            self.held += 1
            return Act(None)
        if not np.all(np.isfinite(action)):  # the safety layer holds it; the step is not the policy's
            self.nonfinite += 1
            return Act(action, intervention=True)
        self.nonfinite = 0
        plan = self._adopted
        return Act(action, policy=PolicyStep(action, chunk_started=plan is not None, inference_s=plan.inference_s if plan else 0.0,
                                             chain=plan.chain if plan else None))  # fmt: skip

    def _policy_action(self, t: int) -> np.ndarray | None:
        """The action due at tick ``t``: collect a finished plan, request the next one in time, pop."""
        planner, queue = self.planner, self.queue
        self._adopted = None
        if t == 0:  # nothing to execute meanwhile: wait for the first plan, then start the clock
            self._request(t)
            self._adopt(planner.wait(), t)
            self.loop.restart()
        else:
            self._adopt(planner.poll(), t)
            if not planner.busy and self._needs_plan(t):
                self._request(t)
                if not planner.asynchronous:
                    self._adopt(planner.wait(), t)
        return queue.pop(t)

    def _needs_plan(self, t: int) -> bool:
        """Ensemble: every tick. Receding: inline plans when the queue is empty; a background plan
        as many ticks ahead as inference has recently taken, so it lands before the queue drains."""
        if self.queue.config.mode == "ensemble":
            return True
        lead = math.ceil(self.latency_ticks) if self.planner.asynchronous else 0
        return self.queue.queued(t) <= lead

    def _request(self, t: int) -> None:
        self.planner.request(self.controller.history(), t)

    def _adopt(self, plan, t: int) -> None:
        self._adopted = plan
        if plan is None:
            return
        if self.choose_inference:  # the first plan of the session was timed inline
            self.planner.asynchronous = plan.inference_s > AUTO_BACKGROUND_FRACTION * self.loop.period
            self.choose_inference = False
        self.queue.add(plan.chunk, plan.planned_at, t)
        self.inference_ms.append(plan.inference_s * 1e3)
        self.plan_ages.append(t - plan.planned_at)
        if self.loop.period > 0:
            self.latency_ticks = 0.8 * self.latency_ticks + 0.2 * (plan.inference_s / self.loop.period)


def _open_robot(spec: str, controller: DiffusionController) -> tuple[Any, Task | None]:
    """The robot a spec names, built to provide what the policy reads: the sim's cameras, and on a
    driver (real or stand-in) ``observation.state`` assembled in the order of the checkpoint's names."""
    from hardware.registry import open_robot
    from robot.types import STATE
    from workflow.envs import sim_options_for

    kind, sep, target = spec.partition(":")
    features = controller.input_features
    if not sep or kind == "sim":
        return open_robot(spec, **sim_options_for(features))
    opts: dict[str, Any] = {}
    if kind in ("ur5e", "franka", "xarm") and STATE in features:
        if not features[STATE].names:
            raise ValueError(f"the policy's {STATE} has no entry names, so a driver cannot assemble it; retrain from a store that names them")
        opts["state_names"] = tuple(features[STATE].names)
    if target.startswith("standin:"):  # a simulated cell: its scene renders the cameras the policy reads
        opts.update({k: v for k, v in sim_options_for(features).items() if k in ("cameras", "image_size")})
    return open_robot(spec, **opts)


def _loop_rate(config: DeployConfig, controller: DiffusionController, task: Task | None, robot: Robot, stream: TextIO) -> float:
    trained = float(controller.meta.get("fps") or 0.0)
    hz = config.hz if config.hz is not None else (trained or (task.fps if task is not None else 0.0))
    if hz == 0 and not robot.name.startswith("sim:") and task is None:
        raise ValueError(f"robot {robot.name}: an unthrottled loop (hz 0) only makes sense in sim; give --hz")
    if hz > 0 and trained and abs(hz - trained) > 1e-6:
        print(f"warning: deploying at {hz:g} Hz but the policy was trained on {trained:g} Hz data; "
              f"its {controller.n_obs_steps}-frame history and chunk timing assume {trained:g} Hz", file=stream)  # fmt: skip
    return float(hz)


def _open_view(config: DeployConfig, controller: DiffusionController, robot: Robot, hz: float):
    if not (config.view or config.rrd):
        return None
    from workflow.evaluate import LiveEvalView

    return LiveEvalView(controller, robot, hz or 10.0, spawn=config.view, save=config.rrd)
