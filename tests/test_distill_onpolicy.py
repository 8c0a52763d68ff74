"""On-policy (DAgger) distillation of the one-step head: what the head visits joins what it is distilled on."""

from __future__ import annotations

import math

import pytest
import torch

from policies.consistency import ConsistencyHead
from robot.metrics import read_metrics
from workflow.distill import DistillConfig, train_distill
from workflow.distill_onpolicy import StatePool, distill_onpolicy, head_visits, onpolicy_schedule
from workflow.policy import DiffusionController
from tests.test_imitation import tiny_push_policy


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("dagger")
    return tiny_push_policy(root, demos=4, steps=30), root / "push.zarr"


def test_the_schedule_splits_the_steps_around_the_rounds():
    assert onpolicy_schedule(10, 2) == [4, 3, 3]
    assert onpolicy_schedule(7, 0) == [7]
    assert sum(onpolicy_schedule(2500, 4)) == 2500


def test_rounds_roll_out_between_phases_and_feed_the_pool():
    calls, pool = [], StatePool(torch.zeros(8, 3), 0.5)

    def visit(r):
        calls.append(("visit", r))
        return torch.full((r + 1, 3), float(r + 1)), 0.25

    def phase(n):
        calls.append(("distill", n, len(pool.visited)))
        return float(n)

    seen = []
    assert distill_onpolicy(phase, visit, pool, 10, 2, on_round=lambda r, k, s, n: seen.append((r, k, s, n))) == 3.0
    assert calls == [("distill", 4, 0), ("visit", 0), ("distill", 3, 1), ("visit", 1), ("distill", 3, 3)]
    assert seen == [(0, 1, 0.25, 4), (1, 3, 0.25, 7)]


def test_batches_are_drawn_from_the_head_s_states_in_their_share():
    pool = StatePool(torch.zeros(100, 2), 0.25)
    gen = torch.Generator().manual_seed(0)
    assert pool.draw(40, gen).sum() == 0  # nothing visited yet: all stored
    pool.add(torch.ones(3, 2))
    drawn = pool.draw(40, gen)
    assert drawn.shape == (40, 2) and int(drawn[:, 0].sum()) == 10
    with pytest.raises(ValueError, match="onpolicy_fraction"):
        StatePool(torch.zeros(1, 2), 1.5)


def test_the_head_s_visits_are_the_conditions_it_planned_at(teacher):
    controller = DiffusionController.load(teacher[0])
    head = ConsistencyHead.from_policy(controller.model).train()
    visited, success = head_visits(controller.model, head, controller.normalizer, "push", episodes=2, seed=5)
    assert head.training  # the rollouts leave the head in the mode distillation had it in

    # the same head as a plain controller on the same seeds plans at exactly these states
    plain = DiffusionController(controller.model, controller.normalizer, consistency=head, sampler="consistency", seed=5)
    from workflow.envs import make_sim_for
    from workflow.rollout import evaluate

    robot, task = make_sim_for("push", plain.input_features)
    conds = []
    with robot:
        report = evaluate(robot, task, plain, episodes=2, seed=5, on_step=lambda s: s.policy.chunk_started and conds.append(plain.condition()))
    assert report.success_rate == success
    assert len(visited) == sum(math.ceil(n / plain.n_action_steps) for n in report.lengths) == len(conds)
    torch.testing.assert_close(visited, torch.cat(conds))
    head.eval()


