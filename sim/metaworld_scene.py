"""The Meta-World family: ``--task metaworld:<task>`` for every Meta-World MT1 task, with its scripted expert.

Meta-World (``pip install -e ".[metaworld]"``, pinned to 3.0.0: 3.1 pins a MuJoCo outside the kit's
range) is imported only when a scene is built or the family is resolved. Each task is one
``metaworld.env_dict.ALL_V3_ENVIRONMENTS`` class in MT1's goal-observable setting (the goal position
is in the observation), behind :class:`sim.gym_task.GymScene`:

- ``reset(seed)`` draws the object and goal positions from the task's random reset space with the
  env's generator seeded by ``seed`` (MT1 draws its 50 fixed tasks the same way), so one seed is one
  initial state;
- the action is ``(dx, dy, dz, gripper)``: Meta-World's mocap moves the hand 1 cm per unit, so the kit's
  translation is in metres, bounded to +-1 cm per step at 80 Hz; ``gripper`` is Meta-World's grab
  effort, -1 open .. 1 closed, as the kit's convention;
- ``observation.state`` is Meta-World's 39-D observation (hand, gripper opening, two objects' poses, the
  same 18 values one step earlier, the goal), named entry by entry;
- success is ``info["success"]``; reward terms are ``success`` (scale 1) and Meta-World's dense
  ``reward`` (0..10 per step, scale 0 by default, as the kit's sparse tasks);
- cameras: any camera of the model (``corner``, ``topview``, ``gripperPOV``...), point clouds too;
- the expert is ``metaworld.policies.ENV_POLICY_MAP[task]`` on the env's own observation.

The Sawyer brings its own safety limits (:data:`SAWYER_SAFETY`): at home, joint ``right_j1`` sits 0.06 rad
from its limit, inside the default 2% joint margin (0.066 rad), and the mocap drags it onto the limit in
40-95% of an expert's steps (MuJoCo's soft limit lets it reach -0.47 for a -0.5 limit), so the default
config cancelled the expert's motion on 1,990 of 2,000 steps and it scored 0/10 (issue 26).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from robot.types import ArmLimits, ArmState, SafetyConfig
from sim.gym_task import GymScene, GymTaskConfig, _with_options

if TYPE_CHECKING:
    from sim.cameras import CameraConfig

INSTALL = 'pip install -e ".[metaworld]"'
ACTION_NAMES = ("dx", "dy", "dz", "gripper")
ACTION_SCALE = (0.01, 0.01, 0.01, 1.0)  # Meta-World's mocap moves 1 cm per action unit; the grab effort stays as it is
SAWYER_JOINTS = tuple(f"right_j{i}" for i in range(7))
SAWYER_RATED_JOINT_VELOCITY = (1.74, 1.328, 1.957, 1.957, 3.485, 3.485, 4.545)
"""Rated joint speeds (rad/s) of Rethink's Sawyer (``sawyer_description`` URDF); the MJCF does not carry them."""
SIM_SPEED_FACTOR = 2.0
"""The speed guard's limit is this times the rated speeds: Meta-World's mocap drags the simulated arm faster than the
real one moves (its experts peak at 2.3x the rated speeds), and at 1x the guard stopped door-open's expert in 4 of
10 episodes (0 at 2x); runaway motion still trips it."""
SAWYER_SAFETY = SafetyConfig(guard_joint_limits=False)
"""The Sawyer's safety config: no joint-limit guard (MuJoCo's joint constraints hold the limits, and the
mocap-driven arm leans on ``right_j1``'s limit in normal work: even a 0% margin cancelled the experts'
motion on ~97% of steps, 3/150 successes over 50 tasks); the workspace box (the task's mocap box), the
speed guard (:data:`SIM_SPEED_FACTOR` x the rated speeds), the step bounds, NaN rejection, watchdog and
e-stop all stay."""
POINTCLOUD_CAMERA = "corner"

_OBJECT = ("x", "y", "z", "q0", "q1", "q2", "q3")
_FRAME = ("hand_x", "hand_y", "hand_z", "gripper_open", *(f"obj0_{n}" for n in _OBJECT), *(f"obj1_{n}" for n in _OBJECT))
STATE_NAMES = (*_FRAME, *(f"prev_{n}" for n in _FRAME), "goal_x", "goal_y", "goal_z")
"""Meta-World's 39-D observation: this step's 18 values, the previous step's, the goal."""


def _metaworld() -> Any:
    """The metaworld package, or one line saying how to install it."""
    try:
        import metaworld
    except ImportError as e:
        if getattr(e, "name", None) not in (None, "metaworld"):
            raise ValueError(f"Meta-World does not import ({type(e).__name__}: {e}); reinstall it with {INSTALL}") from None
        raise ValueError(f"Meta-World tasks need the metaworld package: {INSTALL}") from None
    return metaworld


