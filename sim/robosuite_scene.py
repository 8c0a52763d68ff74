"""A robosuite environment seen as a :class:`sim.scene.SimScene`.

robosuite supplies the physics, the arm, the OSC_POSE controller and the task's
success check; this adapter supplies everything the kit expects of a scene:

- our action convention (metres / radians in the robot base frame, gripper in
  [-1 open, 1 closed]) converted to robosuite's normalised OSC input in :meth:`step`;
- ``reset(seed)`` that is deterministic per seed (robosuite draws object poses and
  joint noise from ``env.rng``, which is reseeded in place);
- a named, float32 ``observation.state`` in the base frame, and optional cameras
  rendered by :class:`sim.cameras.CameraRig` (robosuite's own camera observations
  are slow and upside down, so they stay off);
- named reward terms, arm state and limits for the safety layer.

robosuite is imported only when a scene is built, never at module import.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede `import mujoco` to take effect

import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import mujoco
import numpy as np

from robot.protocols import Observation
from robot.types import ACTION, STATE, ArmLimits, ArmState, Feature, SafetyConfig
from sim.scene import ScriptedExpert

if TYPE_CHECKING:
    from sim.cameras import CameraConfig, CameraRig

REWARD_TERMS = ("success", "step", "jitter", "shaped")
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
GRIPPER_MAX_STEP = 2.0  # the gripper command may swing from fully open to fully closed in one step

# Rated joint speeds (rad/s) from the makers' datasheets; MJCF models do not carry them.
MAX_JOINT_VELOCITY: dict[str, tuple[float, ...]] = {
    "Panda": (2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),
    "UR5e": (3.1416,) * 6,
    "IIWA": (1.710, 1.710, 1.745, 2.269, 2.443, 3.142, 3.142),  # LBR iiwa 7 R800: 98, 98, 100, 130, 140, 180, 180 deg/s
    "Kinova3": (1.396,) * 4 + (1.222,) * 3,  # Gen3 7-DoF: large actuators 80 deg/s, small ones 70 deg/s
    "Sawyer": (1.74, 1.328, 1.957, 1.957, 3.485, 3.485, 4.545),  # Rethink's sawyer_description URDF
    "XArm7": (3.1416,) * 7,  # xArm 7: 180 deg/s per joint
}


def _default_reward_scales() -> dict[str, float]:
    return {"success": 1.0, "step": 0.01, "jitter": 0.01, "shaped": 0.0}


@dataclass(frozen=True)
class RobosuiteSceneConfig:
    """How one robosuite environment becomes a scene of the kit."""

    name: str
    """Task name in the kit, e.g. ``lift``."""
    env_name: str
    """robosuite environment class, e.g. ``Lift`` or ``PickPlaceCan``."""
    robot: str
    """robosuite robot class, e.g. ``Panda`` or ``UR5e``; the scene's ``robot_name`` is its lower-case."""
    object_body: str
    """MuJoCo body whose pose is the privileged object state, e.g. ``cube_main``."""
    workspace_low: tuple[float, float, float]
    """Lower corner (x, y, z) of the end-effector box, metres, world frame."""
    workspace_high: tuple[float, float, float]
    """Upper corner (x, y, z) of the end-effector box, metres, world frame."""
    target_body: str | None = None
    """MuJoCo body whose position is the place target in the state (``target_x/y/z``), e.g. Stack's ``cubeB_main``."""
    max_steps: int = 150
    """Episode length in control steps."""
    fps: float = 20.0
    """Control rate (robosuite's ``control_freq``)."""
    init_joint_noise: float = 0.02
    """Std (rad) of Gaussian noise added to the home joint angles at each reset; 0 = always the same pose."""
    model_seed: int = 0
    """Seed robosuite is built with (it fixes e.g. the cube's size); resets draw from their own seeds."""
    reward_scales: Mapping[str, float] = field(default_factory=_default_reward_scales)
    """Scale of each reward term: ``success`` (1 while solved), ``step`` (-1), ``jitter``, ``shaped``."""
    max_joint_velocity: tuple[float, ...] | None = None
    """Joint speed limits (rad/s) for the safety layer; ``None`` = the robot's rated speeds."""
    pointcloud_camera: str = "agentview"
    """Camera whose depth makes ``observation.pointcloud`` when the point cloud config names none."""
    render_effects: bool = False
    """Keep robosuite's reflective table, shadows and multisampling in camera images. Off, software
    rendering (EGL on Mesa) of an 84x84 frame is 3-4x faster and the objects look the same."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``robosuite.make``."""
    safety: SafetyConfig | None = None
    """The task's own safety config (``hardware.registry.make_sim`` uses it unless its caller passes one); None: the default."""

    def __post_init__(self) -> None:
        if self.max_steps <= 0:
            raise ValueError(f"RobosuiteSceneConfig.max_steps must be positive, got {self.max_steps}")
        if self.fps <= 0:
            raise ValueError(f"RobosuiteSceneConfig.fps must be positive, got {self.fps}")
        if self.init_joint_noise < 0:
            raise ValueError(f"RobosuiteSceneConfig.init_joint_noise must be >= 0, got {self.init_joint_noise}")
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(
                f"RobosuiteSceneConfig.workspace_low {self.workspace_low} must be below "
                f"workspace_high {self.workspace_high} on every axis"
            )
        unknown = sorted(set(self.reward_scales) - set(REWARD_TERMS))
        if unknown:
            raise ValueError(
                f"RobosuiteSceneConfig.reward_scales names unknown terms {unknown}; terms are {REWARD_TERMS}"
            )
        if self.max_joint_velocity is None and self.robot not in MAX_JOINT_VELOCITY:
            raise ValueError(
                f"robot {self.robot!r} has no rated joint speeds here ({sorted(MAX_JOINT_VELOCITY)} do); "
                "pass max_joint_velocity=(...) in rad/s, one per arm joint"
            )
        if self.safety is not None and not isinstance(self.safety, SafetyConfig):
            raise ValueError(f"RobosuiteSceneConfig.safety must be a robot.types.SafetyConfig, got {type(self.safety).__name__}")
        reserved = {"robots", "controller_configs", "control_freq", "horizon", "seed", "use_camera_obs"}
        clash = sorted(reserved & set(self.env_kwargs))
        if clash:
            raise ValueError(
                f"RobosuiteSceneConfig.env_kwargs sets {clash}, which the scene controls; use the config fields"
            )


