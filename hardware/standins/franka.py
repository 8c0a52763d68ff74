"""A stand-in for a Franka arm as ``franky`` sees it, with the arm simulated by a :class:`SceneServo`.

:class:`FrankyStandIn` exposes the names of the ``franky`` module that the Franka
driver uses: ``Robot(fci_hostname, ...)``, ``Gripper(fci_hostname)``, ``Affine``
(translation in metres, quaternion ``(x, y, z, w)``), ``CartesianMotion``,
``JointMotion``, ``ReferenceType``, ``Errors`` and the exceptions
(``NetworkException``, ``ControlException``, ``CommandException``). Each
``Robot.move`` of a Cartesian motion steps the scene one control period toward
its target (a real franky motion keeps going on its own clock; the driver sends
one per period). Like libfranka, connecting to any other host raises
``NetworkException``. :meth:`FrankyStandIn.inject_reflex` stops the arm the way
a collision does: the next ``move`` raises ``ControlException`` naming the
reflex, ``has_errors`` stays true and every move is refused until
``recover_from_errors()``.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from hardware.standins.servo import SceneServo

REFUSED = "libfranka: Connection to FCI refused. Please install FCI feature or enable FCI mode in Desk."
ERROR_NAMES = (  # a subset of franky.Errors' flags
    "cartesian_reflex", "joint_reflex", "joint_position_limits_violation", "cartesian_position_limits_violation",
    "self_collision_avoidance_violation", "joint_velocity_violation", "cartesian_velocity_violation",
    "force_control_safety_violation", "power_limit_violation", "communication_constraints_violation",
)  # fmt: skip


class FrankyError(Exception):
    """``franky.Exception``: the base of libfranka's errors."""


class NetworkException(FrankyError):
    """``franky.NetworkException``: the connection failed or was lost."""


class ControlException(FrankyError):
    """``franky.ControlException``: a motion was aborted (reflex, limit) or refused."""


class CommandException(FrankyError):
    """``franky.CommandException``: the controller refused a command."""


class ReferenceType(enum.Enum):
    Absolute = 0
    Relative = 1


class RobotMode(enum.Enum):
    Other, Idle, Move, Guiding, Reflex, UserStopped, AutomaticErrorRecovery = range(7)


class Affine:
    """A rigid transform: ``Affine(translation, quaternion)`` with the quaternion as ``(x, y, z, w)``."""

    def __init__(self, translation: Any = (0.0, 0.0, 0.0), quaternion: Any = (0.0, 0.0, 0.0, 1.0)):
        matrix = np.asarray(translation, dtype=np.float64)
        if matrix.shape == (4, 4):
            self._t, self._r = matrix[:3, 3].copy(), Rotation.from_matrix(matrix[:3, :3])
        else:
            self._t, self._r = matrix.reshape(3).copy(), Rotation.from_quat(np.asarray(quaternion, dtype=np.float64))

    @property
    def translation(self) -> np.ndarray:
        return self._t.copy()

    @property
    def quaternion(self) -> np.ndarray:
        return self._r.as_quat()

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self._r.as_matrix(), self._t
        return m

    @property
    def inverse(self) -> "Affine":
        return Affine(np.linalg.inv(self.matrix))

    def __mul__(self, other: "Affine") -> "Affine":
        return Affine(self.matrix @ other.matrix)


class RobotPose:
    def __init__(self, end_effector_pose: Affine, elbow_state: Any = None):
        self.end_effector_pose, self.elbow_state = end_effector_pose, elbow_state


class CartesianState:
    def __init__(self, pose: RobotPose | Affine, velocity: Any = None):
        self.pose = pose if isinstance(pose, RobotPose) else RobotPose(pose)
        self.velocity = velocity


class JointState:
    def __init__(self, position: Any, velocity: Any = None):
        self.position = np.asarray(position, dtype=np.float64)
        self.velocity = np.zeros_like(self.position) if velocity is None else np.asarray(velocity, dtype=np.float64)


class CartesianMotion:
    """``franky.CartesianMotion``: one Cartesian target, absolute (base frame) or relative (end-effector frame)."""

    def __init__(self, target: Any, reference_type: ReferenceType = ReferenceType.Absolute,
                 relative_dynamics_factor: float = 1.0, return_when_finished: bool = True,
                 ee_frame: Affine | None = None):  # fmt: skip
        pose = target.pose if isinstance(target, CartesianState) else target
        self.target = CartesianState(pose)
        self.reference_type = reference_type
        self.relative_dynamics_factor = relative_dynamics_factor


class JointMotion:
    """``franky.JointMotion``: one joint target (rad)."""

    def __init__(self, target: Any, reference_type: ReferenceType = ReferenceType.Absolute,
                 relative_dynamics_factor: float = 1.0, return_when_finished: bool = True):  # fmt: skip
        self.target = target if isinstance(target, JointState) else JointState(target)
        self.reference_type = reference_type


class Errors:
    """``franky.Errors``: one boolean per libfranka error (a subset here)."""

    def __init__(self, active: tuple[str, ...] = ()):
        for name in ERROR_NAMES:
            setattr(self, name, name in active)

    def __repr__(self) -> str:
        return "[" + ", ".join(f'"{n}"' for n in ERROR_NAMES if getattr(self, n)) + "]"


class RobotState:
    def __init__(self, errors: Errors, last_motion_errors: Errors, mode: RobotMode):
        self.current_errors, self.last_motion_errors, self.robot_mode = errors, last_motion_errors, mode


