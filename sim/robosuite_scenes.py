"""The robosuite-backed tasks of the kit, as lazy factories for ``sim.registry``.

- ``make_lift``: robosuite ``Lift`` with a Panda (``lift``): pick the cube up.
- ``make_lift_ur5e``: the same task on a UR5e with a Robotiq 2F-140 (``lift-ur5e``): one adapter, any arm.
- ``make_can``: robosuite ``PickPlaceCan`` with a Panda (``can``): carry the can
  from the left bin into its compartment of the right bin and let go.

Each factory takes an optional :class:`sim.cameras.CameraConfig` and keyword
overrides of :class:`sim.robosuite_scene.RobosuiteSceneConfig` fields
(``max_steps``, ``init_joint_noise``, ``reward_scales``, ...). Importing this
module imports neither robosuite nor a renderer.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.robosuite_experts import PickExpert, PickExpertConfig
from sim.robosuite_scene import RobosuiteScene, RobosuiteSceneConfig

if TYPE_CHECKING:
    from sim.cameras import CameraConfig

LIFT = RobosuiteSceneConfig(
    name="lift",
    env_name="Lift",
    robot="Panda",
    object_body="cube_main",
    workspace_low=(-0.35, -0.35, 0.80),  # world frame; the table top is at z = 0.8
    workspace_high=(0.30, 0.35, 1.35),
    max_steps=150,
)
# robosuite 1.5.2's default Robotiq85 does not close on a 4 cm cube with mujoco 3.9 (its four-bar
# links collide with each other and its tendon coupling goes unstable); the Robotiq 2F-140 grasps.
LIFT_UR5E = dataclasses.replace(LIFT, name="lift-ur5e", robot="UR5e", env_kwargs={"gripper_types": "Robotiq140Gripper"})
CAN = RobosuiteSceneConfig(
    name="can",
    env_name="PickPlaceCan",
    robot="Panda",
    object_body="Can_main",
    workspace_low=(-0.15, -0.55, 0.82),  # both bins; their floors are at z = 0.82
    workspace_high=(0.35, 0.58, 1.35),
    max_steps=300,
)
CAN_CARRY_Z = 0.99  # world z of the gripper while carrying: the can's bottom clears the 0.90 m bin walls
CAN_PLACE_MARGIN = 0.06  # metres between the released can's centre and its compartment's walls
CAN_RELEASE_Z = 0.91  # world z of the gripper at release: the can drops ~5 cm; lower stretches the arm to its limits


def make_lift(camera: CameraConfig | None = None, **opts: Any) -> RobosuiteScene:
    """Lift the cube (Panda). ``opts`` override :class:`RobosuiteSceneConfig` fields."""
    return RobosuiteScene(configure(LIFT, opts), lift_expert, camera)


def make_lift_ur5e(camera: CameraConfig | None = None, **opts: Any) -> RobosuiteScene:
    """Lift the cube (UR5e, Robotiq 2F-140 gripper). ``opts`` override :class:`RobosuiteSceneConfig` fields."""
    return RobosuiteScene(configure(LIFT_UR5E, opts), lift_ur5e_expert, camera)


def make_can(camera: CameraConfig | None = None, **opts: Any) -> RobosuiteScene:
    """Pick the can and place it in its bin (Panda). ``opts`` override :class:`RobosuiteSceneConfig` fields."""
    return RobosuiteScene(configure(CAN, opts), can_expert, camera)


def configure(defaults: RobosuiteSceneConfig, opts: dict[str, Any]) -> RobosuiteSceneConfig:
    names = {f.name for f in dataclasses.fields(RobosuiteSceneConfig)}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise TypeError(f"scene {defaults.name!r} has no options {unknown}; valid options are {sorted(names)}")
    return dataclasses.replace(defaults, **opts)


def lift_expert(scene: RobosuiteScene, noise: float, seed: int | None, style: str = "iid") -> PickExpert:
    """Approach above the cube, turn to its faces, descend, close and lift 15 cm."""
    return PickExpert(scene.state_fields, PickExpertConfig(max_step=scene.limits.max_step, noise=noise, style=style), seed)


def lift_ur5e_expert(scene: RobosuiteScene, noise: float, seed: int | None, style: str = "iid") -> PickExpert:
    """The lift expert, its biased grasp scaled to the UR5e's wider, more forgiving gripper."""
    config = PickExpertConfig(
        max_step=scene.limits.max_step, noise=noise, style=style, bias_offset=(0.03, 0.0, 0.0)
    )
    return PickExpert(scene.state_fields, config, seed)


def can_expert(scene: RobosuiteScene, noise: float, seed: int | None, style: str = "iid", *, carry_tilt: float = 0.0,
               grasp_tilt: float = 0.0, regrasp: bool = False) -> PickExpert:  # fmt: skip
    """Grasp the can round its middle, carry it above the walls and drop it in its compartment (``carry_tilt``,
    ``grasp_tilt`` and ``regrasp``: see :class:`PickExpertConfig`)."""
    x, y = _place_point(scene)
    place = scene.to_base(np.array([x, y, CAN_RELEASE_Z]))
    config = PickExpertConfig(
        max_step=scene.limits.max_step,
        yaw_symmetry=None,  # a can is round
        place_target=(float(place[0]), float(place[1]), float(place[2])),
        carry_z=float(scene.to_base(np.array([x, y, CAN_CARRY_Z]))[2]),
        carry_tilt=carry_tilt,
        grasp_tilt=grasp_tilt,
        regrasp=regrasp,
        noise=noise,
        style=style,
        # the styles' flaws, scaled to a round can and a 300-step task (calibration in sim/robosuite_experts.py)
        bias_offset=(0.015, 0.0, 0.0),
        detour=(0.0, 0.25, 0.25),
        detour_speed=0.2,
    )
    return PickExpert(scene.state_fields, config, seed)


def _place_point(scene: RobosuiteScene) -> tuple[float, float]:
    """World (x, y) in the object's target compartment (as robosuite's ``not_in_bin`` defines it), as near
    the robot as a margin from the compartment's walls allows: its far corner lies beyond the Panda's reach."""
    env = scene.env
    index, half = int(env.object_id), np.asarray(env.bin_size[:2], dtype=np.float64) / 2
    low = np.asarray(env.bin2_pos[:2], dtype=np.float64) - half * [index in (0, 2), index < 2]
    x, y = np.clip(scene.base_pose()[0][:2], low + CAN_PLACE_MARGIN, low + half - CAN_PLACE_MARGIN)
    return float(x), float(y)
