"""The sim check of how offline critics rank a state's candidate chunks (``robot critic-ranking``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policies.critics import CriticConfig, IqlCritics
from policies.dynamics import DynamicsConfig
from workflow.diagnostics.ranking import RankingReport, StateRanking, _replay
from workflow.imitation import ImitationConfig, train_imitation
from workflow.offline import OfflineConfig, train_offline
from workflow.ope import GateConfig
from tests.test_imitation import TINY, record_demos


def _state(q, returns, successes=None) -> StateRanking:
    from workflow.diagnostics.fqe import rank_agreement

    a = rank_agreement(q, returns)
    return StateRanking(0, 0, list(q), list(returns), list(successes or [r > 0 for r in returns]), a["spearman"], a["regret_at_1"])


def test_the_summary_scores_q_that_orders_like_the_returns_one_and_reversed_q_below_zero():
    returns = [[0.9, -0.2, 0.5, 0.1], [0.3, 0.8, -0.5, 0.0]]
    tied = _state([0.1, 0.9, 0.5, 0.2], [0.4, 0.4, 0.4, 0.4])
    good = RankingReport("push", [_state(r, r) for r in returns] + [tied]).summary()
    assert good["states"] == 3 and good["ranked_states"] == 2  # a state whose candidates all end alike ranks nothing
    assert good["spearman_mean"] == pytest.approx(1.0) and good["captured"] == pytest.approx(1.0) and good["regret_mean"] == 0
    assert good["state_spearman"] == pytest.approx(1.0) and good["q_spread"] == pytest.approx(good["return_spread"])
    assert good["success_split_states"] == 2 and good["q_picks_success"] == 1.0 and good["candidate_success"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    bad = RankingReport("push", [_state([-x for x in r], r) for r in returns]).summary()
    assert np.isnan(bad["state_spearman"])  # two states: too few to rank
    assert bad["spearman_mean"] == pytest.approx(-1.0) and bad["captured"] < 0 and bad["q_picks_success"] == 0.0
    # (worst - mean) / (best - mean) summed over states
    expected = sum(min(r) - np.mean(r) for r in returns) / sum(max(r) - np.mean(r) for r in returns)
    assert bad["captured"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def offline_round(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ranking")
    demos = record_demos(root / "push.zarr", 6)
    train_imitation(ImitationConfig(data=str(demos), out=str(root / "il"), policy=TINY, steps=200, batch_size=32, eval_every=200, checkpoint_every=200),
                    show_progress=False)  # fmt: skip
    cfg = OfflineConfig(
        policy=str(root / "il"), data=str(demos), out=str(root / "off"), rounds=1, critic=CriticConfig(hidden_dims=(32, 32)), critic_steps=100,
        dynamics=DynamicsConfig(hidden_dims=(32, 32), max_epochs=3), ppo_updates=2, ppo_batch=16, gate_every=2,
        gate=GateConfig(horizon=2, start_states=16), rollout_episodes=0, retrain_steps=0,
    )  # fmt: skip
    train_offline(cfg, show_progress=False)
    return root / "il", root / "off" / "round-0" / "critics"


def test_critic_ranking_on_the_command_line_replays_each_branch_and_repeats_itself(offline_round, tmp_path):
    from typer.testing import CliRunner

    from robot.cli import app

    policy, critics = offline_round
    runs = []
    for name in ("a.json", "b.json"):
        args = ["critic-ranking", "--policy", str(policy), "--critics", str(critics), "--task", "push", "--states", "3", "--chunks", "3", "--out", str(tmp_path / name)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "Spearman(Q, return)" in result.output and "attainable gain captured" in result.output
        runs.append(json.loads((tmp_path / name).read_text()))
    assert runs[0] == runs[1]  # same seeds, same candidates, same branches: the sim replays exactly
    states = runs[0]["states"]
    assert len(states) == 3 and all(len(s["q"]) == len(s["returns"]) == len(s["successes"]) == 3 for s in states)
    assert all(np.isfinite(s["q"]).all() and max(s["returns"]) <= 1.0 for s in states)
    assert runs[0]["summary"]["states"] == 3


def test_a_replay_that_misses_the_recorded_state_is_refused(offline_round):
    from workflow.envs import make_sim_for
    from workflow.policy import DiffusionController

    controller = DiffusionController.load(offline_round[0])
    robot, task = make_sim_for("push", controller.input_features)
    with robot:
        first = robot.reset(5)
        moved = {k: np.asarray(v) + 0.01 for k, v in first.items()}
        assert _replay(robot, task, controller, 5, [], first).shape[0] == 1  # the reset state is reached again
        with pytest.raises(RuntimeError, match="did not reach the recorded state"):
            _replay(robot, task, controller, 5, [], moved)


def test_critics_of_another_policy_are_refused_with_one_line(offline_round, tmp_path):
    from typer.testing import CliRunner

    from robot.cli import app
    from workflow.diagnostics.probes import save_critic_snapshot

    other = save_critic_snapshot(tmp_path / "other", IqlCritics(5, 3))
    result = CliRunner().invoke(app, ["critic-ranking", "--policy", str(offline_round[0]), "--critics", str(other), "--task", "push"])
    assert result.exit_code == 2 and "use the critics of the offline round this policy comes from" in result.output
    result = CliRunner().invoke(app, ["critic-ranking", "--policy", str(offline_round[0]), "--critics", str(offline_round[1]), "--task", "lift"])
    assert result.exit_code == 2 and "does not fit robot sim:lift" in result.output  # a push policy on lift's robot


def test_replays_send_the_commands_not_what_the_robot_reported(offline_round, monkeypatch):
    """A safety layer acts on every command again during a replay, so the replay must send the
    commands: replaying the reported (clamped, cast) actions drifted off the recorded state on push."""
    import workflow.diagnostics.ranking as ranking
    from workflow.diagnostics.ranking import RankingConfig, check_critic_ranking
    from workflow.envs import make_sim_for

    class ReportsSomethingElse:
        """The sim, but send_action reports an action that differs from the one it applied."""

        def __init__(self, robot):
            self.robot = robot

        def send_action(self, action):
            return self.robot.send_action(action) + 0.05

        def __getattr__(self, name):
            return getattr(self.robot, name)

        def __enter__(self):
            self.robot.__enter__()
            return self

        def __exit__(self, *exc):
            return self.robot.__exit__(*exc)

    def wrapped(task, features, **opts):
        robot, t = make_sim_for(task, features, **opts)
        return ReportsSomethingElse(robot), t

    monkeypatch.setattr(ranking, "make_sim_for", wrapped)
    report = check_critic_ranking(RankingConfig(policy=str(offline_round[0]), critics=str(offline_round[1]), states=3, chunks=2, seed=1))
    assert any(s.decision > 0 for s in report.states)  # some branch replayed a prefix
