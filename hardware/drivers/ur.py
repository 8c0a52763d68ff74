"""Universal Robots e-Series arms through ``ur_rtde`` (the ``ur`` extra): :class:`URArm`.

Motion: ``RTDEControlInterface.servoL`` with an absolute TCP pose
``[x, y, z, rx, ry, rz]`` (metres, rotation vector in radians, base frame) once per
control period; home: ``moveJ``. State: ``RTDEReceiveInterface`` (TCP pose,
joints, safety mode). Gripper: a Robotiq gripper through its URCap socket
(:mod:`hardware.drivers.robotiq`). ``ur_rtde`` is imported when a :class:`URArm`
is built without an injected ``sdk`` (a vendor stand-in, in tests).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from hardware.cameras import Camera
from hardware.drivers.cartesian import CartesianArm, CellOperator
from hardware.drivers.contract import ArmFaultError, ArmReading, ArmUnreachableError, CartesianConfig, import_sdk
from hardware.drivers.signals import SignalSource

UR5E_HOME = (0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0)  # tool pointing down
RUNNING_SAFETY_MODES = (1, 2)  # NORMAL, REDUCED: the arm may move
SAFETY_MODES = {
    1: "NORMAL", 2: "REDUCED", 3: "PROTECTIVE_STOP", 4: "RECOVERY", 5: "SAFEGUARD_STOP",
    6: "SYSTEM_EMERGENCY_STOP", 7: "ROBOT_EMERGENCY_STOP", 8: "VIOLATION", 9: "FAULT",
    10: "VALIDATE_JOINT_ID", 11: "UNDEFINED_SAFETY_MODE", 12: "AUTOMATIC_MODE_SAFEGUARD_STOP",
    13: "SYSTEM_THREE_POSITION_ENABLING_STOP",
}  # fmt: skip
HOW_TO_CLEAR = {
    3: "remove the cause (a collision, a limit), then unlock it on the pendant or call recover()",
    4: "move the arm back inside its safety limits in freedrive on the pendant",
    5: "close the safeguard (door, light curtain), then call recover()",
    6: "release the emergency stop button, then power on and release the brakes on the pendant",
    7: "release the emergency stop button, then power on and release the brakes on the pendant",
    8: "restart the safety system on the pendant; power-cycle the controller if it comes back",
    9: "restart the safety system on the pendant; power-cycle the controller if it comes back",
}
GRIPPER_OPEN, GRIPPER_CLOSED = 0, 255  # Robotiq positions


@dataclass(frozen=True, kw_only=True)
class URConfig(CartesianConfig):
    """A UR arm on a cell; defaults are a UR5e with the tool pointing down at home."""

    name: str = "ur5e"
    home_joints: tuple[float, ...] = UR5E_HOME
    joint_low: tuple[float, ...] = (-2 * math.pi,) * 6
    joint_high: tuple[float, ...] = (2 * math.pi,) * 6
    max_joint_velocity: tuple[float, ...] = (math.pi,) * 6  # UR5e rated 180 deg/s on every joint
    servo_lookahead_s: float = 0.1
    """servoL lookahead time (s, UR allows 0.03..0.2): longer is smoother and lags more."""
    servo_gain: float = 300.0
    """servoL proportional gain (UR allows 100..2000)."""
    home_speed: float = 0.5
    """moveJ speed of the leading joint on the way home, rad/s."""
    home_acceleration: float = 0.5
    """moveJ acceleration on the way home, rad/s^2."""
    gripper_port: int = 63352
    """Port of the Robotiq URCap socket (used when the action has a gripper entry)."""
    gripper_speed: int = 255
    """Robotiq speed, 0..255."""
    gripper_force: int = 100
    """Robotiq grip force, 0..255."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.03 <= self.servo_lookahead_s <= 0.2:
            raise ValueError(f"URConfig.servo_lookahead_s must be in [0.03, 0.2], got {self.servo_lookahead_s}")
        if not 100 <= self.servo_gain <= 2000:
            raise ValueError(f"URConfig.servo_gain must be in [100, 2000], got {self.servo_gain}")


def load_ur_sdk() -> types.SimpleNamespace:
    """The ``ur_rtde`` classes the driver uses (ModuleNotFoundError naming the ``ur`` extra without it)."""
    from hardware.drivers.robotiq import RobotiqGripper

    control, receive, dashboard = import_sdk(
        "ur5e", ("rtde_control", "rtde_receive", "dashboard_client"), "ur", "ur-rtde"
    )
    return types.SimpleNamespace(
        RTDEControlInterface=control.RTDEControlInterface,
        RTDEReceiveInterface=receive.RTDEReceiveInterface,
        DashboardClient=dashboard.DashboardClient,
        RobotiqGripper=RobotiqGripper,
    )


