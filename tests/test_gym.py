"""The gymnasium view: gymnasium's own check_env on every task, step semantics, rendering, vector envs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from hardware.mujoco import MujocoArm
from hardware.safety import SafeRobot
from robot.types import ACTION, STATE, Feature, image_key
from hardware.gym import RobotEnv, make_env, make_vector_env
from sim.registry import make_scene, task_names
from sim.scene import SceneTask

SLOW_TASKS: frozenset[str] = frozenset()  # tasks whose single check takes > 20 s on a 2-core CPU
FAST_TASKS = ("push",)  # cheap enough to run in worker processes in the default test run


def task_params(slow: frozenset[str] = SLOW_TASKS) -> list:
    return [pytest.param(t, marks=pytest.mark.slow) if t in slow else t for t in task_names()]


@pytest.mark.parametrize("task", task_params())
def test_gymnasium_check_env_passes(task: str) -> None:
    env = make_env(task)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|spec|symmetric and normalized).*")
        check_env(env.unwrapped)
    assert isinstance(env.observation_space.spaces[STATE].sample(), np.ndarray)
    assert env.observation_space[STATE].dtype == np.float32 and env.action_space.dtype == np.float32
    env.close()
    env.close()  # closing twice is allowed


def test_step_reports_reward_terms_success_and_the_applied_action() -> None:
    env = make_env("push", max_steps=3)
    obs, info = env.reset(seed=5)
    assert info["seed"] == 5 and "timestamp" not in obs
    assert env.metadata["render_fps"] == 10.0
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, -1.0], dtype=np.float32))
        assert reward == pytest.approx(sum(info["reward_terms"].values()))
        assert np.all(np.abs(info["applied_action"]) <= env.action_space.high)
        assert "step_clipped" in info["interventions"] and info["success"] == terminated
    assert truncated and env.robot.counters.step_clipped == 3
    first, _ = env.reset(seed=11)
    again, _ = env.reset(seed=11)
    assert np.array_equal(first[STATE], again[STATE])
    env.close()


def test_rgb_array_rendering() -> None:
    env = make_env("push", render_mode="rgb_array", cameras=("top",), image_size=32)
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and np.array_equal(frame, obs[image_key("top")])
    env.close()
    with pytest.raises(ValueError, match="give the scene a camera"):
        make_env("push", render_mode="rgb_array")


def test_env_over_a_robot_without_action_bounds_is_a_clear_error() -> None:
    class Unbounded(MujocoArm):
        @property
        def action_features(self):
            return {ACTION: Feature((2,), names=("dx", "dy"))}

    scene = make_scene("push")
    with pytest.raises(ValueError, match="has no low/high"):
        RobotEnv(SafeRobot(Unbounded(scene)), SceneTask(scene))
    scene.close()


@pytest.mark.parametrize("task", task_params(frozenset(task_names()) - frozenset(FAST_TASKS)))
def test_async_vector_env_steps_and_resets(task: str) -> None:
    envs = make_vector_env(task, 2)
    try:
        first, info = envs.reset(seed=3)
        assert first[STATE].shape[0] == 2 and list(info["seed"]) == [3, 4]
        assert not np.array_equal(first[STATE][0], first[STATE][1])
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert reward.shape == (2,) and obs[STATE].dtype == np.float32
        assert info["applied_action"].shape == envs.action_space.shape
        again, _ = envs.reset(seed=3)
        assert np.array_equal(first[STATE], again[STATE])
    finally:
        envs.close()
