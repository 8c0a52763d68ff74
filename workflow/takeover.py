"""The operator over whoever drives: e-stop, success and failure labels, quit, and takeover.

:class:`Takeover` is an episode-engine actor (``workflow.episode.Actor``) wrapping another one and a teleop
device. Each tick it polls the device first: e-stop latches the robot's e-stop and ends the session; a
success or failure key ends the episode with that label (quit also ends the session); the TAKEOVER event
(keyboard ``t``, gamepad LB) toggles who drives; PAUSE (``p``) holds the robot, sends and records nothing until
pressed again, and then the inner actor replans. While the operator drives, the device's action is sent
and the step is flagged ``intervention``, and the inner actor only watches (``observe``); handing back
interrupts it (``interrupt``: a queued chunk was planned before the operator moved the robot). A tick
where the device has no action leaves the inner actor in charge of that tick.

For the RL stages on a robot, :class:`OperatorConfig` says who watches the episodes (a person's device or the
scripted operator, :func:`make_operator`) and what scores them: the task, or the operator's label
(:data:`workflow.episode.LABEL_REWARD` at a labelled success), as on a real arm.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from hardware.teleop import TeleopDevice, TeleopEvent
from robot.protocols import EpisodeSeeded, Observation, Policy
from workflow.episode import IDLE, Act, Actor, Ending, PolicyActor
from workflow.rate import RateLoop

NOT_STARTED = "not started"
"""The label of an episode the operator quit before starting it: nothing ran, nothing is stored."""


class Interruptible(Actor, Protocol):
    """An actor an operator can take over from."""

    def observe(self, t: int, observation: Observation) -> None:
        """A tick the operator drove: keep up with the scene without acting."""
        ...

    def interrupt(self) -> None:
        """The operator hands back: drop what was planned before they moved the robot."""
        ...


class PolicyDriver(PolicyActor):
    """A policy an operator can take over from: handing back resets it, so it replans from what it sees."""

    def observe(self, t: int, observation: Observation) -> None:
        pass

    def interrupt(self) -> None:
        self.policy.reset()


class Takeover:
    """An operator with ``device`` over ``inner`` (``robot``'s e-stop is latched on the e-stop key).

    ``wait_for_start``: before each episode the robot is home and nothing moves until the operator
    presses start (a real arm, whose scene a person resets); quit there ends the session.
    """

    def __init__(self, inner: Interruptible | Policy, device: TeleopDevice, robot=None, *, wait_for_start: bool = False):
        self.inner = inner if hasattr(inner, "interrupt") else PolicyDriver(inner)
        self.device, self.robot = device, robot
        self.wait_for_start = wait_for_start
        self.active = False  # True while the operator drives
        self.paused = False  # True while the operator has paused the episode

    def begin(self, seed: int, observation: Observation) -> Ending | None:
        self.active = self.paused = False
        self.device.reset()
        if isinstance(self.device, EpisodeSeeded):  # a scripted operator decides from the episode's seed
            self.device.seed_episode(seed)
        if self.wait_for_start and not wait_for_start(self.device, observation, RateLoop(20.0), _announce_home):
            return Ending(NOT_STARTED, False, "quit")
        return self.inner.begin(seed, observation)

    def act(self, t: int, observation: Observation) -> Act | Ending:
        command = self.device.poll(observation)
        events = command.events
        if TeleopEvent.ESTOP in events:
            if self.robot is not None:
                self.robot.estop()
            return Ending("e-stop", False, "estop")
        if events & {TeleopEvent.SUCCESS, TeleopEvent.FAILURE, TeleopEvent.QUIT}:
            return Ending("operator", TeleopEvent.SUCCESS in events, "quit" if TeleopEvent.QUIT in events else None)
        if TeleopEvent.PAUSE in events:
            self.paused = not self.paused
            if self.paused and self.robot is not None:
                self.robot.hold()
            if not self.paused:  # what was planned before the pause is stale
                self.inner.interrupt()
            print("paused: the robot holds; p resumes" if self.paused else "resumed", file=sys.stderr)
        if self.paused:
            return IDLE  # nothing sent or recorded, no step counted; the loop keeps polling the device
        if TeleopEvent.TAKEOVER in events:
            self.active = not self.active
            if not self.active:
                self.inner.interrupt()
        if self.active and command.action is not None:
            self.inner.observe(t, observation)
            return Act(np.asarray(command.action, dtype=np.float32), intervention=True)
        return self.inner.act(t, observation)


def wait_for_start(device: TeleopDevice, observation: Observation, idle: RateLoop, announce: Callable[[], None]) -> bool:
    """Reset phase: poll until START (True) or QUIT (False); nothing is sent to the robot.

    ``announce`` runs once if the device does not start at the first poll (a human is needed).
    """
    idle.restart()
    announced = False
    while True:
        events = device.poll(observation).events
        if TeleopEvent.QUIT in events:
            return False
        if events & {TeleopEvent.START, TeleopEvent.KEEP}:
            return True
        if not announced:
            announce()
            announced = True
        idle.sleep()


def _announce_home() -> None:
    print("robot is home: set the scene up, then press enter to start the episode (q quits)", file=sys.stderr)


class OperatorStop(RuntimeError):
    """The operator ended a session (e-stop or quit) before its work was done; what finished is kept."""


REWARDS = ("auto", "task", "label")


@dataclass(frozen=True)
class OperatorConfig:
    """Who watches an RL stage's episodes on the robot, and what scores them."""

    device: str | None = None
    """keyboard, gamepad or spacemouse (a person at the arm), scripted (the task's expert playing the operator:
    sim and stand-ins), or None: no operator (the task scores every episode)."""
    reward: str = "auto"
    """task: the task's reward terms and success check (sim, stand-ins); label: success only from the operator's
    label, reward 1 at a labelled success and 0 elsewhere (what a real arm has); auto: task when the robot comes
    with one."""
    takeover_rate: float = 0.0
    """scripted: share of the drifting episodes the operator takes over."""
    drift_after: int | None = None
    """scripted: ticks without success after which an episode is drifting; None: half the task's step limit."""
    takeover_steps: int = 20
    """scripted: ticks the expert drives before handing back."""

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"operator reward must be one of {REWARDS}, got {self.reward!r}")
        if not 0.0 <= self.takeover_rate <= 1.0 or self.takeover_steps < 1:
            raise ValueError(f"takeover_rate must be in [0, 1] and takeover_steps >= 1, got {self.takeover_rate}, {self.takeover_steps}")
        if self.reward == "label" and self.device is None:
            raise ValueError("reward 'label' needs an operator to label the episodes: give the operator device (keyboard, gamepad, spacemouse, scripted)")

    def scoring_task(self, task):
        """The task the episode engine scores steps with: the robot's own, or None when the operator's label scores."""
        if self.reward == "label" or (self.reward == "auto" and task is None):
            return None
        if task is None:
            raise ValueError("reward 'task' needs a robot that comes with a task (sim:<task> or <arm>:standin:<task>); a real arm is scored by the operator's label")
        return task


def make_operator(config: OperatorConfig, robot, task, *, seed: int = 0) -> TeleopDevice | None:
    """The operator's device (not yet connected), or None when the config names none."""
    if config.device is None:
        return None
    if config.device == "scripted":
        from hardware.teleop.scripted import ScriptedOperator

        return ScriptedOperator(task, takeover_rate=config.takeover_rate, drift_after=config.drift_after, takeover_steps=config.takeover_steps, seed=seed)
    from hardware.teleop import make_device

    return make_device(config.device, action_features=robot.action_features, task=task)