def test_onpolicy_distillation_logs_its_rounds_and_refuses_bad_settings(teacher, tmp_path):
    policy, demos = teacher
    report = train_distill(DistillConfig(policy=str(policy), data=str(demos), out=str(tmp_path / "d"), steps=9, batch_size=16, onpolicy_rounds=2,
                                         onpolicy_episodes=1), show_progress=False)  # fmt: skip
    assert report.steps == 9 and math.isfinite(report.final_loss)
    rows = [r for r in read_metrics(tmp_path / "d" / "metrics.jsonl") if "charts/onpolicy_states" in r]
    assert [r["step"] for r in rows] == [3, 6]  # after each phase but the last
    assert 0 < rows[0]["charts/onpolicy_states"] < rows[1]["charts/onpolicy_states"]
    distilled = [r["step"] for r in read_metrics(tmp_path / "d" / "metrics.jsonl") if "losses/distill" in r]
    assert distilled == list(range(1, 10))  # the phases number their steps on from each other
    DiffusionController.load(report.policy, sampler="consistency")
    for bad in ({"onpolicy_rounds": -1}, {"onpolicy_episodes": 0}, {"onpolicy_fraction": 2.0}):
        with pytest.raises(ValueError, match="onpolicy"):
            DistillConfig(policy="p", data="d", out="o", **bad)


def test_online_rl_distils_the_handed_on_head_on_its_own_visits(teacher, tmp_path):
    from policies.critics import CriticConfig
    from workflow.online import OnlineConfig, train_online

    policy, demos = teacher
    cfg = OnlineConfig(policy=str(policy), out=str(tmp_path / "on"), iterations=1, episodes_per_iteration=2, epochs=1, critic=CriticConfig(hidden_dims=(16, 16)),
                       distill_steps=2, value_warmup_epochs=1, select_episodes=0, distill_data=str(demos), distill_final_steps=6,
                       distill_onpolicy_rounds=2, distill_onpolicy_episodes=1)  # fmt: skip
    report = train_online(cfg, show_progress=False)
    rounds = [r for r in read_metrics(tmp_path / "on" / "metrics.jsonl") if "charts/onpolicy_round" in r]
    assert [r["charts/onpolicy_round"] for r in rounds] == [0, 1] and 0 < rounds[0]["charts/onpolicy_states"] < rounds[1]["charts/onpolicy_states"]
    spent = {k: v for r in read_metrics(tmp_path / "on" / "metrics.jsonl") for k, v in r.items() if k.startswith("cpu/")}
    assert set(spent) == {"cpu/collect_s", "cpu/update_s", "cpu/distill_s", "cpu/distill_final_s"} and all(v > 0 for v in spent.values())  # where the CPU went
    DiffusionController.load(report.policy, sampler="consistency")
    with pytest.raises(ValueError, match="distill-onpolicy-rounds 0"):
        OnlineConfig(policy="p", out="o", robot="ur5e:10.0.0.2", distill_onpolicy_rounds=1)
    OnlineConfig(policy="p", out="o", robot="sim:push", distill_onpolicy_rounds=1)


def test_without_in_loop_distillation_only_the_handed_on_policy_gets_a_head(teacher, tmp_path):
    """``distill_steps`` 0 with a final budget: the iterations distil nothing (their snapshots carry no head,
    rather than an untrained one) and the handed-on policy's head gets the whole final budget."""
    from policies.critics import CriticConfig
    from robot.checkpoint import load_checkpoint
    from workflow.online import OnlineConfig, train_online
    from workflow.policy import KIND

    policy, demos = teacher
    cfg = OnlineConfig(policy=str(policy), out=str(tmp_path / "on"), iterations=1, episodes_per_iteration=2, epochs=1, critic=CriticConfig(hidden_dims=(16, 16)),
                       distill_steps=0, value_warmup_epochs=1, select_episodes=0, distill_data=str(demos), distill_final_steps=6)  # fmt: skip
    report = train_online(cfg, show_progress=False)
    rows = read_metrics(tmp_path / "on" / "metrics.jsonl")
    assert all(math.isnan(r["losses/distill"]) for r in rows if "losses/distill" in r)  # nothing distilled in the loop
    assert [r["charts/distill_final_steps"] for r in rows if "charts/distill_final_steps" in r] == [6]
    assert "consistency" not in load_checkpoint(tmp_path / "on" / "checkpoints" / "step-0000000", kind=KIND).modules
    DiffusionController.load(report.policy, sampler="consistency")
    with pytest.raises(ValueError, match="distill_steps"):
        OnlineConfig(policy="p", out="o", distill_steps=-1)
