"""A scripted expert for robosuite's Door (``robosuite:Door:<Robot>``): press the lever down, drag the door open.

robosuite's Door is latched: a lever handle on a spring-loaded latch (``Door_latch``, which turns about the door's
normal) must be turned about a radian before the door swings (its hinge opens to 0.4 rad; success is 0.3). The
expert reads the latch body's pose from ``observation.state`` (``obj_pos``/``obj_quat``, base frame) and derives
the rest from the door's model (``door_lock.xml``): the lever runs along the latch's x axis, 10 cm in front of the
door, and the hinge stands 43 cm along the door from the latch's axis. With the gripper closed and pointing down
(leant ``pitch`` for an arm that needs it), it:

1. ``approach``: rises if it starts below the lever, then goes 8 cm above a point of the lever 11 cm from its axis;
2. ``press``: pushes that point of the lever down its arc about the latch axis to :data:`TURN` rad, aiming a few cm
   into the lever's top face (the pressing force is the OSC's stiffness times that);
3. ``drag``: keeps pressing and swings its target round the hinge toward the robot; friction carries the door.

Grasping the lever instead needed a radian of wrist tilt to turn it, which the IIWA's and Kinova3's wrists could
not give, and an open 2F-140 touched the door with its far finger. Held straight down, the UR5e's hand put its
wrist 1 over the lever, 5 cm in front of the door, and its forearm struck the panel's top edge (docs/RESULTS.md);
leant back (:data:`PITCH`) it reaches. ``noise`` adds i.i.d. jitter and pauses as the pick expert's does; the Door
expert has no styles but ``iid``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from robot.protocols import Observation
from robot.types import STATE

PRESS_POINT = (0.11, -0.10, 0.035)
"""Where the fingertips first touch, in the latch's frame: 11 cm along the lever from its axis (which is 15 cm long),
just above its top face (the lever is 4 cm tall and stands 10 cm in front of the door)."""
HINGE_FROM_LATCH = 0.43
"""Metres from the latch's axis to the hinge, along the door (door_lock.xml: 0.255 + 0.175)."""
TURN = 1.2
"""Radians the lever is turned down: the latch clears the frame past about one radian; the joint stops at 1.57."""
Z = np.array([0.0, 0.0, 1.0])
PITCH = {"IIWA": 0.5, "UR5e": 0.45}
""":attr:`DoorExpertConfig.pitch` per robosuite arm (0 for the others); 0.5 took the IIWA from 0/3 to 3/3 episodes, and
the UR5e from 4/50 to 50/50 (0.3, 0.45 and 0.6 all 50/50): its wrist then stands back from the door and its forearm
clears the panel's top edge."""


