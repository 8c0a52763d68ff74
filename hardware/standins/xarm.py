"""A stand-in for an xArm control box as ``xarm-python-sdk`` sees it, the arm simulated by a :class:`SceneServo`.

:class:`XArmStandIn` exposes ``XArmAPI(port, is_radian=False, ...)`` with the SDK's
method names, signatures, units (millimetres; degrees unless ``is_radian``) and
return conventions (an API code, or ``(code, value)``). Like the SDK, connecting
to any other address raises ``Exception('connect socket failed')``. The
controller keeps the SDK's mode (0 position, 1 servo) and state (0 ready to move,
4 stopped): ``set_servo_cartesian`` moves only in servo mode and state 0, and
steps the scene one control period. :meth:`XArmStandIn.raise_error` injects a
controller error code: the arm stops (state 4), commands return code 1 until
``clean_error()`` and a fresh ``motion_enable``/``set_mode``/``set_state``.
Raw commands are kept (``sent_poses``, ``sent_angles``) so tests can check units.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardware.drivers.pose import from_rpy_degrees, rpy_degrees
from hardware.standins.servo import SceneServo

HAS_ERROR, NOT_READY = 1, 9  # API codes
JOINTS_REPORTED = 7  # the SDK pads joint lists to 7 entries


class XArmStandIn:
    """A simulated xArm control box at ``host``; pass it to ``XArmArm(config, sdk=...)``."""

    def __init__(self, servo: SceneServo, host: str = "standin"):
        self.servo, self.host = servo, host
        self.error_code = 0
        self.warn_code = 0
        self.sent_poses: list[list[float]] = []  # set_servo_cartesian mvpose values as given
        self.sent_angles: list[list[float]] = []  # set_servo_angle angle values as given

    def raise_error(self, code: int, warn: int = 0) -> None:
        """The controller reports error ``code`` (e.g. 31 collision, 1 emergency stop) and stops the arm."""
        self.error_code, self.warn_code = int(code), int(warn)

    def XArmAPI(self, port: str | None = None, is_radian: bool = False, do_not_open: bool = False,  # noqa: N802
                **kwargs: Any) -> "XArmAPI":  # fmt: skip
        if port != self.host:
            raise Exception("connect socket failed")  # noqa: TRY002 - the SDK's own behaviour
        return XArmAPI(self, is_radian)


class XArmAPI:
    """``xarm.wrapper.XArmAPI`` over the simulated arm."""

    def __init__(self, box: XArmStandIn, is_radian: bool):
        self._box = box
        self.default_is_radian = is_radian
        self.connected = True
        self.mode = 0
        self.state = 4  # stopped until enabled and set to 0
        self._enabled = False
        self._gripper_pulses = 850

    # ---- state -----------------------------------------------------------------------------

    @property
    def error_code(self) -> int:
        return self._box.error_code

    @property
    def warn_code(self) -> int:
        return self._box.warn_code

    @property
    def has_err_warn(self) -> bool:
        return bool(self._box.error_code or self._box.warn_code)

    def _radian(self, is_radian: bool | None) -> bool:
        return self.default_is_radian if is_radian is None else bool(is_radian)

    def get_position(self, is_radian: bool | None = None) -> tuple[int, list[float]]:
        position, rotation = self._box.servo.tcp()
        rpy = rpy_degrees(rotation)
        angles = np.radians(rpy) if self._radian(is_radian) else rpy
        return 0, [*(position * 1000.0).tolist(), *angles.tolist()]

    def get_joint_states(self, is_radian: bool | None = None, num: int = 3) -> tuple[int, list[list[float]]]:
        q, qd = self._box.servo.joints()
        pad = lambda v: list(v) + [0.0] * (JOINTS_REPORTED - len(v))  # noqa: E731
        convert = (lambda v: v) if self._radian(is_radian) else np.degrees
        return 0, [pad(convert(q)), pad(convert(qd)), pad(np.zeros_like(q))][:num]

    def get_servo_angle(self, servo_id: int | None = None, is_radian: bool | None = None,
                        is_real: bool = False) -> tuple[int, Any]:  # fmt: skip
        code, (angles, *_rest) = self.get_joint_states(is_radian)
        return code, angles if servo_id is None else angles[servo_id - 1]

    # ---- modes -------------------------------------------------------------------------------

    def motion_enable(self, enable: bool = True, servo_id: int | None = None) -> int:
        if self._box.error_code:
            return HAS_ERROR
        self._enabled = bool(enable)
        return 0

    def set_mode(self, mode: int = 0, detection_param: int = 0) -> int:
        if self._box.error_code:
            return HAS_ERROR
        self.mode = int(mode)
        return 0

    def set_state(self, state: int = 0) -> int:
        if self._box.error_code:
            return HAS_ERROR
        self.state = int(state)
        return 0

    def clean_error(self) -> int:
        self._box.error_code, self.state, self._enabled = 0, 4, False
        return 0

    def clean_warn(self) -> int:
        self._box.warn_code = 0
        return 0

    def emergency_stop(self) -> None:
        self.state = 4

    def _ready(self, mode: int) -> int:
        if self._box.error_code:
            return HAS_ERROR
        return 0 if self._enabled and self.state == 0 and self.mode == mode else NOT_READY

    # ---- motion ------------------------------------------------------------------------------

    def set_servo_cartesian(self, mvpose: list[float], speed: float | None = None, mvacc: float | None = None,
                            mvtime: float = 0, is_radian: bool | None = None, is_tool_coord: bool = False,
                            **kwargs: Any) -> int:  # fmt: skip
        code = self._ready(mode=1)
        if code:
            return code
        self._box.sent_poses.append(list(map(float, mvpose)))
        pose = np.asarray(mvpose, dtype=np.float64)
        rpy = np.degrees(pose[3:6]) if self._radian(is_radian) else pose[3:6]
        self._box.servo.servo_to(pose[:3] / 1000.0, from_rpy_degrees(rpy))
        return 0

    def set_servo_angle(self, servo_id: int | None = None, angle: Any = None, speed: float | None = None,
                        mvacc: float | None = None, mvtime: float | None = None, relative: bool = False,
                        is_radian: bool | None = None, wait: bool = False, timeout: float | None = None,
                        radius: float | None = None, **kwargs: Any) -> int:  # fmt: skip
        code = self._ready(mode=0)
        if code:
            return code
        self._box.sent_angles.append(list(map(float, angle)))
        joints = np.asarray(angle, dtype=np.float64)
        self._box.servo.move_joints(joints if self._radian(is_radian) else np.radians(joints))
        return 0

    # ---- gripper -----------------------------------------------------------------------------

    def set_gripper_enable(self, enable: bool, **kwargs: Any) -> int:
        return HAS_ERROR if self._box.error_code else 0

    def set_gripper_mode(self, mode: int, **kwargs: Any) -> int:
        return HAS_ERROR if self._box.error_code else 0

    def set_gripper_position(self, pos: float, wait: bool = False, speed: float | None = None,
                             auto_enable: bool = False, timeout: float | None = None,
                             **kwargs: Any) -> int:  # fmt: skip
        if self._box.error_code:
            return HAS_ERROR
        self._gripper_pulses = int(np.clip(pos, 0, 850))
        self._box.servo.gripper_command = 1.0 - 2.0 * self._gripper_pulses / 850.0
        return 0

    def get_gripper_position(self, **kwargs: Any) -> tuple[int, float]:
        return 0, float(850.0 * (1.0 - self._box.servo.gripper_closed()))

    def disconnect(self) -> None:
        self.connected = False

