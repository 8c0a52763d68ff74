"""The ``scripted`` device: the task's scripted expert standing in for the operator (headless runs, CI).

It starts every episode at once, drives with the expert's actions (optionally
noisy and in an operator style, see ``sim.scene.ScriptedExpert`` and
``sim.scene.EXPERT_STYLES``) and stops the episode, labelled success,
as soon as the task reports success; the recorder labels an episode that runs
out of steps from the task's check (a failure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardware.teleop import TeleopCommand, TeleopEvent
from robot.protocols import Observation
from sim.scene import check_expert_style


def scene_with_expert(task: Any, who: str) -> Any:
    """The sim scene behind ``task`` (a ``sim.scene.SceneTask``), which must have a scripted expert."""
    scene = getattr(task, "scene", None)
    if scene is None or not callable(getattr(scene, "expert", None)):
        raise ValueError(
            f"{who} needs a simulated task with a scripted expert (sim:<task> or <arm>:standin:<task>), "
            f"got task {getattr(task, 'name', task)!r}; on a real arm use a person's device: keyboard, spacemouse or gamepad"
        )
    return scene


def expert_of(scene: Any, who: str, **options: Any) -> Any:
    """``scene.expert(**options)``; a scene without one (a gymnasium task given no expert) is a ValueError naming the fix."""
    try:
        return scene.expert(**options)
    except NotImplementedError as e:
        raise ValueError(f"{who} needs a scripted expert: {e}; or drive with a person's device (keyboard, spacemouse, gamepad)") from None


class ScriptedDevice:
    """Wraps ``task.scene.expert(noise, seed, style)``; ``task`` is a ``sim.scene.SceneTask``."""

    name = "scripted"

    def __init__(self, task: Any, noise: float = 0.0, seed: int | None = None, style: str = "iid"):
        scene = scene_with_expert(task, "the scripted device")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"scripted expert noise must be in [0, 1], got {noise}")
        self.scene = scene
        self.noise = noise
        self.style = check_expert_style(style)
        self._expert = expert_of(scene, "the scripted device", noise=noise, seed=seed, style=style)
        self._started = False

    @property
    def episode_style(self) -> dict:
        """What the expert's style drew for the current episode (e.g. mixed: ``{"strategy": "long"}``)."""
        return dict(getattr(self._expert, "episode_style", {}))

    @property
    def controls(self) -> str:
        return f"scripted expert of {self.scene.name} (noise {self.noise:g}, style {self.style}): starts each episode, stops it on task success"

    def connect(self) -> None:
        """Nothing to open: the expert lives in the process."""

    def close(self) -> None:
        """Nothing to release."""

    def reset(self) -> None:
        self._expert.reset()
        self._started = False

    def poll(self, observation: Observation) -> TeleopCommand:
        if not self._started:
            self._started = True
            return TeleopCommand(events=frozenset({TeleopEvent.START}))
        if self.scene.is_success():
            return TeleopCommand(events=frozenset({TeleopEvent.SUCCESS}))
        return TeleopCommand(self._expert.act(observation))


class ScriptedOperator:
    """The operator of an RL session in sim or on a vendor stand-in, played by the task's scripted expert.

    It does what a person at the arm does, so the real-arm path runs end to end in CI: it starts each
    episode (the scene is reset by the stand-in), labels it a success as soon as the task's check passes
    (the only success signal when the session scores episodes by the operator's label), and takes over
    when the policy drifts: in a ``takeover_rate`` share of the episodes that have not succeeded after
    ``drift_after`` ticks, it drives the expert for ``takeover_steps`` ticks (flagged ``intervention``)
    and hands back. Which episodes it takes over depends on the episode's seed alone.
    """

    name = "scripted-operator"

    def __init__(self, task: Any, *, takeover_rate: float = 0.0, drift_after: int | None = None, takeover_steps: int = 20, seed: int = 0):
        scene = scene_with_expert(task, "the scripted operator")
        if not 0.0 <= takeover_rate <= 1.0:
            raise ValueError(f"takeover_rate must be in [0, 1], got {takeover_rate}")
        if takeover_steps < 1 or (drift_after is not None and drift_after < 0):
            raise ValueError(f"takeover_steps must be >= 1 and drift_after >= 0, got {takeover_steps}, {drift_after}")
        self.scene = scene
        self.takeover_rate, self.takeover_steps, self.seed = takeover_rate, takeover_steps, seed
        self.drift_after = drift_after if drift_after is not None else task.max_steps // 2
        self._expert = expert_of(scene, "the scripted operator")
        self._tick = 0
        self._takes_over = False  # this episode, once it drifts
        self._driving = 0  # ticks left to drive; 0: the policy drives

    @property
    def controls(self) -> str:
        return (f"scripted operator of {self.scene.name}: starts each episode, labels success from the task, takes over "
                f"{self.takeover_rate:.0%} of the episodes not done after {self.drift_after} ticks for {self.takeover_steps} ticks")  # fmt: skip

    def connect(self) -> None:
        """Nothing to open: the expert lives in the process."""

    def close(self) -> None:
        """Nothing to release."""

    def reset(self) -> None:
        self._tick, self._driving = -1, 0  # -1: the reset phase (the first poll starts the episode)

    def seed_episode(self, episode_seed: int) -> None:
        """Decide from the episode's seed alone whether this episode is taken over if it drifts."""
        draw = np.random.default_rng([self.seed, episode_seed, 0x0FE4]).random()
        self._takes_over = bool(draw < self.takeover_rate)

    def poll(self, observation: Observation) -> TeleopCommand:
        self._tick += 1
        if self._tick == 0:
            return TeleopCommand(events=frozenset({TeleopEvent.START}))
        if self.scene.is_success():
            return TeleopCommand(events=frozenset({TeleopEvent.SUCCESS}))
        if self._driving:
            self._driving -= 1
            if self._driving == 0:  # hand back
                return TeleopCommand(events=frozenset({TeleopEvent.TAKEOVER}))
            return TeleopCommand(self._expert.act(observation))
        if self._takes_over and self._tick > self.drift_after:
            self._takes_over = False  # once an episode
            self._driving = self.takeover_steps
            self._expert.reset()
            return TeleopCommand(self._expert.act(observation), frozenset({TeleopEvent.TAKEOVER}))
        return TeleopCommand()
