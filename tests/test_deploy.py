"""The deployment runner: chunk timing, inference off the loop, operator controls, and what it records."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from hardware.registry import make_sim
from hardware.teleop import TeleopCommand, TeleopEvent
from robot.store import ZarrEpisodeStore
from workflow.chunks import ChunkQueue, ChunkQueueConfig
from workflow.deploy import DeployConfig, deploy
from workflow.imitation import ImitationConfig, train_imitation
from workflow.planner import ChunkPlan, Planner
from workflow.policy import DiffusionController
from workflow.rollout import episode_features, evaluate

from tests.test_imitation import TINY, record_demos


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    demos = record_demos(root / "push.zarr", 4)
    cfg = ImitationConfig(data=str(demos), out=str(root / "run"), policy=TINY, steps=30, batch_size=16, eval_every=30, checkpoint_every=30)
    train_imitation(cfg, show_progress=False)
    return root / "run"


# ---------------------------------------------------------------- chunk queue


def test_receding_queue_drops_stale_actions_and_supplies_n_action_steps() -> None:
    q = ChunkQueue(ChunkQueueConfig(mode="receding", n_action_steps=4))
    chunk = np.arange(8, dtype=np.float32)[:, None]  # action i = i
    assert q.add(chunk, planned_at=10, now=10) == 4
    assert [float(q.pop(t)[0]) for t in range(10, 14)] == [0, 1, 2, 3]
    assert q.pop(14) is None
    # planned at tick 20, arrived at 22: actions for ticks 20 and 21 are stale, 2..5 are due next
    assert q.add(chunk, planned_at=20, now=22) == 4 and q.stale_dropped == 2
    assert q.queued(22) == 4 and float(q.pop(22)[0]) == 2
    # later still: what the horizon has left serves
    assert q.add(chunk, planned_at=30, now=35) == 3 and float(q.pop(35)[0]) == 5
    assert q.add(chunk, planned_at=40, now=48) == 0 and q.chunks_dropped == 1


def test_new_receding_chunk_replaces_the_rest_of_the_old_one() -> None:
    q = ChunkQueue(ChunkQueueConfig(mode="receding", n_action_steps=4))
    q.add(np.zeros((8, 1), np.float32), planned_at=0, now=0)
    q.pop(0)
    q.add(np.ones((8, 1), np.float32), planned_at=1, now=2)
    assert [float(q.pop(t)[0]) for t in (2, 3, 4, 5)] == [1, 1, 1, 1] and q.pop(6) is None


def test_ensemble_averages_predictions_with_the_oldest_weighing_most() -> None:
    q = ChunkQueue(ChunkQueueConfig(mode="ensemble", ensemble_decay=1.0))
    q.add(np.zeros((4, 2), np.float32), planned_at=0, now=0)
    q.add(np.ones((4, 2), np.float32), planned_at=1, now=1)
    assert np.allclose(q.pop(0), 0.0)
    w = np.exp(-np.arange(2.0))
    assert np.allclose(q.pop(1), w[1] / w.sum()) and q.pop(1) is None


def test_queue_config_is_validated() -> None:
    with pytest.raises(ValueError, match="chunk mode"):
        ChunkQueueConfig(mode="fifo")
    with pytest.raises(ValueError, match="n_action_steps"):
        ChunkQueueConfig(n_action_steps=0)


# ---------------------------------------------------------------- planner


def test_background_planner_returns_the_plan_with_its_tick_and_reraises_failures() -> None:
    release = threading.Event()

    def slow_plan(frames):
        release.wait(5)
        if frames == "boom":
            raise ValueError("bad observation")
        return ChunkPlan(np.full((3, 2), len(frames), np.float32))

    planner = Planner(slow_plan, asynchronous=True)
    planner.request([{}, {}], tick=7)
    assert planner.busy and planner.poll() is None  # still running: the loop is not blocked
    release.set()
    plan = planner.wait(5)
    assert plan.planned_at == 7 and plan.chunk.shape == (3, 2) and plan.chunk[0, 0] == 2 and not planner.busy
    planner.request("boom", tick=8)
    with pytest.raises(RuntimeError, match="policy inference failed: bad observation"):
        planner.wait(5)
    planner.close()


def test_inline_planner_finishes_inside_request() -> None:
    planner = Planner(lambda frames: ChunkPlan(np.zeros((2, 1))), asynchronous=False)
    planner.request([], tick=3)
    assert planner.poll().planned_at == 3
    with pytest.raises(RuntimeError, match="already in flight"):
        planner.request([], tick=4)
        planner.request([], tick=5)


# ---------------------------------------------------------------- the runner


def test_unthrottled_deploy_reproduces_eval_exactly(policy: Path, tmp_path: Path) -> None:
    """Same seeds, inline inference: the deployment loop takes the very actions `robot eval` takes."""
    report = deploy(DeployConfig(policy=policy, episodes=2, hz=0, max_steps=25, seed=100, out=tmp_path / "d.zarr"))
    robot, task = make_sim("push", max_steps=25)
    with robot:
        ref_store = ZarrEpisodeStore.create(tmp_path / "e.zarr", episode_features(robot))
        evaluate(robot, task, DiffusionController.load(policy, seed=100), episodes=2, seed=100, store=ref_store)
    ours, ref = ZarrEpisodeStore.open(tmp_path / "d.zarr"), ref_store
    assert ours.num_episodes == 2 and all(m.source == "deployment" for m in ours.metas)
    for i in range(2):
        a, b = ours.episode(i).data, ref.episode(i).data
        assert np.array_equal(a["action"], b["action"]) and np.array_equal(a["observation.state"], b["observation.state"])
        assert np.allclose(a["reward"], b["reward"]) and a["done"][-1]
    assert [e.success for e in report.episodes] == [bool(ref.episode(i).data["success"][-1]) for i in range(2)]
    assert report.stale_dropped == 0 and report.inference_ms


def test_fixed_rate_deploy_with_background_inference_holds_the_rate(policy: Path, tmp_path: Path) -> None:
    report = deploy(DeployConfig(policy=policy, episodes=1, hz=40, max_steps=30, inference="background", out=tmp_path / "d.zarr"))
    assert report.rate.ticks >= 29 and abs(report.rate.mean_hz - 40) < 8
    episode, horizon = report.episodes[0], 4  # TINY's window; a plan serves at most that many ticks
    assert episode.length == 30 and len(report.action_age_ticks) * horizon >= episode.length - episode.held  # every acted tick came from a plan
    assert max(report.action_age_ticks) >= 1 and report.rate.overruns <= 3  # plans land a tick or more after their observation


def test_auto_inference_plans_inline_when_a_plan_fits_in_half_a_period(policy: Path, tmp_path: Path) -> None:
    slow_loop = deploy(DeployConfig(policy=policy, episodes=1, hz=10, max_steps=6, out=tmp_path / "a.zarr"))
    assert set(slow_loop.action_age_ticks) == {0} and slow_loop.stale_dropped == 0  # 100 ms period: every plan inline
    fast_loop = deploy(DeployConfig(policy=policy, episodes=1, hz=2000, max_steps=400, out=tmp_path / "b.zarr"))
    assert max(fast_loop.action_age_ticks) >= 1  # 0.5 ms period: no plan fits, the thread plans

class ScriptedOperator:
    """An operator's device as the runner sees it: given events at given ticks, actions while driving."""

    name = "test-operator"
    controls = "scripted operator"

    def __init__(self, events: dict[int, set[TeleopEvent]], action=None):
        self.events, self.action, self.tick = events, action, 0

    def connect(self):
        pass

    def close(self):
        pass

    def reset(self):
        pass

    def poll(self, observation):
        events = frozenset(self.events.get(self.tick, ()))
        self.tick += 1
        return TeleopCommand(None if self.action is None else np.array(self.action, np.float32), events)


