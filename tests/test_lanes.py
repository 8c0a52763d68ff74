"""Sim episodes side by side: the same episodes as one at a time (to float rounding), in seed order, on every run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from hardware.registry import make_sim
from policies.diffusion import randn
from robot.types import IMAGES_PREFIX, STATE, Feature
from workflow.distributed import Distributed
from workflow.envs import sim_lanes
from workflow.lanes import Batcher, SimLanes, can_run_in_lanes, run_in_lanes
from workflow.online_collect import collect_episodes
from workflow.control import ControlStack
from workflow.policy import DiffusionController, plan_together
from workflow.rollout import evaluate
from tests.test_imitation import tiny_push_policy

EPISODES = 6


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_push_policy(tmp_path_factory.mktemp("lanes"), demos=4, steps=30)


def _lanes(count: int) -> SimLanes:
    return SimLanes(count, lambda: make_sim("push", max_steps=30))


def _evaluate(policy, lanes: SimLanes | None, *, store=None, commit=None, sampler=None):
    controller = DiffusionController.load(policy, sampler=sampler, seed=3)
    robot, task = make_sim("push", max_steps=30)
    with robot:
        return evaluate(robot, task, controller, episodes=EPISODES, seed=40, lanes=lanes, commit=commit)


def test_one_generator_per_row_draws_what_each_draws_alone():
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    rows = randn((3, 4, 2), gens, "cpu", torch.float32)
    alone = torch.cat([torch.randn((1, 4, 2), generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)])
    assert torch.equal(rows, alone)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn((3, 4, 2), gens[:2], "cpu", torch.float32)


@pytest.mark.parametrize("sampler", [None, "ddpm"])
def test_plans_made_together_are_each_copy_s_lone_plan(policy, sampler):
    """Each row's noise comes from its own episode's generator: planned in one batch or alone, the same chunk."""
    controller = DiffusionController.load(policy, sampler=sampler)
    copies = [controller.for_lane(None) for _ in range(3)]
    histories = []
    for i, c in enumerate(copies):
        c.seed_episode(10 + i)
        c.push_observation({k: np.full(f.shape, 0.1 * i, dtype=f.dtype) for k, f in c.input_features.items()})
        histories.append(c.history())
    together = plan_together(copies, histories)
    for i, c in enumerate(copies):
        c.seed_episode(10 + i)
        alone = plan_together([c], [histories[i]])[0]
        np.testing.assert_allclose(together[i].actions, alone.actions, atol=1e-5)
    assert not np.allclose(together[0].actions, together[1].actions)


def test_episodes_in_lanes_start_as_the_lone_episodes_and_are_the_same_on_every_run(policy):
    """A lane's actions differ from its lone episode's by the batch's float rounding (about 1e-8 here) until a
    contact amplifies it, so the first chunk agrees; lockstep lanes form the same batches on every run."""
    from workflow.rollout import run_episode

    seeds = list(range(40, 40 + EPISODES))
    controller = DiffusionController.load(policy, seed=3)
    robot, task = make_sim("push", max_steps=30)
    with robot:
        alone = [run_episode(robot, task, controller, seed=s) for s in seeds]
        together = list(run_in_lanes(controller, seeds, (robot, task), _lanes(4), lambda r, t, c, s: run_episode(r, t, c, seed=s)))
    assert [r.seed for r in together] == seeds
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a.frames["action"][:4], b.frames["action"][:4], atol=1e-5)
    first, again = _evaluate(policy, _lanes(4)), _evaluate(policy, _lanes(4))
    assert first.seeds == tuple(seeds) and first.returns == again.returns and first.lengths == again.lengths
    assert first.inference_ms_mean is None and _evaluate(policy, None).inference_ms_mean is not None  # a batch's wall time is no chunk's latency


def test_lanes_commit_episodes_in_seed_order(policy):
    seeds = []
    _evaluate(policy, _lanes(3), commit=lambda res: seeds.append(res.seed))
    assert seeds == list(range(40, 40 + EPISODES))


def test_online_collection_in_lanes_keeps_each_decision_and_is_the_same_on_every_run(policy):
    def collect(lanes):
        controller = DiffusionController.load(policy, deterministic=False, seed=2)
        controller.learning = True
        robot, task = make_sim("push", max_steps=30)
        with robot:
            control = ControlStack(robot, task, controller, hz=0.0)
            try:
                return collect_episodes(control, [7, 8, 9, 10], 0.99, Distributed(), lanes=lanes)
            finally:
                control.close()

    lanes, again = collect(_lanes(4)), collect(_lanes(4))
    assert [e.seed for e in lanes] == [7, 8, 9, 10]
    for a, b in zip(lanes, again):
        assert a.decisions.rewards == b.decisions.rewards and len(a.decisions.cond) == len(b.decisions.cond) > 0
        assert all(c.samples.shape[0] == 1 for c in a.decisions.chains)  # each decision keeps its own row, not its batch
        assert all(c.samples.untyped_storage().nbytes() == c.samples.numel() * 4 for c in a.decisions.chains)
    alone = collect(None)
    for a, b in zip(alone, lanes):  # the first chunk's chain, before contacts amplify the batch's rounding
        np.testing.assert_allclose(a.decisions.chains[0].samples, b.decisions.chains[0].samples, atol=1e-5)
        np.testing.assert_allclose(a.decisions.chains[0].log_probs, b.decisions.chains[0].log_probs, rtol=1e-4)


def test_a_failing_episode_stops_the_other_lanes_and_its_error_is_raised(policy):
    controller = DiffusionController.load(policy)
    robot, task = make_sim("push", max_steps=30)

    def run(robot, task, controller, seed):
        if seed == 2:
            raise RuntimeError("lane broke")
        from workflow.rollout import run_episode

        return run_episode(robot, task, controller, seed=seed)

    before = threading.active_count()
    with robot, pytest.raises(RuntimeError, match="lane broke"):
        list(run_in_lanes(controller, list(range(8)), (robot, task), _lanes(4), run))
    assert threading.active_count() == before


def test_closing_early_stops_the_lanes(policy):
    controller = DiffusionController.load(policy)
    robot, task = make_sim("push", max_steps=30)
    before = threading.active_count()
    with robot:
        episodes = run_in_lanes(controller, list(range(8)), (robot, task), _lanes(4), lambda r, t, c, s: s)
        assert next(episodes) == 0
        episodes.close()
    assert threading.active_count() == before


def test_a_batch_forms_only_when_every_running_lane_waits():
    batcher = Batcher(2)
    assert batcher.batches == 0
    batcher.leave()
    batcher.leave()  # nobody waits: nothing to run
    assert batcher.batches == 0


def test_what_runs_in_lanes():
    assert sim_lanes("push", {STATE: Feature((3,))}, 8).count == 8
    assert sim_lanes("push", {STATE: Feature((3,))}, 1) is None
    assert sim_lanes("push", {STATE: Feature((3,)), IMAGES_PREFIX + "front": Feature((24, 24, 3), "uint8")}, 8) is None  # a scene renders on its own thread
    assert not can_run_in_lanes(_lanes(4), object(), 10)  # no batched plans: one at a time
    assert not can_run_in_lanes(_lanes(4), DiffusionController.__new__(DiffusionController), 1)
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        SimLanes(0, lambda: None)


def test_the_lanes_sims_are_built_once_serve_every_run_and_close_together(policy):
    """A stage's lanes keep their sims across runs (a robosuite sim costs up to a CPU second and about 120 MB to build):
    the second run builds none and gives the episodes a fresh set of sims gives; closing disconnects every one."""
    built = []

    def make():
        built.append(make_sim("push", max_steps=30))
        return built[-1]

    with SimLanes(4, make) as kept:
        first, again = _evaluate(policy, kept), _evaluate(policy, kept)
        assert len(built) == kept.built == 3  # lane 0 is the caller's robot
        fresh = _evaluate(policy, _lanes(4))
        assert first.returns == again.returns == fresh.returns and first.lengths == fresh.lengths
        assert all(robot.is_connected for robot, _ in built)
    assert not any(robot.is_connected for robot, _ in built) and kept.built == 0
    with pytest.raises(RuntimeError, match="these sim lanes are closed"):
        _evaluate(policy, kept)
