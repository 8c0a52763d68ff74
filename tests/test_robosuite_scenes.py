"""Contract tests of the robosuite-backed scenes (``lift``, ``lift-ur5e``, ``can``) and their experts."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("robosuite")

from robot.types import ACTION, POINTCLOUD, STATE, image_key  # noqa: E402
from sim import robosuite_scenes  # noqa: E402
from sim.robosuite_scene import REWARD_TERMS, RobosuiteScene, RobosuiteSceneConfig  # noqa: E402
from sim.scene import SceneTask, ScriptedExpert, SimScene  # noqa: E402

FACTORIES: dict[str, Callable[..., RobosuiteScene]] = {
    "lift": robosuite_scenes.make_lift,
    "lift-ur5e": robosuite_scenes.make_lift_ur5e,
    "can": robosuite_scenes.make_can,
}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def scene(request: pytest.FixtureRequest):
    """Each scene built once per module (building one takes seconds)."""
    built = FACTORIES[request.param]()
    yield built
    built.close()


def rollout_success(scene: SimScene, expert: ScriptedExpert, seed: int) -> bool:
    """Run the expert from ``reset(seed)``; True as soon as the task's success check holds."""
    scene.reset(seed)
    expert.reset()
    for _ in range(scene.max_steps):
        scene.step(expert.act(scene.observe()))
        if scene.is_success():
            return True
    return False


def success_rate(task: str, noise: float, seeds: range) -> float:
    built = FACTORIES[task]()
    try:
        expert = built.expert(noise=noise, seed=1234)
        return float(np.mean([rollout_success(built, expert, s) for s in seeds]))
    finally:
        built.close()


def test_importing_the_factories_imports_no_robosuite() -> None:
    code = "import sys, sim.robosuite_scenes; assert 'robosuite' not in sys.modules, 'robosuite imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_a_scene_prints_nothing() -> None:
    """robosuite logs a line per controller it loads: 32 of them per evaluation in lanes, unless the scene quiets it."""
    code = "import sim.robosuite_scenes as s; s.make_lift().close(); s.make_lift().close()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "robosuite INFO" not in done.stdout + done.stderr, done.stderr


def test_unknown_option_is_named_with_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="no options \\['horizon'\\].*max_steps"):
        robosuite_scenes.make_lift(horizon=10)


def test_config_rejects_unknown_reward_terms() -> None:
    with pytest.raises(ValueError, match="unknown terms \\['succes'\\]"):
        RobosuiteSceneConfig(
            "lift", "Lift", "Panda", "cube_main", (-1, -1, 0), (1, 1, 2), reward_scales={"succes": 1.0}
        )


def test_scene_conforms_to_the_sim_scene_contract(scene: RobosuiteScene) -> None:
    assert isinstance(scene, SimScene)
    scene.reset(0)
    obs = scene.observe()
    assert set(obs) == set(scene.observation_features)
    state_feature = scene.observation_features[STATE]
    assert obs[STATE].dtype == np.float32 and obs[STATE].shape == state_feature.shape
    assert state_feature.names is not None and len(set(state_feature.names)) == len(state_feature.names)
    action = scene.action_features[ACTION]
    assert action.shape == (7,) and action.names == ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
    limits = scene.limits
    arm = scene.arm_state()
    assert arm.ee_position.shape == (3,)
    assert arm.joint_positions.shape == arm.joint_velocities.shape == (len(limits.joint_low),)
    assert np.all(np.asarray(limits.workspace_low) <= arm.ee_position)
    assert np.all(arm.ee_position <= np.asarray(limits.workspace_high))
    assert np.all(np.asarray(limits.joint_low) <= arm.joint_positions)
    assert np.all(arm.joint_positions <= np.asarray(limits.joint_high))
    assert limits.max_step == pytest.approx((0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 2.0))
    assert set(scene.reward_scales) == set(REWARD_TERMS)
    assert isinstance(scene.expert(), ScriptedExpert)
    np.testing.assert_allclose(obs[STATE][:3], arm.ee_position, atol=1e-6)