def test_takeover_flags_the_operators_steps_and_sends_their_action(policy: Path, tmp_path: Path) -> None:
    operator = ScriptedOperator({3: {TeleopEvent.TAKEOVER}, 8: {TeleopEvent.TAKEOVER}}, action=[0.01, 0.0])
    report = deploy(DeployConfig(policy=policy, episodes=1, hz=0, max_steps=15, out=tmp_path / "d.zarr"), device=operator)
    ep = ZarrEpisodeStore.open(tmp_path / "d.zarr").episode(0).data
    assert list(np.flatnonzero(ep["intervention"])) == [3, 4, 5, 6, 7]
    assert np.allclose(ep["action"][3:8], [0.01, 0.0]) and report.episodes[0].interventions == 5


def test_estop_key_latches_the_robot_and_ends_the_session(policy: Path, tmp_path: Path) -> None:
    robot, task = make_sim("push")
    operator = ScriptedOperator({5: {TeleopEvent.ESTOP}})
    report = deploy(DeployConfig(policy=policy, episodes=3, hz=0, out=tmp_path / "d.zarr"), robot=robot, task=task, device=operator)
    assert report.stopped_by == "estop" and len(report.episodes) == 1
    assert report.episodes[0].label == "e-stop" and not report.episodes[0].success and robot.is_estopped
    assert ZarrEpisodeStore.open(tmp_path / "d.zarr").episode(0).data["action"].shape[0] == 5  # the steps before it are kept


def test_operator_labels_episodes_when_the_robot_has_no_task(policy: Path, tmp_path: Path) -> None:
    robot, _ = make_sim("push")
    operator = ScriptedOperator({0: {TeleopEvent.START}, 7: {TeleopEvent.SUCCESS}})
    report = deploy(DeployConfig(policy=policy, episodes=1, hz=0, out=tmp_path / "d.zarr"), robot=robot, device=operator)
    assert report.episodes[0].label == "operator" and report.episodes[0].success and report.episodes[0].length == 6
    meta = ZarrEpisodeStore.open(tmp_path / "d.zarr").metas[0]
    assert meta.success and meta.source == "deployment"


