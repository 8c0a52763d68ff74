"""The driver-side contract every arm backend implements: MuJoCo now, UR/Franka/xArm later.

An :class:`Arm` is raw: :meth:`Arm.apply` forwards whatever it is given. Nothing
reaches an arm except through ``hardware.safety.SafeRobot``, which turns an
``Arm`` into a ``robot.protocols.Robot`` by adding the checks (workspace box,
max step, joint and velocity limits, NaN rejection, watchdog, e-stop) and the
observation timestamp.

``ArmState`` and ``ArmLimits`` are defined in :mod:`sim.scene` (scenes declare
them) and re-exported here so drivers import everything from one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Protocol, runtime_checkable

import numpy as np

from robot.protocols import Observation
from robot.types import ACTION, ArmLimits, ArmState, Feature

__all__ = ["ActionLayout", "Arm", "ArmLimits", "ArmState", "declared_joint_response"]

_TRANSLATION_NAMES = (("dx", "dy", "dz"), ("x", "y", "z"))
_ROTATION_NAMES = (("drx", "dry", "drz"), ("rx", "ry", "rz"), ("droll", "dpitch", "dyaw"), ("roll", "pitch", "yaw"))


@dataclass(frozen=True)
class ActionLayout:
    """Which entries of the action vector do what, so the safety layer can clamp them.

    ``mode="ee_delta"``: ``translation`` holds the action indices of the end-effector
    position deltas along x, y (and z), ``rotation`` those of the axis-angle rotation
    delta. ``mode="joint_position"``: ``joints`` holds the action index of each
    joint's absolute target, in the order of ``ArmState.joint_positions``.
    ``mode="direct"``: entries the arm applies as they are (a gymnasium env's own actions, a
    torque): the safety layer bounds them and rejects NaN, and its watchdog and e-stop hold,
    but there is no end effector or joint target to guard.
    ``gripper`` is the index of the gripper command (-1 open .. 1 closed), if any.
    """

    mode: Literal["ee_delta", "joint_position", "direct"]
    size: int
    translation: tuple[int, ...] = ()
    rotation: tuple[int, ...] = ()
    joints: tuple[int, ...] = ()
    gripper: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("ee_delta", "joint_position", "direct"):
            raise ValueError(f"action layout mode {self.mode!r} is unknown; use 'ee_delta', 'joint_position' or 'direct'")
        used = [*self.translation, *self.rotation, *self.joints, *([] if self.gripper is None else [self.gripper])]
        if len(set(used)) != len(used) or any(not 0 <= i < self.size for i in used):
            raise ValueError(f"action layout indices {used} must be distinct and within [0, {self.size})")
        if self.mode == "ee_delta" and not 1 <= len(self.translation) <= 3:
            raise ValueError(f"an ee_delta layout needs 1-3 translation indices, got {self.translation}")
        if self.mode == "joint_position" and not self.joints:
            raise ValueError("a joint_position layout needs the action index of every joint in `joints`")
        if self.mode == "direct" and (self.translation or self.rotation or self.joints):
            raise ValueError("a direct layout has no translation, rotation or joint indices (only an optional gripper)")

    @property
    def motion(self) -> tuple[int, ...]:
        """Indices that move the arm (everything but the gripper)."""
        return (*self.translation, *self.rotation, *self.joints)

    @staticmethod
    def ee_delta(feature: Feature) -> "ActionLayout":
        """The :mod:`sim.scene` convention, read from the action feature.

        Names win when they spell the layout (``dx dy dz``, ``rx ry rz``,
        ``gripper``); otherwise a 2-vector is planar ``(dx, dy)``, a 3- or 4-vector
        is ``(dx, dy, dz[, gripper])`` and a 6- or 7-vector is
        ``(dx, dy, dz, rx, ry, rz[, gripper])``.
        """
        if len(feature.shape) != 1:
            raise ValueError(f"an action must be a vector, got {feature.describe()}")
        size = feature.shape[0]
        names = tuple(n.lower() for n in feature.names) if feature.names else ()
        if names:
            translation = _indices(names, _TRANSLATION_NAMES)
            if translation:
                return ActionLayout(
                    "ee_delta",
                    size,
                    translation=translation,
                    rotation=_indices(names, _ROTATION_NAMES),
                    gripper=names.index("gripper") if "gripper" in names else None,
                )
        by_size = {
            2: ((0, 1), (), None),
            3: ((0, 1, 2), (), None),
            4: ((0, 1, 2), (), 3),
            6: ((0, 1, 2), (3, 4, 5), None),
            7: ((0, 1, 2), (3, 4, 5), 6),
        }
        if size not in by_size:
            raise ValueError(
                f"cannot tell the layout of a {size}-D end-effector action without names; "
                "name its entries (dx, dy, dz, rx, ry, rz, gripper) in the action feature"
            )
        translation, rotation, gripper = by_size[size]
        return ActionLayout("ee_delta", size, translation=translation, rotation=rotation, gripper=gripper)

    @staticmethod
    def of_scene(feature: Feature) -> "ActionLayout":
        """A simulated scene's layout: :meth:`ee_delta` unless the entries are named and no name is a
        translation (``dx``, ``x``...); then ``direct`` (a gymnasium env's ``a0 a1 ...``, a torque)."""
        names = tuple(n.lower() for n in feature.names) if feature.names else ()
        if len(feature.shape) == 1 and names and not _indices(names, _TRANSLATION_NAMES):
            return ActionLayout("direct", feature.shape[0], gripper=names.index("gripper") if "gripper" in names else None)
        return ActionLayout.ee_delta(feature)


def _indices(names: tuple[str, ...], vocabularies: tuple[tuple[str, ...], ...]) -> tuple[int, ...]:
    """Indices of the longest prefix of a vocabulary (``dx``, ``dx dy``, ``dx dy dz``) found in ``names``."""
    for words in vocabularies:
        found: list[int] = []
        for word in words:
            if word not in names:
                break
            found.append(names.index(word))
        if found:
            return tuple(found)
    return ()


@runtime_checkable
class Arm(Protocol):
    """A raw arm driver. Unchecked: only ``SafeRobot`` calls :meth:`apply`.

    ``observation_features``, ``action_features``, ``limits`` and ``layout`` are
    readable before :meth:`connect`. Observations carry no timestamp (the safety
    layer adds it). ``fps`` is the control rate the driver expects commands at.
    """

    name: str
    fps: float

    @property
    def observation_features(self) -> Mapping[str, Feature]: ...

    @property
    def action_features(self) -> Mapping[str, Feature]: ...

    @property
    def limits(self) -> ArmLimits: ...

    @property
    def layout(self) -> ActionLayout: ...

    @property
    def is_connected(self) -> bool: ...

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def reset(self, seed: int | None = None) -> Observation:
        """Sim: a new initial state drawn from ``seed``. Real: move home."""
        ...

    def get_observation(self) -> Observation: ...

    def arm_state(self) -> ArmState: ...

    def apply(self, action: np.ndarray) -> None:
        """Send one command as is (no checks)."""
        ...

    def hold(self) -> np.ndarray:
        """Keep the current pose for one control period; return the equivalent action.

        End-effector delta arms: stay where the run of holds began (zero motion,
        or the small correction back to it) with the last gripper command.
        Joint-position arms: the current joint positions as targets.
        """
        ...

    # Optional: ``joint_response(state: ArmState) -> np.ndarray | None``, how far each joint moves per unit of each
    # motion entry of an end-effector delta command near ``state`` (shape (joints, len(layout.motion)); a Cartesian
    # gantry's is the identity). With it the joint-limit guard removes exactly the motion that drives a joint
    # inside its margin further in; without it (or on None) the guard learns from the arm's own motion
    # (``hardware.safety``).


def declared_joint_response(owner: object, state: ArmState) -> np.ndarray | None:
    """``owner.joint_response(state)`` (an arm's, a scene's, a stand-in's servo's: see :class:`Arm`), or None when it
    declares none."""
    response = getattr(owner, "joint_response", None)
    return None if response is None else response(state)


def action_feature(arm: Arm) -> Feature:
    """The arm's ``"action"`` feature, or a clear error when it declares none."""
    feature = arm.action_features.get(ACTION)
    if feature is None:
        raise ValueError(f"arm {arm.name} declares no {ACTION!r} feature (it has {sorted(arm.action_features)})")
    return feature