class BoolFuture:
    def __init__(self, value: bool):
        self._value = value

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def get(self) -> bool:
        return self._value


class FrankyStandIn:
    """A simulated Franka reachable at ``host``; pass it to ``FrankaArm(config, sdk=...)``."""

    Exception = FrankyError
    NetworkException = NetworkException
    ControlException = ControlException
    CommandException = CommandException
    ReferenceType = ReferenceType
    RobotMode = RobotMode
    Affine = Affine
    RobotPose = RobotPose
    CartesianState = CartesianState
    JointState = JointState
    CartesianMotion = CartesianMotion
    JointMotion = JointMotion
    Errors = Errors

    def __init__(self, servo: SceneServo, host: str = "standin", max_width: float = 0.08):
        self.servo, self.host, self.max_width = servo, host, max_width
        self.errors: tuple[str, ...] = ()  # active libfranka errors
        self.unreported = False  # a reflex the next move has not raised yet
        self.motions = 0  # Cartesian motions that moved the arm

    def inject_reflex(self, *errors: str) -> None:
        """Stop the arm as a collision does, with libfranka error flags such as ``cartesian_reflex``."""
        unknown = sorted(set(errors) - set(ERROR_NAMES))
        if unknown or not errors:
            raise ValueError(f"inject_reflex takes some of {ERROR_NAMES}, got {errors}")
        self.errors, self.unreported = tuple(errors), True

    def Robot(self, fci_hostname: str, relative_dynamics_factor: float = 1.0, **kwargs: Any) -> "Robot":  # noqa: N802
        if fci_hostname != self.host:
            raise NetworkException(REFUSED)
        return Robot(self, fci_hostname, relative_dynamics_factor)

    def Gripper(self, fci_hostname: str) -> "Gripper":  # noqa: N802
        if fci_hostname != self.host:
            raise NetworkException(REFUSED)
        return Gripper(self)


class Robot:
    """``franky.Robot`` over the simulated arm."""

    def __init__(self, controller: FrankyStandIn, fci_hostname: str, relative_dynamics_factor: float):
        self._c = controller
        self.fci_hostname = fci_hostname
        self.relative_dynamics_factor = relative_dynamics_factor

    @property
    def current_pose(self) -> RobotPose:
        position, rotation = self._c.servo.tcp()
        return RobotPose(Affine(position, rotation.as_quat()))

    @property
    def current_cartesian_state(self) -> CartesianState:
        return CartesianState(self.current_pose)

    @property
    def current_joint_state(self) -> JointState:
        return JointState(*self._c.servo.joints())

    @property
    def has_errors(self) -> bool:
        return bool(self._c.errors)

    @property
    def state(self) -> RobotState:
        errors = Errors(self._c.errors)
        return RobotState(errors, errors, RobotMode.Reflex if self._c.errors else RobotMode.Idle)

    def move(self, motion: Any, asynchronous: bool = False, limit_rate: bool = False,
             cutoff_frequency: float = 100.0) -> None:  # fmt: skip
        if self._c.errors:
            if self._c.unreported:
                self._c.unreported = False
                errors = Errors(self._c.errors)
                raise ControlException(f"libfranka: Move command aborted: motion aborted by reflex! {errors}")
            raise ControlException("libfranka: Move command rejected: command not possible in the current mode")
        if isinstance(motion, JointMotion):
            self._c.servo.move_joints(motion.target.position)
            return
        if not isinstance(motion, CartesianMotion):
            raise TypeError(f"the franky stand-in runs CartesianMotion and JointMotion, not {type(motion).__name__}")
        target = motion.target.pose.end_effector_pose
        if motion.reference_type == ReferenceType.Relative:
            target = self.current_pose.end_effector_pose * target
        self._c.servo.servo_to(target.translation, Rotation.from_quat(target.quaternion))
        self._c.motions += 1

    def join_motion(self, timeout: float | None = None) -> bool:
        return True

    def poll_motion(self) -> bool:
        return False

    def stop(self) -> None:
        pass

    def recover_from_errors(self) -> bool:
        self._c.errors, self._c.unreported = (), False
        return True


class Gripper:
    """``franky.Gripper`` over the scene's gripper: widths in metres."""

    def __init__(self, controller: FrankyStandIn):
        self._c = controller
        self.max_width = controller.max_width

    @property
    def width(self) -> float:
        return (1.0 - self._c.servo.gripper_closed()) * self.max_width

    @property
    def is_grasped(self) -> bool:
        return self._c.servo.gripper_command > 0 and self.width > 0.002

    def move_async(self, width: float, speed: float) -> BoolFuture:
        self._c.servo.gripper_command = float(np.clip(1.0 - 2.0 * width / self.max_width, -1.0, 1.0))
        return BoolFuture(True)

    def grasp_async(self, width: float, speed: float, force: float, epsilon_inner: float = 0.005,
                    epsilon_outer: float = 0.005) -> BoolFuture:  # fmt: skip
        self._c.servo.gripper_command = 1.0
        return BoolFuture(True)

    def move(self, width: float, speed: float) -> bool:
        return self.move_async(width, speed).get()

    def grasp(self, width: float, speed: float, force: float, epsilon_inner: float = 0.005,
              epsilon_outer: float = 0.005) -> bool:  # fmt: skip
        return self.grasp_async(width, speed, force, epsilon_inner, epsilon_outer).get()

    def open(self, speed: float) -> bool:
        return self.move(self.max_width, speed)
