"""The simulated arm behind every vendor stand-in: absolute TCP targets in, one scene step out.

A vendor SDK takes absolute Cartesian targets; a :class:`sim.scene.SimScene` takes
end-effector deltas. :class:`SceneServo` joins them: :meth:`SceneServo.servo_to`
turns one absolute target (vendor base frame, SI units) into the scene's delta
action (target minus the TCP where it stands, rotation as a base-frame
axis-angle) and steps the physics one control period. The scene is *mounted* in
the vendor's base frame at ``mount`` (the scene origin's position there; axes
parallel), so drivers see realistic TCP coordinates and must convert them back.

A planar scene (push) has a TCP with a fixed height and the tool pointing down;
a target that leaves its plane or turns the tool is an error here, since the
simulated arm cannot follow it. The stand-ins keep the vendor's own
representations (units, faults, error codes); this class only simulates physics.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from hardware.arm import ActionLayout, ArmState, declared_joint_response
from hardware.drivers.pose import TOOL_DOWN, angle_between, rotation_delta
from robot.protocols import Observation
from robot.types import ACTION, STATE
from sim.scene import SimScene

PLANE_TOLERANCE_M = 0.002  # a planar target may be this far off the plane
TILT_TOLERANCE_RAD = 0.02  # ... and the tool this far from pointing down
PANDA_FINGER_SPAN = 0.08  # metres between Panda fingers when fully open (finger joints 0.04 each)


class SceneServo:
    """Servo a scene's end effector to absolute targets, one control period per command."""

    def __init__(self, scene: SimScene, mount: tuple[float, float, float] = (0.0, 0.0, 0.0)):
        self.scene = scene
        self.mount = np.asarray(mount, dtype=np.float64)
        self.layout = ActionLayout.ee_delta(scene.action_features[ACTION])
        state = scene.observation_features.get(STATE)
        self.state_names: tuple[str, ...] = tuple(state.names or ()) if state is not None else ()
        self.gripper_command = -1.0  # -1 open .. 1 closed; applied with the next step
        self.steps = 0  # physics steps since the last reset
        self.last_joint_target: np.ndarray | None = None  # the last joint-space move asked for
        self._cached: tuple[tuple[int, int], Observation] | None = None  # ((resets, steps), observation)
        self._resets = 0
        self._seeds = np.random.default_rng()

    # ---- the operator's side (hardware.drivers.cartesian.CellOperator) ----------------------

    def reset(self, seed: int | None) -> None:
        """Lay the scene out anew (objects, and the arm at the scene's home)."""
        self.scene.reset(int(self._seeds.integers(2**31 - 1)) if seed is None else int(seed))
        self.gripper_command = -1.0
        self.steps = 0
        self._resets += 1
        self._cached = None

    def close(self) -> None:
        self.scene.close()

    # ---- what the controller measures ------------------------------------------------------

    def tcp(self) -> tuple[np.ndarray, Rotation]:
        """TCP position (3,) in the vendor base frame (metres) and orientation."""
        position = np.asarray(self.scene.arm_state().ee_position, dtype=np.float64) + self.mount
        return position, self._orientation()

    def joints(self) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions (J,) and velocities (J,) of the simulated arm."""
        state = self.scene.arm_state()
        return np.asarray(state.joint_positions, np.float64), np.asarray(state.joint_velocities, np.float64)

    def joint_response(self, state: ArmState) -> np.ndarray | None:
        """The scene's joint response to end-effector motion (``hardware.arm.Arm``), when it declares one: the
        mount only shifts the frame, so motion maps to the joints as in the scene."""
        return declared_joint_response(self.scene, state)

    def gripper_closed(self) -> float:
        """Measured gripper closure, 0 open .. 1 closed: from the Panda finger joints when the scene
        reports them, otherwise the last command (a scene without a gripper)."""
        if "gripper_q0" in self.state_names and "gripper_q1" in self.state_names:
            state = self.observation()[STATE]
            span = float(state[self.state_names.index("gripper_q0")] - state[self.state_names.index("gripper_q1")])
            return float(np.clip(1.0 - span / PANDA_FINGER_SPAN, 0.0, 1.0))
        return (self.gripper_command + 1.0) / 2.0

    def observation(self) -> Observation:
        """The scene's own observation after the latest step (rendered once per step)."""
        key = (self._resets, self.steps)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.scene.observe())
        return self._cached[1]

    # ---- what the controller does -----------------------------------------------------------

    def servo_to(self, position: np.ndarray, rotation: Rotation) -> np.ndarray:
        """Step one control period toward the absolute target; return the scene action used."""
        target = np.asarray(position, dtype=np.float64) - self.mount
        here, orientation = self.tcp()
        here = here - self.mount
        action = np.zeros(self.layout.size, dtype=np.float64)
        driven = len(self.layout.translation)
        action[list(self.layout.translation)] = target[:driven] - here[:driven]
        if driven < 3 and np.any(np.abs(target[driven:] - here[driven:]) > PLANE_TOLERANCE_M):
            raise ValueError(
                f"stand-in {self.scene.name}: target {np.round(target, 4)} leaves the scene's plane "
                f"(the TCP stays at {np.round(here[driven:], 4)} on the undriven axes); this arm cannot follow it"
            )
        if self.layout.rotation:
            action[list(self.layout.rotation)] = rotation_delta(rotation, orientation)
        elif angle_between(rotation, orientation) > TILT_TOLERANCE_RAD:
            raise ValueError(
                f"stand-in {self.scene.name}: target turns the tool by {angle_between(rotation, orientation):.3f} rad; "
                "the scene's tool cannot turn"
            )
        if self.layout.gripper is not None:
            action[self.layout.gripper] = self.gripper_command
        self.scene.step(action.astype(np.float32))
        self.steps += 1
        return action

    def move_joints(self, joints: np.ndarray) -> None:
        """A joint-space move (home). The simulated arm cannot follow joint targets: the move is recorded
        and completes at once; the operator's :meth:`reset` puts the arm at the scene's home."""
        self.last_joint_target = np.asarray(joints, dtype=np.float64)

    def _orientation(self) -> Rotation:
        """The scene's TCP orientation (its ``eef_q*`` state entries), or the tool pointing down."""
        names = ("eef_qw", "eef_qx", "eef_qy", "eef_qz")
        if all(n in self.state_names for n in names):
            state = self.observation()[STATE]
            w, x, y, z = (float(state[self.state_names.index(n)]) for n in names)
            return Rotation.from_quat([x, y, z, w])
        return TOOL_DOWN
