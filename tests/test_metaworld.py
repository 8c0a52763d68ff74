"""The Meta-World family: every MT1 task's scripted expert succeeds through the safety layer (make_sim, the
task's own safety config), seeds are initial states, cameras render, the issue-26 regression is a named
warning, and `robot record` / `train imitation` / `eval` take ``--task metaworld:<task>`` with no glue."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metaworld", reason='Meta-World is an optional extra: pip install -e ".[metaworld]"')

from typer.testing import CliRunner  # noqa: E402

from hardware.registry import make_sim  # noqa: E402
from robot.cli import app  # noqa: E402
from robot.store import ZarrEpisodeStore  # noqa: E402
from robot.types import ACTION, STATE, SafetyConfig, image_key  # noqa: E402
from sim.metaworld_scene import SAWYER_SAFETY, STATE_NAMES, metaworld_tasks  # noqa: E402
from sim.registry import make_scene, resolve_task  # noqa: E402
from workflow.episode import Act, Episode  # noqa: E402

SEEDS = (0, 1, 2)
FAST_TASKS = ("button-press-v3", "drawer-open-v3", "assembly-v3")


class ExpertActor:
    def __init__(self, scene, noise: float = 0.0):
        self.expert = scene.expert(noise=noise, seed=0)

    def begin(self, seed, observation):
        self.expert.reset()

    def act(self, t, observation):
        return Act(self.expert.act(observation))


def expert_successes(task: str, seeds=SEEDS, safety: SafetyConfig | None = None) -> tuple[int, dict[str, int]]:
    """Successes of the task's clean expert over ``seeds`` through make_sim's safety layer, and the guard counts."""
    robot, sim_task = make_sim(f"metaworld:{task}", safety=safety)
    try:
        with robot:
            wins = sum(Episode(robot, sim_task, ExpertActor(sim_task.scene), seed=s, keep_frames=False).run().success for s in seeds)
        return wins, robot.counters.as_dict()
    finally:
        robot.close()


@pytest.mark.parametrize("task", FAST_TASKS)
def test_the_expert_succeeds_through_the_safety_layer(task: str) -> None:
    wins, counters = expert_successes(task)
    assert wins == len(SEEDS), (task, wins, counters)
    assert counters["joint_limited"] == 0 and counters["nonfinite"] == 0


def test_every_metaworld_task_expert_succeeds_through_the_safety_layer() -> None:
    """All 50 MT1 tasks x 3 seeds: ~15 s on a 2-core CPU (the experts end at success, most within 150 steps)."""
    tasks = metaworld_tasks()
    assert len(tasks) == 50
    results = {task: expert_successes(task)[0] for task in tasks}
    weak = {task: wins for task, wins in results.items() if wins < 2}
    assert not weak, f"experts below 2/{len(SEEDS)} through the safety layer: {weak}"
    assert sum(results.values()) >= 0.95 * len(SEEDS) * len(tasks), results


def test_the_default_safety_config_blocks_the_sawyer_and_says_which_joint(capsys) -> None:
    """Issue 26: with the generic 2% joint margin the expert scored 0 silently; now a warning names the guard and joint."""
    wins, counters = expert_successes("button-press-v3", seeds=(0,), safety=SafetyConfig())
    assert wins == 0 and counters["joint_limited"] > 400
    err = capsys.readouterr().err
    assert "warning: safety guard joint_limited fired on" in err and "joint right_j1" in err and "high limit -0.500" in err


def test_a_metaworld_task_is_a_named_sawyer_with_scaled_actions_and_seeded_initial_states() -> None:
    assert resolve_task("metaworld:assembly-v3").source == "family metaworld"
    robot, task = make_sim("metaworld:assembly-v3")
    try:
        assert robot.config == SAWYER_SAFETY and robot.layout.translation == (0, 1, 2) and robot.layout.gripper == 3
        action = robot.action_features[ACTION]
        assert action.names == ("dx", "dy", "dz", "gripper") and action.high == (0.01, 0.01, 0.01, 1.0)
        assert robot.observation_features[STATE].names == STATE_NAMES and len(STATE_NAMES) == 39
        assert (task.max_steps, task.fps, task.scene.robot_name) == (500, 80.0, "sawyer")
        with robot:
            first, again, other = (robot.reset(s)[STATE][-3:].copy() for s in (5, 5, 6))  # the goal position
            assert np.array_equal(first, again) and not np.array_equal(first, other)
            hand = robot.get_observation()[STATE][:3].copy()
            for _ in range(10):
                robot.send_action(np.array([0.01, 0.0, 0.0, -1.0], np.float32))
            moved = robot.get_observation()[STATE][:3] - hand
            assert 0.04 < moved[0] < 0.105 and abs(moved[1]) < 0.01  # 10 x 1 cm asked along x: the hand follows (it trails the mocap)
            terms = task.evaluate(robot.get_observation(), np.zeros(4, np.float32)).terms
            assert set(terms) == {"reward", "success"} and terms["reward"] == 0.0  # the dense reward is logged at scale 0
    finally:
        robot.close()


def test_a_metaworld_task_renders_its_cameras() -> None:
    scene = make_scene("metaworld:button-press-v3", cameras=("corner",), image_size=32)
    try:
        assert {"corner", "topview", "gripperPOV"} <= set(scene.camera_names)
        scene.reset(0)
        frame = scene.observe()[image_key("corner")]
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.std() > 5
    finally:
        scene.close()


def test_robot_tasks_shows_a_metaworld_task() -> None:
    result = CliRunner().invoke(app, ["tasks", "metaworld:assembly-v3"])
    assert result.exit_code == 0, result.output
    row = next(line.split() for line in result.output.splitlines() if line.startswith("metaworld:assembly-v3"))
    assert row[1:5] == ["sawyer", "observation.state", "(39,)", "action"] and row[-3:] == ["80", "family", "metaworld"]
    assert "yes" in row and "corner" in row[6] and "hand_x, hand_y, hand_z, gripper_open" in result.output


def test_unknown_metaworld_tasks_suggest_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean metaworld:button-press-v3"):
        resolve_task("metaworld:button-pres-v3")


def test_record_train_and_eval_take_a_metaworld_task_from_the_command_line(tmp_path) -> None:
    runner = CliRunner()
    data, run = tmp_path / "mw.zarr", tmp_path / "run"
    result = runner.invoke(app, ["record", "--task", "metaworld:button-press-v3", "--device", "scripted", "--noise", "0.2",
                                 "--episodes", "3", "--out", str(data)])  # fmt: skip
    assert result.exit_code == 0, result.output
    store = ZarrEpisodeStore.open(data)
    assert store.num_episodes == 3 and all(m.task == "metaworld:button-press-v3" and m.success for m in store.metas)
    result = runner.invoke(app, ["train", "imitation", "--data", str(data), "--out", str(run), "--steps", "4", "--batch-size", "8",
                                 "--eval-every", "2", "--checkpoint-every", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "--policy", str(run), "--episodes", "1"])  # the checkpoint's task by default
    assert result.exit_code == 0, result.output
    assert "metaworld:button-press-v3" in result.output and "safety interventions" in result.output  # counts per guard
