"""UFactory xArm through ``xarm-python-sdk`` (the ``xarm`` extra): :class:`XArmArm`.

The SDK speaks millimetres and degrees (the driver keeps ``is_radian=False`` and
says so on every call). Motion: servo mode (``set_mode(1)``, ``set_state(0)``)
and ``set_servo_cartesian([x, y, z, roll, pitch, yaw])`` once per control period,
roll/pitch/yaw about the fixed x, y, z axes. Home: position mode and
``set_servo_angle(..., wait=True)``, then back to servo mode. Calls return an
API code (0 = done); the controller's ``error_code`` names what stopped the arm.
Gripper: the xArm Gripper, 850 (open) .. 0 (closed) pulses. ``xarm`` is imported
when an :class:`XArmArm` is built without an injected ``sdk`` (a stand-in, in tests).
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
from hardware.drivers.pose import from_rpy_degrees, rpy_degrees
from hardware.drivers.signals import SignalSource

XARM6_JOINT_LOW_DEG = (-360.0, -118.0, -225.0, -360.0, -97.0, -360.0)
XARM6_JOINT_HIGH_DEG = (360.0, 120.0, 11.0, 360.0, 180.0, 360.0)
GRIPPER_OPEN, GRIPPER_CLOSED = 850, 0  # xArm Gripper pulses
API_CODES = {
    -1: "not connected", -2: "not ready (motion not enabled or state not set)", -9: "emergency stop",
    1: "the controller has an uncleared error", 2: "the controller has an uncleared warning",
    3: "the controller did not answer in time", 9: "not ready to move (motion not enabled, or not in state 0)",
}  # fmt: skip
CONTROLLER_ERRORS = {  # the common ones; the SDK's xarm_api_code.md lists all
    1: "emergency stop button on the control box pressed",
    2: "emergency IO of the control box triggered",
    3: "emergency stop of the three-state switch pressed",
    21: "kinematics error (target out of reach)",
    22: "self-collision",
    23: "joint angle beyond its limit",
    24: "speed beyond its limit",
    25: "planning error",
    31: "collision caused abnormal current",
    35: "safety boundary reached",
    60: "linear speed beyond its limit in servo mode",
}
EMERGENCY_STOPS = (1, 2, 3)
OUT_OF_BOUNDS = (22, 23, 35)


@dataclass(frozen=True, kw_only=True)
class XArmConfig(CartesianConfig):
    """An xArm on a cell; defaults are an xArm 6 whose zero pose (the tool pointing down) is home."""

    name: str = "xarm"
    home_joints: tuple[float, ...] = (0.0,) * 6
    joint_low: tuple[float, ...] = tuple(math.radians(d) for d in XARM6_JOINT_LOW_DEG)
    joint_high: tuple[float, ...] = tuple(math.radians(d) for d in XARM6_JOINT_HIGH_DEG)
    max_joint_velocity: tuple[float, ...] = (math.pi,) * 6  # 180 deg/s
    home_speed_deg: float = 30.0
    """Joint speed on the way home, degrees per second."""
    gripper_speed: int = 5000
    """xArm Gripper speed, r/min (1000..5000)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.home_speed_deg <= 180:
            raise ValueError(f"XArmConfig.home_speed_deg must be in (0, 180], got {self.home_speed_deg}")
        if not 1000 <= self.gripper_speed <= 5000:
            raise ValueError(f"XArmConfig.gripper_speed must be in [1000, 5000] r/min, got {self.gripper_speed}")


def load_xarm_sdk() -> types.SimpleNamespace:
    """The SDK's ``XArmAPI`` (ModuleNotFoundError naming the ``xarm`` extra without it)."""
    (wrapper,) = import_sdk("xarm", ("xarm.wrapper",), "xarm", "xarm-python-sdk")
    return types.SimpleNamespace(XArmAPI=wrapper.XArmAPI)