@dataclass(frozen=True)
class DoorExpertConfig:
    """Gains, limits and noise of the door expert."""

    max_step: tuple[float, ...]
    """Per-dimension action bound (the scene's ``limits.max_step``)."""
    hover: float = 0.08
    """Approach height above the press point."""
    press_back: float = 0.0
    """Metres toward the robot from the lever's middle the fingertips press."""
    push: float = 0.04
    """How far into the lever's top face the targets lie while pressing and dragging: the OSC's stiffness times it is
    the pressing force, which holds the lever down and drags the door by friction."""
    gain: float = 2.0
    rot_gain: float = 1.0
    pitch: float = 0.0
    """Radians the fingers lean back toward the robot: the wrist then stands farther out and lower, unfolding an elbow
    that reaches its limit over the lever (the IIWA with a 2F-140 folds joint 4 to within 0.03 rad of it)."""
    approach_turn: float = 0.15
    """Largest rotation command (rad) while approaching: turning the hand at the OSC's full rate drags it about."""
    turn_step: float = 0.3
    """Radians the press's target runs ahead of the lever's measured angle."""
    pull_step: float = 0.15
    """Radians about the hinge the drag's target runs ahead of the hand."""
    noise: float = 0.0

    def __post_init__(self) -> None:
        if len(self.max_step) < 7 or any(s <= 0 for s in self.max_step):
            raise ValueError(f"DoorExpertConfig.max_step needs 7 positive bounds (dx..drz, gripper), got {self.max_step}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"expert noise must be in [0, 1], got {self.noise}; 0 is the clean expert")


class DoorExpert:
    """Phase-by-phase door opener on privileged state (see the module docstring)."""

    def __init__(self, fields: dict[str, slice], config: DoorExpertConfig, seed: int | None = None):
        missing = {"eef_pos", "eef_quat", "obj_pos", "obj_quat"} - set(fields)
        if missing:
            raise ValueError(f"DoorExpert needs state fields {sorted(missing)} that the scene does not declare")
        self.fields, self.config = dict(fields), config
        self._rng = np.random.default_rng(seed)
        self._max = np.asarray(config.max_step[:7], dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self._steps = 0
        self._grip = -1.0
        self._pause = 0
        self._hand: Rotation | None = None  # fingers straight down, all episode
        self._axis0 = np.zeros(3)  # the latch axis (door normal, into the door) when the press starts
        self._press = np.zeros(3)  # latch axis point to press point when the press starts, base frame
        self.episode_style: dict[str, float | str] = {}

    def act(self, observation: Observation) -> np.ndarray:
        """One action ``(dx, dy, dz, drx, dry, drz, gripper)`` in metres / radians, base frame."""
        state = np.asarray(observation[STATE], dtype=np.float64)
        eef = state[self.fields["eef_pos"]]
        current = Rotation.from_quat(state[self.fields["eef_quat"]], scalar_first=True)
        latch = state[self.fields["obj_pos"]]
        frame = Rotation.from_quat(state[self.fields["obj_quat"]], scalar_first=True).as_matrix()
        noise = self.config.noise
        if self._pause > 0 or (noise > 0 and self._rng.random() < 0.05 * noise):
            self._pause = self._pause - 1 if self._pause > 0 else int(self._rng.integers(3, 10))
            return self._action(np.zeros(6))
        target, rotation = self._plan(eef, current, latch, frame)
        self._steps += 1
        c = self.config
        error = (rotation * current.inv()).as_rotvec()
        turn = c.approach_turn if self.phase == "approach" else float(np.min(self._max[3:6]))
        motion = np.concatenate([_shrink(c.gain * (target - eef), float(np.min(self._max[:3]))), _shrink(c.rot_gain * error, turn)])
        if noise > 0:
            motion += self._rng.normal(0.0, 1.0, 6) * np.repeat([0.015 * noise, 0.05 * noise], 3)
        return self._action(motion)

    # ---- internals ----------------------------------------------------------------

    def _plan(self, eef: np.ndarray, current: Rotation, latch: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, Rotation]:
        """Advance the phase when its goal is reached; the end effector's target position (3,) and orientation."""
        c = self.config
        axis = _horizontal(frame[:, 1])  # the latch's axis: the door's normal, pointing into the door
        along = np.cross(axis, Z)  # the door's in-plane horizontal direction (the lever's at angle 0)
        lever = frame[:, 0]
        angle = math.atan2(-lever @ Z, lever @ along)  # the lever's turn, positive = its tip down
        if self._hand is None:
            self._hand = self._orientation(current, along)
        self._grip = 1.0  # a closed hand: its fingertips press
        if self.phase == "approach":
            press = latch + frame @ np.asarray(PRESS_POINT) - c.press_back * axis
            target = press + [0.0, 0.0, c.hover]
            if eef[2] < press[2] + c.hover / 2:  # below the lever: rise first rather than strike it from beneath
                target = np.array([eef[0], eef[1], target[2]])
            aligned = np.linalg.norm((self._hand * current.inv()).as_rotvec()) < 0.1
            if _near(eef, target, 0.015) and aligned or self._steps > 100:
                self._axis0, self._press = axis, press - latch
                self._enter("press")
            return target, self._hand
        if self.phase == "press":  # push the lever's top down its arc about the latch axis
            goal = min(TURN, max(angle, 0.0) + c.turn_step)
            if angle > TURN - 0.1 or self._steps > 60:
                self._enter("drag")
            return latch + Rotation.from_rotvec(goal * self._axis0).apply(self._press) - c.push * _top(frame), self._hand
        # drag: keep pressing the lever down and swing the door round its hinge toward the robot by friction
        hinge = latch + HINGE_FROM_LATCH * along
        arm = eef - hinge
        toward_robot = 1.0 if np.cross(Z, arm) @ -axis > 0 else -1.0
        swung = hinge + Rotation.from_rotvec(toward_robot * c.pull_step * Z).apply(arm)
        return swung - c.push * _top(frame), self._hand

    def _orientation(self, current: Rotation, along: np.ndarray) -> Rotation:
        """The home orientation straightened to point straight down, then leant ``pitch`` about the lever's direction."""
        approach = int(np.argmin(current.as_matrix()[2]))  # the hand's axis pointing most downward
        fix, _ = Rotation.align_vectors([[0.0, 0.0, -1.0]], [current.as_matrix()[:, approach]])
        return Rotation.from_rotvec(self.config.pitch * along) * fix * current

    def _enter(self, phase: str) -> None:
        self.phase, self._steps = phase, 0

    def _action(self, motion: np.ndarray) -> np.ndarray:
        return np.clip(np.append(motion, self._grip), -self._max, self._max).astype(np.float32)


def door_expert(scene, noise: float, seed: int | None, style: str = "iid") -> DoorExpert:
    """The door expert for a robosuite Door scene."""
    from sim.scene import check_expert_style

    if check_expert_style(style) != "iid":
        raise ValueError(f"task {scene.name}'s expert has only the iid style (noise); got style {style!r}")
    config = DoorExpertConfig(max_step=scene.limits.max_step, pitch=PITCH.get(scene.config.robot, 0.0), noise=noise)
    return DoorExpert(scene.state_fields, config, seed)


def _top(frame: np.ndarray) -> np.ndarray:
    """The lever's top face's outward normal: the latch frame's z."""
    return frame[:, 2]


def _horizontal(v: np.ndarray) -> np.ndarray:
    flat = np.array([v[0], v[1], 0.0])
    return flat / max(float(np.linalg.norm(flat)), 1e-9)


def _near(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    return bool(np.linalg.norm(a - b) < tolerance)


def _shrink(vector: np.ndarray, max_norm: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector if norm <= max_norm else vector * (max_norm / norm)
