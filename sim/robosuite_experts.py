"""Scripted pick (and place) experts that stand in for a teleoperator in robosuite scenes.

The expert reads privileged state from ``observation.state`` (end-effector and
object pose in the robot base frame, located through the scene's
``state_fields``) and servos the end effector through a fixed sequence of phases:
approach above the object, descend, close, lift, and for pick-and-place carry
to the target, lower, release and retreat. It holds the gripper pointing
straight down; for boxes it also turns the fingers to the object's faces.

``noise`` in [0, 1] makes it a sloppy operator: jittery motion, pauses, and in
up to ``0.8 * noise`` of the episodes a grasp that misses (aimed 3-4.5 cm to the
side, or closed 4-6 cm too high), so demonstrations include failures.

``style`` (``sim.scene.EXPERT_STYLES``) adds a systematic flaw, on top of ``noise``:

- ``iid``: none.
- ``hesitant``: approaches and descends slowly (20-40% of the clean command, drawn
  per episode) and now and then stands still for a step (10-20% of the steps,
  drawn per episode; never two in a row, see ``sim.push_expert``) in every phase
  but the timed close and release: long episodes. On can the slowest ones run
  into the approach's and descent's step limits (60, 40) and close the fingers
  before they are in place.
- ``biased``: aims its grasp at a fixed offset from the object's centre (away
  from the robot), so the fingers close off-centre and some grasps slip.
- ``mixed``: each episode draws a direct approach or a slow detour (up and out to
  the side first, at part speed), from the same states.

Each task's factory (``sim.robosuite_scenes``) scales the flaws to its arm and
object. Measured through the sim robot and its safety layer on seeds 0-19, one
fresh expert per seed, noise 0 (success; mean steps over all episodes, a failure
counting the limit):

| task (limit) | iid | hesitant | biased | mixed | direct | detour |
|---|---|---|---|---|---|---|
| lift (150) | 100%, 37 | 100%, 87 | 82%, 58 (40 seeds) | 100%, 52 | 100%, 37 | 100%, 71 |
| lift-ur5e (150) | 100%, 52 | 100%, 110 | 90%, 64 | 100%, 68 | 100%, 52 | 100%, 87 |
| can (300) | 100%, 111 | 85%, 197 | 90%, 131 | 100%, 139 | 100%, 114 | 100%, 169 |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.spatial.transform import Rotation

from robot.protocols import Observation
from robot.types import STATE
from sim.scene import check_expert_style

PHASES = ("detour", "approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")


@dataclass(frozen=True)
class PickExpertConfig:
    """Geometry, gains and noise of the scripted expert. Heights are metres in the base frame."""

    max_step: tuple[float, ...]
    """Per-dimension action bound (the scene's ``limits.max_step``); actions never exceed it."""
    hover: float = 0.08
    """Approach height of the end effector above the object's centre."""
    grasp_dz: float = 0.0
    """End-effector height relative to the object's centre when the fingers close."""
    lift_dz: float = 0.15
    """Lift height above the grasp height (pick only; pick-and-place lifts to ``carry_z``)."""
    yaw_symmetry: float | None = math.pi / 2
    """Turn the fingers to the object's yaw modulo this angle (pi/2 for a box); ``None`` for round objects."""
    place_target: tuple[float, float, float] | None = None
    """End-effector position at which to release the object; ``None`` = pick and hold."""
    place_on_target: tuple[float, float, float] | None = None
    """Place the *object* at the state's ``target_pos`` (a scene with a ``target_body``) plus this offset, metres, base
    frame, read afresh each episode: e.g. Stack's cube A on cube B. The held object is servoed rather than the
    gripper, so a grasp that closed off the object's centre still lands it there. Excludes ``place_target``."""
    carry_z: float = 0.2
    """End-effector height while carrying to ``place_target`` (clears walls between the bins); with
    ``place_on_target`` the gripper carries ``hover`` above its place point instead."""
    carry_tilt: float = 0.0
    """Radians the fingers tilt outward, away from the robot's base, from the carry to the retreat: the wrist then
    stands nearer the base, which brings a place point at the edge of a long gripper's reach within it (an IIWA or a
    Kinova3 with a Robotiq 2F-140 cannot hold it straight down over PickPlaceCan's far compartment)."""
    grasp_tilt: float = 0.0
    """Radians the fingers tilt outward, away from the base, from the approach to the lift: as ``carry_tilt``, for an
    object at the edge of reach."""
    regrasp: bool = False
    """When the object has not come up with the gripper 4 cm into the lift (a grasp that slipped or closed on a
    neighbour), open and start again from the approach, at most twice an episode."""
    retreat_back: float = 0.1
    """Metres the gripper pulls back toward the robot base while rising after release (a stretched arm nears
    its joint limits)."""
    gain: float = 2.0
    """Position command per metre of error (the OSC controller covers only part of each command per step)."""
    rot_gain: float = 1.0
    """Rotation command per radian of orientation error."""
    close_steps: int = 8
    """Steps spent closing the gripper before lifting."""
    release_steps: int = 6
    """Steps spent opening the gripper before retreating."""
    noise: float = 0.0
    """0 = clean expert; 1 = very sloppy (see the module docstring)."""
    style: str = "iid"
    """Operator style (``sim.scene.EXPERT_STYLES``; see the module docstring); ``noise`` adds on top."""
    hesitant_speed: tuple[float, float] = (0.2, 0.4)
    """hesitant: approach and descent speed, fraction of the clean command (uniform draw per episode)."""
    hesitant_pause_rate: tuple[float, float] = (0.1, 0.2)
    """hesitant: chance per step of one still step, never two in a row (uniform draw per episode)."""
    bias_offset: tuple[float, float, float] = (0.024, 0.0, 0.0)
    """biased: offset of the aimed grasp point from the object's centre, metres, base frame (times 0.8-1.2, drawn
    per episode)."""
    detour: tuple[float, float, float] = (0.0, 0.2, 0.15)
    """mixed, detour: the waypoint it passes first, relative to the object's centre (y mirrored toward the
    gripper's side), metres."""
    detour_speed: float = 0.5
    """mixed, detour: speed on the way to the detour waypoint, fraction of the clean command."""

    def __post_init__(self) -> None:
        if len(self.max_step) < 7 or any(s <= 0 for s in self.max_step):
            raise ValueError(
                f"PickExpertConfig.max_step needs 7 positive bounds (dx..drz, gripper), got {self.max_step}"
            )
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"expert noise must be in [0, 1], got {self.noise}; 0 is the clean expert")
        check_expert_style(self.style)
        if self.gain <= 0 or self.rot_gain <= 0:
            raise ValueError(f"PickExpertConfig gains must be positive, got gain={self.gain}, rot_gain={self.rot_gain}")
        if not all(0 < v <= 1 for v in (*self.hesitant_speed, *self.hesitant_pause_rate, self.detour_speed)):
            raise ValueError(
                f"PickExpertConfig hesitant_speed, hesitant_pause_rate and detour_speed must be in (0, 1], "
                f"got {self.hesitant_speed}, {self.hesitant_pause_rate}, {self.detour_speed}"
            )
        if self.place_target is not None and self.place_on_target is not None:
            raise ValueError("PickExpertConfig: give place_target (a fixed gripper position) or place_on_target (an offset from "
                             "the state's target_pos), not both")  # fmt: skip
        if self.close_steps < 1 or self.release_steps < 1:
            raise ValueError(
                f"PickExpertConfig close_steps/release_steps must be >= 1, got {self.close_steps}/{self.release_steps}"
            )


