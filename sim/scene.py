"""The contract every simulated task scene implements.

A scene owns one MuJoCo model and its data: the arm, the objects, the cameras,
the reward terms and the success check. ``hardware.mujoco.MujocoArm`` turns a
scene into the hardware layer's ``Arm`` (so it goes through the same safety layer
as a real arm), and :class:`SceneTask` turns it into a ``robot.protocols.Task``.

Action convention (every arm scene): ``action[:3]`` end-effector position delta in
metres in the robot base frame, ``action[3:6]`` rotation delta as an axis-angle
vector in radians, ``action[6]`` gripper command in [-1 (open), 1 (closed)].
Planar scenes use ``action[:2]`` = (dx, dy) in metres. Each scene's
``action_features["action"].names`` spells its layout out.
"""

from __future__ import annotations

from typing import Mapping, Protocol, runtime_checkable

import numpy as np

from robot.protocols import Observation, StepOutcome
from robot.types import ArmLimits, ArmState, Feature  # noqa: F401  (re-exported: scenes declare them)


EXPERT_STYLES = ("iid", "hesitant", "biased", "mixed")
"""How a scripted expert is imperfect besides its i.i.d. ``noise`` (each scene's expert documents its own):

- ``iid``: no systematic flaw; ``noise`` alone makes it sloppy (the default).
- ``hesitant``: a slow approach and single still steps: it succeeds, but late (an imitator of it sometimes too late).
- ``biased``: a systematic offset (off-centre push, off-centre grasp) that sometimes fails.
- ``mixed``: two strategies for the same states, drawn per episode, one clearly slower or worse.

Every style leaves a better action for RL to find; ``noise`` still adds i.i.d. noise on top.
"""


def check_expert_style(style: str) -> str:
    """``style`` if it is one of :data:`EXPERT_STYLES`, else a ValueError naming the choices."""
    if style not in EXPERT_STYLES:
        raise ValueError(f"unknown expert style {style!r}; choose one of {', '.join(EXPERT_STYLES)}")
    return style


@runtime_checkable
class ScriptedExpert(Protocol):
    """A scripted controller that stands in for a human teleoperator.

    It may read the scene's privileged state. ``noise`` in [0, 1] makes it
    imperfect (jittery, hesitant, sometimes wrong); 0 is the clean expert.
    ``style`` (one of :data:`EXPERT_STYLES`) adds a systematic flaw. Its random
    generator runs on across episodes (each :meth:`reset` draws the next
    episode's flaws), so an expert built from one seed is reproducible.
    """

    def reset(self) -> None: ...

    def act(self, observation: Observation) -> np.ndarray: ...


@runtime_checkable
class SimScene(Protocol):
    name: str  # task name, e.g. "push", "lift", "lift-ur5e"
    robot_name: str  # arm model, e.g. "panda", "ur5e", "pusher"
    fps: float  # control rate
    max_steps: int

    @property
    def observation_features(self) -> Mapping[str, Feature]: ...

    @property
    def action_features(self) -> Mapping[str, Feature]: ...

    @property
    def limits(self) -> ArmLimits: ...

    @property
    def reward_scales(self) -> Mapping[str, float]: ...

    def reset(self, seed: int) -> None: ...

    def step(self, action: np.ndarray) -> None:
        """Apply one (already safety-checked) control action and advance physics one control period."""
        ...

    def observe(self) -> Observation:
        """Observation keyed as ``observation_features`` (no timestamp)."""
        ...

    def arm_state(self) -> ArmState: ...

    def reward_terms(self, applied_action: np.ndarray) -> dict[str, float]:
        """Unscaled named reward terms for the step just taken."""
        ...

    def is_success(self) -> bool: ...

    def expert(self, noise: float = 0.0, seed: int | None = None, style: str = "iid") -> ScriptedExpert:
        """The task's scripted expert; a scene without one raises NotImplementedError."""
        ...

    def close(self) -> None: ...

    # Optional, listed by `robot tasks` when a scene has it: ``camera_names: tuple[str, ...]``, the cameras its
    # ``camera`` option can render (``sim.cameras.model_cameras(model)`` for a MuJoCo model).
    # Optional: ``safety: robot.types.SafetyConfig``, the task's own safety limits, which
    # ``hardware.registry.make_sim`` uses unless its caller passes a config (Meta-World's Sawyer leans on a
    # joint limit in normal work, so its task turns the joint-limit guard off); ``joint_names: tuple[str, ...]``,
    # what safety warnings call the joints of ``arm_state()``; ``joint_response(state)``, the joints' motion per unit of
    # end-effector motion (``hardware.arm.Arm``), which lets the joint-limit guard cancel only motion into a limit.


class SceneTask:
    """A scene seen as a ``robot.protocols.Task``: scaled reward terms and the success check."""

    def __init__(self, scene: SimScene):
        self.scene = scene
        self.name = scene.name
        self.max_steps = scene.max_steps
        self.fps = scene.fps

    @property
    def reward_scales(self) -> Mapping[str, float]:
        return self.scene.reward_scales

    def evaluate(self, observation: Observation, applied_action: np.ndarray) -> StepOutcome:
        raw = self.scene.reward_terms(applied_action)
        scales = self.scene.reward_scales
        return StepOutcome(terms={k: float(v) * scales.get(k, 1.0) for k, v in raw.items()}, success=self.scene.is_success())
