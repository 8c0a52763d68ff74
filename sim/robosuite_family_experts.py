"""The scripted experts of the robosuite family (``sim.robosuite_family``), one factory per environment.

Each is ``(scene, noise, seed, style) -> expert`` and reads what it needs off the scene it is built for, so one
factory serves every arm: Lift and PickPlaceCan are the built-in tasks' experts (``sim.robosuite_scenes``), Stack
is the pick expert placing cube A on cube B wherever that episode put it (and grasping again when cube A stayed
behind), Door is :class:`sim.door_expert.DoorExpert`.
"""

from __future__ import annotations

from sim.door_expert import DoorExpert
from sim.door_expert import door_expert as make_door_expert
from sim.robosuite_experts import PickExpert, PickExpertConfig
from sim.robosuite_scene import RobosuiteScene
from sim.robosuite_scenes import can_expert as _can_expert
from sim.robosuite_scenes import lift_expert, lift_ur5e_expert

STACK_DROP = 0.05
"""Height of cube A's centre above cube B's at release: 2.5 + 2 cm of half sides, and a 5 mm drop."""
ROBOTIQ_140 = "Robotiq140Gripper"
CAN_CARRY_TILT = {"Kinova3": 0.4}
"""``PickExpertConfig.carry_tilt`` per arm on PickPlaceCan: held straight down, the Kinova3's 2F-140 stopped 2-3 cm
short of the compartment's near corner with the arm at full stretch (0 of 6 episodes)."""
CAN_GRASP_TILT = {"UR5e": 0.3, "Kinova3": 0.3}
"""``PickExpertConfig.grasp_tilt`` per arm on PickPlaceCan: a can in the far half of the bin put the Kinova3's joint 6 on
its limit (50 seeds: 35 straight down, 48 leant 0.3 rad; the UR5e 44 -> 45; the IIWA fell from 47 to 39, so not it)."""


def _wide_gripper(scene: RobosuiteScene) -> bool:
    return scene.config.env_kwargs.get("gripper_types") == ROBOTIQ_140


def lift_expert_for(scene: RobosuiteScene, noise: float, seed: int | None, style: str = "iid") -> PickExpert:
    """Lift's expert; a Robotiq 2F-140 gets ``lift-ur5e``'s biased grasp, scaled to its wider fingers."""
    return (lift_ur5e_expert if _wide_gripper(scene) else lift_expert)(scene, noise, seed, style)


def stack_expert(scene: RobosuiteScene, noise: float, seed: int | None, style: str = "iid") -> PickExpert:
    """Pick cube A and let it go :data:`STACK_DROP` above cube B, servoing the held cube (not the gripper) there."""
    config = PickExpertConfig(
        max_step=scene.limits.max_step,
        place_on_target=(0.0, 0.0, STACK_DROP),
        regrasp=True,
        noise=noise,
        style=style,
        bias_offset=(0.03, 0.0, 0.0) if _wide_gripper(scene) else (0.024, 0.0, 0.0),
    )
    return PickExpert(scene.state_fields, config, seed)


def can_expert(scene: RobosuiteScene, noise: float, seed: int | None, style: str = "iid") -> PickExpert:
    """PickPlaceCan's expert (``can``'s) grasping again when the can stayed behind (the UR5e's 2F-140 closed beside it
    in 1 of 12 episodes), its fingers leant outward on the arms of :data:`CAN_GRASP_TILT` and :data:`CAN_CARRY_TILT`."""
    arm = scene.config.robot
    tilts = {"carry_tilt": CAN_CARRY_TILT.get(arm, 0.0), "grasp_tilt": CAN_GRASP_TILT.get(arm, 0.0)}
    return _can_expert(scene, noise, seed, style, regrasp=True, **tilts)


def door_expert(scene: RobosuiteScene, noise: float, seed: int | None, style: str = "iid") -> DoorExpert:
    """Door's expert (:func:`sim.door_expert.door_expert`)."""
    return make_door_expert(scene, noise, seed, style)
