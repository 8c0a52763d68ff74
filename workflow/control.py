"""A policy driving a robot at a fixed rate: the control stack every stage that runs a robot shares.

``robot deploy`` and online RL's collection run a policy the same way, in sim, on a vendor stand-in or on
a real arm: the robot a spec names (behind the safety layer, :func:`open_robot_for`), a rate loop
(:class:`workflow.rate.RateLoop`), a planner (inline, or on a thread so the loop keeps its rate), the chunk
queue that drops actions whose moment has passed (:mod:`workflow.chunks`), and, when there is one, the
operator over the policy (:class:`workflow.takeover.Takeover`). :class:`ControlStack` holds them; each
episode is an :class:`workflow.episode.Episode` of its actor, paced by its loop.

A learning policy (online RL) plans inline with receding chunks: each executed action is then exactly
one of the first ``n_action_steps`` actions of the chain it was sampled with, which the PPO ratio scores.
"""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

import numpy as np

from hardware.teleop import TeleopDevice
from robot.protocols import Observation, PolicyStep, Robot, Task
from workflow.chunks import ChunkQueue, ChunkQueueConfig
from workflow.episode import Act, Ending, Episode
from workflow.planner import Planner
from workflow.policy import DiffusionController
from workflow.rate import RateLoop
from workflow.takeover import OperatorConfig, Takeover, make_operator

REAL_ROBOT_MAX_STEPS = 600  # episode cap when the robot comes without a task (real arms)
INFERENCE_MODES = ("auto", "inline", "background")
AUTO_BACKGROUND_FRACTION = 0.5  # auto: plan on a thread when a plan takes more than this share of a period
NONFINITE_PATIENCE = 10
"""Non-finite policy actions in a row (each held and counted as an intervention) that end an episode."""


class ControlStack:
    """``controller`` on ``robot`` at ``hz`` (0: unthrottled, sim only), with ``operator`` over it when given.

    ``task`` scores the steps (None: a real arm, where only the operator's label ends an episode well, and
    the operator starts each episode once the scene is reset). ``max_steps`` caps an episode (None: the
    task's limit; real arms :data:`REAL_ROBOT_MAX_STEPS`).
    """

    def __init__(
        self,
        robot: Robot,
        task: Task | None,
        controller: DiffusionController,
        *,
        hz: float,
        chunks: str = "receding",
        ensemble_decay: float = 0.01,
        inference: str = "auto",
        operator: TeleopDevice | None = None,
        max_steps: int | None = None,
    ):
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {inference!r}")
        if task is None and operator is None:
            raise ValueError(
                f"robot {robot.name} comes without a task that scores success; pass an operator device "
                "(--teleop keyboard, gamepad or spacemouse) so the operator labels each episode (y success, n failure)"
            )
        if controller.learning and chunks != "receding":
            raise ValueError("a learning policy executes receding chunks (each executed action is one of its chain's); got chunks=" + repr(chunks))
        self.robot, self.task, self.controller = robot, task, controller
        self.max_steps = max_steps or (task.max_steps if task is not None else REAL_ROBOT_MAX_STEPS)
        self.queue = ChunkQueue(ChunkQueueConfig(mode=chunks, n_action_steps=controller.n_action_steps, ensemble_decay=ensemble_decay))
        inline = controller.learning or hz == 0
        self.planner = Planner(controller.plan, asynchronous=inference == "background" and not inline)
        self.loop = RateLoop(hz)
        self.policy = ChunkActor(robot, controller, self.queue, self.planner, self.loop)
        self.policy.choose_inference = inference == "auto" and not inline
        self.operator = operator
        self.actor = Takeover(self.policy, operator, robot, wait_for_start=task is None) if operator is not None else self.policy

    def episode(self, seed: int, *, keep_frames: bool = True) -> Episode:
        """The next episode (the robot resets from ``seed`` in sim; a real arm moves home)."""
        return Episode(self.robot, self.task, self.actor, seed=seed, max_steps=self.max_steps, pace=self.loop.sleep, keep_frames=keep_frames)

    def close(self) -> None:
        self.planner.close()


class ChunkActor:
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
                                             chain=plan.chain if plan else None, decision=plan.decision if plan else None))  # fmt: skip

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


def open_control(spec: str, controller: DiffusionController, operator: OperatorConfig, *, hz: float | None = None, max_steps: int | None = None,
                 seed: int = 0, stream: TextIO | None = None) -> tuple[Any, Task | None, ControlStack, TeleopDevice | None]:
    """``(robot, task, control, device)``: the robot a spec names and the task it comes with (None on a real arm),
    deploy's control stack over it, and the operator's device (not yet connected). ``hz`` None: unthrottled in sim,
    the policy's data rate on an arm (stand-ins included). What scores the episodes is ``operator.reward``'s."""
    robot, task = open_robot_for(spec, controller)
    controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    device = make_operator(operator, robot, task, seed=seed)
    scoring = operator.scoring_task(task)  # None: the operator's label scores each episode
    sim = spec.startswith("sim:") or ":" not in spec
    rate = loop_rate(hz if hz is not None or not sim else 0.0, controller, task, robot, stream or sys.stderr)
    limit = max_steps or (task.max_steps if task is not None else None)  # scored by label, a stand-in keeps its task's limit
    return robot, task, ControlStack(robot, scoring, controller, hz=rate, operator=device, max_steps=limit), device


def open_robot_for(spec: str, controller: DiffusionController) -> tuple[Any, Task | None]:
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


def loop_rate(hz: float | None, controller: DiffusionController, task: Task | None, robot: Robot, stream: TextIO) -> float:
    """The control rate: ``hz``, or (None) the rate the policy was trained at, or the task's."""
    trained = float(controller.meta.get("fps") or 0.0)
    hz = hz if hz is not None else (trained or (task.fps if task is not None else 0.0))
    if hz == 0 and not robot.name.startswith("sim:") and task is None:
        raise ValueError(f"robot {robot.name}: an unthrottled loop (hz 0) only makes sense in sim; give --hz")
    if hz > 0 and trained and abs(hz - trained) > 1e-6:
        print(f"warning: running at {hz:g} Hz but the policy was trained on {trained:g} Hz data; "
              f"its {controller.n_obs_steps}-frame history and chunk timing assume {trained:g} Hz", file=stream)  # fmt: skip
    return float(hz)
