"""The gymnasium adapter: any gymnasium env (an id, a factory) becomes a task behind the safety layer, with
state keys from its observation space, scaled actions, success from ``info``, cameras from its renderer and an
optional expert; ``gym:<env-id>`` names one on every command; a task brings its own safety config."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import sim.registry as registry
from hardware.registry import make_sim
from hardware.safety import SafeRobot
from robot.types import ACTION, STATE, SafetyConfig, image_key
from sim.gym_task import GymScene, gym_task, make_gym_scene
from sim.registry import make_scene, register_task, resolve_task
from workflow.episode import Act, Episode

STEP = 0.05  # the env moves 0.05 per action unit: the kit's action is in those units times 0.05


class Reach2D(gym.Env):
    """A point reaching a goal on a plane: success in ``info["is_success"]``, an rgb_array renderer, no spec."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None, dict_obs: bool = False):
        self.render_mode, self.dict_obs = render_mode, dict_obs
        box = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = (
            spaces.Dict({"pos": box, "goal": box, "camera": spaces.Box(0, 255, (8, 8, 3), np.uint8)}) if dict_obs else spaces.Box(-1.0, 1.0, (4,), np.float32)
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        if self.dict_obs:
            return {"pos": self.pos.astype(np.float32), "goal": self.goal.astype(np.float32), "camera": np.full((8, 8, 3), 7, np.uint8)}
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        self.goal = self.np_random.uniform(-0.8, 0.8, 2)
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + STEP * np.clip(action, -1, 1), -1, 1)
        distance = float(np.linalg.norm(self.pos - self.goal))
        return self._obs(), -distance, False, False, {"is_success": distance < 0.03}

    def render(self):
        frame = np.zeros((30, 40, 3), np.uint8)
        frame[..., 0] = 200
        return frame


def reach_expert(obs):
    return np.clip((obs[2:] - obs[:2]) / STEP, -1.0, 1.0)


@pytest.fixture
def reach(monkeypatch):
    """``reach2d`` registered for this test only: the env, its expert, named and scaled actions, 60 steps."""
    monkeypatch.setattr(registry, "_registered", {})
    register_task("reach2d", gym_task(Reach2D, expert=reach_expert, action_names=("dx", "dy"), action_scale=STEP, max_steps=60))
    return "reach2d"


class ExpertActor:
    def __init__(self, scene, noise=0.0):
        self.expert = scene.expert(noise=noise, seed=0)

    def begin(self, seed, observation):
        self.expert.reset()

    def act(self, t, observation):
        return Act(self.expert.act(observation))


def test_a_gym_env_with_an_expert_is_a_task_behind_the_safety_layer(reach):
    robot, task = make_sim(reach)
    assert isinstance(robot, SafeRobot) and isinstance(task.scene, GymScene)
    state, action = robot.observation_features[STATE], robot.action_features[ACTION]
    assert state.shape == (4,) and state.names == ("s0", "s1", "s2", "s3")
    assert action.names == ("dx", "dy") and action.low == (-STEP, -STEP) and action.high == (STEP, STEP)
    assert robot.layout.mode == "ee_delta" and robot.layout.translation == (0, 1)
    assert (task.max_steps, task.fps) == (60, 20.0)
    with robot:
        for seed in range(3):
            episode = Episode(robot, task, ExpertActor(task.scene), seed=seed).run()
            assert episode.success and episode.length < 60, (seed, episode.length)
            assert set(episode.terms) == {"reward", "success"} and episode.terms["reward"] < 0  # the env's reward, scale 1
            assert np.all(np.abs(episode.frames.arrays()[ACTION]) <= STEP + 1e-7)
        robot.reset(0)
        assert np.allclose(robot.send_action(np.array([1.0, -1.0], np.float32)), [STEP, -STEP])  # env units scaled, clipped
        assert "step_clipped" in robot.last_interventions
        robot.send_action(np.array([np.nan, 0.0], np.float32))
        assert robot.counters.nonfinite == 1  # held, never forwarded to the env


def test_reset_is_deterministic_per_seed_and_seeds_differ(reach):
    scene = make_scene(reach)
    try:
        goals = []
        for seed in (3, 3, 4):
            scene.reset(seed)
            goals.append(scene.observe()[STATE][2:].copy())
        assert np.array_equal(goals[0], goals[1]) and not np.array_equal(goals[0], goals[2])
    finally:
        scene.close()