class PickExpert:
    """Phase-by-phase pick (and optional place) controller on privileged state.

    Its random generator runs on across episodes, so one expert built from one
    seed gives different (and reproducible) noise in each episode it drives. The
    style draws (``episode_style``, drawn by :meth:`reset`) come from a stream of
    their own, so a style leaves the noise draws as they are.
    """

    def __init__(self, fields: Mapping[str, slice], config: PickExpertConfig, seed: int | None = None):
        needed = {"eef_pos", "eef_quat", "obj_pos", "obj_quat"} | ({"target_pos"} if config.place_on_target is not None else set())
        missing = needed - set(fields)
        if missing:
            raise ValueError(f"PickExpert needs state fields {sorted(missing)} that the scene does not declare")
        self.fields = dict(fields)
        self.config = config
        self._rng = np.random.default_rng(seed)
        self._style_rng = np.random.default_rng(None if seed is None else [seed, 1])
        self._max = np.asarray(config.max_step[:7], dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget the episode (and draw the next one's style): the next :meth:`act` starts a new approach."""
        self.phase = "approach"
        self._phase_steps = 0
        self._down: Rotation | None = None  # gripper pointing straight down, home heading
        self._yaw = 0.0  # extra rotation about z that lines the fingers up with the object
        self._grasp_xy = np.zeros(2)
        self._grasp_z = 0.0
        self._grip = -1.0
        self._outward = np.zeros(2)  # carry_tilt: the horizontal direction away from the base (latched at the carry)
        self._pause = 0
        self._miss = np.zeros(3)  # offset of the aimed grasp point (noisy experts only)
        self._paused = False  # hesitant: this step was a still one
        self._side = 0.0  # mixed, detour: +1 out to +y of the object, -1 to -y (latched at its first step)
        self._target = np.zeros(3)  # place_on_target: the state's target_pos this step
        self._place: np.ndarray | None = None  # place_on_target: the gripper's place point, fixed from the release on
        self._held = np.zeros(3)  # place_on_target: end effector minus object, measured once the object is held
        self._retries = 0  # regrasp: approaches started over this episode
        self.episode_style = self._draw_style()
        if self.episode_style.get("strategy") == "detour":
            self.phase = "detour"

    def _draw_style(self) -> dict[str, float | str]:
        c, rng = self.config, self._style_rng
        if c.style == "hesitant":
            return {"speed": float(rng.uniform(*c.hesitant_speed)), "pause_rate": float(rng.uniform(*c.hesitant_pause_rate))}
        if c.style == "biased":
            return {"offset": [float(v) for v in np.asarray(c.bias_offset) * rng.uniform(0.8, 1.2)]}
        if c.style == "mixed":
            return {"strategy": "detour" if rng.random() < 0.5 else "direct"}
        return {}

    def act(self, observation: Observation) -> np.ndarray:
        """One action ``(dx, dy, dz, drx, dry, drz, gripper)`` in metres / radians, base frame."""
        state = np.asarray(observation[STATE], dtype=np.float64)
        eef, quat = state[self.fields["eef_pos"]], state[self.fields["eef_quat"]]
        obj, obj_quat = state[self.fields["obj_pos"]], state[self.fields["obj_quat"]]
        if self.config.place_on_target is not None:
            self._target = state[self.fields["target_pos"]]
        current = Rotation.from_quat(quat, scalar_first=True)
        if self._down is None:
            self._start_episode(current)
        noise = self.config.noise
        if self._pause > 0 or (noise > 0 and self.phase != "grasp" and self._rng.random() < 0.05 * noise):
            self._pause = self._pause - 1 if self._pause > 0 else int(self._rng.integers(3, 10))
            return self._action(np.zeros(6))
        if self._hesitates():
            return self._action(np.zeros(6))
        target = self._plan(eef, obj, obj_quat, current)
        self._phase_steps += 1
        c = self.config
        motion = np.concatenate(
            [
                _shrink(c.gain * (target - eef), float(np.min(self._max[:3]))),
                _shrink(c.rot_gain * self._rotation_error(current), float(np.min(self._max[3:6]))),
            ]
        )
        motion *= self._speed()
        if noise > 0:
            motion += self._rng.normal(0.0, 1.0, 6) * np.repeat([0.015 * noise, 0.05 * noise], 3)
        return self._action(motion)

    # ---- internals ----------------------------------------------------------------

    def _hesitates(self) -> bool:
        """hesitant: whether this step is a still one: now and then one, never two in a row (a state followed by
        "stay" more often than by "move" would hold an imitating policy for good), never while closing or opening."""
        if self.config.style != "hesitant" or self.phase in ("grasp", "release"):
            return False
        paused, self._paused = self._paused, False
        if not paused and self._style_rng.random() < float(self.episode_style["pause_rate"]):
            self._paused = True
        return self._paused

    def _speed(self) -> float:
        """Fraction of the clean command this step moves: hesitant approaches slowly, a detour is slow."""
        if self.phase == "detour":
            return self.config.detour_speed
        if self.config.style == "hesitant" and self.phase in ("approach", "descend"):
            return float(self.episode_style["speed"])
        return 1.0

    def _start_episode(self, current: Rotation) -> None:
        """Straighten the home orientation to point down; draw this episode's grasp error."""
        approach = int(np.argmin(current.as_matrix()[2]))  # the axis pointing most downward
        axis = current.as_matrix()[:, approach]
        fix, _ = Rotation.align_vectors([[0.0, 0.0, -1.0]], [axis])
        self._down = fix * current
        noise = self.config.noise
        if noise > 0:
            angle = self._rng.uniform(0, 2 * math.pi)
            missed = self._rng.random() < 0.8 * noise
            early = missed and self._rng.random() < 0.5  # half the misses close too high, half off to the side
            if missed and not early:
                radius = self._rng.uniform(0.03, 0.045)
            else:
                radius = abs(self._rng.normal(0, 0.005 * noise))
            height = self._rng.uniform(0.04, 0.06) if early else 0.0
            self._miss = np.array([radius * math.cos(angle), radius * math.sin(angle), height])

    def _plan(self, eef: np.ndarray, obj: np.ndarray, obj_quat: np.ndarray, current: Rotation) -> np.ndarray:
        """Advance the phase when its goal is reached; return the end-effector target (3,)."""
        c = self.config
        if self.phase == "detour":  # mixed: out to the side and up before the approach
            self._side = self._side or (1.0 if eef[1] >= obj[1] else -1.0)
            target = obj + np.array([c.detour[0], self._side * c.detour[1], c.detour[2]])
            if self._reached(eef, target, 0.03) or self._phase_steps > 60:
                self._enter("approach")
            return target
        if self.phase in ("approach", "descend"):
            self._outward = obj[:2] / max(float(np.linalg.norm(obj[:2])), 1e-6)
            if c.yaw_symmetry is not None:
                self._yaw = self._face_yaw(obj_quat)
            aim = obj + self._miss
            if c.style == "biased":
                aim = aim + np.asarray(self.episode_style["offset"])
            if self.phase == "approach":
                target = aim + [0.0, 0.0, c.hover]
                aligned = np.linalg.norm(self._rotation_error(current)) < 0.1
                if self._reached(eef, target, 0.015) and aligned or self._phase_steps > 60:
                    self._enter("descend")
                return target
            target = aim + [0.0, 0.0, c.grasp_dz]
            if self._reached(eef, target, 0.01) or self._phase_steps > 40:
                self._grasp_xy, self._grasp_z = eef[:2].copy(), float(target[2])
                self._enter("grasp")
            return target
        if self.phase == "grasp":
            self._grip = 1.0
            if self._phase_steps >= c.close_steps:
                self._held = eef - obj
                self._enter("lift")
            return np.array([*self._grasp_xy, self._grasp_z])
        if self.phase == "lift" and c.regrasp and self._retries < 2 and eef[2] > self._grasp_z + 0.04:
            if np.linalg.norm(eef - obj - self._held) > 0.03:  # the object stayed behind
                self._retries += 1
                self._grip = -1.0
                self._enter("approach")
                return np.array([*self._grasp_xy, self._grasp_z + c.hover])
        if c.place_target is None and c.place_on_target is None:
            return np.array([*self._grasp_xy, self._grasp_z + c.lift_dz])
        place = self._place_point(eef, obj)
        carry_z = c.carry_z if c.place_on_target is None else float(place[2]) + c.hover
        if self.phase == "lift":
            target = np.array([*self._grasp_xy, carry_z])
            if eef[2] > carry_z - 0.03:
                self._held = eef - obj  # lifted: how the object hangs in the fingers
                self._enter("carry")
            return target
        if self.phase == "carry":
            self._outward = place[:2] / max(float(np.linalg.norm(place[:2])), 1e-6)
            target = np.array([place[0], place[1], carry_z])
            if self._reached(eef[:2], target[:2], 0.015):
                self._enter("lower")
            return target
        if self.phase == "lower":
            if self._reached(eef, place, 0.015) or self._phase_steps > 30:
                self._enter("release")
            return place
        if self.phase == "release":
            self._grip = -1.0
            if self._phase_steps >= c.release_steps:
                self._enter("retreat")
            return place
        back = place[:2] * max(0.0, 1.0 - c.retreat_back / max(float(np.linalg.norm(place[:2])), 1e-6))
        return np.array([back[0], back[1], carry_z])

    def _place_point(self, eef: np.ndarray, obj: np.ndarray) -> np.ndarray:
        """Where the gripper lets go: ``place_target``, or the point that puts the held object at the state's target
        plus ``place_on_target`` (the grasp's offset from the object's centre, measured when the fingers closed and
        again once lifted), fixed once the release begins."""
        c = self.config
        if c.place_on_target is None:
            return np.asarray(c.place_target, dtype=np.float64)
        if self._place is None or self.phase not in ("release", "retreat"):
            self._place = self._target + np.asarray(c.place_on_target) + self._held
        return self._place

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    @staticmethod
    def _reached(eef: np.ndarray, target: np.ndarray, tolerance: float) -> bool:
        return bool(np.linalg.norm(target - eef) < tolerance)

    def _face_yaw(self, obj_quat: np.ndarray) -> float:
        """Smallest turn about z that lines the fingers up with the object's faces."""
        assert self._down is not None and self.config.yaw_symmetry is not None
        obj_x = Rotation.from_quat(obj_quat, scalar_first=True).as_matrix()[:, 0]
        down = self._down.as_matrix()
        horizontal = down[:, int(np.argmin(np.abs(down[2])))]  # an axis of the gripper lying in the xy plane
        turn = math.atan2(obj_x[1], obj_x[0]) - math.atan2(horizontal[1], horizontal[0])
        sym = self.config.yaw_symmetry
        return (turn + sym / 2) % sym - sym / 2

    def _rotation_error(self, current: Rotation) -> np.ndarray:
        """Axis-angle (base frame) from the current to the target gripper orientation."""
        assert self._down is not None
        target = Rotation.from_rotvec([0.0, 0.0, self._yaw]) * self._down
        tilt = self.config.carry_tilt if self.phase in ("carry", "lower", "release", "retreat") else self.config.grasp_tilt
        if tilt:
            axis = np.cross([0.0, 0.0, -1.0], [*self._outward, 0.0])  # turns straight down toward the outward direction
            target = Rotation.from_rotvec(tilt * axis) * target
        return (target * current.inv()).as_rotvec()

    def _action(self, motion: np.ndarray) -> np.ndarray:
        action = np.append(motion, self._grip)
        return np.clip(action, -self._max, self._max).astype(np.float32)


def _shrink(vector: np.ndarray, max_norm: float) -> np.ndarray:
    """``vector`` scaled down (direction kept) so its norm is at most ``max_norm``."""
    norm = float(np.linalg.norm(vector))
    return vector if norm <= max_norm else vector * (max_norm / norm)