class URArm(CartesianArm):
    """A UR arm servoed with ``servoL`` (see the module docstring). ``sdk`` defaults to :func:`load_ur_sdk`."""

    def __init__(
        self,
        config: URConfig,
        *,
        sdk: Any = None,
        sources: Sequence[SignalSource] = (),
        cameras: Sequence[Camera] = (),
        operator: CellOperator | None = None,
    ):
        super().__init__(config, sources=sources, cameras=cameras, operator=operator)
        self.config: URConfig = config
        self.sdk = sdk if sdk is not None else load_ur_sdk()
        self._receive: Any = None
        self._control: Any = None
        self._gripper: Any = None
        self._gripper_position: int | None = None

    def _where(self) -> str:
        return f"{self.name} at {self.config.host}"

    def _open(self) -> None:
        host = self.config.host
        try:
            self._receive = self.sdk.RTDEReceiveInterface(host)
        except RuntimeError as exc:
            raise ArmUnreachableError(
                f"{self._where()}: the RTDE receive interface could not connect ({exc}). Check that the controller "
                f"is on and reachable (ping {host}) and that {host} is the address shown on the pendant "
                "(Settings > System > Network)"
            ) from exc
        fault = self._fault()
        try:
            if fault is not None:
                raise ArmFaultError(fault)
            try:
                self._control = self.sdk.RTDEControlInterface(host)
            except RuntimeError as exc:
                raise ArmUnreachableError(
                    f"{self._where()}: the RTDE control interface could not start its script ({exc}). "
                    "Switch the pendant to Remote Control (e-Series) and stop any program running on it"
                ) from exc
            if self.layout.gripper is not None:
                self._gripper = self.sdk.RobotiqGripper(host, self.config.gripper_port)
                self._gripper.activate()
        except BaseException:
            self._close()
            raise

    def _close(self) -> None:
        if self._gripper is not None:
            self._gripper.disconnect()
            self._gripper = None
        if self._control is not None:
            self._control.servoStop()
            self._control.stopScript()
            self._control.disconnect()
            self._control = None
        if self._receive is not None:
            self._receive.disconnect()
            self._receive = None

    def _read(self) -> ArmReading:
        pose = np.asarray(self._receive.getActualTCPPose(), dtype=np.float64)  # (6,) m, rotation vector
        gripper = None
        if self._gripper is not None:
            gripper = (self._gripper.position() - GRIPPER_OPEN) / (GRIPPER_CLOSED - GRIPPER_OPEN)
        return ArmReading(
            position=pose[:3],
            rotation=Rotation.from_rotvec(pose[3:]),
            joints=np.asarray(self._receive.getActualQ(), dtype=np.float64),
            joint_velocities=np.asarray(self._receive.getActualQd(), dtype=np.float64),
            gripper=gripper,
        )

    def _servo(self, position: np.ndarray, rotation: Rotation) -> None:
        pose = [*map(float, position), *map(float, rotation.as_rotvec())]
        # servoL(pose, speed, acceleration, time, lookahead_time, gain): speed and acceleration are unused.
        ok = self._control.servoL(pose, 0.0, 0.0, 1.0 / self.fps, self.config.servo_lookahead_s,
                                  self.config.servo_gain)  # fmt: skip
        fault = self._fault()
        if fault is not None:
            raise ArmFaultError(fault)
        if not ok:
            raise ArmFaultError(
                f"{self._where()}: servoL was refused (its control script stopped); "
                "check the pendant's log, then call recover()"
            )

    def _grip(self, command: float, force: bool) -> None:
        if self._gripper is None:
            return
        position = round(GRIPPER_OPEN + (command + 1.0) / 2.0 * (GRIPPER_CLOSED - GRIPPER_OPEN))
        if force or self._gripper_position is None or abs(position - self._gripper_position) > 2:
            self._gripper.move(position, self.config.gripper_speed, self.config.gripper_force)
            self._gripper_position = position

    def _move_home(self) -> None:
        self._control.servoStop()
        ok = self._control.moveJ(list(self.config.home_joints), self.config.home_speed,
                                 self.config.home_acceleration)  # fmt: skip
        if not ok:
            raise ArmFaultError(self._fault() or f"{self._where()}: moveJ to home_joints was refused")

    def _fault(self) -> str | None:
        mode = int(self._receive.getSafetyMode())
        if mode in RUNNING_SAFETY_MODES:
            return None
        name = SAFETY_MODES.get(mode, "unknown")
        fix = HOW_TO_CLEAR.get(mode, "see the pendant's log")
        return f"{self._where()} is in safety mode {mode} ({name}); {fix}"

    def _recover(self) -> None:
        dashboard = self.sdk.DashboardClient(self.config.host)
        dashboard.connect()
        try:
            dashboard.closeSafetyPopup()
            dashboard.unlockProtectiveStop()
        finally:
            dashboard.disconnect()
        fault = self._fault()
        if fault is not None:
            raise ArmFaultError(f"recover() could not clear it: {fault}")
        self._control.reuploadScript()
