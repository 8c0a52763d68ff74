"""Evaluation over seeds: the report keeps every episode's outcome, length and return in seed order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from hardware.registry import make_sim
from robot.types import SafetyConfig
from workflow.distributed import Distributed
from workflow.rollout import evaluate, run_episode

from tests.test_imitation import ExpertPolicy


class StillPolicy:
    """Sends one constant action (zero: never moves, every episode fails and runs the task's whole step limit)."""

    def __init__(self, action_dim: int, value: float = 0.0):
        self.action = np.full(action_dim, value, dtype=np.float32)

    def reset(self) -> None:
        pass

    def select_action(self, obs):
        return self.action


def test_an_evaluation_reports_each_episode_s_length_and_return_in_seed_order():
    robot, task = make_sim("push")
    with robot:
        report = evaluate(robot, task, ExpertPolicy(task.scene), episodes=3, seed=5)
        alone = run_episode(robot, task, ExpertPolicy(task.scene), seed=6)
        still = evaluate(robot, task, StillPolicy(robot.action_features["action"].shape[0]), episodes=2, seed=5)
    assert report.seeds == (5, 6, 7) and all(report.successes)
    assert len(report.lengths) == len(report.returns) == 3
    assert all(0 < n < task.max_steps for n in report.lengths), "a successful episode ends at the step it succeeded"
    assert report.lengths[1] == alone.length and report.returns[1] == pytest.approx(alone.ret)
    assert report.mean_length == pytest.approx(np.mean(report.lengths)) and report.mean_return == pytest.approx(np.mean(report.returns))
    assert still.successes == (False, False) and still.lengths == (task.max_steps, task.max_steps)
    assert all(isinstance(n, int) for n in report.lengths) and all(isinstance(r, float) for r in report.returns)


def test_an_evaluation_reports_the_safety_interventions_per_guard():
    robot, task = make_sim("push", safety=SafetyConfig(workspace_low=(-0.05, -0.05, -1.0), workspace_high=(0.05, 0.05, 1.0)))
    with robot:
        robot.counters.step_clipped = 7  # earlier use of the robot is not this evaluation's
        report = evaluate(robot, task, StillPolicy(2, value=1.0), episodes=2, seed=5)
    assert report.safety["step_clipped"] == 2 * task.max_steps and report.safety["workspace_clipped"] > 0
    assert set(report.safety) <= {"step_clipped", "workspace_clipped", "joint_limited", "velocity_limited"}  # only guards that fired


@dataclass(frozen=True)
class RankZeroOfTwo(Distributed):
    """Rank 0 of a two-process job, without torch.distributed: rank 1's episodes are given."""

    rank_one: tuple = ()

    def gather(self, obj):
        return [obj, list(self.rank_one)]

    def broadcast(self, obj):
        return obj


def test_a_torchrun_evaluation_reports_every_rank_s_lengths_in_seed_order():
    robot, task = make_sim("push")
    with robot:
        alone = evaluate(robot, task, ExpertPolicy(task.scene), episodes=4, seed=5)
        rank_one = tuple(run_episode(robot, task, ExpertPolicy(task.scene), seed=5 + i) for i in (1, 3))  # every second seed
        shared = evaluate(robot, task, ExpertPolicy(task.scene), episodes=4, seed=5, ddp=RankZeroOfTwo(rank=0, world_size=2, rank_one=rank_one))
    assert len(set(alone.lengths)) > 1, "the seeds must give different lengths for the order to be checked"
    assert shared.seeds == alone.seeds == (5, 6, 7, 8)
    assert shared.lengths == alone.lengths and shared.returns == pytest.approx(alone.returns) and shared.successes == alone.successes