class XArmArm(CartesianArm):
    """An xArm in servo mode (see the module docstring). ``sdk`` defaults to :func:`load_xarm_sdk`."""

    def __init__(
        self,
        config: XArmConfig,
        *,
        sdk: Any = None,
        sources: Sequence[SignalSource] = (),
        cameras: Sequence[Camera] = (),
        operator: CellOperator | None = None,
    ):
        super().__init__(config, sources=sources, cameras=cameras, operator=operator)
        self.config: XArmConfig = config
        self.sdk = sdk if sdk is not None else load_xarm_sdk()
        self._arm: Any = None
        self._dof = len(config.home_joints)
        self._gripper_pulses: int | None = None

    def _where(self) -> str:
        return f"{self.name} at {self.config.host}"

    def _check(self, code: int, call: str) -> None:
        if code != 0:
            meaning = API_CODES.get(int(code), "see the SDK's API code list")
            fault = self._fault()
            raise ArmFaultError(f"{self._where()}: {call} returned code {code} ({meaning})" +
                                (f"; {fault}" if fault else ""))  # fmt: skip

    def _open(self) -> None:
        try:
            self._arm = self.sdk.XArmAPI(self.config.host, is_radian=False)
        except Exception as exc:  # the SDK raises a bare Exception('connect socket failed')
            raise ArmUnreachableError(
                f"{self._where()}: the SDK could not open the control socket ({exc}). Check that the control box "
                f"is on and reachable (ping {self.config.host}, TCP port 502) and that no other program "
                "(UFactory Studio's live control) holds the arm"
            ) from exc
        try:
            fault = self._fault()
            if fault is not None:
                raise ArmFaultError(fault)
            self._servo_mode()
            if self.layout.gripper is not None:
                self._check(self._arm.set_gripper_enable(True), "set_gripper_enable(True)")
                self._check(self._arm.set_gripper_mode(0), "set_gripper_mode(0)")
        except BaseException:
            self._close()
            raise

    def _servo_mode(self) -> None:
        self._check(self._arm.motion_enable(enable=True), "motion_enable(True)")
        self._check(self._arm.set_mode(1), "set_mode(1) (servo mode)")
        self._check(self._arm.set_state(state=0), "set_state(0)")

    def _close(self) -> None:
        if self._arm is not None:
            self._arm.disconnect()
            self._arm = None

    def _read(self) -> ArmReading:
        code, pose = self._arm.get_position(is_radian=False)  # [x, y, z] mm, [roll, pitch, yaw] deg
        self._check(code, "get_position")
        code, (angles, speeds, _efforts) = self._arm.get_joint_states(is_radian=False)  # deg, deg/s
        self._check(code, "get_joint_states")
        gripper = None
        if self.layout.gripper is not None:
            code, pulses = self._arm.get_gripper_position()
            self._check(code, "get_gripper_position")
            gripper = float(np.clip((GRIPPER_OPEN - pulses) / (GRIPPER_OPEN - GRIPPER_CLOSED), 0.0, 1.0))
        pose = np.asarray(pose, dtype=np.float64)
        return ArmReading(
            position=pose[:3] / 1000.0,
            rotation=from_rpy_degrees(pose[3:6]),
            joints=np.radians(np.asarray(angles[: self._dof], dtype=np.float64)),
            joint_velocities=np.radians(np.asarray(speeds[: self._dof], dtype=np.float64)),
            gripper=gripper,
        )

    def _servo(self, position: np.ndarray, rotation: Rotation) -> None:
        mvpose = [*(np.asarray(position, dtype=np.float64) * 1000.0).tolist(), *rpy_degrees(rotation).tolist()]
        self._check(self._arm.set_servo_cartesian(mvpose, is_radian=False), "set_servo_cartesian")

    def _grip(self, command: float, force: bool) -> None:
        if self.layout.gripper is None:
            return
        pulses = round(GRIPPER_OPEN + (command + 1.0) / 2.0 * (GRIPPER_CLOSED - GRIPPER_OPEN))
        if force or self._gripper_pulses is None or abs(pulses - self._gripper_pulses) > 10:
            code = self._arm.set_gripper_position(pulses, wait=False, speed=self.config.gripper_speed)
            self._check(code, "set_gripper_position")
            self._gripper_pulses = pulses

    def _move_home(self) -> None:
        self._check(self._arm.set_mode(0), "set_mode(0) (position mode)")
        self._check(self._arm.set_state(state=0), "set_state(0)")
        angles = [math.degrees(q) for q in self.config.home_joints]
        code = self._arm.set_servo_angle(angle=angles, speed=self.config.home_speed_deg, is_radian=False, wait=True)
        self._check(code, "set_servo_angle (home)")
        self._servo_mode()

    def _fault(self) -> str | None:
        error, warn = int(self._arm.error_code), int(self._arm.warn_code)
        if error == 0:
            return None
        what = CONTROLLER_ERRORS.get(error, "see the SDK's controller error code list")
        if error in EMERGENCY_STOPS:
            fix = "release the emergency stop, then call recover()"
        elif error in OUT_OF_BOUNDS:
            fix = "guide the arm back inside its limits in manual mode (UFactory Studio), then call recover()"
        else:
            fix = "remove the cause (a collision, a bad target), then call recover()"
        warning = f", warning code {warn}" if warn else ""
        return f"{self._where()} reports controller error {error} ({what}){warning}; {fix}"

    def _recover(self) -> None:
        self._arm.clean_error()
        self._arm.clean_warn()
        fault = self._fault()
        if fault is not None:
            raise ArmFaultError(f"recover() could not clear it: {fault}")
        self._servo_mode()
