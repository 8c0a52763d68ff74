"""The body every end-effector-delta driver shares; a vendor subclass supplies only the SDK calls.

:class:`CartesianArm` implements the :class:`hardware.arm.Arm` protocol for a real
arm servoed in Cartesian space. Per command it reads the arm's TCP pose, adds the
action's deltas (translation in metres, rotation as a base-frame axis-angle, the
kit's scene convention) and sends the resulting absolute target through the
vendor's servo interface; axes the action does not drive (z and orientation of a
planar task) stay at the pose latched at the last reset. Observations are
assembled by name (:mod:`hardware.drivers.signals`): the driver's proprio signals
(``eef_x..eef_z``, ``eef_qw..eef_qz``, ``joint_<i>``, ``gripper``), those of extra
sources (trackers), and one image per camera.

A vendor subclass implements the hooks ``_open``, ``_close``, ``_read``,
``_servo``, ``_grip``, ``_move_home``, ``_fault`` and ``_recover``
(:mod:`hardware.drivers.contract` holds what they exchange). It reports an
unreachable controller as ``ArmUnreachableError`` and a stopped arm as
``ArmFaultError``, each naming the host, what failed and how to fix it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Mapping, Protocol, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from hardware.arm import ActionLayout, ArmLimits, ArmState, declared_joint_response
from hardware.cameras import Camera
from hardware.drivers.contract import ArmReading, CartesianConfig
from hardware.drivers.pose import quaternion_wxyz, rotated
from hardware.drivers.signals import SignalSource, StateLayout
from robot.protocols import Observation
from robot.types import ACTION, STATE, Feature, image_key


class CellOperator(Protocol):
    """Whoever lays the cell out between episodes: a stand-in's simulated scene; ``None`` on a real cell.

    Optional: ``joint_response(state)``, the simulated arm's joint motion per unit of commanded motion
    (``hardware.arm.Arm``), which a stand-in's driver hands to the safety layer."""

    def reset(self, seed: int | None) -> None: ...

    def close(self) -> None: ...