def test_a_robot_without_task_or_operator_is_refused(policy: Path, tmp_path: Path) -> None:
    robot, _ = make_sim("push")
    with pytest.raises(ValueError, match="operator labels each episode"):
        deploy(DeployConfig(policy=policy, episodes=1, hz=0, out=tmp_path / "d.zarr"), robot=robot)
    assert not (tmp_path / "d.zarr").exists()


def test_a_robot_missing_a_key_is_refused_before_anything_moves(policy: Path, tmp_path: Path) -> None:
    robot, task = make_sim("push", state=False, cameras=("top",), image_size=32)
    with pytest.raises(ValueError, match="observation.state"):
        deploy(DeployConfig(policy=policy, episodes=1, hz=0, out=tmp_path / "d.zarr"), robot=robot, task=task)
    assert not (tmp_path / "d.zarr").exists()


def test_deploy_cli_runs_on_the_sim_and_reports(policy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from robot.cli import app

    result = CliRunner().invoke(app, ["deploy", "--policy", str(policy), "--episodes", "1", "--hz", "0", "--max-steps", "10", "--out", str(tmp_path / "c.zarr")])
    assert result.exit_code == 0, result.output
    assert "sim:push" in result.output and "(source = deployment)" in result.output
    bad = CliRunner().invoke(app, ["deploy", "--policy", str(policy), "--chunks", "fifo"])
    assert bad.exit_code == 2 and "chunk mode" in bad.output
    bad = CliRunner().invoke(app, ["deploy", "--policy", str(policy), "--inference", "gpu"])
    assert bad.exit_code == 2 and "inference must be one of" in bad.output


@pytest.mark.parametrize("kind", ["ur5e", "franka", "xarm"])
def test_the_same_checkpoint_takes_the_same_actions_through_each_drivers_stand_in(policy: Path, tmp_path: Path, kind: str) -> None:
    """The driver measures the arm through its vendor interface and a tracker the block; with inline
    inference the episodes match the sim backend's step for step."""
    config = dict(policy=policy, episodes=2, hz=0, max_steps=20, seed=7)
    sim = deploy(DeployConfig(**config, robot="sim:push", out=tmp_path / "sim.zarr"))
    arm = deploy(DeployConfig(**config, robot=f"{kind}:standin:push", out=tmp_path / "arm.zarr"))
    assert arm.robot == f"{kind}:standin:push" and [e.success for e in arm.episodes] == [e.success for e in sim.episodes]
    a, b = ZarrEpisodeStore.open(tmp_path / "sim.zarr"), ZarrEpisodeStore.open(tmp_path / "arm.zarr")
    for i in range(2):
        np.testing.assert_allclose(b.episode(i).data["observation.state"], a.episode(i).data["observation.state"], atol=1e-4)
        np.testing.assert_allclose(b.episode(i).data["action"], a.episode(i).data["action"], atol=1e-4)


def test_the_same_checkpoint_takes_the_same_actions_through_robot_serve(policy: Path, tmp_path: Path) -> None:
    """The arm behind the server on loopback; the task scores the served scene (it lives in this process)."""
    from hardware.remote import RemoteConfig, RemoteRobot, RobotServer, ServerConfig

    config = dict(policy=policy, episodes=2, hz=0, max_steps=20, seed=3)
    sim = deploy(DeployConfig(**config, robot="sim:push", out=tmp_path / "sim.zarr"))
    served, task = make_sim("push")
    token = "deploy-test-token-0123456789"
    with RobotServer(served, token, ServerConfig(port=0)) as server:
        host, port = server.address
        remote = RemoteRobot(RemoteConfig(host=host, port=port), token=token)
        report = deploy(DeployConfig(**config, out=tmp_path / "remote.zarr"), robot=remote, task=task)
    assert report.robot.endswith(f"@{host}:{port}") and [e.success for e in report.episodes] == [e.success for e in sim.episodes]
    a, b = ZarrEpisodeStore.open(tmp_path / "sim.zarr"), ZarrEpisodeStore.open(tmp_path / "remote.zarr")
    for i in range(2):
        np.testing.assert_array_equal(b.episode(i).data["action"], a.episode(i).data["action"])
        np.testing.assert_array_equal(b.episode(i).data["observation.state"], a.episode(i).data["observation.state"])


def test_an_operator_device_that_cannot_connect_leaves_no_store_behind(policy: Path, tmp_path: Path) -> None:
    from hardware.teleop import DeviceUnavailable

    class Unplugged(ScriptedOperator):
        def connect(self):
            raise DeviceUnavailable("no gamepad is plugged in")

    robot, task = make_sim("push")
    with pytest.raises(DeviceUnavailable, match="no gamepad"):
        deploy(DeployConfig(policy=policy, episodes=1, hz=0, out=tmp_path / "d.zarr"), robot=robot, task=task, device=Unplugged({}))
    assert not (tmp_path / "d.zarr").exists()
