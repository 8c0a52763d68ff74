"""The MuJoCo backend: a :class:`sim.scene.SimScene` seen as a raw :class:`hardware.arm.Arm`.

Wrap it in ``hardware.safety.SafeRobot`` (or use ``hardware.registry.make_robot``)
so simulated runs go through the very same safety layer as a real arm.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from hardware.arm import ActionLayout, ArmLimits, ArmState, action_feature, declared_joint_response
from robot.protocols import Observation
from robot.types import Feature
from sim.scene import SimScene

OPEN_GRIPPER = -1.0  # scene convention: -1 open .. 1 closed; a reset scene starts open


class MujocoArm:
    """Drives a simulated scene: :meth:`apply` is one ``scene.step``.

    :meth:`disconnect` only stops commands (the scene stays usable, so the arm
    can reconnect); :meth:`close` also releases the scene (renderers, robosuite).

    :meth:`hold` keeps the end-effector position it had when the hold began:
    delta controllers re-base on the current pose every step, so plain zero
    deltas let small tracking errors add up (a robosuite UR5e creeps ~4 mm/s). A ``direct`` layout
    (a gymnasium env's own actions) holds with zeros and the last gripper command.
    """

    def __init__(self, scene: SimScene):
        self.scene = scene
        self.name = f"sim:{scene.name}"
        self.fps = float(scene.fps)
        self._layout = ActionLayout.of_scene(action_feature(self))
        self._gripper = OPEN_GRIPPER
        self._held_at: np.ndarray | None = None  # EE position latched by the first of a run of holds
        self._connected = False
        self._closed = False
        self._seeds = np.random.default_rng()

    @property
    def observation_features(self) -> Mapping[str, Feature]:
        return self.scene.observation_features

    @property
    def action_features(self) -> Mapping[str, Feature]:
        return self.scene.action_features

    @property
    def limits(self) -> ArmLimits:
        return self.scene.limits

    @property
    def joint_names(self) -> tuple[str, ...] | None:
        """The scene's arm joint names (what safety warnings call joints), when it declares them."""
        names = getattr(self.scene, "joint_names", None)
        return tuple(names) if names is not None else None

    @property
    def layout(self) -> ActionLayout:
        return self._layout

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"arm {self.name} was closed (its scene released); make a new one with hardware.registry.make_robot",
            )
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    def close(self) -> None:
        """Disconnect and release the scene's resources (once; later calls do nothing)."""
        self.disconnect()
        if not self._closed:
            self._closed = True
            self.scene.close()

    def reset(self, seed: int | None = None) -> Observation:
        self._require_connected()
        self.scene.reset(int(self._seeds.integers(2**31 - 1)) if seed is None else int(seed))
        self._gripper = OPEN_GRIPPER
        self._held_at = None
        return self.scene.observe()

    def get_observation(self) -> Observation:
        self._require_connected()
        return self.scene.observe()

    def arm_state(self) -> ArmState:
        return self.scene.arm_state()

    def joint_response(self, state: ArmState) -> np.ndarray | None:
        """The scene's joint response to end-effector motion (``hardware.arm.Arm``), when it declares one."""
        return declared_joint_response(self.scene, state)

    def apply(self, action: np.ndarray) -> None:
        self._require_connected()
        self.scene.step(action)
        self._held_at = None
        if self._layout.gripper is not None:
            self._gripper = float(action[self._layout.gripper])

    def hold(self) -> np.ndarray:
        """One scene step back toward the latched EE position (zero rotation, last gripper command)."""
        self._require_connected()
        idx = list(self._layout.translation)
        ee = np.asarray(self.scene.arm_state().ee_position, dtype=np.float64)[: len(idx)]
        if self._held_at is None:
            self._held_at = ee
        step = np.asarray(self.scene.limits.max_step, dtype=np.float64)[idx]
        action = np.zeros(self._layout.size, dtype=np.float32)
        action[idx] = np.clip(self._held_at - ee, -step, step)
        if self._layout.gripper is not None:
            action[self._layout.gripper] = self._gripper
        self.scene.step(action)
        return action

    def _require_connected(self) -> None:
        if not self._connected:
            raise RuntimeError(f"arm {self.name} is not connected; call connect() first (or use `with robot:`)")
