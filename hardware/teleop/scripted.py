"""The ``scripted`` device: the task's scripted expert standing in for the operator (headless runs, CI).

It starts every episode at once, drives with the expert's actions (optionally
noisy and in an operator style, see ``sim.scene.ScriptedExpert`` and
``sim.scene.EXPERT_STYLES``) and stops the episode, labelled success,
as soon as the task reports success; the recorder labels an episode that runs
out of steps from the task's check (a failure).
"""

from __future__ import annotations

from typing import Any

from hardware.teleop import TeleopCommand, TeleopEvent
from robot.protocols import Observation
from sim.scene import check_expert_style


class ScriptedDevice:
    """Wraps ``task.scene.expert(noise, seed, style)``; ``task`` is a ``sim.scene.SceneTask``."""

    name = "scripted"

    def __init__(self, task: Any, noise: float = 0.0, seed: int | None = None, style: str = "iid"):
        scene = getattr(task, "scene", None)
        if scene is None or not callable(getattr(scene, "expert", None)):
            raise ValueError(
                f"the scripted device needs a simulated task with a scripted expert (robot sim:<task>), "
                f"got task {getattr(task, 'name', task)!r}; use a human device (keyboard, spacemouse, gamepad) on real robots"
            )
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"scripted expert noise must be in [0, 1], got {noise}")
        self.scene = scene
        self.noise = noise
        self.style = check_expert_style(style)
        self._expert = scene.expert(noise=noise, seed=seed, style=style)
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