ExpertFactory = Callable[["RobosuiteScene", float, "int | None", str], ScriptedExpert]
"""``(scene, noise, seed, style) -> expert``; ``style`` is one of ``sim.scene.EXPERT_STYLES``."""


class RobosuiteScene:
    """One robosuite environment (OSC_POSE delta control) behind the :class:`sim.scene.SimScene` contract.

    The observation state is expressed in the robot base frame (the OSC
    controller's reference frame, so actions and state agree). Quaternions are
    ``(w, x, y, z)``; the end-effector quaternion keeps the sign closest to the
    home orientation and the object's keeps ``w >= 0``, so neither flips sign
    between neighbouring steps.
    """

    def __init__(self, config: RobosuiteSceneConfig, expert_factory: ExpertFactory, camera: CameraConfig | None = None):
        import robosuite
        from robosuite.controllers import load_composite_controller_config

        # robosuite logs an INFO line for every controller it loads: one per scene, 32 per evaluation in lanes
        logging.getLogger("robosuite_logs").setLevel(logging.WARNING)

        self.config = config
        self.name = config.name
        self.robot_name = config.robot.lower()
        self.fps = float(config.fps)
        self.max_steps = int(config.max_steps)
        self.safety = config.safety
        self._expert_factory = expert_factory

        controller = load_composite_controller_config(controller=None, robot=config.robot)
        arm = controller["body_parts"]["right"]
        if arm["type"] != "OSC_POSE" or arm["input_type"] != "delta" or arm["input_ref_frame"] != "base":
            raise ValueError(
                f"robot {config.robot!r} defaults to {arm['type']} "
                f"({arm['input_type']}, {arm['input_ref_frame']} frame); "
                "this scene needs OSC_POSE delta control in the base frame"
            )
        self._output_max = np.asarray(arm["output_max"], dtype=np.float64)  # (6,) metres, radians per step
        self.env = robosuite.make(
            config.env_name,
            robots=config.robot,
            controller_configs=controller,
            initialization_noise={"magnitude": config.init_joint_noise, "type": "gaussian"},
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            reward_shaping=True,
            reward_scale=None,
            control_freq=int(config.fps),
            horizon=config.max_steps,
            ignore_done=True,
            hard_reset=False,
            seed=config.model_seed,
            **dict(config.env_kwargs),
        )
        self.env.reset()
        self._model: mujoco.MjModel = self.env.sim.model._model
        self._data: mujoco.MjData = self.env.sim.data._data
        robot = self.env.robots[0]
        self._eef_site = int(robot.eef_site_id["right"])
        self._base_site = self._id(mujoco.mjtObj.mjOBJ_SITE, f"{robot.robot_model.naming_prefix}right_center")
        self._pinned_base = self._fixed_base()
        self._pin_controller_base()
        self._object = self._id(mujoco.mjtObj.mjOBJ_BODY, config.object_body)
        self._target = None if config.target_body is None else self._id(mujoco.mjtObj.mjOBJ_BODY, config.target_body)
        self._qpos = np.asarray(robot._ref_arm_joint_pos_indexes)
        self._qvel = np.asarray(robot._ref_arm_joint_vel_indexes)
        self._arm_joints = np.asarray([self._id(mujoco.mjtObj.mjOBJ_JOINT, j) for j in robot.robot_arm_joints])
        self.joint_names = tuple(str(j) for j in robot.robot_arm_joints)  # what safety warnings call the joints
        self._gripper_qpos = np.asarray(robot._ref_gripper_joint_pos_indexes["right"])
        self._home_quat = self._to_base_quat(self._data.site_xmat[self._eef_site])  # EE quaternion sign reference
        self._limits = self._arm_limits()

        self._rig = None
        if camera is not None:
            if not config.render_effects:
                self._model.mat_reflectance[:] = 0.0
                self._model.light_castshadow[:] = 0
                self._model.vis.quality.offsamples = 0
            self._rig = self._camera_rig(camera)
        self._prev_action: np.ndarray | None = None  # a_{t-1}
        self._last_action: np.ndarray | None = None  # a_t
        self._shaped = 0.0

    def _camera_rig(self, camera: CameraConfig) -> CameraRig:
        """The rig for ``camera``; an unset point cloud camera or crop box takes the scene's defaults:
        ``pointcloud_camera`` and the workspace box lifted 5 mm off the table (so the table drops out)."""
        from sim.cameras import CameraConfig, CameraRig

        cloud = camera.pointcloud
        if cloud is not None:
            low = np.asarray(self.config.workspace_low, dtype=np.float64) + [0.0, 0.0, 0.005]
            high = np.asarray(self.config.workspace_high, dtype=np.float64)
            if cloud.frame is not None:  # the crop box lives in the frame the points are expressed in
                body = self._id(mujoco.mjtObj.mjOBJ_BODY, cloud.frame)
                rot, origin = self._data.xmat[body].reshape(3, 3), self._data.xpos[body]
                corners = np.array(list(itertools.product(*zip(low, high))))  # (8, 3)
                local = (corners - origin) @ rot  # R^T (p - x) per corner
                low, high = local.min(axis=0), local.max(axis=0)
            cloud = cloud.with_defaults(self.config.pointcloud_camera, _triple(low), _triple(high))
        camera = CameraConfig(camera.cameras, camera.height, camera.width, cloud)
        return CameraRig.from_config(self._model, self._data, camera)

    # ---- features and limits ---------------------------------------------------

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the ``observation.state`` entries, in order."""
        grip = tuple(f"gripper_q{i}" for i in range(len(self._gripper_qpos)))
        return (
            ("eef_x", "eef_y", "eef_z", "eef_qw", "eef_qx", "eef_qy", "eef_qz")
            + grip
            + ("obj_x", "obj_y", "obj_z", "obj_qw", "obj_qx", "obj_qy", "obj_qz")
            + ("obj_to_eef_x", "obj_to_eef_y", "obj_to_eef_z")
            + (() if self._target is None else ("target_x", "target_y", "target_z"))
        )

    @property
    def state_fields(self) -> dict[str, slice]:
        """Where each quantity sits in ``observation.state`` (what the scripted experts read)."""
        g = len(self._gripper_qpos)
        fields = {
            "eef_pos": slice(0, 3),
            "eef_quat": slice(3, 7),
            "gripper_qpos": slice(7, 7 + g),
            "obj_pos": slice(7 + g, 10 + g),
            "obj_quat": slice(10 + g, 14 + g),
            "obj_to_eef": slice(14 + g, 17 + g),
        }
        if self._target is not None:
            fields["target_pos"] = slice(17 + g, 20 + g)
        return fields

    @property
    def observation_features(self) -> Mapping[str, Feature]:
        names = self.state_names
        features = {STATE: Feature((len(names),), "float32", names=names)}
        if self._rig is not None:
            features.update(self._rig.features())
        return features

    @property
    def action_features(self) -> Mapping[str, Feature]:
        step = tuple(self.limits.max_step)
        return {ACTION: Feature((7,), "float32", names=ACTION_NAMES, low=tuple(-s for s in step), high=step)}

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Cameras the ``camera`` option can render (robosuite's agentview, frontview, the robot's eye-in-hand...)."""
        from sim.cameras import model_cameras

        return model_cameras(self._model)

    @property
    def limits(self) -> ArmLimits:
        return self._limits

    def _arm_limits(self) -> ArmLimits:
        """Workspace in the base frame, OSC step bounds, the model's joint ranges (unlimited joints, such as four of
        the Kinova Gen3's, -inf..inf), rated joint speeds."""
        low = self.to_base(np.asarray(self.config.workspace_low))
        high = self.to_base(np.asarray(self.config.workspace_high))
        limited = self._model.jnt_limited[self._arm_joints].astype(bool)[:, None]
        ranges = np.where(limited, self._model.jnt_range[self._arm_joints], [-np.inf, np.inf])
        velocity = self.config.max_joint_velocity or MAX_JOINT_VELOCITY[self.config.robot]
        if len(velocity) != len(self._arm_joints):
            raise ValueError(
                f"max_joint_velocity has {len(velocity)} entries but {self.config.robot} has "
                f"{len(self._arm_joints)} arm joints; give one speed per joint"
            )
        return ArmLimits(
            workspace_low=tuple(float(v) for v in np.minimum(low, high)),
            workspace_high=tuple(float(v) for v in np.maximum(low, high)),
            max_step=tuple(float(v) for v in self._output_max) + (GRIPPER_MAX_STEP,),
            joint_low=tuple(float(v) for v in ranges[:, 0]),
            joint_high=tuple(float(v) for v in ranges[:, 1]),
            max_joint_velocity=tuple(float(v) for v in velocity),
        )

    @property
    def reward_scales(self) -> Mapping[str, float]:
        return {**_default_reward_scales(), **self.config.reward_scales}

    # ---- control -----------------------------------------------------------------

    def reset(self, seed: int) -> None:
        """A new episode whose object pose and joint noise depend only on ``seed``."""
        # The placement sampler and the robots hold this very Generator, so reseed it in place.
        self.env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        self.env.reset()
        self._pin_controller_base()  # robosuite builds a new controller on every reset
        self._prev_action = self._last_action = None
        self._shaped = 0.0

    def step(self, action: np.ndarray) -> None:
        """Convert to robosuite's normalised OSC input, step one control period (``1 / fps`` s)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"scene {self.name} expects a finite 7-vector {ACTION_NAMES}, got {action!r}")
        command = np.empty(7)
        command[:6] = a[:6] / self._output_max
        command[6] = a[6]
        _, shaped, _, _ = self.env.step(np.clip(command, -1.0, 1.0))
        mujoco.mj_forward(self._model, self._data)  # poses of the final substep, for state and cameras alike
        self._shaped = float(shaped)
        self._prev_action, self._last_action = self._last_action, a

    # ---- observation -------------------------------------------------------------

    def observe(self) -> Observation:
        eef_pos, eef_quat = self._eef_pose()
        obj_pos, obj_quat = self._object_pose()
        parts = [eef_pos, eef_quat, self._data.qpos[self._gripper_qpos], obj_pos, obj_quat, eef_pos - obj_pos]
        if self._target is not None:
            parts.append(self.to_base(self._data.xpos[self._target]))
        state = np.concatenate(parts).astype(np.float32)
        obs: Observation = {STATE: state}
        if self._rig is not None:
            obs.update(self._rig.render())
        return obs

    def arm_state(self) -> ArmState:
        return ArmState(
            ee_position=self._eef_pose()[0],
            joint_positions=self._data.qpos[self._qpos].copy(),
            joint_velocities=self._data.qvel[self._qvel].copy(),
        )

    def reward_terms(self, applied_action: np.ndarray) -> dict[str, float]:
        a = np.asarray(applied_action, dtype=np.float64).reshape(-1)
        jitter = 0.0 if self._prev_action is None else -float(np.sum((a - self._prev_action) ** 2))
        return {"success": float(self.is_success()), "step": -1.0, "jitter": jitter, "shaped": self._shaped}

    def is_success(self) -> bool:
        return bool(self.env._check_success())

    def expert(self, noise: float = 0.0, seed: int | None = None, style: str = "iid") -> ScriptedExpert:
        return self._expert_factory(self, noise, seed, style)

    def close(self) -> None:
        if self._rig is not None:
            self._rig.close()
            self._rig = None
        self.env.close()

    # ---- frames ------------------------------------------------------------------

    def base_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation matrix (3, 3) of the robot base frame (the OSC reference)."""
        if self._pinned_base is None:
            return self._data.site_xpos[self._base_site].copy(), self._data.site_xmat[self._base_site].reshape(3, 3).copy()
        parent, offset, turn = self._pinned_base
        rot = self._data.xmat[parent].reshape(3, 3)
        return self._data.xpos[parent] + rot @ offset, rot @ turn

    def _fixed_base(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """None when the arm's ``right_center`` site (robosuite's OSC reference) sits on a fixed body; else the fixed
        parent body and the site's pose in it at joint angle 0.

        The IIWA's and the xArm 7's site rides on link 1, so robosuite's base frame turns with joint 1: a goal held in
        that frame moves by its distance times joint 1's turn within each control period, and on PickPlaceCan the
        IIWA chased it until joint 1 sat on its limit; the state and workspace box turned with it too."""
        body = int(self._model.site_bodyid[self._base_site])
        if self._model.body_jntnum[body] == 0:
            return None
        parent = int(self._model.body_parentid[body])
        if self._model.body_jntnum[parent] != 0:
            raise ValueError(f"robot {self.config.robot}: its right_center site rides two joints deep; the scene cannot pin its base frame")
        body_rot, site_rot = np.empty(9), np.empty(9)
        mujoco.mju_quat2Mat(body_rot, self._model.body_quat[body])
        mujoco.mju_quat2Mat(site_rot, self._model.site_quat[self._base_site])
        body_rot, site_rot = body_rot.reshape(3, 3), site_rot.reshape(3, 3)
        return parent, self._model.body_pos[body] + body_rot @ self._model.site_pos[self._base_site], body_rot @ site_rot

    def _pin_controller_base(self) -> None:
        """Make robosuite's OSC read its reference frame from :meth:`base_pose` when the site's own turns (see
        :meth:`_fixed_base`)."""
        if self._pinned_base is not None:
            self.env.robots[0].composite_controller.get_controller_base_pose = lambda controller_name: self.base_pose()

    def to_base(self, world_point: np.ndarray) -> np.ndarray:
        """A world-frame point (3,) in the robot base frame."""
        position, rot = self.base_pose()
        return rot.T @ (np.asarray(world_point, dtype=np.float64) - position)

    def _to_base_quat(self, world_rot: np.ndarray) -> np.ndarray:
        rot = self.base_pose()[1].T @ world_rot.reshape(3, 3)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, rot.reshape(-1))
        return quat

    def _eef_pose(self) -> tuple[np.ndarray, np.ndarray]:
        quat = self._to_base_quat(self._data.site_xmat[self._eef_site])
        return self.to_base(self._data.site_xpos[self._eef_site]), quat if quat @ self._home_quat >= 0 else -quat

    def _object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        quat = self._to_base_quat(self._data.xmat[self._object])
        return self.to_base(self._data.xpos[self._object]), quat if quat[0] >= 0 else -quat

    def _id(self, kind: mujoco.mjtObj, name: str) -> int:
        index = mujoco.mj_name2id(self._model, kind, name)
        if index < 0:
            raise ValueError(
                f"{self.config.env_name} has no {kind.name[6:].lower()} named {name!r}; check the scene config"
            )
        return index


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