def metaworld_tasks() -> tuple[str, ...]:
    """Every Meta-World MT1 task name (``assembly-v3``, ``button-press-v3``...)."""
    _metaworld()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(ALL_V3_ENVIRONMENTS)


def metaworld_family(task: str) -> Callable[..., "MetaWorldScene"]:
    """The factory of ``metaworld:<task>``; a ValueError naming close tasks (or how to install) otherwise."""
    tasks = metaworld_tasks()
    if task not in tasks:
        close = difflib.get_close_matches(task, tasks, n=3)
        hint = f"did you mean {', '.join(f'metaworld:{c}' for c in close)}? " if close else ""
        raise ValueError(f"unknown Meta-World task {task!r}; {hint}Meta-World {_version()} has {len(tasks)}: {', '.join(tasks)}")

    def factory(camera: CameraConfig | None = None, **options: Any) -> MetaWorldScene:
        return MetaWorldScene(task, camera=camera, **options)

    return factory


class MetaWorldScene(GymScene):
    """One Meta-World MT1 task (see the module's docstring); ``options`` replace :class:`GymTaskConfig` fields
    (``max_steps``, ``reward_scales``, ``safety``...)."""

    def __init__(self, task: str, *, camera: CameraConfig | None = None, **options: Any):
        _metaworld()
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {task!r}; see metaworld_tasks()")
        self.task = task
        env = ALL_V3_ENVIRONMENTS[task](render_mode=None)
        env._partially_observable = False  # MT1: the goal is observed
        del env.sawyer_observation_space  # recomputed for the observable goal
        env._set_task_called = True
        env._freeze_rand_vec = False  # each reset draws a new initial state ...
        env.seeded_rand_vec = True  # ... from the env's own generator, which reset(seed) seeds
        horizon = int(env.max_path_length)
        env.max_path_length = 2**31 - 1  # the kit ends episodes; holds and watchdogs may step past Meta-World's horizon
        model = env.model
        self._qpos = np.array([model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in SAWYER_JOINTS])
        self._qvel = np.array([model.jnt_dofadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in SAWYER_JOINTS])
        self._ranges = model.jnt_range[[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in SAWYER_JOINTS]].copy()
        self._mocap_box = (np.asarray(env.mocap_low, np.float64).copy(), np.asarray(env.mocap_high, np.float64).copy())
        defaults = GymTaskConfig(max_steps=horizon, fps=float(env.metadata["render_fps"]), action_scale=ACTION_SCALE,
                                 action_names=ACTION_NAMES, state_names=STATE_NAMES, reward_scales={"reward": 0.0, "success": 1.0},
                                 robot_name="sawyer", safety=SAWYER_SAFETY)  # fmt: skip
        self.joint_names = SAWYER_JOINTS
        super().__init__(env, _with_options(defaults, options, f"metaworld:{task}"), name=f"metaworld:{task}", camera=camera)

    def _arm_limits(self) -> ArmLimits:
        """The task's mocap box as the workspace, 1 cm and a full gripper swing per step, the Sawyer's joint ranges
        and :data:`SIM_SPEED_FACTOR` x its rated speeds."""
        low, high = self._mocap_box
        return ArmLimits(
            workspace_low=tuple(float(v) for v in low),
            workspace_high=tuple(float(v) for v in high),
            max_step=(0.01, 0.01, 0.01, 2.0),
            joint_low=tuple(float(v) for v in self._ranges[:, 0]),
            joint_high=tuple(float(v) for v in self._ranges[:, 1]),
            max_joint_velocity=tuple(SIM_SPEED_FACTOR * v for v in SAWYER_RATED_JOINT_VELOCITY),
        )

    def _reset_env(self, seed: int) -> tuple[Any, dict[str, Any]]:
        self.env.seed(seed)  # Meta-World's reset ignores its seed argument
        return self.env.reset()

    def arm_state(self) -> ArmState:
        data = self.env.data
        return ArmState(
            ee_position=np.asarray(self.env.get_endeff_pos(), dtype=np.float64).copy(),
            joint_positions=data.qpos[self._qpos].copy(),
            joint_velocities=data.qvel[self._qvel].copy(),
        )

    def _pointcloud_defaults(self) -> tuple[str, tuple[float, float, float], tuple[float, float, float]]:
        """The ``corner`` camera, cropped to the mocap box widened to the table (objects sit beyond the hand's reach)."""
        low, high = self._mocap_box
        return POINTCLOUD_CAMERA, (float(low[0]), float(low[1]), 0.005), (float(high[0]), float(high[1]), float(high[2]))

    def _expert_policy(self) -> Callable[[Any], np.ndarray]:
        from metaworld.policies import ENV_POLICY_MAP

        return ENV_POLICY_MAP[self.task]().get_action


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("metaworld")
    except importlib.metadata.PackageNotFoundError:
        return "?"