def test_the_gym_family_makes_any_gymnasium_id_a_task_with_bounded_direct_actions():
    entry = resolve_task("gym:Pendulum-v1")
    assert entry.source == "family gym"
    robot, task = make_sim("gym:Pendulum-v1")
    with robot:
        assert robot.layout.mode == "direct"  # a torque: no end effector to guard, entries bounded one by one
        assert robot.action_features[ACTION].low == (-2.0,) and robot.action_features[ACTION].names == ("a0",)
        assert (task.max_steps, task.fps, task.name) == (200, 30.0, "gym:Pendulum-v1")
        assert robot.reset(0)[STATE].shape == (3,)
        assert np.allclose(robot.send_action(np.array([5.0], np.float32)), [2.0]) and robot.counters.step_clipped == 1
        assert np.allclose(robot.hold(), [0.0])
        outcome = task.evaluate(robot.get_observation(), np.array([2.0], np.float32))
        assert outcome.terms["reward"] < 0 and not outcome.success  # Pendulum's reward; it reports no success
    robot.close()


def test_cameras_come_from_the_renderer_resized(reach):
    robot, task = make_sim(reach, cameras=("render",), image_size=16)
    with robot:
        assert robot.observation_features[image_key("render")].shape == (16, 16, 3)
        frame = robot.reset(0)[image_key("render")]
        assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8 and frame[..., 0].min() == 200
    robot.close()
    assert task.scene.camera_names == ("render",)
    with pytest.raises(ValueError, match="renders one camera, 'render'"):
        make_scene(reach, cameras=("top",))


def test_a_dict_observation_is_concatenated_into_the_state_and_its_images_kept():
    scene = make_gym_scene(lambda **kw: Reach2D(dict_obs=True, **kw), max_steps=10, name="dict-reach")
    try:
        features = scene.observation_features
        assert features[STATE].names == ("goal.0", "goal.1", "pos.0", "pos.1")  # the Dict space sorts its keys
        assert features[image_key("camera")].shape == (8, 8, 3)
        scene.reset(1)
        obs = scene.observe()
        assert obs[STATE].dtype == np.float32 and np.array_equal(obs[STATE][:2], scene.env_observation["goal"])
        assert obs[image_key("camera")].dtype == np.uint8
    finally:
        scene.close()


def test_a_task_brings_its_own_safety_config_unless_the_caller_passes_one(monkeypatch):
    monkeypatch.setattr(registry, "_registered", {})
    own = SafetyConfig(max_step=(0.01, 0.01), joint_margin=0.0)
    register_task("careful-reach", gym_task(Reach2D, action_names=("dx", "dy"), action_scale=STEP, max_steps=20, safety=own))
    robot, _ = make_sim("careful-reach")
    assert robot.config == own and robot.limits.max_step == (0.01, 0.01)
    robot.close()
    robot, _ = make_sim("careful-reach", safety=SafetyConfig())
    assert robot.config == SafetyConfig() and robot.limits.max_step == (STEP, STEP)
    robot.close()


def test_bad_gym_input_is_one_clear_error():
    with pytest.raises(ValueError, match="Did you mean: `Pendulum`"):
        resolve_task("gym:Pendulm-v1")
    with pytest.raises(ValueError, match="no max_episode_steps; give max_steps"):
        make_gym_scene(Reach2D, name="no-limit")
    with pytest.raises(ValueError, match="unknown options \\['max_step'\\]"):
        make_gym_scene(Reach2D, max_step=3)

    class Unbounded(Reach2D):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.action_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)

    with pytest.raises(ValueError, match="unbounded; the safety layer needs bounds"):
        make_gym_scene(Unbounded, max_steps=5)

    class Discrete(Reach2D):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.observation_space = spaces.Discrete(4)

    with pytest.raises(ValueError, match="neither a Box nor a Dict"):
        make_gym_scene(Discrete, max_steps=5)
    with pytest.raises(NotImplementedError, match="has no scripted expert"):
        make_gym_scene(Reach2D, max_steps=5).expert()


def test_recording_a_gym_task_without_an_expert_with_the_scripted_device_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from robot.cli import app

    result = CliRunner().invoke(app, ["record", "--task", "gym:Pendulum-v1", "--teleop", "scripted", "--episodes", "1", "--out", str(tmp_path / "p.zarr")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "task gym:Pendulum-v1 has no scripted expert" in result.output and not (tmp_path / "p.zarr").exists()


def test_metaworld_tasks_without_metaworld_installed_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # `import metaworld` raises ImportError, as when it is missing
    with pytest.raises(ValueError, match=r'need the metaworld package: pip install -e "\.\[metaworld\]"'):
        resolve_task("metaworld:button-press-v3")


def test_importing_the_registry_imports_neither_metaworld_nor_the_adapters():
    import subprocess

    code = "import sim.registry, hardware.registry, sys; print(sorted(m for m in ('metaworld', 'sim.gym_task', 'sim.metaworld_scene') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