def test_reset_is_deterministic_per_seed(scene: RobosuiteScene) -> None:
    def episode(seed: int) -> tuple[np.ndarray, np.ndarray]:
        scene.reset(seed)
        first = scene.observe()[STATE]
        for t in range(5):
            scene.step(np.array([0.02, -0.01, 0.01, 0.0, 0.0, 0.1, 1.0 if t > 2 else -1.0]))
        return first, np.concatenate([scene.observe()[STATE], scene.arm_state().joint_positions])

    first_a, end_a = episode(3)
    episode(4)
    first_b, end_b = episode(3)
    np.testing.assert_array_equal(first_a, first_b)
    np.testing.assert_array_equal(end_a, end_b)
    obj = scene.state_fields["obj_pos"]
    scene.reset(4)
    assert not np.allclose(scene.observe()[STATE][obj], first_a[obj]), "another seed should move the object"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_positive_delta_moves_the_end_effector_that_way(scene: RobosuiteScene, axis: int) -> None:
    scene.reset(0)
    start = scene.arm_state().ee_position
    action = np.zeros(7)
    action[axis], action[6] = 0.03, -1.0
    for _ in range(6):
        scene.step(action)
    moved = scene.arm_state().ee_position - start
    assert moved[axis] > 0.02, f"+{'xyz'[axis]} command moved the end effector by {moved}"
    others = [i for i in range(3) if i != axis]
    assert np.all(np.abs(moved[others]) < 0.4 * moved[axis])


def test_a_yaw_delta_turns_the_gripper_about_base_z(scene: RobosuiteScene) -> None:
    from scipy.spatial.transform import Rotation

    scene.reset(0)
    quat = scene.state_fields["eef_quat"]
    start = Rotation.from_quat(scene.observe()[STATE][quat], scalar_first=True)
    for _ in range(6):
        scene.step(np.array([0, 0, 0, 0, 0, 0.2, -1.0]))
    turn = (Rotation.from_quat(scene.observe()[STATE][quat], scalar_first=True) * start.inv()).as_rotvec()
    assert turn[2] > 0.2 and abs(turn[0]) < 0.1 and abs(turn[1]) < 0.1, f"yaw command turned by {turn}"


def test_reward_terms_are_named_finite_and_scaled(scene: RobosuiteScene) -> None:
    scene.reset(1)
    task = SceneTask(scene)
    a = np.array([0.01, 0, 0, 0, 0, 0, -1.0])
    scene.step(a)
    first = scene.reward_terms(a)
    assert set(first) == set(REWARD_TERMS) and all(math.isfinite(v) for v in first.values())
    assert first["step"] == -1.0 and first["jitter"] == 0.0 and first["success"] == 0.0
    b = np.array([0.0, 0.01, 0, 0, 0, 0, 1.0])
    scene.step(b)
    assert scene.reward_terms(b)["jitter"] == pytest.approx(-(0.01**2 + 0.01**2 + 2.0**2))
    outcome = task.evaluate(scene.observe(), b)
    scales = scene.reward_scales
    assert outcome.terms["jitter"] == pytest.approx(scene.reward_terms(b)["jitter"] * scales["jitter"])
    assert outcome.success is False


