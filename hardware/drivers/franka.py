"""Franka Emika Panda / FR3 through ``franky`` (PyPI ``franky-control``, the ``franka`` extra): :class:`FrankaArm`.

Motion: each command is a ``CartesianMotion`` to an absolute ``Affine`` target
(translation in metres, quaternion ``(x, y, z, w)``, base frame) started with
``Robot.move(..., asynchronous=True)``: the new motion takes over from the running
one, so the arm follows a stream of targets with franky's jerk-limited trajectory
generator, scaled by ``relative_dynamics_factor``. Home: a ``JointMotion``.
Gripper: ``franky.Gripper``; a command above 0 grasps (any width counts as
grasped), 0 or below opens fully. ``franky`` is imported when a
:class:`FrankaArm` is built without an injected ``sdk`` (a stand-in, in tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from hardware.cameras import Camera
from hardware.drivers.cartesian import CartesianArm, CellOperator
from hardware.drivers.contract import ArmFaultError, ArmReading, ArmUnreachableError, CartesianConfig, import_sdk
from hardware.drivers.signals import SignalSource

PANDA_HOME = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)
PANDA_JOINT_LOW = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
PANDA_JOINT_HIGH = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
PANDA_JOINT_SPEED = (2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61)  # rad/s


@dataclass(frozen=True, kw_only=True)
class FrankaConfig(CartesianConfig):
    """A Franka arm on a cell; defaults are a Panda at its usual ready pose."""

    name: str = "franka"
    home_joints: tuple[float, ...] = PANDA_HOME
    joint_low: tuple[float, ...] = PANDA_JOINT_LOW
    joint_high: tuple[float, ...] = PANDA_JOINT_HIGH
    max_joint_velocity: tuple[float, ...] = PANDA_JOINT_SPEED
    relative_dynamics_factor: float = 0.1
    """Fraction of the arm's velocity, acceleration and jerk limits the Cartesian motions may use."""
    home_dynamics_factor: float = 0.1
    """The same fraction for the move home."""
    home_timeout_s: float = 10.0
    """Longest wait for the running motion to finish before moving home, seconds."""
    gripper_speed: float = 0.05
    """Finger speed, m/s."""
    gripper_force: float = 20.0
    """Grasp force, N."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("relative_dynamics_factor", "home_dynamics_factor"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"FrankaConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.gripper_speed <= 0 or self.gripper_force <= 0 or self.home_timeout_s <= 0:
            raise ValueError("FrankaConfig gripper_speed, gripper_force and home_timeout_s must be positive")


def load_franky() -> Any:
    """The ``franky`` module (ModuleNotFoundError naming the ``franka`` extra without it)."""
    return import_sdk("franka", ("franky",), "franka", "franky-control")[0]


def active_errors(errors: Any) -> list[str]:
    """Names of the flags set in a ``franky.Errors``."""
    return [n for n in dir(errors) if not n.startswith("_") and getattr(errors, n, None) is True]


class FrankaArm(CartesianArm):
    """A Franka arm streamed Cartesian targets through franky (see the module docstring)."""

    def __init__(
        self,
        config: FrankaConfig,
        *,
        sdk: Any = None,
        sources: Sequence[SignalSource] = (),
        cameras: Sequence[Camera] = (),
        operator: CellOperator | None = None,
    ):
        super().__init__(config, sources=sources, cameras=cameras, operator=operator)
        self.config: FrankaConfig = config
        self.sdk = sdk if sdk is not None else load_franky()
        self._robot: Any = None
        self._gripper: Any = None
        self._closed: bool | None = None  # the gripper state last commanded

    def _gripper_signals(self) -> tuple[str, ...]:
        return ("gripper_q0", "gripper_q1")  # finger joints as the kit's Panda scenes report them: +w/2, -w/2

    def _where(self) -> str:
        return f"{self.name} at {self.config.host}"

    def _open(self) -> None:
        sdk, host = self.sdk, self.config.host
        try:
            self._robot = sdk.Robot(host, relative_dynamics_factor=self.config.relative_dynamics_factor)
            if self.layout.gripper is not None:
                self._gripper = sdk.Gripper(host)
        except sdk.NetworkException as exc:
            self._robot = None
            raise ArmUnreachableError(
                f"{self._where()}: libfranka could not connect ({exc}). Check that {host} is the arm's control "
                "address on a direct Ethernet link, that the joints are unlocked and FCI is activated in Desk"
            ) from exc
        fault = self._fault()
        if fault is not None:
            self._close()
            raise ArmFaultError(fault)

    def _close(self) -> None:
        if self._robot is not None:
            self._robot.stop()
        self._robot = self._gripper = None  # franky closes the connection with the object

    def _read(self) -> ArmReading:
        pose = self._robot.current_cartesian_state.pose.end_effector_pose
        joints = self._robot.current_joint_state
        gripper, extra = None, {}
        if self._gripper is not None:
            width = float(self._gripper.width)
            gripper = float(np.clip(1.0 - width / float(self._gripper.max_width), 0.0, 1.0))
            extra = {"gripper_q0": width / 2, "gripper_q1": -width / 2}
        return ArmReading(
            position=np.asarray(pose.translation, dtype=np.float64).reshape(3),
            rotation=Rotation.from_quat(np.asarray(pose.quaternion, dtype=np.float64).reshape(4)),
            joints=np.asarray(joints.position, dtype=np.float64).reshape(-1),
            joint_velocities=np.asarray(joints.velocity, dtype=np.float64).reshape(-1),
            gripper=gripper,
            extra=extra,
        )

    def _servo(self, position: np.ndarray, rotation: Rotation) -> None:
        sdk = self.sdk
        target = sdk.Affine(np.asarray(position, dtype=np.float64), rotation.as_quat())
        motion = sdk.CartesianMotion(target, sdk.ReferenceType.Absolute,
                                     relative_dynamics_factor=self.config.relative_dynamics_factor)  # fmt: skip
        try:
            self._robot.move(motion, asynchronous=True)
        except sdk.ControlException as exc:
            raise ArmFaultError(self._fault() or f"{self._where()}: the motion was refused ({exc})") from exc

    def _grip(self, command: float, force: bool) -> None:
        if self._gripper is None:
            return
        closed = command > 0.0
        if not force and closed == self._closed:
            return
        if closed:  # grasp whatever is there: any final width counts as a grasp
            self._gripper.grasp_async(0.0, self.config.gripper_speed, self.config.gripper_force, 1.0, 1.0)
        else:
            self._gripper.move_async(float(self._gripper.max_width), self.config.gripper_speed)
        self._closed = closed

    def _move_home(self) -> None:
        sdk = self.sdk
        if not self._robot.join_motion(self.config.home_timeout_s):
            raise ArmFaultError(f"{self._where()}: the running motion did not finish within "
                                f"{self.config.home_timeout_s} s, so it cannot move home")  # fmt: skip
        motion = sdk.JointMotion(list(self.config.home_joints), sdk.ReferenceType.Absolute,
                                 relative_dynamics_factor=self.config.home_dynamics_factor)  # fmt: skip
        try:
            self._robot.move(motion, asynchronous=False)
        except sdk.ControlException as exc:
            raise ArmFaultError(self._fault() or f"{self._where()}: the move home failed ({exc})") from exc

    def _fault(self) -> str | None:
        if not self._robot.has_errors:
            return None
        state = self._robot.state
        names = active_errors(state.current_errors) or active_errors(state.last_motion_errors) or ["unnamed"]
        return (
            f"{self._where()} stopped with libfranka errors {', '.join(names)}; "
            "free the arm (guide it clear if it is in contact, lower the speed if a limit was hit), "
            "then call recover() (franky's Robot.recover_from_errors)"
        )

    def _recover(self) -> None:
        if not self._robot.recover_from_errors() or self._robot.has_errors:
            raise ArmFaultError(
                f"recover() could not clear {self._where()}: {self._fault()}; "
                "release the user stop button and unlock the joints in Desk"
            )
