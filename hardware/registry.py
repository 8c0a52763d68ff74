"""Build a robot from a spec string: ``sim:push`` (or just ``push``), ``ur5e:IP``, ``franka:IP``...

An explicit dict of lazy factories: nothing heavy (MuJoCo, robosuite, vendor
SDKs) is imported until a robot of that kind is made. Every robot comes back
behind the safety layer as a :class:`hardware.safety.SafeRobot`.

:func:`open_robot` also returns the task the robot can score itself on: the
sim backend and the vendor stand-ins (whose arm is a MuJoCo scene) know the
task's reward and success; a real arm does not (``None``: the operator labels
success).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Mapping

from hardware.safety import SafeRobot, SafetyConfig
from robot.protocols import Task

_OVERRIDES: ContextVar[Mapping[str, Any]] = ContextVar("safety_overrides", default={})

# (target, safety or None for the default, opts) -> (robot, task or None)
RobotFactory = Callable[[str, "SafetyConfig | None", dict[str, Any]], tuple[SafeRobot, Task | None]]


def _sim_robot(target: str, safety: SafetyConfig | None, opts: dict[str, Any]) -> tuple[SafeRobot, Task | None]:
    return make_sim(target, safety=safety, **opts)  # None: the task's own safety config


def _remote_robot(target: str, safety: SafetyConfig | None, opts: dict[str, Any]) -> tuple[SafeRobot, Task | None]:
    from hardware.remote.client import open_remote

    return open_remote(target, with_overrides(safety or SafetyConfig()), opts), None  # type: ignore[return-value]  # proxies the server's SafeRobot


def _arm_robot(kind: str) -> RobotFactory:
    def factory(target: str, safety: SafetyConfig | None, opts: dict[str, Any]) -> tuple[SafeRobot, Task | None]:
        from hardware.drivers.specs import open_arm

        return open_arm(kind, target, safety, opts)  # None: a stand-in's task's own config, a real arm's default

    return factory


_KINDS: dict[str, tuple[RobotFactory, str]] = {  # kind -> (factory, how to write its spec)
    "sim": (_sim_robot, "sim:<task>, a MuJoCo scene from sim.registry (e.g. sim:push, sim:pkg.module:factory)"),
    "ur5e": (_arm_robot("ur5e"), "ur5e:<host> (ur_rtde), or ur5e:standin:<task> over a simulated controller"),
    "franka": (_arm_robot("franka"), "franka:<host> (franky), or franka:standin:<task>"),
    "xarm": (_arm_robot("xarm"), "xarm:<host> (xarm-python-sdk), or xarm:standin:<task>"),
    "remote": (_remote_robot, "remote:HOST:PORT, an arm behind `robot serve` (token: ROBOT_TOKEN or token=)"),
}


def robot_kinds() -> tuple[str, ...]:
    """The spec prefixes :func:`make_robot` knows."""
    return tuple(_KINDS)


def open_robot(spec: str, *, safety: SafetyConfig | None = None, **opts: Any) -> tuple[SafeRobot, Task | None]:
    """A robot behind the safety layer from ``kind:target``, and the task it can score itself on (or ``None``).

    A bare ``push`` means ``sim:push``. ``opts`` go to the backend (scene options for ``sim``). ``safety``
    None means the default: a simulated task's own limits (:func:`make_sim`), else ``SafetyConfig()``.
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
    return factory(target, safety, opts)


def make_robot(spec: str, *, safety: SafetyConfig | None = None, **opts: Any) -> SafeRobot:
    """A robot behind the safety layer, from ``kind:target`` (``sim:push``); a bare ``push`` means ``sim:push``."""
    return open_robot(spec, safety=safety, **opts)[0]


def make_sim(task: str, *, safety: SafetyConfig | None = None, **opts: Any) -> tuple[SafeRobot, Task]:
    """A simulated robot and the task over the same scene: ``robot, task = make_sim("push")``.

    ``opts`` go to ``sim.registry.make_scene`` (scene options such as ``max_steps``). The safety layer
    uses ``safety`` when given, else the task's own limits (:func:`task_safety`: a Meta-World Sawyer
    brings a narrower joint margin than the default), else ``SafetyConfig()``; :func:`safety_overrides` in force
    replace fields of it.
    """
    from hardware.mujoco import MujocoArm
    from sim.registry import make_scene
    from sim.scene import SceneTask

    scene = make_scene(task, **opts)
    try:
        robot = SafeRobot(MujocoArm(scene), with_overrides(safety if safety is not None else task_safety(scene)))
    except BaseException:
        scene.close()
        raise
    return robot, SceneTask(scene)


def task_safety(scene: Any) -> SafetyConfig:
    """The safety config a simulated scene brings (its optional ``safety`` attribute), else the default."""
    own = getattr(scene, "safety", None)
    if own is None:
        return SafetyConfig()
    if not isinstance(own, SafetyConfig):
        raise TypeError(f"task {getattr(scene, 'name', scene)!r}: its scene's safety must be a robot.types.SafetyConfig, got {type(own).__name__}")
    return own


@contextmanager
def safety_overrides(**fields: Any) -> Iterator[None]:
    """Within the block, every robot this module builds (sim, stand-in, real arm) has these :class:`SafetyConfig`
    fields replaced in the config it would otherwise get (the task's own, or the default): what the command line's
    ``--safety-*`` flags do, so they reach every robot a command builds (evaluations, rollouts, stand-ins) whatever
    stage builds it. A remote robot's safety is the server's: overriding it is an error."""
    names = {f.name for f in dataclasses.fields(SafetyConfig)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"no safety setting {', '.join(unknown)}; SafetyConfig has {', '.join(sorted(names))}")
    token = _OVERRIDES.set({**_OVERRIDES.get(), **fields})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def overrides_in_force() -> dict[str, Any]:
    """The :func:`safety_overrides` fields in force (empty outside one): what a run directory records."""
    return dict(_OVERRIDES.get())


def with_overrides(config: SafetyConfig) -> SafetyConfig:
    """``config`` with the fields of the :func:`safety_overrides` in force replaced (checked as any SafetyConfig is)."""
    fields = _OVERRIDES.get()
    return dataclasses.replace(config, **fields) if fields else config
