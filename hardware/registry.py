"""Build a robot from a spec string: ``sim:push`` (or just ``push``), later ``ur5e:IP``, ``franka:IP``...

An explicit dict of lazy factories: nothing heavy (MuJoCo, robosuite, vendor
SDKs) is imported until a robot of that kind is made. Every robot comes back
behind the safety layer as a :class:`hardware.safety.SafeRobot`.
"""

from __future__ import annotations

from typing import Any, Callable

from hardware.safety import SafeRobot, SafetyConfig
from robot.protocols import Task


RobotFactory = Callable[[str, SafetyConfig, dict[str, Any]], SafeRobot]  # (target, safety, opts) -> robot


def _sim_robot(target: str, safety: SafetyConfig, opts: dict[str, Any]) -> SafeRobot:
    return make_sim(target, safety=safety, **opts)[0]


_KINDS: dict[str, tuple[RobotFactory, str]] = {  # kind -> (factory, how to write its spec)
    "sim": (_sim_robot, "sim:<task>, a MuJoCo scene from sim.registry (e.g. sim:push)"),
}


def robot_kinds() -> tuple[str, ...]:
    """The spec prefixes :func:`make_robot` knows."""
    return tuple(_KINDS)


def make_robot(spec: str, *, safety: SafetyConfig | None = None, **opts: Any) -> SafeRobot:
    """A robot behind the safety layer, from ``kind:target`` (``sim:push``); a bare ``push`` means ``sim:push``.

    ``opts`` go to the backend (scene options for ``sim``).
    """
    kind, sep, target = spec.partition(":")
    if not sep:
        kind, target = "sim", spec
    if kind not in _KINDS:
        known = "; ".join(f"{k} ({usage})" for k, (_, usage) in _KINDS.items())
        raise ValueError(f"unknown robot kind {kind!r} in spec {spec!r}; known kinds: {known}")
    if not target:
        raise ValueError(f"robot spec {spec!r} names no target; write it as {_KINDS[kind][1]}")
    factory, _ = _KINDS[kind]
    return factory(target, safety or SafetyConfig(), opts)


def make_sim(task: str, *, safety: SafetyConfig | None = None, **opts: Any) -> tuple[SafeRobot, Task]:
    """A simulated robot and the task over the same scene: ``robot, task = make_sim("push")``.

    ``opts`` go to ``sim.registry.make_scene`` (scene options such as ``max_steps``).
    """
    from hardware.mujoco import MujocoArm
    from sim.registry import make_scene
    from sim.scene import SceneTask

    scene = make_scene(task, **opts)
    return SafeRobot(MujocoArm(scene), safety or SafetyConfig()), SceneTask(scene)
