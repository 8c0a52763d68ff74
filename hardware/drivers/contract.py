"""The contract between the shared Cartesian driver body and a vendor driver.

What a driver is configured with (:class:`CartesianConfig`, which each vendor
config extends), what one read of the arm gives (:class:`ArmReading`), the two
errors a vendor driver raises (:class:`ArmUnreachableError`,
:class:`ArmFaultError`), and how its SDK is imported (:func:`import_sdk`, which
names the optional extra when the SDK is missing).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Mapping, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from hardware.arm import ActionLayout
from robot.types import Feature

EE_DELTA_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
DEFAULT_STEP = {"translation": 0.02, "rotation": 0.1, "gripper": 2.0}  # m, rad, gripper units per command


class ArmUnreachableError(ConnectionError):
    """The arm's controller could not be reached (wrong address, powered off, not in remote mode)."""


class ArmFaultError(RuntimeError):
    """The arm stopped itself (protective stop, reflex, controller error) and refuses motion until cleared."""


@dataclass(frozen=True, kw_only=True)
class CartesianConfig:
    """What every Cartesian driver needs; vendor configs add their own fields and defaults.

    Frames: the *task frame* has the robot base's axes and its origin at
    ``task_origin`` (in the base frame). Observations, ``arm_state`` and the
    workspace box are in the task frame, so a policy trained on a table-centred
    scene sees the same numbers on a real cell.
    """

    host: str
    """Address (IP or hostname) of the arm's controller."""
    name: str = "arm"
    """Robot name used in messages and episode metadata."""
    fps: float = 10.0
    """Control rate the driver expects commands at (Hz); one servo command lasts 1/fps."""
    action_names: tuple[str, ...] = EE_DELTA_NAMES
    """Action entries in order (read by ActionLayout.ee_delta): dx dy [dz [drx dry drz]] [gripper]."""
    max_step: tuple[float, ...] | None = None
    """Largest command per action entry (m, rad, gripper units); None = 0.02 m, 0.1 rad, 2.0 for the gripper."""
    workspace_low: tuple[float, float, float] = (-0.3, -0.3, 0.02)
    """Lower corner of the box the TCP must stay in, task frame, metres. Set it for your cell."""
    workspace_high: tuple[float, float, float] = (0.3, 0.3, 0.4)
    """Upper corner of that box, task frame, metres."""
    task_origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Where the task frame's origin sits in the robot base frame, metres."""
    home_joints: tuple[float, ...] = ()
    """Joint positions (rad) that reset() moves to."""
    joint_low: tuple[float, ...] = ()
    """Lower joint limits (rad), one per joint."""
    joint_high: tuple[float, ...] = ()
    """Upper joint limits (rad), one per joint."""
    max_joint_velocity: tuple[float, ...] = ()
    """Joint speed limits (rad/s) for the safety layer, one per joint."""
    state_names: tuple[str, ...] | None = None
    """Entries of observation.state in order (a checkpoint's names); None = everything published."""
    state_aliases: Mapping[str, str] = field(default_factory=dict)
    """Wanted state name -> published name it reads (e.g. push's pusher_x -> eef_x)."""

    def __post_init__(self) -> None:
        who = type(self).__name__
        if not self.host:
            raise ValueError(f"{who}.host must name the arm's controller (an IP address or hostname)")
        if not self.fps > 0:
            raise ValueError(f"{who}.fps must be positive, got {self.fps}")
        layout = self.layout  # raises on names ActionLayout cannot read
        if layout.mode != "ee_delta":
            raise ValueError(f"{who}.action_names {self.action_names} do not spell an end-effector delta action")
        if self.max_step is not None and (
            len(self.max_step) != len(self.action_names) or any(not s > 0 for s in self.max_step)
        ):
            raise ValueError(
                f"{who}.max_step needs one positive bound per action entry {self.action_names}, got {self.max_step}"
            )
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(f"{who}.workspace_low {self.workspace_low} must be below workspace_high "
                             f"{self.workspace_high} on every axis")  # fmt: skip
        joints = len(self.home_joints)
        sizes = {len(self.joint_low), len(self.joint_high), len(self.max_joint_velocity)}
        if joints == 0 or sizes != {joints}:
            raise ValueError(
                f"{who}: home_joints, joint_low, joint_high and max_joint_velocity need one entry per joint, "
                f"got {joints}, {len(self.joint_low)}, {len(self.joint_high)}, {len(self.max_joint_velocity)}"
            )
        outside = [i for i, (q, lo, hi) in enumerate(zip(self.home_joints, self.joint_low, self.joint_high))
                   if not lo <= q <= hi]  # fmt: skip
        if outside:
            raise ValueError(f"{who}.home_joints {self.home_joints} lie outside the joint limits at joints {outside}")

    @property
    def layout(self) -> ActionLayout:
        return ActionLayout.ee_delta(Feature((len(self.action_names),), names=self.action_names))

    @property
    def step_bounds(self) -> tuple[float, ...]:
        """Per action entry: ``max_step`` or the default for its kind."""
        if self.max_step is not None:
            return tuple(self.max_step)
        layout = self.layout
        kinds = {i: "translation" for i in layout.translation} | {i: "rotation" for i in layout.rotation}
        return tuple(DEFAULT_STEP[kinds.get(i, "gripper")] for i in range(layout.size))


@dataclass(frozen=True)
class ArmReading:
    """One read of the arm through its SDK, converted to SI units in the robot base frame."""

    position: np.ndarray  # (3,) TCP position, metres
    rotation: Rotation  # TCP orientation
    joints: np.ndarray  # (J,) joint positions, rad
    joint_velocities: np.ndarray  # (J,) rad/s
    gripper: float | None = None  # 0 open .. 1 closed, measured; None without a gripper
    extra: Mapping[str, float] = field(default_factory=dict)  # vendor-specific proprio signals


def import_sdk(kind: str, modules: Sequence[str], extra: str, package: str) -> list[ModuleType]:
    """Import a vendor SDK's modules for the ``kind`` driver (``ur5e``...), or say which extra installs them."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"the {kind} driver needs the vendor SDK {package} ({exc.name or exc} is not importable): "
            f"pip install 'robot-workflow-kit[{extra}]' (or pip install {package}). "
            f"To try the driver without an arm, use the spec '{kind}:standin:push'"
        ) from exc
