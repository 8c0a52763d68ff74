"""Online RL on any robot spec: the control stack's decisions, the scripted operator, takeovers and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hardware.registry import make_sim
from hardware.teleop import TeleopCommand, TeleopEvent
from hardware.teleop.scripted import ScriptedOperator
from robot.cli import app
from robot.store import ZarrEpisodeStore
from robot.types import INTERVENTION, REWARD
from workflow.control import ControlStack, open_robot_for
from workflow.episode import Episode, PolicyActor
from workflow.online_collect import Decisions, collect_episode
from workflow.policy import DiffusionController
from workflow.episode import LABEL_REWARD
from workflow.takeover import OperatorConfig

from tests.test_imitation import tiny_push_policy


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return tiny_push_policy(tmp_path_factory.mktemp("online-robot"))


def learner(policy_path, seed=5) -> DiffusionController:
    controller = DiffusionController.load(policy_path, deterministic=False, seed=seed)
    controller.learning = True
    return controller


def test_the_control_stack_collects_the_chains_the_policy_alone_samples(policy):
    robot, task = make_sim("push")
    with robot:
        alone = [s.policy.decision for s in Episode(robot, task, PolicyActor(learner(policy)), seed=4) if s.policy.chunk_started]
        out = Decisions()
        collect_episode(ControlStack(robot, task, learner(policy), hz=0), out, 0.99, seed=4)
    assert len(out.chains) == len(alone) > 1
    for mine, theirs in zip(out.chains, alone):
        torch.testing.assert_close(mine.samples, theirs.chain.samples)  # deploy's loop in sim: the very same chains


def test_a_learning_policy_refuses_ensembled_chunks(policy):
    robot, task = make_sim("push")
    with pytest.raises(ValueError, match="receding"):
        ControlStack(robot, task, learner(policy), hz=0, chunks="ensemble")


def test_a_takeover_cuts_the_policy_s_decision_and_its_steps_stay_as_interventions(policy):
    robot, task = make_sim("push")
    operator = ScriptedOperator(task, takeover_rate=1.0, drift_after=5, takeover_steps=6)
    control = ControlStack(robot, task, learner(policy), hz=0, operator=operator, max_steps=40)
    out = Decisions()
    with robot:
        collected = collect_episode(control, out, 1.0, seed=2)
    flags = collected.frames[INTERVENTION]
    assert collected.interventions == int(flags.sum()) == 6  # six ticks driven, then handed back
    first = int(np.argmax(flags))
    assert 5 <= first <= 6 and flags[first : first + 6].all() and not flags[first + 6 :].any()
    ta, length = control.controller.n_action_steps, len(flags)
    starts = list(range(0, first, ta))  # the policy's chunks before the takeover, the last one cut if it had not run out
    complete = starts if starts[-1] + ta <= first else starts[:-1]
    after = list(range(first + 6, length, ta))  # the hand-back replans
    assert len(out.cond) == len(out.rewards) == len(complete) + len(after)
    assert out.last[len(complete) - 1] and not any(out.last[: len(complete) - 1])  # the run before the takeover ends there
    assert not out.terminal[len(complete) - 1]
    policy_rewards = float(collected.frames[REWARD][: len(complete) * ta].sum() + collected.frames[REWARD][first + 6 :].sum())
    assert sum(out.rewards) == pytest.approx(policy_rewards, abs=1e-5)  # the operator's steps earn the policy nothing


def test_the_scripted_operator_takes_over_by_episode_seed_and_at_its_rate():
    _, task = make_sim("push")
    operator = ScriptedOperator(task, takeover_rate=0.3, seed=1)
    draws = []
    for seed in range(200):
        operator.seed_episode(seed)
        draws.append(operator._takes_over)
    assert 0.2 < np.mean(draws) < 0.4
    operator.seed_episode(7)
    again = operator._takes_over
    operator.seed_episode(8)
    operator.seed_episode(7)
    assert operator._takes_over == again
    with pytest.raises(ValueError, match="takeover_rate"):
        ScriptedOperator(task, takeover_rate=1.5)


class Labeller:
    """A person at the arm who starts each episode and says "success" (or "failure") after ``after`` ticks."""

    name, controls = "labeller", ""

    def __init__(self, after: int, success: bool):
        self.after, self.success, self.tick = after, success, -1

    def connect(self): ...

    def close(self): ...

    def reset(self):
        self.tick = -1

    def poll(self, observation):
        self.tick += 1
        if self.tick == 0:
            return TeleopCommand(events=frozenset({TeleopEvent.START}))
        if self.tick > self.after:
            return TeleopCommand(events=frozenset({TeleopEvent.SUCCESS if self.success else TeleopEvent.FAILURE}))
        return TeleopCommand()


@pytest.mark.parametrize("success", [True, False])
def test_scored_by_label_an_episode_earns_its_reward_from_the_operator_on_a_stand_in(policy, success):
    controller = learner(policy)
    robot, task = open_robot_for("xarm:standin:push", controller)
    assert OperatorConfig(device="scripted", reward="label").scoring_task(task) is None
    control = ControlStack(robot, None, controller, hz=0, operator=Labeller(after=9, success=success))
    out = Decisions()
    with robot:
        collected = collect_episode(control, out, 0.9, seed=3)
    assert collected.label == "operator" and collected.success == success and len(collected.frames[REWARD]) == 9
    rewards = collected.frames[REWARD]
    assert float(np.abs(rewards[:-1]).sum()) == 0.0  # nothing scores the steps on a real arm
    assert rewards[-1] == (LABEL_REWARD if success else 0.0)  # the label's reward is stored: the offline rounds' critics read it
    ta = controller.n_action_steps
    last_chunk_steps = 9 - (len(out.rewards) - 1) * ta
    assert out.rewards[-1] == pytest.approx(0.9 ** (last_chunk_steps - 1) * LABEL_REWARD if success else 0.0)
    assert sum(out.rewards[:-1]) == 0.0 and out.terminal[-1] and out.last[-1]  # a label ends the episode: no future value


def test_a_stand_in_episode_at_its_step_limit_is_truncated_not_terminal(policy):
    controller = learner(policy)
    robot, task = open_robot_for("xarm:standin:push", controller)
    control = ControlStack(robot, None, controller, hz=0, operator=ScriptedOperator(task), max_steps=12)
    out = Decisions()
    with robot:
        collected = collect_episode(control, out, 1.0, seed=0)
    assert collected.label == "max-steps" and not collected.success and not out.terminal[-1] and sum(out.rewards) == 0.0


def test_label_scoring_needs_an_operator_and_task_scoring_a_task():
    with pytest.raises(ValueError, match="needs an operator"):
        OperatorConfig(reward="label")
    with pytest.raises(ValueError, match="real arm is scored by the operator's label"):
        OperatorConfig(reward="task").scoring_task(None)


def test_robot_train_online_runs_on_a_stand_in_with_the_scripted_operator(policy, tmp_path: Path):
    out = tmp_path / "online"
    args = ["train", "online", "--policy", str(policy), "--out", str(out), "--robot", "xarm:standin:push", "--hz", "0",
            "--operator-device", "scripted", "--operator-reward", "label", "--operator-takeover-rate", "1", "--operator-drift-after", "10",
            "--iterations", "2", "--episodes-per-iteration", "2", "--max-steps", "40", "--select-episodes", "0", "--distill-steps", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with ZarrEpisodeStore.open(out / "rollouts.zarr") as store:
        metas = store.metas
        assert len(metas) == 4 and all(m.robot.startswith("xarm") and m.source == "online-rollout" for m in metas)
        assert all(store.episode(i).data[INTERVENTION].any() or metas[i].success for i in range(4))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(d.get("charts/interventions", 0) > 0 for d in logged)
    assert (out / "policy").exists()


def test_a_real_arm_that_cannot_be_opened_is_one_clear_line_before_it_moves(policy, tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "online", "--policy", str(policy), "--out", str(tmp_path / "o"), "--robot", "remote:127.0.0.1:1",
                                      "--operator-device", "keyboard"])  # fmt: skip
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ kill and resume


class Killed(BaseException):
    """Stands in for a kill: nothing after it runs (BaseException: no handler of the kit catches it)."""


def _online(policy_path, out, **over):
    from workflow.online import OnlineConfig

    cfg = dict(policy=str(policy_path), out=str(out), task="push", iterations=3, episodes_per_iteration=3, epochs=2, minibatch=16,
               select_episodes=0, distill_steps=3, max_steps=30, seed=3, lanes=1)  # fmt: skip
    # lanes=1: a resumed iteration batches its remaining episodes differently, which rounds differently
    cfg.update(over)
    return OnlineConfig(**cfg)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "policy" / "tensors.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(policy, tmp_path_factory):
    from workflow.online import train_online

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_online(_online(policy, out), show_progress=False)
    return out


def _kill_at(monkeypatch, target, attribute, call: int, after: bool = False):
    """Make ``target.attribute`` raise Killed on its ``call``-th call (after doing its work when ``after``)."""
    real = getattr(target, attribute)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call and not after:
            raise Killed
        result = real(*args, **kwargs)
        if calls["n"] == call:
            raise Killed
        return result

    monkeypatch.setattr(target, attribute, wrapped)


@pytest.mark.parametrize("where", ["mid-episode", "before-its-commit", "between-the-two-writes", "between-episodes", "mid-update", "after-the-snapshot"])
def test_a_killed_online_run_resumes_to_the_uninterrupted_policy_losing_and_repeating_nothing(policy, uninterrupted, tmp_path, monkeypatch, where):
    import workflow.online as online
    import workflow.online_collect as collect
    from workflow.online_update import OnlineLearner

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        if where == "mid-episode":  # the fifth episode (iteration 1) never finishes
            _kill_at(patch, collect, "collect_episode", 5)
        elif where == "before-its-commit":  # the fifth ends, the kill comes before it is written
            _kill_at(patch, collect, "collect_episode", 5, after=True)
        elif where == "between-the-two-writes":  # the fifth is in the episode log, not yet in the store
            _kill_at(patch, ZarrEpisodeStore, "append_episode", 5)
        elif where == "between-episodes":  # the fifth is committed, the sixth never starts
            _kill_at(patch, collect, "collect_episode", 6)
        elif where == "mid-update":  # iteration 1's update ran in memory and was never saved
            _kill_at(patch, OnlineLearner, "update", 2, after=True)
        else:  # iteration 1's snapshot is on disk, its state is not
            _kill_at(patch, online, "save_state", 3)
        with pytest.raises(Killed):
            online.train_online(_online(policy, out), show_progress=False)
    counted = {"episodes": 0}
    real = collect.collect_episode

    def counting(*args, **kwargs):
        counted["episodes"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(collect, "collect_episode", counting)
    online.train_online(_online(policy, out), show_progress=False)  # the same command again
    expected_rerun = {"mid-episode": 5, "before-its-commit": 5, "between-the-two-writes": 4, "between-episodes": 4, "mid-update": 3, "after-the-snapshot": 3}[where]
    assert counted["episodes"] == expected_rerun  # a finished episode is never collected again (iteration 1's stay for its redone update)
    with ZarrEpisodeStore.open(out / "rollouts.zarr") as store:
        seeds = [m.seed for m in store.metas]
    with ZarrEpisodeStore.open(uninterrupted / "rollouts.zarr") as store:
        assert sorted(seeds) == sorted(m.seed for m in store.metas) and len(set(seeds)) == 9  # none lost, none twice
    mine, theirs = _weights(out), _weights(uninterrupted)
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=0, msg=f"{name} differs from the uninterrupted run's")


# ------------------------------------------------------------------ the learner in another process

TOKEN = "learner-test-token-0123456789"


@pytest.fixture
def learner_process():
    import os
    import subprocess
    import sys

    env = {**os.environ, "ROBOT_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robot.cli", "learn", "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "learner listening on" in line, line
        yield line.split()[3]  # host:port
    finally:
        proc.terminate()
        proc.wait(10)


def test_updates_by_a_learner_in_another_process_are_the_ones_one_process_makes(policy, uninterrupted, learner_process, tmp_path, monkeypatch):
    from workflow.online import train_online

    monkeypatch.setenv("ROBOT_TOKEN", TOKEN)
    out = tmp_path / "remote"
    train_online(_online(policy, out, learner=learner_process), show_progress=False)
    mine, theirs = _weights(out), _weights(uninterrupted)
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=0, msg=f"{name} differs from the one-process run's")


def test_a_learner_with_another_token_is_one_clear_line(policy, learner_process, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOT_TOKEN", "some-other-token-0123456789")
    result = CliRunner().invoke(app, ["train", "online", "--policy", str(policy), "--out", str(tmp_path / "o"), "--task", "push",
                                      "--learner", learner_process, "--iterations", "1", "--select-episodes", "0"])  # fmt: skip
    assert result.exit_code == 2 and "refused our token" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ offline rounds on a robot


def test_an_offline_round_rolls_out_and_verifies_on_a_stand_in_with_the_scripted_operator(policy, tmp_path, monkeypatch):
    from policies.critics import CriticConfig
    from policies.dynamics import DynamicsConfig
    from workflow.offline import OfflineConfig, train_offline
    from workflow.ope import GateConfig

    demos = Path(str(policy)).parent / "push.zarr"
    out = tmp_path / "offline"
    config = OfflineConfig(
        policy=str(policy), data=str(demos), out=str(out), rounds=1, critic=CriticConfig(hidden_dims=(32, 32)), critic_steps=50,
        dynamics=DynamicsConfig(hidden_dims=(32, 32), max_epochs=2), ppo_updates=4, ppo_batch=32, gate_every=2,
        gate=GateConfig(horizon=2, start_states=32, delta_relative=0.0, z=0.0), rollout_episodes=3, rollout_std=0.1, verify_episodes=2, seed=1,
        robot="xarm:standin:push", hz=0, max_steps=30, operator=OperatorConfig(device="scripted", takeover_rate=1.0, drift_after=10, takeover_steps=5),
    )  # fmt: skip
    train_offline(config, show_progress=False)
    assert json.loads((out / "report.json").read_text())["rounds"][0]["robot_minutes"] > 0  # the robot's time, reported
    with ZarrEpisodeStore.open(out / "data.zarr") as store:
        rolled = [(i, m) for i, m in enumerate(store.metas) if m.source == "offline-rollout"]
        assert len(rolled) == 3 and all(m.robot.startswith("xarm") for _, m in rolled)
        assert all(store.episode(i).data[INTERVENTION].any() or m.success for i, m in rolled)  # the operator took over the drifting ones
    import workflow.offline as offline

    opened = []
    real = offline.open_control

    def recording(spec, *args, **kwargs):
        opened.append(spec)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(offline, "open_control", recording)
    report = offline.run_verification(policy, config, 0)  # the deterministic policy on the round's verification seeds
    assert opened == ["xarm:standin:push"] and report.episodes == 2 and report.seeds[0] == offline.verify_seed(config, 0)


def test_a_robot_time_budget_ends_the_stage_after_the_iteration_that_spends_it(policy, tmp_path):
    from workflow.online import train_online

    report = train_online(_online(policy, tmp_path / "budget", iterations=5, robot_minutes=1e-6), show_progress=False)
    assert report.iterations == 1 and report.episodes == 3 and report.robot_minutes > 0
    assert (tmp_path / "budget" / "policy").exists()
    logged = [json.loads(line) for line in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    assert [d["charts/robot_minutes"] for d in logged if "charts/robot_minutes" in d] == [pytest.approx(report.robot_minutes)]


def test_a_rerun_may_move_the_learner_but_not_change_what_it_computes(tmp_path):
    import dataclasses

    from workflow.online import OnlineConfig
    from workflow.run import RunDir

    config = OnlineConfig(policy="p", out=str(tmp_path), task="push")
    RunDir(tmp_path, config).close()
    RunDir(tmp_path, dataclasses.replace(config, learner="gpu-box:8766", device="cpu", iterations=20, robot_minutes=30.0)).close()  # resumes
    with pytest.raises(ValueError, match="differs in actor_lr"):
        RunDir(tmp_path, dataclasses.replace(config, actor_lr=3e-5))


def test_a_finished_run_rerun_with_more_iterations_ends_where_one_run_of_that_length_does(policy, uninterrupted, tmp_path):
    """Lengthening a finished run (the main job's 40 iterations went on to 120) repeats none of its iterations and hands on
    the policy one run of the new length would; a rerun cannot shorten it."""
    from workflow.online import train_online

    out = tmp_path / "run"
    first = train_online(_online(policy, out, iterations=2), show_progress=False)
    assert first.iterations == 2
    longer = train_online(_online(policy, out), show_progress=False)  # 3 iterations: only the third runs
    assert longer.iterations == 3 and sorted(p.name for p in (out / "checkpoints").glob("step-*")) == sorted(p.name for p in (uninterrupted / "checkpoints").glob("step-*"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if "charts/success" in line]
    assert steps == [0, 1, 2]
    ours, theirs = _weights(out), _weights(uninterrupted)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)
    with pytest.raises(ValueError, match="3 finished iterations, more than --iterations 2"):
        train_online(_online(policy, out, iterations=2), show_progress=False)
    assert json.loads((out / "config.json").read_text())["iterations"] == 3  # the refused rerun recorded nothing


def test_scored_by_label_a_stand_in_keeps_its_task_s_step_limit(policy):
    from workflow.control import open_control

    robot, task, control, _ = open_control("xarm:standin:push", learner(policy), OperatorConfig(device="scripted", reward="label"), hz=0)
    assert control.task is None and control.max_steps == task.max_steps < 600  # not a real arm's 600


def _offline(policy_path, out, **over):
    from policies.critics import CriticConfig
    from policies.dynamics import DynamicsConfig
    from workflow.offline import OfflineConfig
    from workflow.ope import GateConfig

    cfg = dict(
        policy=str(policy_path), data=str(Path(str(policy_path)).parent / "push.zarr"), out=str(out), rounds=1, critic=CriticConfig(hidden_dims=(32, 32)),
        critic_steps=30, dynamics=DynamicsConfig(hidden_dims=(32, 32), max_epochs=2), ppo_updates=4, ppo_batch=32, gate_every=2,
        gate=GateConfig(horizon=2, start_states=32, delta_relative=0.0, z=0.0), rollout_episodes=3, rollout_std=0.1, verify_episodes=2, seed=1,
        retrain_steps=3, robot="xarm:standin:push", hz=0, max_steps=25,
        operator=OperatorConfig(device="scripted", takeover_rate=0.5, drift_after=10, takeover_steps=5),
    )  # fmt: skip
    cfg.update(over)
    return OfflineConfig(**cfg)


@pytest.fixture(scope="module")
def offline_uninterrupted(policy, tmp_path_factory):
    from workflow.offline import train_offline

    out = tmp_path_factory.mktemp("offline-uninterrupted") / "run"
    train_offline(_offline(policy, out), show_progress=False)
    return out


def _round_outcome(run: Path) -> dict:
    report = json.loads((run / "report.json").read_text())["rounds"][0]
    return {k: v for k, v in report.items() if k not in ("robot_minutes", "policy")}


@pytest.mark.parametrize("where", ["mid-rollout", "between-the-two-writes", "mid-ppo", "mid-verification"])
def test_a_killed_offline_round_on_a_stand_in_resumes_to_the_uninterrupted_result_losing_and_repeating_nothing(
    policy, offline_uninterrupted, tmp_path, monkeypatch, where
):
    import workflow.offline as offline
    import workflow.rollout as rollout

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        if where == "mid-rollout":  # the second rollout never finishes
            _kill_at(patch, rollout, "run_episode", 2)
        elif where == "between-the-two-writes":  # the second rollout is in the round's journal, not yet in the store
            _kill_at(patch, ZarrEpisodeStore, "append_episode", 2)
        elif where == "mid-ppo":  # the critics are on disk, the PPO stage is not finished
            _kill_at(patch, offline, "gate", 2)
        else:  # the PPO stage is done, the first verification episode is committed, the second never finishes
            _kill_at(patch, rollout, "run_episode", 5)
        with pytest.raises(Killed):
            offline.train_offline(_offline(policy, out), show_progress=False)
    counted = {"episodes": 0, "critics": 0, "ppo": 0}

    def counting(name, module, attribute):
        real = getattr(module, attribute)

        def wrapped(*args, **kwargs):
            counted[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, attribute, wrapped)

    counting("episodes", rollout, "run_episode")
    counting("critics", offline, "fit_critics")
    counting("ppo", offline, "ppo_round")
    offline.train_offline(_offline(policy, out), show_progress=False)  # the same command again
    outcome = _round_outcome(out)
    verified = outcome["verify_episodes"]
    assert verified >= 4  # the reference and the retrained policy at least: the kill points above fall where they should
    ran_before = {"mid-rollout": 1, "between-the-two-writes": 2, "mid-ppo": 3, "mid-verification": 4}[where]
    assert counted["episodes"] == 3 + verified - ran_before  # no committed episode runs again
    assert counted["critics"] == (0 if where in ("mid-ppo", "mid-verification") else 1)  # fitted critics on disk are loaded
    assert counted["ppo"] == (0 if where == "mid-verification" else 1)  # a finished PPO stage is not redone
    with ZarrEpisodeStore.open(out / "data.zarr") as store:
        seeds = [m.seed for m in store.metas if m.source == "offline-rollout"]
    with ZarrEpisodeStore.open(offline_uninterrupted / "data.zarr") as store:
        assert seeds == [m.seed for m in store.metas if m.source == "offline-rollout"] and len(set(seeds)) == 3  # none lost, none twice, in order
    assert outcome == _round_outcome(offline_uninterrupted)
    assert not (out / "round-0" / "episodes").exists()  # the journal goes with the round's report
    mine, theirs = _weights(out), _weights(offline_uninterrupted)
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=0, msg=f"{name} differs from the uninterrupted run's")


# ------------------------------------------------------------------ selection scored by the operator


@pytest.mark.parametrize("takeovers", [False, True])
def test_selection_on_a_stand_in_is_scored_by_the_operator_s_labels_and_a_takeover_is_a_failure(policy, tmp_path, monkeypatch, takeovers):
    from workflow.online import train_online

    real = ScriptedOperator.poll

    def labels_early(self, observation):  # an operator who calls every episode a success at its fourth tick
        command = real(self, observation)
        if self._tick >= 4 and not self._driving and not command.events:
            return TeleopCommand(events=frozenset({TeleopEvent.SUCCESS}))
        return command

    monkeypatch.setattr(ScriptedOperator, "poll", labels_early)
    operator = OperatorConfig(device="scripted", reward="label", takeover_rate=1.0 if takeovers else 0.0, drift_after=2, takeover_steps=3)
    report = train_online(_online(policy, tmp_path / "run", task=None, robot="xarm:standin:push", hz=0, iterations=1, episodes_per_iteration=2,
                                  select_episodes=3, distill_steps=0, operator=operator), show_progress=False)  # fmt: skip
    assert [name for name, _, _ in report.selection] == ["start", "iteration 0"]
    # the task would fail these four-tick episodes; the labels pass them, unless the operator drove a step
    assert [rate for _, rate, _ in report.selection] == ([0.0, 0.0] if takeovers else [1.0, 1.0])
    assert report.selected == "start"  # a tie keeps the start


def test_an_offline_round_on_a_stand_in_retrains_on_the_operator_s_intervention_steps_when_asked(policy, tmp_path, monkeypatch):
    import workflow.offline as offline

    reports, real = [], offline.train_imitation

    def recording(config, **kwargs):
        assert config.rollout_steps == "interventions"
        reports.append(real(config, **kwargs))
        return reports[-1]

    monkeypatch.setattr(offline, "train_imitation", recording)
    out = tmp_path / "run"
    config = _offline(policy, out, retrain_rollout_steps="interventions", operator=OperatorConfig(device="scripted", takeover_rate=1.0, drift_after=5, takeover_steps=4))
    offline.train_offline(config, show_progress=False)
    with ZarrEpisodeStore.open(out / "data.zarr") as store:
        operated = sum(int(store.episode(i).data[INTERVENTION].sum()) for i, m in enumerate(store.metas) if m.source == "offline-rollout")
    assert len(reports) == 1 and reports[0].intervention_steps == operated > 0
    with pytest.raises(ValueError, match="retrain_rollout_steps"):
        _offline(policy, out, retrain_rollout_steps="whole")


class Stopper(Labeller):
    """Labels episodes a success after 2 ticks, but in its ``in_episode``-th presses ``event`` at tick ``at``
    (tick 0: at the start prompt, before the episode runs)."""

    def __init__(self, event: TeleopEvent, at: int, in_episode: int = 2):
        super().__init__(after=2, success=True)
        self.event, self.at, self.in_episode, self.episodes = event, at, in_episode, 0

    def reset(self):
        super().reset()
        self.episodes += 1

    def poll(self, observation):
        if self.episodes == self.in_episode and self.tick + 1 == self.at:
            self.tick += 1
            return TeleopCommand(events=frozenset({self.event}))
        return super().poll(observation)


STOPS = [(TeleopEvent.ESTOP, 3, "e-stop was pressed"), (TeleopEvent.QUIT, 1, "operator quit"), (TeleopEvent.QUIT, 0, "operator quit")]


@pytest.mark.parametrize("event, at, says", STOPS, ids=["e-stop", "quit-mid-episode", "quit-at-start"])
def test_an_e_stop_or_a_quit_during_the_selection_episodes_stops_the_session(policy, event, at, says):
    from workflow.online import scored_on_robot
    from workflow.takeover import OperatorStop

    robot, _ = open_robot_for("xarm:standin:push", learner(policy))
    control = ControlStack(robot, None, learner(policy), hz=0, operator=Stopper(event, at))
    with robot:
        with pytest.raises(OperatorStop, match=f"{says} in episode 2 of 3.*selection runs again"):
            scored_on_robot(control, DiffusionController.load(policy, seed=0), episodes=3, seed=0)
        assert robot.is_estopped == (event == TeleopEvent.ESTOP)


@pytest.mark.parametrize("event, at, says", STOPS, ids=["e-stop", "quit-mid-episode", "quit-at-start"])
def test_an_offline_round_s_robot_episodes_stop_on_an_e_stop_or_a_quit_and_resume_from_the_committed(policy, tmp_path, monkeypatch, event, at, says):
    """The episode the operator stopped in is not committed (the policy did not finish it); the rerun runs it
    and the seeds after it, and none before it again."""
    import workflow.offline as offline
    from workflow.offline_resume import RoundJournal
    from workflow.takeover import OperatorStop

    operators = iter([Stopper(event, at), Labeller(after=2, success=True)])
    ran: list[int] = []

    def control_with_operator(spec, controller, operator, **kw):
        robot, _ = open_robot_for(spec, controller)
        stack = ControlStack(robot, None, controller, hz=0, operator=next(operators))
        real = stack.episode
        stack.episode = lambda seed: ran.append(seed) or real(seed)
        return robot, None, stack, None

    monkeypatch.setattr(offline, "open_control", control_with_operator)
    config = _offline(policy, tmp_path / "run")
    journal = RoundJournal(tmp_path / "run" / "round-0")
    with pytest.raises(OperatorStop, match=f"verify-policy episodes stopped: the {says} in episode 2 of 3.*to resume the round"):
        offline.robot_episodes(DiffusionController.load(policy, seed=0), config, episodes=3, seed=40, journal=journal, kind="verify-policy")
    assert sorted(journal.done("verify-policy")) == [40]  # the stopped episode is not committed
    report = offline.robot_episodes(DiffusionController.load(policy, seed=0), config, episodes=3, seed=40, journal=journal, kind="verify-policy")
    assert ran == [40, 41, 41, 42] and report.seeds == (40, 41, 42) and report.success_rate == 1.0
