"""Planar push: a disk pusher shoves a square block onto a target disc.

The kit's deliberately trivial task: a few bodies, no arm, thousands of control
steps per second, so learning tests and pipeline runs are cheap. The pusher
slides on x/y under stiff position servos; each action (dx, dy) moves its servo
target that far from where it stands. The block slides on x/y and turns about z
with joint friction (quasi-static pushing: it stops when the push stops). The
target is fixed at the table centre; ``reset(seed)`` draws the block pose and the
pusher start. Success: block centre within ``success_tolerance`` of the target.
The scripted expert and its styles live in :mod:`sim.push_expert`.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede `import mujoco` for the cameras

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import mujoco
import numpy as np

from robot.protocols import Observation
from robot.types import ACTION, STATE, ArmLimits, ArmState, Feature
from sim.cameras import CameraConfig, CameraRig, model_cameras

if TYPE_CHECKING:
    from sim.push_expert import PushExpert

TABLE = 0.25  # half-width of the square table and of the pusher workspace, metres
PUSHER_RADIUS = 0.02
BLOCK_HALF = 0.03  # half side of the square block
HEIGHT = 0.02  # z of the pusher and block centres
TARGET = (0.0, 0.0)
OPEN_RANGE = 0.3  # how far the block's centre may slide on each axis on the open table: out of the pusher's reach
RIM_RANGE = TABLE - 0.005 - 2 * PUSHER_RADIUS - BLOCK_HALF  # with a rim: the pusher always fits behind the block
TIMESTEP = 0.005  # physics step, seconds
STATE_NAMES = ("pusher_x", "pusher_y", "block_x", "block_y", "block_sin_yaw", "block_cos_yaw", "target_x", "target_y")

_MJCF = """
<mujoco model="push">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast"/>
  <visual>
    <global offwidth="640" offheight="640"/>
    <quality shadowsize="0"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.2 0.2 0.2" specular="0 0 0"/>
  </visual>
  <worldbody>
    <light pos="0.3 -0.3 1.5" dir="-0.2 0.2 -1" directional="true" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
    <geom name="table" type="plane" size="{table_vis} {table_vis} 0.01" rgba="0.7 0.7 0.7 1"
          contype="0" conaffinity="0"/>
    <geom name="target" type="cylinder" pos="{tx} {ty} 0.0005" size="{tol} 0.0005" rgba="0.2 0.75 0.2 1"
          contype="0" conaffinity="0"/>
    <camera name="top" pos="0 0 0.65" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <camera name="front" pos="0 -0.55 0.45" xyaxes="1 0 0 0 0.633 0.774" fovy="45"/>
    <body name="pusher" pos="0 0 {z}">
      <joint name="pusher_x" type="slide" axis="1 0 0" range="-{table} {table}"/>
      <joint name="pusher_y" type="slide" axis="0 1 0" range="-{table} {table}"/>
      <geom name="pusher" type="cylinder" size="{radius} {z}" mass="1" rgba="0.2 0.3 0.9 1" friction="0.5"/>
    </body>
    <body name="block" pos="0 0 {z}">
      <joint name="block_x" type="slide" axis="1 0 0" range="-{block_range} {block_range}" frictionloss="0.5" damping="0.1"/>
      <joint name="block_y" type="slide" axis="0 1 0" range="-{block_range} {block_range}" frictionloss="0.5" damping="0.1"/>
      <joint name="block_yaw" type="hinge" axis="0 0 1" frictionloss="0.01" damping="0.001"/>
      <geom name="block" type="box" size="{half} {half} {z}" mass="0.1" rgba="0.9 0.2 0.2 1" friction="0.5"/>
    </body>
  </worldbody>
  <actuator>
    <position name="pusher_x" joint="pusher_x" kp="2500" kv="100" ctrlrange="-{table} {table}"/>
    <position name="pusher_y" joint="pusher_y" kp="2500" kv="100" ctrlrange="-{table} {table}"/>
  </actuator>