def test_step_rejects_a_malformed_action(scene: RobosuiteScene) -> None:
    scene.reset(0)
    with pytest.raises(ValueError, match="finite 7-vector"):
        scene.step(np.array([np.nan, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="finite 7-vector"):
        scene.step(np.zeros(6))


def test_clean_lift_expert_succeeds_on_a_few_seeds() -> None:
    assert success_rate("lift", 0.0, range(3)) == 1.0


def test_camera_images_come_from_the_camera_rig() -> None:
    from sim.cameras import CameraConfig

    built = robosuite_scenes.make_lift(camera=CameraConfig(cameras=("agentview",), height=84, width=84))
    try:
        built.reset(0)
        obs = built.observe()
        key = image_key("agentview")
        assert built.observation_features[key].shape == (84, 84, 3)
        assert obs[key].dtype == np.uint8 and obs[key].shape == (84, 84, 3) and obs[key].std() > 0
    finally:
        built.close()


def test_point_cloud_takes_the_scene_defaults_and_sees_the_cube() -> None:
    from sim.cameras import CameraConfig, PointCloudConfig

    cloud = PointCloudConfig(num_points=256, sampling="random", frame="robot0_base")
    built = robosuite_scenes.make_lift(camera=CameraConfig(cameras=(), pointcloud=cloud))
    try:
        built.reset(0)
        obs = built.observe()
        points = obs[POINTCLOUD]
        assert points.shape == (256, 3) and points.dtype == np.float32
        low, high = np.asarray(built.limits.workspace_low), np.asarray(built.limits.workspace_high)
        assert np.all(points >= low + [0, 0, 0.004]) and np.all(points <= high + 1e-6)  # table cropped away
        cube = obs[STATE][built.state_fields["obj_pos"]]  # base frame, as the points
        assert np.min(np.linalg.norm(points - cube, axis=1)) < 0.03
    finally:
        built.close()


def test_pick_expert_styles_are_drawn_from_the_seed_and_checked() -> None:
    from sim.robosuite_experts import PickExpert, PickExpertConfig

    fields = {k: slice(0, 3) for k in ("eef_pos", "eef_quat", "obj_pos", "obj_quat")}

    def draws(style: str, seed: int) -> list[dict]:
        expert = PickExpert(fields, PickExpertConfig(max_step=(0.05,) * 7, style=style), seed)
        out = []
        for _ in range(6):
            expert.reset()
            out.append(expert.episode_style)
        return out

    for style in ("hesitant", "biased", "mixed"):
        assert draws(style, 3) == draws(style, 3) and draws(style, 3) != draws(style, 4), style
    assert {d["strategy"] for seed in range(3) for d in draws("mixed", seed)} == {"direct", "detour"}
    bias = PickExpertConfig(max_step=(0.05,) * 7).bias_offset[0]
    assert all(0.8 * bias <= d["offset"][0] <= 1.2 * bias for d in draws("biased", 0))
    assert draws("iid", 0) == [{}] * 6
    with pytest.raises(ValueError, match="unknown expert style 'lazy'; choose one of iid, hesitant, biased, mixed"):
        PickExpertConfig(max_step=(0.05,) * 7, style="lazy")


def test_lift_expert_styles_show_their_flaws() -> None:
    """On lift: hesitant takes longer than the clean expert, biased closes its fingers off the cube's centre by its
    offset, and mixed's detour takes longer than its direct approach from the same state."""
    built = robosuite_scenes.make_lift()
    obj, eef = built.state_fields["obj_pos"], built.state_fields["eef_pos"]

    def run(style: str, seed: int, expert_seed: int = 0) -> tuple[int, np.ndarray, dict]:
        """(steps to success or the limit, end effector minus cube at the first closing step, the episode's draws)"""
        expert = built.expert(seed=expert_seed, style=style)
        built.reset(seed)
        expert.reset()
        grasp_error = np.full(3, np.nan)
        for t in range(built.max_steps):
            state = built.observe()[STATE]
            action = expert.act({STATE: state})
            if action[6] > 0 and np.isnan(grasp_error[0]):
                grasp_error = state[eef] - state[obj]
            built.step(action)
            if built.is_success():
                break
        return t + 1, grasp_error, expert.episode_style

    try:
        clean = [run("iid", seed) for seed in (0, 1)]
        assert np.mean([run("hesitant", seed)[0] for seed in (0, 1)]) > 1.5 * np.mean([n for n, _, _ in clean])
        assert all(np.linalg.norm(error[:2]) < 0.01 for _, error, _ in clean)
        _, error, drawn = run("biased", 0)
        np.testing.assert_allclose(error[:2], drawn["offset"][:2], atol=0.01)
        assert drawn["offset"][0] > 0.015
        by_strategy = {}
        for expert_seed in range(6):
            n, _, drawn = run("mixed", 0, expert_seed)
            by_strategy.setdefault(drawn["strategy"], n)
        assert by_strategy["detour"] > 1.5 * by_strategy["direct"], by_strategy
    finally:
        built.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(FACTORIES))
def test_clean_expert_succeeds_on_50_seeds(task: str) -> None:
    assert success_rate(task, 0.0, range(50)) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(FACTORIES))
def test_noisy_expert_fails_clearly_more_often(task: str) -> None:
    rate = success_rate(task, 0.5, range(50))
    assert 0.3 <= rate <= 0.85, f"noise 0.5 expert on {task} succeeded {rate:.0%}"
