"""Robot specs for the real-arm drivers: ``ur5e:HOST``, ``franka:HOST``, ``xarm:HOST``, and
``ur5e:standin:TASK`` (the same driver over its vendor stand-in over a simulated scene).

:func:`open_arm` is what ``hardware.registry`` calls for these kinds. A real arm
comes back with no task (the operator labels success). A stand-in comes back
with the :class:`sim.scene.SceneTask` of its scene, so success can be scored,
and its cell is wired the way a real one would be: the driver measures the arm
through the vendor API, a :class:`~hardware.standins.sensors.SceneTracker`
publishes the objects' state, scene cameras publish images, and the scene's
reset plays the operator who lays the table out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from hardware.cameras import Camera
from hardware.drivers.cartesian import CartesianArm
from hardware.drivers.contract import CartesianConfig
from hardware.drivers.signals import SignalSource
from hardware.safety import SafeRobot, SafetyConfig
from robot.protocols import Task
from robot.types import ACTION

STANDIN_HOST = "standin"
PUSHER_ALIASES = {"pusher_x": "eef_x", "pusher_y": "eef_y"}  # the push scene calls its end effector the pusher


@dataclass(frozen=True)
class Vendor:
    """How one kind of arm is built: its config and driver classes and its stand-in."""

    config: type[CartesianConfig]
    arm: type[CartesianArm]
    standin: Callable[..., Any]  # (servo, host) -> the stand-in SDK object
    mount: tuple[float, float, float]  # where a stand-in's scene origin sits in the vendor base frame


def vendors() -> dict[str, Vendor]:
    """The driver kinds by spec prefix (imports the driver modules, not the vendor SDKs)."""
    from hardware.drivers.franka import FrankaArm, FrankaConfig
    from hardware.drivers.ur import URArm, URConfig
    from hardware.drivers.xarm import XArmArm, XArmConfig
    from hardware.standins.franka import FrankyStandIn
    from hardware.standins.ur import URStandIn
    from hardware.standins.xarm import XArmStandIn

    return {
        "ur5e": Vendor(URConfig, URArm, URStandIn, mount=(0.45, -0.10, 0.05)),
        "franka": Vendor(FrankaConfig, FrankaArm, FrankyStandIn, mount=(0.0, 0.0, 0.0)),
        "xarm": Vendor(XArmConfig, XArmArm, XArmStandIn, mount=(0.30, 0.05, 0.0)),
    }


def open_arm(kind: str, target: str, safety: SafetyConfig, opts: dict[str, Any]) -> tuple[SafeRobot, Task | None]:
    """``target`` is a host, or ``standin:<task>``; see :func:`open_real` and :func:`open_standin` for ``opts``."""
    vendor = vendors()[kind]
    head, sep, task = target.partition(":")
    if head == STANDIN_HOST and sep:
        return open_standin(kind, vendor, task, safety, **opts)
    return open_real(kind, vendor, target, safety, **opts), None


def open_real(
    kind: str,
    vendor: Vendor,
    host: str,
    safety: SafetyConfig,
    *,
    config: CartesianConfig | None = None,
    sources: Sequence[SignalSource] = (),
    cameras: Sequence[Camera] = (),
    **fields: Any,
) -> SafeRobot:
    """The real arm at ``host``: ``config`` (a vendor config for that host) or its fields as keywords
    (``state_names=...``, ``fps=...``; push's ``pusher_x/y`` read the TCP unless ``state_aliases`` says
    otherwise); ``sources`` are trackers, ``cameras`` are camera objects."""
    if config is None:
        fields.setdefault("state_aliases", dict(PUSHER_ALIASES))
        config = vendor.config(host=host, **fields)
    elif fields or config.host != host:
        raise ValueError(f"give {kind}:{host} either config= (with host {host!r}) or config fields, not both")
    arm = vendor.arm(config, sources=tuple(sources), cameras=tuple(cameras))
    return SafeRobot(arm, safety, name=f"{kind}:{host}")


def open_standin(
    kind: str,
    vendor: Vendor,
    task: str,
    safety: SafetyConfig,
    *,
    state_names: tuple[str, ...] | None = None,
    state_aliases: dict[str, str] | None = None,
    cameras: tuple[str, ...] = (),
    image_size: int = 84,
    **scene_options: Any,
) -> tuple[SafeRobot, Task]:
    """The ``kind`` driver over its stand-in over the sim ``task``; ``cameras`` name scene cameras,
    ``state_names`` default to the scene's own, other options go to the scene (``max_steps``...)."""
    from hardware.standins.sensors import SceneCamera, SceneTracker
    from hardware.standins.servo import SceneServo
    from sim.registry import make_scene
    from sim.scene import SceneTask

    scene = make_scene(task, cameras=tuple(cameras) or None, image_size=image_size, **scene_options)
    try:
        servo = SceneServo(scene, mount=vendor.mount)
        sdk = vendor.standin(servo, STANDIN_HOST)
        names = servo.state_names if state_names is None else tuple(state_names)
        aliases = {**PUSHER_ALIASES, **(state_aliases or {})}
        config = standin_config(vendor, kind, scene, names, aliases)
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
                    aliases: dict[str, str]) -> CartesianConfig:  # fmt: skip
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
        task_origin=vendor.mount,
        home_joints=tuple(min(max(q, lo), hi) for q, lo, hi in zip(joints, limits.joint_low, limits.joint_high)),
        joint_low=tuple(limits.joint_low),
        joint_high=tuple(limits.joint_high),
        max_joint_velocity=tuple(limits.max_joint_velocity),
        state_names=names,
        state_aliases=aliases,
    )
