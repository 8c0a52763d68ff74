"""A stand-in for a UR controller as ``ur_rtde`` sees it, with its arm simulated by a :class:`SceneServo`.

:class:`URStandIn` exposes the constructors the UR driver uses, under ``ur_rtde``'s
names and signatures: ``RTDEControlInterface(hostname, ...)``,
``RTDEReceiveInterface(hostname, ...)``, ``DashboardClient(hostname, port)``, plus
``RobotiqGripper(hostname, port)`` for the gripper's URCap socket. Units are
ur_rtde's: metres, rotation vectors in radians, radians for joints. Like the
real library, connecting to any other host raises ``RuntimeError("Error: Could
not connect to: HOST at 30004, verify the IP")``. Faults are injected with
:meth:`URStandIn.trigger_protective_stop` and :meth:`URStandIn.press_emergency_stop`:
the safety mode changes, ``servoL`` returns ``False`` and the arm stays put until
the dashboard unlocks the protective stop (an emergency stop needs the button).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from hardware.standins.servo import SceneServo

NORMAL, PROTECTIVE_STOP, ROBOT_EMERGENCY_STOP = 1, 3, 7  # ur_rtde safety modes


class URStandIn:
    """A simulated UR controller reachable at ``host``; pass it to ``URArm(config, sdk=...)``."""

    def __init__(self, servo: SceneServo, host: str = "standin"):
        self.servo = servo
        self.host = host
        self.safety_mode = NORMAL
        self.script_running = False
        self.servo_commands = 0  # servoL calls that moved the arm
        self.gripper_position = 0  # Robotiq 0 open .. 255 closed, as last commanded

    # ---- fault injection ---------------------------------------------------------------------

    def trigger_protective_stop(self) -> None:
        """What a collision does: safety mode PROTECTIVE_STOP, the control script stops."""
        self.safety_mode = PROTECTIVE_STOP
        self.script_running = False

    def press_emergency_stop(self) -> None:
        self.safety_mode = ROBOT_EMERGENCY_STOP
        self.script_running = False

    def release_emergency_stop(self) -> None:
        """The button released and the arm powered on again from the pendant."""
        if self.safety_mode == ROBOT_EMERGENCY_STOP:
            self.safety_mode = NORMAL

    # ---- ur_rtde's constructors ------------------------------------------------------------------

    def _reach(self, hostname: str) -> None:
        if hostname != self.host:
            raise RuntimeError(f"Error: Could not connect to: {hostname} at 30004, verify the IP")

    def RTDEControlInterface(  # noqa: N802 - ur_rtde's name
        self, hostname: str, frequency: float = -1.0, flags: int = 1, ur_cap_port: int = 50002, rt_priority: int = 0
    ) -> "RTDEControl":
        self._reach(hostname)
        self.script_running = self.safety_mode == NORMAL
        return RTDEControl(self)

    def RTDEReceiveInterface(  # noqa: N802 - ur_rtde's name
        self,
        hostname: str,
        frequency: float = -1.0,
        variables: list[str] | None = None,
        verbose: bool = False,
        use_upper_range_registers: bool = False,
        rt_priority: int = 0,
    ) -> "RTDEReceive":
        self._reach(hostname)
        return RTDEReceive(self)

    def DashboardClient(self, hostname: str, port: int = 29999, verbose: bool = False) -> "Dashboard":  # noqa: N802
        return Dashboard(self, hostname)

    def RobotiqGripper(self, hostname: str, port: int = 63352, timeout_s: float = 2.0) -> "Robotiq":  # noqa: N802
        if hostname != self.host:
            raise ConnectionError(f"Robotiq gripper at {hostname}:{port}: [Errno 111] Connection refused")
        return Robotiq(self)


class RTDEReceive:
    """``rtde_receive.RTDEReceiveInterface`` over the simulated arm."""

    def __init__(self, controller: URStandIn):
        self._c = controller
        self._connected = True

    def getActualTCPPose(self) -> list[float]:  # noqa: N802
        position, rotation = self._c.servo.tcp()
        return [*position.tolist(), *rotation.as_rotvec().tolist()]

    def getActualQ(self) -> list[float]:  # noqa: N802
        return self._c.servo.joints()[0].tolist()

    def getActualQd(self) -> list[float]:  # noqa: N802
        return self._c.servo.joints()[1].tolist()

    def getSafetyMode(self) -> int:  # noqa: N802
        return self._c.safety_mode

    def isProtectiveStopped(self) -> bool:  # noqa: N802
        return self._c.safety_mode == PROTECTIVE_STOP

    def isEmergencyStopped(self) -> bool:  # noqa: N802
        return self._c.safety_mode == ROBOT_EMERGENCY_STOP

    def isConnected(self) -> bool:  # noqa: N802
        return self._connected

    def disconnect(self) -> None:
        self._connected = False


class RTDEControl:
    """``rtde_control.RTDEControlInterface``: servoL steps the scene one control period."""

    def __init__(self, controller: URStandIn):
        self._c = controller
        self._connected = True

    def _ready(self) -> bool:
        if not self._connected:
            raise RuntimeError("RTDEControlInterface is disconnected; call reconnect()")
        return self._c.script_running and self._c.safety_mode == NORMAL

    def servoL(  # noqa: N802
        self, pose: list[float], speed: float, acceleration: float, time: float, lookahead_time: float, gain: float, /
    ) -> bool:
        if not 0.03 <= lookahead_time <= 0.2 or not 100 <= gain <= 2000 or time <= 0:
            raise ValueError(f"servoL: lookahead_time {lookahead_time} or gain {gain} or time {time} out of range")
        if not self._ready():
            return False
        target = np.asarray(pose, dtype=np.float64)
        self._c.servo.servo_to(target[:3], Rotation.from_rotvec(target[3:]))
        self._c.servo_commands += 1
        return True

    def servoStop(self, a: float = 10.0) -> bool:  # noqa: N802
        return self._connected

    def moveJ(  # noqa: N802
        self, q: list[float], speed: float = 1.05, acceleration: float = 1.4, asynchronous: bool = False
    ) -> bool:
        if not self._ready():
            return False
        self._c.servo.move_joints(np.asarray(q, dtype=np.float64))
        return True

    def reuploadScript(self) -> bool:  # noqa: N802
        self._c.script_running = self._c.safety_mode == NORMAL
        return self._c.script_running

    def triggerProtectiveStop(self) -> bool:  # noqa: N802
        self._c.trigger_protective_stop()
        return True

    def stopScript(self) -> None:  # noqa: N802
        self._c.script_running = False

    def isConnected(self) -> bool:  # noqa: N802
        return self._connected

    def disconnect(self) -> None:
        self._connected = False


class Dashboard:
    """``dashboard_client.DashboardClient``: unlocks a protective stop (an emergency stop needs the button)."""

    def __init__(self, controller: URStandIn, hostname: str):
        self._c, self._hostname = controller, hostname
        self._connected = False

    def connect(self) -> None:
        self._c._reach(self._hostname)
        self._connected = True

    def unlockProtectiveStop(self) -> None:  # noqa: N802
        if self._connected and self._c.safety_mode == PROTECTIVE_STOP:
            self._c.safety_mode = NORMAL

    def closeSafetyPopup(self) -> None:  # noqa: N802
        pass

    def isConnected(self) -> bool:  # noqa: N802
        return self._connected

    def disconnect(self) -> None:
        self._connected = False


class Robotiq:
    """The Robotiq URCap gripper client (:class:`hardware.drivers.robotiq.RobotiqGripper`) on the scene's gripper."""

    def __init__(self, controller: URStandIn):
        self._c = controller

    def activate(self, timeout_s: float = 5.0) -> None:
        pass

    def move(self, position: int, speed: int = 255, force: int = 100) -> None:
        self._c.gripper_position = max(0, min(255, int(position)))
        self._c.servo.gripper_command = self._c.gripper_position / 255.0 * 2.0 - 1.0

    def position(self) -> int:
        return round(self._c.servo.gripper_closed() * 255)

    def fault(self) -> int:
        return 0

    def disconnect(self) -> None:
        pass