class CartesianArm(ABC):
    """An end-effector-delta :class:`hardware.arm.Arm` over a vendor SDK (see the module docstring).

    ``sources`` publish extra state signals (trackers), ``cameras`` publish
    images, ``operator`` lays the cell out on reset (a stand-in's scene).
    """

    def __init__(
        self,
        config: CartesianConfig,
        *,
        sources: Sequence[SignalSource] = (),
        cameras: Sequence[Camera] = (),
        operator: CellOperator | None = None,
    ):
        self.config = config
        self.name = config.name
        self.fps = float(config.fps)
        self._layout = config.layout
        self._sources = {s.name: s for s in sources}
        self._cameras = tuple(cameras)
        self._operator = operator
        for kind, names in (("source", [s.name for s in sources]), ("camera", [c.name for c in cameras])):
            if len(set(names)) != len(names) or self.name in names:
                raise ValueError(f"{self.name}: {kind} names {names} must be distinct and differ from the arm's")
        step = config.step_bounds
        self._action = Feature((len(step),), "float32", names=config.action_names,
                               low=tuple(-s for s in step), high=step)  # fmt: skip
        self._limits = ArmLimits(
            workspace_low=config.workspace_low, workspace_high=config.workspace_high, max_step=step,
            joint_low=config.joint_low, joint_high=config.joint_high,
            max_joint_velocity=config.max_joint_velocity,
        )  # fmt: skip
        offered = {self.name: self.proprio_names, **{n: tuple(s.signal_names) for n, s in self._sources.items()}}
        names = config.state_names
        if names is None:
            names = tuple(dict.fromkeys(n for signals in offered.values() for n in signals))
        self._state = StateLayout.resolve(tuple(names), offered, config.state_aliases)
        self._origin = np.asarray(config.task_origin, dtype=np.float64)
        self._connected = False
        self._fixed: tuple[np.ndarray, Rotation] | None = None  # pose the undriven axes keep (connect, reset)
        self._quat_ref: np.ndarray | None = None  # quaternion sign reference (home orientation)
        self._held_at: np.ndarray | None = None  # (3,) TCP position latched by the first of a run of holds
        self._gripper_command = -1.0
        self.frame_times: dict[str, float] = {}  # camera -> monotonic stamp of the frame last observed

    # ---- features ------------------------------------------------------------------------

    @property
    def proprio_names(self) -> tuple[str, ...]:
        """The state signals the arm itself publishes."""
        names = ("eef_x", "eef_y", "eef_z", "eef_qw", "eef_qx", "eef_qy", "eef_qz")
        names += tuple(f"joint_{i}" for i in range(len(self.config.home_joints)))
        if self._layout.gripper is not None:
            names += ("gripper",) + self._gripper_signals()
        return names

    def _gripper_signals(self) -> tuple[str, ...]:
        """Vendor-specific gripper signals the subclass adds to ``ArmReading.extra``."""
        return ()

    @property
    def observation_features(self) -> Mapping[str, Feature]:
        features: dict[str, Feature] = {}
        if self._state.names:
            features[STATE] = Feature((len(self._state.names),), "float32", names=self._state.names)
        features.update({image_key(c.name): c.feature for c in self._cameras})
        return features

    @property
    def action_features(self) -> Mapping[str, Feature]:
        return {ACTION: self._action}

    @property
    def limits(self) -> ArmLimits:
        return self._limits

    @property
    def layout(self) -> ActionLayout:
        return self._layout

    @property
    def is_connected(self) -> bool:
        return self._connected

    # ---- lifecycle -------------------------------------------------------------------------

    def connect(self) -> None:
        if self._connected:
            return
        self._open()
        opened: list[SignalSource | Camera] = []
        try:
            for device in (*self._sources.values(), *self._cameras):
                device.connect()
                opened.append(device)
            reading = self._read()
        except BaseException:
            for device in reversed(opened):
                device.disconnect()
            self._close()
            raise
        self._latch_home(reading)
        self._connected = True

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        for device in (*self._cameras, *self._sources.values()):
            device.disconnect()
        self._close()

    def close(self) -> None:
        """Disconnect and let the operator (a stand-in's scene) release its resources."""
        self.disconnect()
        if self._operator is not None:
            self._operator.close()

    def reset(self, seed: int | None = None) -> Observation:
        """Move home (a stand-in's operator first lays the scene out anew from ``seed``), open the gripper."""
        self._require_connected()
        if self._operator is not None:
            self._operator.reset(seed)
        self._move_home()
        if self._layout.gripper is not None:
            self._gripper_command = -1.0
            self._grip(-1.0, force=True)
        self._latch_home(self._read())
        return self.get_observation()

    def recover(self) -> None:
        """Clear a fault the arm reported (after the cause is fixed), then call reset()."""
        self._require_connected()
        self._recover()
        self._held_at = None

    # ---- observation -------------------------------------------------------------------------

    def get_observation(self) -> Observation:
        self._require_connected()
        readings: dict[str, Mapping[str, float]] = {}
        for provider in self._state.needed:
            source = self._sources.get(provider)
            readings[provider] = source.read() if source is not None else self._proprio(self._read())
        obs: Observation = {}
        if self._state.names:
            obs[STATE] = self._state.assemble(readings)
        for camera in self._cameras:
            frame = camera.read()
            self.frame_times[camera.name] = frame.timestamp
            obs[image_key(camera.name)] = frame.image
        return obs

    def joint_response(self, state: ArmState) -> np.ndarray | None:
        """Joint motion per unit of commanded motion (``hardware.arm.Arm``): the stand-in's scene knows it; on a real
        cell no vendor SDK's Jacobian is wired in yet, so None, and the joint-limit guard learns from the arm's motion."""
        return declared_joint_response(self._operator, state)

    def arm_state(self) -> ArmState:
        reading = self._read()
        return ArmState(
            ee_position=reading.position - self._origin,
            joint_positions=np.asarray(reading.joints, dtype=np.float64),
            joint_velocities=np.asarray(reading.joint_velocities, dtype=np.float64),
        )

    def _proprio(self, reading: ArmReading) -> dict[str, float]:
        position = reading.position - self._origin
        quat = quaternion_wxyz(reading.rotation, self._quat_ref)
        signals = dict(zip(("eef_x", "eef_y", "eef_z"), position.tolist()))
        signals.update(zip(("eef_qw", "eef_qx", "eef_qy", "eef_qz"), quat.tolist()))
        signals.update((f"joint_{i}", float(q)) for i, q in enumerate(reading.joints))
        if self._layout.gripper is not None:
            signals["gripper"] = float(reading.gripper if reading.gripper is not None else math.nan)
        signals.update(reading.extra)
        return signals

    # ---- commands -------------------------------------------------------------------------

    def apply(self, action: np.ndarray) -> None:
        """Send the target ``TCP pose + action deltas`` (and the gripper command) as is."""
        self._require_connected()
        self._send(self._read(), np.asarray(action, dtype=np.float64))
        self._held_at = None

    def hold(self) -> np.ndarray:
        """Step back toward the position latched by the first of a run of holds (within the max step),
        keeping the orientation and the last gripper command, as the sim backend does; return that action.

        A faulted arm is already stopped by its controller: the hold then sends nothing.
        """
        self._require_connected()
        reading = self._read()
        if self._held_at is None:
            self._held_at = reading.position.copy()
        idx = list(self._layout.translation)
        step = np.asarray(self._limits.max_step)[idx]
        action = np.zeros(self._layout.size, dtype=np.float64)
        action[idx] = np.clip(self._held_at[: len(idx)] - reading.position[: len(idx)], -step, step)
        if self._layout.gripper is not None:
            action[self._layout.gripper] = self._gripper_command
        if self._fault() is None:
            self._send(reading, action)
        return action.astype(np.float32)

    def _send(self, reading: ArmReading, action: np.ndarray) -> None:
        """Servo to the measured pose moved by ``action``'s deltas; undriven axes keep the home pose."""
        position, rotation = self._driven_pose(reading.position, reading.rotation)
        position[: len(self._layout.translation)] += action[list(self._layout.translation)]
        if self._layout.rotation:
            rotation = rotated(action[list(self._layout.rotation)], rotation)
        if self._layout.gripper is not None:
            self._gripper_command = float(action[self._layout.gripper])
            self._grip(self._gripper_command, force=False)
        self._servo(position, rotation)

    def _driven_pose(self, position: np.ndarray, rotation: Rotation) -> tuple[np.ndarray, Rotation]:
        """The measured pose with the axes the action does not drive put back to the latched home pose."""
        assert self._fixed is not None  # latched on connect
        fixed_position, fixed_rotation = self._fixed
        driven = np.array(fixed_position, dtype=np.float64)
        n = len(self._layout.translation)
        driven[:n] = position[:n]
        return driven, (rotation if self._layout.rotation else fixed_rotation)

    def _latch_home(self, reading: ArmReading) -> None:
        self._fixed = (np.array(reading.position, dtype=np.float64), reading.rotation)
        self._quat_ref = quaternion_wxyz(reading.rotation)
        self._held_at = None

    def _require_connected(self) -> None:
        if not self._connected:
            raise RuntimeError(f"arm {self.name} is not connected; call connect() first (or use `with robot:`)")

    # ---- vendor hooks ------------------------------------------------------------------------

    @abstractmethod
    def _open(self) -> None:
        """Connect to the controller and make it ready to servo; ArmUnreachableError when it cannot."""

    @abstractmethod
    def _close(self) -> None:
        """Stop servoing and close the connections."""

    @abstractmethod
    def _read(self) -> ArmReading:
        """TCP pose, joints and gripper in SI units, base frame."""

    @abstractmethod
    def _servo(self, position: np.ndarray, rotation: Rotation) -> None:
        """Send one absolute TCP target (base frame); ArmFaultError when the arm refuses it."""

    @abstractmethod
    def _grip(self, command: float, force: bool) -> None:
        """Gripper command in [-1 open, 1 closed]; skip it when unchanged unless ``force``."""

    @abstractmethod
    def _move_home(self) -> None:
        """Move to ``config.home_joints`` and come back ready to servo (blocking)."""

    @abstractmethod
    def _fault(self) -> str | None:
        """What stops the arm right now (named codes and how to clear them), or None."""

    @abstractmethod
    def _recover(self) -> None:
        """Clear the fault through the SDK and get ready to servo again."""

