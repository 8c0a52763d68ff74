"""The episode engine: steps, endings and frames; the controller's PolicyStep; takeover; online decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hardware.registry import make_sim
from hardware.teleop import TeleopCommand, TeleopEvent
from robot.types import ACTION, DONE, INTERVENTION, SUCCESS
from workflow.control import ControlStack
from workflow.episode import IDLE, Act, Ending, Episode, PolicyActor
from workflow.online_collect import Decisions, collect_episode
from workflow.policy import DiffusionController
from workflow.takeover import NOT_STARTED, Takeover

from tests.test_imitation import ExpertPolicy, tiny_push_policy
from tests.test_rollout import StillPolicy


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return tiny_push_policy(tmp_path_factory.mktemp("episode"))


def test_an_episode_ends_on_success_and_its_frames_are_its_steps():
    robot, task = make_sim("push")
    with robot:
        episode = Episode(robot, task, PolicyActor(ExpertPolicy(task.scene)), seed=3)
        steps = list(episode)
    assert episode.ending == Ending("task", True) and episode.success and 0 < episode.length == len(steps) < task.max_steps
    assert [s.t for s in steps] == list(range(len(steps))) and steps[-1].done and not any(s.done for s in steps[:-1])
    for before, after in zip(steps, steps[1:]):
        assert before.next_observation is after.observation  # each step starts where the last one left the robot
    frames = episode.frames.arrays()
    np.testing.assert_array_equal(frames[ACTION], np.stack([s.action for s in steps]))
    assert frames[SUCCESS].tolist() == [False] * (len(steps) - 1) + [True] and frames[DONE][-1]
    assert episode.ret == pytest.approx(sum(s.reward for s in steps))


def test_an_episode_that_never_succeeds_runs_its_step_limit():
    robot, task = make_sim("push")
    with robot:
        episode = Episode(robot, task, PolicyActor(StillPolicy(2)), seed=3, max_steps=7).run()
    assert episode.ending == Ending("max-steps", False) and episode.length == 7
    assert episode.frames.arrays()[DONE].tolist() == [False] * 6 + [True]


class Scripted:
    """An actor whose ticks are given: an action array, None (hold) or an Ending."""

    def __init__(self, ticks):
        self.ticks = list(ticks)

    def begin(self, seed, observation):
        return None

    def act(self, t, observation):
        tick = self.ticks.pop(0)
        return tick if isinstance(tick, Ending) or tick is IDLE else Act(tick)


def test_an_actor_s_ending_labels_the_last_frame_and_none_holds_the_robot():
    robot, task = make_sim("push")
    move = np.array([0.5, 0.0], np.float32)
    with robot:
        episode = Episode(robot, task, Scripted([move, None, Ending("operator", True)]), seed=0).run()
        held = robot.counters.as_dict()
    assert episode.ending == Ending("operator", True) and episode.length == 2
    frames = episode.frames.arrays()
    assert frames[SUCCESS].tolist() == [False, True] and frames[DONE].tolist() == [False, True]  # the operator's label is the episode's
    assert np.allclose(frames[ACTION][1], 0.0) and not np.allclose(frames[ACTION][0], 0.0)
    assert held  # the hold went through the safety layer


def test_the_controller_says_which_steps_planned_and_hands_out_chains_when_asked(policy):
    robot, task = make_sim("push")
    controller = DiffusionController.load(policy, sampler="ddim")
    controller.keep_chain = True
    with robot:
        steps = list(Episode(robot, task, PolicyActor(controller), seed=1, max_steps=7))
        learner = DiffusionController.load(policy, deterministic=False)
        learner.learning = True
        first = next(iter(Episode(robot, task, PolicyActor(learner), seed=1, max_steps=1)))
    ta = controller.n_action_steps
    assert [s.policy.chunk_started for s in steps] == [t % ta == 0 for t in range(7)]
    assert all(s.policy.inference_s > 0 and s.policy.chain.shape == (11, 4, 2) for s in steps if s.policy.chunk_started)
    assert all(s.policy.chain is None and s.policy.decision is None for s in steps if not s.policy.chunk_started)
    chain = first.policy.decision.chain
    assert first.policy.decision.cond.shape[0] == 1 and chain.log_probs.shape == (1, chain.timesteps.numel())
    np.testing.assert_allclose(first.policy.action, learner.unnormalize_actions(chain.actions[0])[0], atol=1e-6)


def test_online_decisions_cover_the_episode_chunk_by_chunk(policy):
    robot, task = make_sim("push")
    controller = DiffusionController.load(policy, deterministic=False, seed=5)
    controller.learning = True
    out = Decisions()
    with robot:
        collected = collect_episode(ControlStack(robot, task, controller, hz=0), out, 1.0, seed=2)
    frames, success = collected.frames, collected.success
    n = len(frames[ACTION])
    ta = controller.n_action_steps
    assert len(out.cond) == len(out.chains) == len(out.rewards) == len(out.next_cond) == -(-n // ta)
    assert sum(out.rewards) == pytest.approx(float(frames["reward"].sum()), abs=1e-5)  # gamma 1: chunk rewards add up to the return
    assert out.last == [False] * (len(out.cond) - 1) + [True] and out.terminal[-1] == success
    for k in range(len(out.cond) - 1):
        torch.testing.assert_close(out.next_cond[k], out.cond[k + 1])  # a chunk ends where the next was planned
    assert out.discounts[:-1] == [1.0] * (len(out.cond) - 1)


class ScriptDevice:
    """A device replaying commands (the keyboard's key handling is tested on its own)."""

    name, controls = "script", ""

    def __init__(self, commands):
        self.commands = list(commands)
        self.resets = 0

    def reset(self):
        self.resets += 1

    def poll(self, observation):
        return self.commands.pop(0)


class CountingPolicy(StillPolicy):
    def __init__(self):
        super().__init__(2)
        self.action = np.array([0.01, 0.0], np.float32)
        self.resets = 0

    def reset(self):
        self.resets += 1


def test_takeover_swaps_in_the_operator_flags_interventions_and_ends_on_a_label():
    T, op = frozenset({TeleopEvent.TAKEOVER}), np.array([0.0, -0.02], np.float32)
    device = ScriptDevice([
        TeleopCommand(op), TeleopCommand(op, T), TeleopCommand(op), TeleopCommand(None),
        TeleopCommand(op, T), TeleopCommand(None, frozenset({TeleopEvent.FAILURE})),
    ])  # fmt: skip
    policy = CountingPolicy()
    robot, task = make_sim("push")
    with robot:
        episode = Episode(robot, task, Takeover(policy, device, robot), seed=0)
        steps = list(episode)
    assert [s.intervention for s in steps] == [False, True, True, False, False]
    assert [s.policy is None for s in steps] == [False, True, True, False, False]
    assert np.allclose(steps[1].action, op) and np.allclose(steps[0].action, [0.01, 0])
    assert policy.resets == 2 and device.resets == 1  # begin, and the hand-back at tick 4
    assert episode.ending == Ending("operator", False) and episode.frames.arrays()[INTERVENTION].tolist() == [False, True, True, False, False]


def test_pause_holds_the_robot_records_nothing_and_the_policy_replans_on_resume():
    P, none = frozenset({TeleopEvent.PAUSE}), TeleopCommand(None)
    device = ScriptDevice([none, TeleopCommand(None, P), none, none, TeleopCommand(None, P), none, TeleopCommand(None, frozenset({TeleopEvent.SUCCESS}))])
    policy = CountingPolicy()
    robot, task = make_sim("push")
    ticks = []
    with robot:
        episode = Episode(robot, task, Takeover(policy, device, robot), seed=0, pace=lambda: ticks.append(1))
        steps = list(episode)
    assert len(steps) == 3 and len(ticks) == 6  # tick 0 acted; three paused ticks waited; the resume tick and the next acted
    assert [s.t for s in steps] == [0, 1, 2] and not any(s.intervention for s in steps)  # a pause takes no step
    assert policy.resets == 2  # begin, and the resume (a plan made before the pause is stale)
    assert episode.ending == Ending("operator", True)


def test_the_e_stop_key_latches_the_robot_and_quitting_before_the_start_runs_nothing():
    robot, task = make_sim("push")
    with robot:
        estop = Episode(robot, task, Takeover(CountingPolicy(), ScriptDevice([TeleopCommand(None, frozenset({TeleopEvent.ESTOP}))]), robot), seed=0).run()
        assert robot.is_estopped
        robot.clear_estop()
        quit_ = Episode(robot, task, Takeover(CountingPolicy(), ScriptDevice([TeleopCommand(None, frozenset({TeleopEvent.QUIT}))]), robot, wait_for_start=True), seed=0).run()
    assert estop.ending == Ending("e-stop", False, "estop") and estop.length == 0
    assert quit_.ending == Ending(NOT_STARTED, False, "quit") and quit_.length == 0


def test_idle_ticks_take_no_step_and_an_operator_ending_can_defer_to_the_task():
    """Recording: a tick without a key pressed sends nothing and records nothing; the episode runs on past the
    task's success until the operator ends it, and an ending without a label takes the task's last check."""
    robot, task = make_sim("push")
    ticks = []
    with robot:
        episode = Episode(robot, task, Scripted([IDLE, np.array([0.5, 0.0], np.float32), IDLE, IDLE, None, Ending("keep", None)]), seed=0,
                          pace=lambda: ticks.append(1), end_on_success=False).run()  # fmt: skip
    assert episode.length == 2 and len(ticks) == 5  # every tick waits; only two of them acted
    assert episode.ending == Ending("keep", False) and episode.frames.arrays()[DONE].tolist() == [False, True]
    robot, task = make_sim("push")
    expert = ExpertPolicy(task.scene)
    with robot:
        first = Episode(robot, task, PolicyActor(expert), seed=3).run()
        longer = Episode(robot, task, PolicyActor(expert), seed=3, max_steps=first.length + 3, end_on_success=False).run()
    assert longer.length == first.length + 3 and longer.ending == Ending("max-steps", longer.last.success)
