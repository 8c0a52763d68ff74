"""The robosuite family: ``--task robosuite:<Env>:<Robot>``, a single-arm robosuite environment on one of its arms.

Every task is a :class:`sim.robosuite_scene.RobosuiteScene` (OSC_POSE delta control in the base frame, the kit's
action convention, seeded resets) built from two tables:

- :data:`ENVIRONMENTS`, per environment: the object whose pose is the state, the place target (Stack's cube B), the
  episode limit, the end-effector box and the scripted expert (Lift, Stack, PickPlaceCan, Door have one; the others
  say so when asked for it);
- :data:`ARMS`, per arm: the gripper (robosuite 1.5.2's Robotiq85 does not close on a 4 cm cube with MuJoCo 3.9, so
  UR5e and Kinova3 carry the Robotiq 2F-140 as ``lift-ur5e`` does) and the arm's own safety config.

The end-effector box is the environment's, in the world frame, and fits every arm: its floor lies 4 cm under the
table (the safety layer stops rotation within 5 cm of a wall, which froze grasps at the table top), and the IIWA,
whose robosuite base frame turned with its first joint (``RobosuiteScene._fixed_base``), no longer carries its box
round with it (the built-in ``lift`` box clipped it 666 times over 40 episodes, issue 26). robosuite is imported
only when a scene is built; resolving a name checks it against these tables alone.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from robot.types import SafetyConfig

if TYPE_CHECKING:
    from sim.cameras import CameraConfig
    from sim.robosuite_scene import ExpertFactory, RobosuiteScene


@dataclass(frozen=True)
class RobosuiteEnv:
    """How one robosuite environment becomes a family task (any arm)."""

    object_body: str
    """Body whose pose is ``obj_*`` in ``observation.state``."""
    workspace_low: tuple[float, float, float]
    """Lower corner of the end-effector box, metres, world frame (robosuite's table top is at z = 0.8)."""
    workspace_high: tuple[float, float, float]
    """Upper corner of that box."""
    max_steps: int
    """Episode limit in control steps (20 Hz)."""
    expert: str | None = None
    """Name of the expert factory in ``sim.robosuite_family_experts``; None: the environment has none."""
    target_body: str | None = None
    """Body whose position is ``target_*`` in the state (a place target)."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra ``robosuite.make`` arguments."""


@dataclass(frozen=True)
class RobosuiteArm:
    """How one robosuite arm takes part in the family."""

    gripper: str | None = None
    """robosuite gripper class replacing the arm's default one; None keeps it."""
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    """The arm's safety config (every environment)."""


TABLE_BOX = ((-0.35, -0.35, 0.76), (0.30, 0.35, 1.35))
"""World frame. The floor lies 4 cm under the table top (z = 0.8): the safety layer freezes rotation within one step
(5 cm) of a wall, and at the table top's level it froze the experts' grasps (23 of Lift's 36 steps on the Panda)."""
BINS_BOX = ((-0.15, -0.55, 0.78), (0.35, 0.58, 1.35))
"""World frame: both bins, the floor 4 cm under theirs (z = 0.82) for the same reason."""
DOOR_BOX = ((-0.35, -0.45, 0.80), (0.30, 0.35, 1.35))
"""World frame: the door's swing toward the robot, down to the table."""
ENVIRONMENTS: dict[str, RobosuiteEnv] = {
    "Lift": RobosuiteEnv("cube_main", *TABLE_BOX, max_steps=150, expert="lift_expert_for"),
    "Stack": RobosuiteEnv("cubeA_main", *TABLE_BOX, max_steps=200, expert="stack_expert", target_body="cubeB_main"),
    "PickPlaceCan": RobosuiteEnv("Can_main", *BINS_BOX, max_steps=300, expert="can_expert"),
    "Door": RobosuiteEnv("Door_latch", *DOOR_BOX, max_steps=300, expert="door_expert"),
    "PickPlaceMilk": RobosuiteEnv("Milk_main", *BINS_BOX, max_steps=300),
    "PickPlaceBread": RobosuiteEnv("Bread_main", *BINS_BOX, max_steps=300),
    "PickPlaceCereal": RobosuiteEnv("Cereal_main", *BINS_BOX, max_steps=300),
    "NutAssemblySquare": RobosuiteEnv("SquareNut_main", *TABLE_BOX, max_steps=300),
    "NutAssemblyRound": RobosuiteEnv("RoundNut_main", *TABLE_BOX, max_steps=300),
}
"""The single-arm environments with one object of interest. Left out: two-arm ones (``TwoArm*``), those with several
objects to choose from (``PickPlace``, ``PickPlaceSingle``, ``NutAssembly``, ``NutAssemblySingle``), and ``Wipe`` and
``ToolHang``, whose state is no single object's pose."""

ROBOTIQ_140 = "Robotiq140Gripper"
ARMS: dict[str, RobosuiteArm] = {
    "Panda": RobosuiteArm(),
    "IIWA": RobosuiteArm(),
    "UR5e": RobosuiteArm(gripper=ROBOTIQ_140),
    "Kinova3": RobosuiteArm(gripper=ROBOTIQ_140),
    "Sawyer": RobosuiteArm(),
    "XArm7": RobosuiteArm(),
}
"""The single arms with rated joint speeds (``sim.robosuite_scene.MAX_JOINT_VELOCITY``). Left out: Jaco (no rated
speeds here; its three-finger gripper fits no expert) and the mobile and humanoid robots."""


def robosuite_family(rest: str) -> Callable[..., RobosuiteScene]:
    """The factory of ``robosuite:<Env>:<Robot>``; a ValueError naming the valid environments or arms otherwise."""
    env, colon, arm = rest.partition(":")
    usage = "write robosuite:<Env>:<Robot>, e.g. robosuite:Lift:IIWA"
    if env not in ENVIRONMENTS:
        close = _close(env, ENVIRONMENTS)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(f"unknown robosuite environment {env!r} in robosuite:{rest}; {hint}environments: {', '.join(ENVIRONMENTS)} ({usage})")
    if not colon or arm not in ARMS:
        close = _close(arm, ARMS)
        hint = f"did you mean {close[0]}? " if close else ""
        what = f"unknown robosuite arm {arm!r}" if colon else "no arm"
        raise ValueError(f"{what} in robosuite:{rest}; {hint}arms: {', '.join(ARMS)} ({usage})")

    def factory(camera: CameraConfig | None = None, **options: Any) -> RobosuiteScene:
        from sim.robosuite_scene import RobosuiteScene
        from sim.robosuite_scenes import configure

        return RobosuiteScene(configure(family_config(env, arm), options), _expert(env, arm), camera)

    return factory


def family_config(env: str, arm: str) -> Any:
    """The :class:`sim.robosuite_scene.RobosuiteSceneConfig` of ``robosuite:<env>:<arm>``."""
    from sim.robosuite_scene import RobosuiteSceneConfig

    spec, robot = ENVIRONMENTS[env], ARMS[arm]
    kwargs = dict(spec.env_kwargs) | ({"gripper_types": robot.gripper} if robot.gripper else {})
    return RobosuiteSceneConfig(
        name=f"robosuite:{env}:{arm}",
        env_name=env,
        robot=arm,
        object_body=spec.object_body,
        target_body=spec.target_body,
        workspace_low=spec.workspace_low,
        workspace_high=spec.workspace_high,
        max_steps=spec.max_steps,
        env_kwargs=kwargs,
        safety=robot.safety,
    )


def _close(name: str, names: Mapping[str, Any]) -> list[str]:
    """The valid name ``name`` differs from only in case, else the closest one (or none)."""
    same = [n for n in names if n.lower() == name.lower()]
    return same or difflib.get_close_matches(name, names, n=1)


def _expert(env: str, arm: str) -> ExpertFactory:
    name = ENVIRONMENTS[env].expert
    if name is None:
        with_one = ", ".join(e for e, s in ENVIRONMENTS.items() if s.expert)
        return _no_expert(f"task robosuite:{env}:{arm} has no scripted expert (robosuite environments with one: {with_one}); "
                          "record it with --device keyboard, spacemouse or gamepad")  # fmt: skip
    from sim import robosuite_family_experts

    return getattr(robosuite_family_experts, name)


def _no_expert(message: str) -> ExpertFactory:
    def factory(scene: Any, noise: float, seed: int | None, style: str = "iid") -> Any:
        raise NotImplementedError(message)

    return factory