</mujoco>
"""


@dataclass(frozen=True)
class PushConfig:
    """Options of the push scene; reward scales multiply the unscaled terms of ``reward_terms``."""

    max_step: float = 0.025
    """Largest pusher move per control step and axis, metres (0.25 m/s at 10 Hz)."""
    max_steps: int = 100
    """Episode length limit in control steps."""
    success_tolerance: float = 0.02
    """Block centre within this distance of the target counts as success, metres."""
    state: bool = True
    """Include ``observation.state`` (pusher xy, block xy, block yaw sin/cos, target xy)."""
    camera: CameraConfig | None = None
    """Cameras ("top", "front") and point cloud to render; ``None`` = no rendering at all."""
    success_scale: float = 1.0
    """Scale of ``success``: 1 on every step the block is in the target."""
    step_scale: float = 0.01
    """Scale of ``step``: -1 every step (a time penalty)."""
    jitter_scale: float = 0.01
    """Scale of ``jitter``: -||a_t - a_{t-1}||^2 / max_step^2 (action changes, in step units)."""
    progress_scale: float = 0.0
    """Scale of ``progress``: decrease of block-to-target distance this step, in max_step units."""
    rim: bool = False
    """A rim that stops the block (not the pusher) 17.5 cm from the centre on each axis, where the pusher can still
    get behind it. On the open table a block pushed past about 19 cm is out of reach for good: 33 of the 44
    failures of push-hesitant's online policy (78.0% over 200 seeds, session 21) ended so."""

    def __post_init__(self) -> None:
        if not 0 < self.max_step <= 0.05:
            raise ValueError(f"PushConfig.max_step must be in (0, 0.05] metres, got {self.max_step}")
        if self.max_steps <= 0:
            raise ValueError(f"PushConfig.max_steps must be positive, got {self.max_steps}")
        if not 0 < self.success_tolerance <= 0.1:
            raise ValueError(f"PushConfig.success_tolerance must be in (0, 0.1] metres, got {self.success_tolerance}")
        if not self.state and self.camera is None:
            raise ValueError("PushConfig observes nothing: keep state=True or give a camera config")
        for name in ("success_scale", "step_scale", "jitter_scale", "progress_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"PushConfig.{name} must be finite, got {getattr(self, name)}")


class PushScene:
    """The push task as a ``sim.scene.SimScene``."""

    name = "push"
    robot_name = "pusher"
    joint_names = ("pusher_x", "pusher_y")  # what safety warnings call the joints of arm_state()
    fps = 10.0

    def __init__(self, config: PushConfig = PushConfig()):
        self.config = config
        self.max_steps = config.max_steps
        xml = _MJCF.format(
            timestep=TIMESTEP, table=TABLE, table_vis=TABLE + 0.05, tx=TARGET[0], ty=TARGET[1],
            tol=config.success_tolerance, z=HEIGHT, radius=PUSHER_RADIUS, half=BLOCK_HALF,
            block_range=RIM_RANGE if config.rim else OPEN_RANGE,
        )  # fmt: skip
        if config.rim:
            self.name = "push-rim"
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self._substeps = round(1.0 / (self.fps * TIMESTEP))
        self._target = np.array(TARGET)
        self._rig: CameraRig | None = None
        if config.camera is not None:
            camera = config.camera
            if camera.pointcloud is not None:
                pc = camera.pointcloud.with_defaults("top", (-0.3, -0.3, 0.005), (0.3, 0.3, 0.1))
                camera = CameraConfig(camera.cameras, camera.height, camera.width, pc)
            self._rig = CameraRig.from_config(self.model, self.data, camera)
        m = config.max_step
        self._limits = ArmLimits(
            workspace_low=(-TABLE, -TABLE, HEIGHT - 0.01),
            workspace_high=(TABLE, TABLE, HEIGHT + 0.01),
            max_step=(m, m),
            joint_low=(-TABLE, -TABLE),
            joint_high=(TABLE, TABLE),
            max_joint_velocity=(1.0, 1.0),  # a full step peaks near 0.45 m/s inside the period
        )
        self._last_action = np.zeros(2)
        self._action_before = np.zeros(2)
        self._dist_before = 0.0
        self.reset(0)

    # ---- SimScene -----------------------------------------------------------

    @property
    def observation_features(self) -> Mapping[str, Feature]:
        feats: dict[str, Feature] = {}
        if self.config.state:
            feats[STATE] = Feature((len(STATE_NAMES),), "float32", names=STATE_NAMES)
        if self._rig is not None:
            feats.update(self._rig.features())
        return feats

    @property
    def action_features(self) -> Mapping[str, Feature]:
        m = self.config.max_step
        return {ACTION: Feature((2,), "float32", names=("dx", "dy"), low=(-m, -m), high=(m, m))}

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Cameras the ``camera`` option can render ("top", "front")."""
        return model_cameras(self.model)

    @property
    def limits(self) -> ArmLimits:
        return self._limits

    @property
    def reward_scales(self) -> Mapping[str, float]:
        c = self.config
        return {
            "success": c.success_scale,
            "step": c.step_scale,
            "jitter": c.jitter_scale,
            "progress": c.progress_scale,
        }

    def reset(self, seed: int) -> None:
        """Block 8-16 cm from the target at any yaw; pusher anywhere on the table at least 9 cm from the block."""
        rng = np.random.default_rng(seed)
        angle, radius = rng.uniform(-math.pi, math.pi), rng.uniform(0.08, 0.16)
        block = self._target + radius * np.array([math.cos(angle), math.sin(angle)])
        pusher = rng.uniform(-0.2, 0.2, size=2)
        while np.linalg.norm(pusher - block) < 0.09:
            pusher = rng.uniform(-0.2, 0.2, size=2)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = [*pusher, *block, rng.uniform(-math.pi, math.pi)]
        self.data.ctrl[:] = pusher
        mujoco.mj_forward(self.model, self.data)
        self._last_action = np.zeros(2)
        self._action_before = np.zeros(2)
        self._dist_before = self._block_distance()

    def step(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"push action must be 2 finite numbers (dx, dy), got {action!r}")
        a = np.clip(a, -self.config.max_step, self.config.max_step)
        self._dist_before = self._block_distance()
        reach = TABLE - 0.005  # servo targets stay inside the joint range, so the pusher never overshoots it
        self.data.ctrl[:] = np.clip(self.data.qpos[:2] + a, -reach, reach)
        mujoco.mj_step(self.model, self.data, nstep=self._substeps)
        self._action_before, self._last_action = self._last_action, a

    def observe(self) -> Observation:
        obs: Observation = {}
        if self.config.state:
            q = self.data.qpos
            obs[STATE] = np.array(
                [q[0], q[1], q[2], q[3], math.sin(q[4]), math.cos(q[4]), *self._target], dtype=np.float32
            )
        if self._rig is not None:
            mujoco.mj_forward(self.model, self.data)  # poses after the last substep, for the cameras
            obs.update(self._rig.render())
        return obs

    def joint_response(self, state: ArmState) -> np.ndarray:
        """The pusher's slide joints are the action's axes: dx moves pusher_x, dy pusher_y, one for one."""
        return np.eye(2)

    def arm_state(self) -> ArmState:
        return ArmState(
            ee_position=np.array([self.data.qpos[0], self.data.qpos[1], HEIGHT]),
            joint_positions=self.data.qpos[:2].copy(),
            joint_velocities=self.data.qvel[:2].copy(),
        )

    def reward_terms(self, applied_action: np.ndarray) -> dict[str, float]:
        """Unscaled terms for the step just taken (pure: calling twice gives the same values)."""
        m = self.config.max_step
        change = (np.asarray(applied_action, dtype=np.float64).reshape(2) - self._action_before) / m
        return {
            "success": float(self.is_success()),
            "step": -1.0,
            "jitter": -float(change @ change),
            "progress": (self._dist_before - self._block_distance()) / m,
        }

    def is_success(self) -> bool:
        return self._block_distance() <= self.config.success_tolerance

    def expert(self, noise: float = 0.0, seed: int | None = None, style: str = "iid") -> "PushExpert":
        """The scripted expert (:class:`sim.push_expert.PushExpert`): ``noise`` in [0, 1], ``style`` in ``EXPERT_STYLES``."""
        from sim.push_expert import PushExpert

        return PushExpert(self, noise=noise, seed=seed, style=style)

    def close(self) -> None:
        if self._rig is not None:
            self._rig.close()

    # ---- privileged state (for the expert and tests) -------------------------

    @property
    def pusher_xy(self) -> np.ndarray:
        return self.data.qpos[0:2].copy()

    @property
    def block_xy(self) -> np.ndarray:
        return self.data.qpos[2:4].copy()

    @property
    def block_yaw(self) -> float:
        return float(self.data.qpos[4])

    @property
    def target_xy(self) -> np.ndarray:
        return self._target.copy()

    def _block_distance(self) -> float:
        return float(np.linalg.norm(self.data.qpos[2:4] - self._target))


def make_push(camera: CameraConfig | None = None, **options: object) -> PushScene:
    """Registry factory: ``options`` are :class:`PushConfig` fields (``max_steps=80``, ``state=False``...)."""
    fields = set(PushConfig.__dataclass_fields__) - {"camera"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"push scene has no option {unknown}; it takes {sorted(fields)} and camera=CameraConfig(...)")
    return PushScene(PushConfig(camera=camera, **options))  # type: ignore[arg-type]


def __getattr__(name: str) -> object:
    """``from sim.push import PushExpert`` keeps working: the expert lives in :mod:`sim.push_expert`."""
    if name == "PushExpert":
        from sim.push_expert import PushExpert

        return PushExpert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
