"""The push scene and the task registry: determinism, reward terms, success, experts, lazy rendering."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported, for the camera tests

import mujoco
import numpy as np
import pytest

from robot.types import ACTION, POINTCLOUD, STATE, image_key
from sim.cameras import CameraConfig, PointCloudConfig
from sim.push import PushConfig, PushScene, make_push
from sim.registry import TASKS, make_scene, task_names
from sim.scene import SceneTask, SimScene


@pytest.fixture
def scene():
    s = PushScene()
    yield s
    s.close()


def _rollout(scene: PushScene, seed: int, noise: float, style: str = "iid") -> tuple[bool, int]:
    """Run the expert from ``reset(seed)`` until success or ``max_steps``; return (success, steps)."""
    scene.reset(seed)
    expert = scene.expert(noise=noise, seed=seed, style=style)
    for t in range(scene.max_steps):
        scene.step(expert.act(scene.observe()))
        if scene.is_success():
            return True, t + 1
    return False, scene.max_steps


def test_implements_the_scene_contract(scene: PushScene) -> None:
    assert isinstance(scene, SimScene)
    assert (scene.name, scene.robot_name, scene.fps) == ("push", "pusher", 10.0)
    obs = scene.observe()
    assert set(obs) == set(scene.observation_features)
    feat = scene.observation_features[STATE]
    assert obs[STATE].dtype == np.float32 and obs[STATE].shape == feat.shape and len(feat.names) == feat.shape[0]
    act = scene.action_features[ACTION]
    assert act.names == ("dx", "dy") and act.high == (scene.config.max_step,) * 2


def test_same_seed_same_state(scene: PushScene) -> None:
    def trajectory(seed: int) -> np.ndarray:
        scene.reset(seed)
        expert = scene.expert(noise=0.5, seed=1)
        states = [scene.observe()[STATE]]
        for _ in range(15):
            scene.step(expert.act({}))
            states.append(scene.observe()[STATE])
        return np.stack(states)

    np.testing.assert_array_equal(trajectory(7), trajectory(7))
    assert not np.array_equal(trajectory(7)[0], trajectory(8)[0])


def test_reward_terms_are_named_finite_and_scaled(scene: PushScene) -> None:
    scene.reset(3)
    action = np.array([0.01, -0.02])
    scene.step(action)
    terms = scene.reward_terms(action)
    assert set(terms) == set(scene.reward_scales) == {"success", "step", "jitter", "progress"}
    assert all(math.isfinite(v) for v in terms.values())
    assert terms["step"] == -1.0 and terms["jitter"] == pytest.approx(-(0.01**2 + 0.02**2) / 0.025**2)
    outcome = SceneTask(scene).evaluate(scene.observe(), action)
    assert outcome.reward == pytest.approx(sum(terms[k] * scene.reward_scales[k] for k in terms))


def test_success_when_block_on_target(scene: PushScene) -> None:
    scene.reset(0)
    assert not scene.is_success() and scene.reward_terms(np.zeros(2))["success"] == 0.0
    scene.data.qpos[2:4] = scene.target_xy + [0.01, 0.0]
    mujoco.mj_forward(scene.model, scene.data)
    assert scene.is_success() and scene.reward_terms(np.zeros(2))["success"] == 1.0


def test_actions_are_clipped_and_bad_ones_rejected(scene: PushScene) -> None:
    scene.reset(0)
    start = scene.pusher_xy
    scene.step(np.array([1.0, 0.0]))
    assert scene.pusher_xy[0] - start[0] <= scene.config.max_step + 1e-3
    state = scene.arm_state()
    lim = scene.limits
    assert np.all(state.ee_position >= np.array(lim.workspace_low) - 1e-3)
    assert np.all(state.ee_position <= np.array(lim.workspace_high) + 1e-3)
    with pytest.raises(ValueError, match="2 finite numbers"):
        scene.step(np.array([np.nan, 0.0]))


def _shove_along_x(scene: PushScene, steps: int = 30) -> float:
    """Block at x = 0.12 with the pusher behind it, then full steps in +x: where the block stops."""
    scene.reset(0)
    scene.data.qpos[:] = [0.06, 0.0, 0.12, 0.0, 0.0]
    mujoco.mj_forward(scene.model, scene.data)
    for _ in range(steps):
        scene.step(np.array([scene.config.max_step, 0.0]))
    return float(scene.data.qpos[2])


def test_the_rim_keeps_the_block_where_the_pusher_can_get_behind_it() -> None:
    from sim.push import BLOCK_HALF, PUSHER_RADIUS, TABLE

    reach = TABLE - 0.005  # the pusher's servo targets stay inside its joint range
    behind = BLOCK_HALF + PUSHER_RADIUS  # the pusher's centre behind the block's, touching it
    open_table, rim = PushScene(), make_scene("push-rim")
    try:
        assert _shove_along_x(open_table) + behind > reach, "on the open table the block leaves the pusher's reach"
        stopped = _shove_along_x(rim)
        assert stopped + behind < reach and stopped > 0.17, stopped
        assert rim.name == "push-rim" and all(_rollout(rim, seed, noise=0.0)[0] for seed in range(10))
    finally:
        open_table.close(), rim.close()


def test_clean_expert_solves_push(scene: PushScene) -> None:
    results = [_rollout(scene, seed, noise=0.0) for seed in range(50)]
    assert np.mean([ok for ok, _ in results]) >= 0.95


def test_noisy_expert_is_clearly_worse(scene: PushScene) -> None:
    rate = np.mean([_rollout(scene, seed, noise=0.5)[0] for seed in range(50)])
    assert 0.3 <= rate <= 0.85


# ------------------------------------------------------------------------------ expert styles


def _actions(scene: PushScene, expert_seed: int, style: str, noise: float = 0.0, episodes: int = 2) -> np.ndarray:
    """The actions of ``episodes`` 30-step episodes (scene seeds 0, 1, ...) of one expert built from ``expert_seed``."""
    expert = scene.expert(noise=noise, seed=expert_seed, style=style)
    out = []
    for episode in range(episodes):
        scene.reset(episode)
        expert.reset()
        for _ in range(30):
            out.append(expert.act(scene.observe()))
            scene.step(out[-1])
    return np.stack(out)


@pytest.mark.parametrize("style", ["iid", "hesitant", "biased", "mixed"])
def test_each_style_is_reproducible_from_its_seed(scene: PushScene, style: str) -> None:
    np.testing.assert_array_equal(_actions(scene, 3, style, noise=0.2), _actions(scene, 3, style, noise=0.2))
    drawn = [scene.expert(seed=s, style=style).episode_style for s in range(6)]
    assert drawn == [scene.expert(seed=s, style=style).episode_style for s in range(6)]
    if style != "iid":  # its flaws are drawn per episode, from the seed
        assert len({str(d) for d in drawn}) > 1, drawn
        assert len({_actions(scene, s, style).tobytes() for s in range(4)}) > 1


def test_a_style_draws_apart_from_the_noise() -> None:
    """Style draws come from their own stream: a mixed expert that drew the short way every episode acts as the
    iid expert of the same seed and noise does, noise draws included (and iid is the default)."""
    scene = PushScene()
    assert scene.expert(noise=0.3, seed=5).style == "iid"
    compared = 0
    for seed in range(12):
        probe, strategies = scene.expert(seed=seed, style="mixed"), []
        for _ in range(2):  # the two episodes _actions drives
            probe.reset()
            strategies.append(probe.episode_style["strategy"])
        if strategies == ["short", "short"]:
            np.testing.assert_array_equal(_actions(scene, seed, "mixed", noise=0.3), _actions(scene, seed, "iid", noise=0.3))
            compared += 1
    assert compared > 0


def test_hesitant_expert_pauses_and_takes_longer(scene: PushScene) -> None:
    seeds = range(8)
    clean = [_rollout(scene, seed, 0.0) for seed in seeds]
    hesitant = [_rollout(scene, seed, 0.0, "hesitant") for seed in seeds]
    assert np.mean([n for _, n in hesitant]) > 1.8 * np.mean([n for _, n in clean]), (clean, hesitant)
    assert np.mean([ok for ok, _ in hesitant]) >= 0.5  # slow, but it mostly gets there
    expert = scene.expert(seed=0, style="hesitant")
    scene.reset(0)
    still = []
    for _ in range(30):  # before it is done (the clean expert stands still only then)
        action = expert.act(scene.observe())
        still.append(bool(np.all(action == 0)))
        scene.step(action)
    assert 0.05 < np.mean(still) < 0.25, still
    assert not any(a and b for a, b in zip(still, still[1:])), "two still steps in a row: an imitating policy could stay for good"


def test_biased_expert_pushes_off_the_centre_line(scene: PushScene) -> None:
    """While pushing, the pusher rides its offset to the left of the block-to-target line; the clean one rides it."""

    def lateral(style: str) -> float:
        sides = []
        for seed in range(4):
            scene.reset(seed)
            expert = scene.expert(seed=seed, style=style)
            for _ in range(40):
                scene.step(expert.act(scene.observe()))
                if expert._pushing:
                    d = scene.target_xy - scene.block_xy
                    d /= np.linalg.norm(d)
                    sides.append((scene.pusher_xy - scene.block_xy) @ np.array([-d[1], d[0]]))
        return float(np.mean(sides))

    from sim.push_expert import PushExpert

    assert abs(lateral("iid")) < 0.005
    assert lateral("biased") > 0.7 * PushExpert.BIAS_OFFSET
    assert 0.8 <= scene.expert(seed=0, style="biased").episode_style["offset"] / PushExpert.BIAS_OFFSET <= 1.2


def test_mixed_expert_takes_both_ways_round_and_the_long_one_is_slower(scene: PushScene) -> None:
    steps: dict[str, list[int]] = {"short": [], "long": []}
    for seed in range(12):
        scene.reset(seed)
        expert = scene.expert(seed=seed, style="mixed")
        strategy = expert.episode_style["strategy"]
        for t in range(scene.max_steps):
            scene.step(expert.act(scene.observe()))
            if scene.is_success():
                break
        steps[strategy].append(t + 1)
    assert steps["short"] and steps["long"], steps  # both strategies over seeds
    assert np.mean(steps["long"]) > 1.5 * np.mean(steps["short"]), steps


def test_unknown_style_names_the_choices(scene: PushScene) -> None:
    with pytest.raises(ValueError, match="unknown expert style 'lazy'; choose one of iid, hesitant, biased, mixed"):
        scene.expert(style="lazy")


def test_push_expert_lives_in_its_module_and_is_still_importable_from_push() -> None:
    from sim.push import PushExpert as FromPush
    from sim.push_expert import PushExpert

    assert FromPush is PushExpert and type(PushScene().expert()) is PushExpert


def test_scene_without_cameras_never_creates_a_gl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gl(*args: object, **kwargs: object) -> None:
        raise AssertionError("a scene without cameras created a mujoco.Renderer")

    monkeypatch.setattr(mujoco, "Renderer", no_gl)
    make_scene("push", cameras=("top",), pointcloud=True).close()  # renderers come only with the first render
    scene = make_scene("push")
    scene.reset(0)
    for _ in range(3):
        scene.step(np.zeros(2))
        assert not any(k.startswith("observation.images") for k in scene.observe())
    scene.close()


def test_cameras_and_pointcloud(scene: PushScene) -> None:
    cloud = PointCloudConfig(num_points=128)
    with_cams = PushScene(PushConfig(camera=CameraConfig(("top",), 64, 64, cloud)))
    try:
        with_cams.reset(0)
        # Block at +x (right of the top view), pusher at -y (bottom).
        with_cams.data.qpos[:4] = [0.0, -0.15, 0.15, 0.0]
        obs = with_cams.observe()
        top = obs[image_key("top")]
        assert top.dtype == np.uint8 and top.shape == (64, 64, 3)
        red = (top[..., 0] > 150) & (top[..., 1] < 80)
        blue = (top[..., 2] > 150) & (top[..., 0] < 80)
        assert np.nonzero(red)[1].mean() > 40 and np.nonzero(blue)[0].mean() > 40
        points = obs[POINTCLOUD]
        assert points.shape == (128, 3) and points.dtype == np.float32
        assert points[:, 2].min() >= 0.005 and points[:, 2].max() <= 0.1
    finally:
        with_cams.close()


def test_config_and_factory_errors() -> None:
    with pytest.raises(ValueError, match="max_step"):
        PushConfig(max_step=0.5)
    with pytest.raises(ValueError, match="observes nothing"):
        PushConfig(state=False)
    with pytest.raises(ValueError, match="no option.*max_steps"):
        make_push(max_stepz=10)
    with pytest.raises(ValueError, match="expert noise"):
        PushScene().expert(noise=2.0)


def test_registry_builds_push_and_names_unknown_tasks() -> None:
    assert set(task_names()) >= {"push", "push-rim", "lift", "lift-ur5e", "can"} == set(TASKS)
    scene = make_scene("push", cameras=("top",), image_size=32, pointcloud=True, max_steps=50)
    assert scene.max_steps == 50
    assert set(scene.observation_features) == {STATE, image_key("top"), POINTCLOUD}
    scene.close()
    with pytest.raises(ValueError, match="unknown task 'pusht'.*push, push-rim, lift"):
        make_scene("pusht")
    with pytest.raises(ValueError, match="either camera"):
        make_scene("push", camera=CameraConfig(("top",)), cameras=("front",))


def test_importing_the_registry_has_no_side_effects() -> None:
    code = (
        "import sys, sim.registry, sim.push, sim.cameras; "
        "bad = [m for m in sys.modules if m.startswith(('robosuite', 'sim.robosuite_scenes'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
