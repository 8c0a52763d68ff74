"""A simulated cell for a real-arm driver (``ur5e:standin:TASK``, ``franka:standin:...``, ``xarm:standin:...``).

The spec's driver runs unchanged over its vendor's stand-in SDK, whose arm is a sim scene, and the cell is
wired the way a real one would be: the driver measures the arm through the vendor API, a
:class:`~hardware.standins.sensors.SceneTracker` publishes the objects' state, scene cameras publish images,
and the scene's reset plays the operator who lays the table out. It comes back with the scene's
:class:`sim.scene.SceneTask`, so success can be scored. Only the ``standin`` spec reaches this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from hardware.drivers.contract import CartesianConfig
from hardware.drivers.specs import PUSHER_ALIASES, STANDIN_HOST, Vendor
from hardware.safety import SafeRobot, SafetyConfig
from robot.protocols import Task
from robot.types import ACTION


@dataclass(frozen=True)
class StandIn:
    """A vendor's stand-in SDK and where its scene's origin sits in the vendor's base frame."""

    sdk: Callable[..., Any]  # (servo, host) -> the stand-in SDK object
    mount: tuple[float, float, float]


def standins() -> dict[str, StandIn]:
    from hardware.standins.franka import FrankyStandIn
    from hardware.standins.ur import URStandIn
    from hardware.standins.xarm import XArmStandIn

    return {
        "ur5e": StandIn(URStandIn, mount=(0.45, -0.10, 0.05)),
        "franka": StandIn(FrankyStandIn, mount=(0.0, 0.0, 0.0)),
        "xarm": StandIn(XArmStandIn, mount=(0.30, 0.05, 0.0)),
    }


def open_standin(
    kind: str,
    vendor: Vendor,
    task: str,
    safety: SafetyConfig | None,
    *,
    state_names: tuple[str, ...] | None = None,
    state_aliases: dict[str, str] | None = None,
    cameras: tuple[str, ...] = (),
    image_size: int = 84,
    **scene_options: Any,
) -> tuple[SafeRobot, Task]:
    """The ``kind`` driver over its stand-in over the sim ``task``; ``cameras`` name scene cameras,
    ``state_names`` default to the scene's own, other options go to the scene (``max_steps``...). ``safety`` None:
    the task's own config (``hardware.registry.task_safety``, as ``sim:<task>`` gets), the command line's
    ``--safety-*`` overrides applied on top (its workspace box is in the task frame, the driver's too)."""
    from hardware.registry import task_safety, with_overrides
    from hardware.standins.sensors import SceneCamera, SceneTracker
    from hardware.standins.servo import SceneServo
    from sim.registry import make_scene
    from sim.scene import SceneTask

    standin = standins()[kind]
    scene = make_scene(task, cameras=tuple(cameras) or None, image_size=image_size, **scene_options)
    try:
        safety = with_overrides(safety if safety is not None else task_safety(scene))
        servo = SceneServo(scene, mount=standin.mount)
        sdk = standin.sdk(servo, STANDIN_HOST)
        names = servo.state_names if state_names is None else tuple(state_names)
        aliases = {**PUSHER_ALIASES, **(state_aliases or {})}
        config = standin_config(vendor, kind, scene, names, aliases, standin.mount)
        published_by_arm = vendor.arm(dataclasses.replace(config, state_names=()), sdk=sdk).proprio_names
        tracked = tuple(n for n in servo.state_names if aliases.get(n, n) not in published_by_arm)
        arm = vendor.arm(
            config,
            sdk=sdk,
            sources=(SceneTracker(servo, tracked),) if tracked else (),
            cameras=tuple(SceneCamera(servo, c) for c in cameras),
            operator=servo,
        )
    except BaseException:
        scene.close()
        raise
    return SafeRobot(arm, safety, name=f"{kind}:{STANDIN_HOST}:{task}"), SceneTask(scene)


def standin_config(vendor: Vendor, kind: str, scene: Any, names: tuple[str, ...],
                    aliases: dict[str, str], mount: tuple[float, float, float]) -> CartesianConfig:  # fmt: skip
    """The driver config of a cell whose arm is ``scene``'s: its action layout, limits and rate."""
    limits = scene.limits
    joints = tuple(float(q) for q in scene.arm_state().joint_positions)  # the scene's home, after its reset
    return vendor.config(
        host=STANDIN_HOST,
        name=kind,
        fps=float(scene.fps),
        action_names=tuple(scene.action_features[ACTION].names),
        max_step=tuple(limits.max_step),
        workspace_low=tuple(limits.workspace_low),
        workspace_high=tuple(limits.workspace_high),
        task_origin=mount,
        home_joints=tuple(min(max(q, lo), hi) for q, lo, hi in zip(joints, limits.joint_low, limits.joint_high)),
        joint_low=tuple(limits.joint_low),
        joint_high=tuple(limits.joint_high),
        max_joint_velocity=tuple(limits.max_joint_velocity),
        state_names=names,
        state_aliases=aliases,
    )
