"""Online RL and distillation mechanics: GAE over chunk decisions, stored rollouts, the one-step head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policies.consistency import ConsistencyHead
from policies.critics import CriticConfig
from robot.metrics import read_metrics
from robot.store import ZarrEpisodeStore
from workflow.distill import DistillConfig, distill, distill_targets, head_schedule, make_head_optimizer, train_distill
from workflow.imitation import ImitationConfig, train_imitation
from workflow.online import ROLLOUT_SEED, OnlineConfig, rollout_seed, train_online
from workflow.online_update import gae
from workflow.policy import DiffusionController
from tests.test_imitation import TINY, record_demos
from tests.test_policies_diffusion import STATE_ONLY, batch, tiny_policy


class ConstantValue(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def forward(self, cond):
        return torch.as_tensor([self.values[int(i)] for i in cond[:, 0]], dtype=torch.float32)


def test_gae_over_chunk_decisions_matches_a_hand_computation():
    # two episodes: decisions 0,1 (time limit after 1) and decision 2 (success)
    value = ConstantValue({0: 1.0, 1: 2.0, 2: 3.0, 10: 5.0, 11: 7.0})
    cond = torch.tensor([[0.0], [1.0], [2.0]])
    next_cond = torch.tensor([[1.0], [10.0], [11.0]])
    rewards = torch.tensor([0.5, 0.25, 1.0])
    discounts = torch.tensor([0.9, 0.8, 0.7])  # gamma^n of each chunk
    terminal = torch.tensor([0.0, 0.0, 1.0])
    last = torch.tensor([False, True, True])
    adv, returns = gae(value, cond, next_cond, rewards, discounts, terminal, last, lam=0.5)
    d0 = 0.5 + 0.9 * 2.0 - 1.0
    d1 = 0.25 + 0.8 * 5.0 - 2.0  # time limit: bootstrap from V(next)
    d2 = 1.0 + 0.0 - 3.0  # success: no future
    expected = [d0 + 0.9 * 0.5 * d1, d1, d2]
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(returns.numpy(), np.array(expected) + [1.0, 2.0, 3.0], rtol=1e-6)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("online")
    demos = record_demos(root / "push.zarr", 6)
    train_imitation(ImitationConfig(data=str(demos), out=str(root / "il"), policy=TINY, steps=60, batch_size=32, eval_every=60, checkpoint_every=60), show_progress=False)
    return demos, root / "il"


def test_the_value_function_starts_from_the_offline_round_s_v(policy, tmp_path):
    """``value_from`` warm-starts V from the critics an offline round saved (the same file layout everywhere)."""
    from policies.critics import CriticConfig, IqlCritics
    from workflow.critic_checkpoint import save_critics
    from workflow.distributed import Distributed
    from workflow.online_update import OnlineLearner
    from workflow.policy import DiffusionController

    model = DiffusionController.load(policy[1]).model
    critic = CriticConfig(hidden_dims=(16, 16))
    torch.manual_seed(3)
    critics = IqlCritics(model.cond_dim, TINY.n_action_steps * 2, config=critic)
    path = save_critics(tmp_path / "critics", critics)
    config = OnlineConfig(policy=str(policy[1]), out=str(tmp_path / "on"), critic=critic, value_from=str(path))
    learner = OnlineLearner(model, config, Distributed(), torch.device("cpu"))
    cond = torch.randn(5, model.cond_dim)
    torch.testing.assert_close(learner.value(cond), critics.v(cond))
    cold = OnlineLearner(model, OnlineConfig(policy=str(policy[1]), out=str(tmp_path / "on2"), critic=critic), Distributed(), torch.device("cpu"))
    assert not torch.allclose(cold.value(cond), critics.v(cond))


def test_online_stores_rollouts_logs_diagnostics_and_keeps_a_one_step_head(policy, tmp_path):
    cfg = OnlineConfig(policy=str(policy[1]), out=str(tmp_path / "on"), iterations=2, episodes_per_iteration=2, epochs=2,
                       critic=CriticConfig(hidden_dims=(32, 32)), distill_steps=3, value_warmup_epochs=2, select_episodes=0, adaptive_lr=True)  # fmt: skip
    report = train_online(cfg, show_progress=False)
    store = ZarrEpisodeStore.open(tmp_path / "on" / "rollouts.zarr")
    assert store.num_episodes == 4 and {m.source for m in store.metas} == {"online-rollout"}
    first = rollout_seed(cfg.seed)  # apart from the evaluations' small seeds, however long the run
    assert sorted(m.seed for m in store.metas) == list(range(first, first + 4)) and first >= ROLLOUT_SEED
    rows = read_metrics(tmp_path / "on" / "metrics.jsonl")
    assert len(rows) == 2
    for key in ("charts/clip_fraction", "charts/approx_kl", "charts/value_explained_variance", "charts/success", "losses/distill", "charts/actor_lr"):
        assert key in rows[0]
    controller = DiffusionController.load(report.policy, sampler="consistency")
    assert controller.consistency is not None
    before = DiffusionController.load(policy[1]).model.denoiser.state_dict()
    after = controller.model.denoiser.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "PPO did not update the denoiser"
    assert all(torch.equal(a, b) for a, b in zip(DiffusionController.load(policy[1]).model.encoder.state_dict().values(), controller.model.encoder.state_dict().values())), "the encoder must stay frozen"


def test_online_hands_on_the_best_scorer_of_the_start_and_its_snapshots(policy, tmp_path):
    cfg = OnlineConfig(policy=str(policy[1]), out=str(tmp_path / "on"), iterations=2, episodes_per_iteration=2, epochs=2,
                       critic=CriticConfig(hidden_dims=(32, 32)), distill_steps=2, value_warmup_epochs=2, select_episodes=2, select_every=1, challengers="snapshots",
                       distill_data=str(policy[0]), distill_final_steps=7)  # fmt: skip
    report = train_online(cfg, show_progress=False)
    final = [row for row in read_metrics(tmp_path / "on" / "metrics.jsonl") if "charts/distill_final_steps" in row]
    assert [row["charts/distill_final_steps"] for row in final] == [7]  # the handed-on head's whole budget
    visited = sum(ZarrEpisodeStore.open(p).num_steps for p in (policy[0], tmp_path / "on" / "rollouts.zarr"))
    assert final[0]["charts/distill_final_states"] == visited  # on the demonstrations' states and every state the rollouts visited
    names = [name for name, _, _ in report.selection]
    assert names == ["start", "iteration 0", "iteration 1"]
    best = max(report.selection[1:], key=lambda c: c[1])  # the first snapshot with the most successes
    assert report.selected in ("start", best[0]) and (report.selected == "start" or best[1] > report.selection[0][1])
    chosen = policy[1] if report.selected == "start" else tmp_path / "on" / "checkpoints" / f"step-{int(report.selected.split()[1]):07d}"
    handed_on = DiffusionController.load(report.policy, sampler="consistency")  # a one-step head comes with whichever won
    expected = DiffusionController.load(chosen).model.denoiser.state_dict()
    assert all(torch.equal(v, handed_on.model.denoiser.state_dict()[k]) for k, v in expected.items())


def test_distillation_moves_the_head_toward_the_teacher(policy, tmp_path):
    demos, teacher = policy
    short = train_distill(DistillConfig(policy=str(teacher), data=str(demos), out=str(tmp_path / "d1"), steps=1, batch_size=64), show_progress=False)
    longer = train_distill(DistillConfig(policy=str(teacher), data=str(demos), out=str(tmp_path / "d2"), steps=150, batch_size=64), show_progress=False)
    assert longer.final_loss < short.final_loss
    with pytest.raises(ValueError, match="no one-step consistency head"):
        DiffusionController.load(teacher, sampler="consistency")


def _distilled(teacher, states, steps: int, reuse: int, calls: list[int]):
    """A head distilled ``steps`` steps with ``reuse``; ``calls`` counts the teacher's chains."""
    head = ConsistencyHead.from_policy(teacher)
    sample = teacher.sample

    def counted(*args, **kwargs):
        calls.append(1)
        return sample(*args, **kwargs)

    teacher.sample = counted
    try:
        seen: list[int] = []
        distill(teacher, head, make_head_optimizer(head, 1e-3), states, steps, torch.Generator().manual_seed(0), batch_size=32, reuse=reuse, pool_batches=4,
                on_step=lambda step, _: seen.append(step))  # fmt: skip
    finally:
        del teacher.sample
    assert seen == list(range(1, steps + 1))
    return head


def test_reused_targets_cost_fewer_teacher_chains_and_fit_as_well_per_step():
    torch.manual_seed(0)
    teacher = tiny_policy(STATE_ONLY, "mlp", 4).eval().requires_grad_(False)
    with torch.no_grad():
        states = teacher.encode(batch(STATE_ONLY, 256))
    fresh_calls, reused_calls = [], []
    fresh = _distilled(teacher, states, 40, 1, fresh_calls)
    reused = _distilled(teacher, states, 40, 4, reused_calls)
    assert len(fresh_calls) == 40 and len(reused_calls) == 10  # one chain per batch of targets
    held_out = torch.Generator().manual_seed(1)
    noise, cond, target = distill_targets(teacher, ConsistencyHead.from_policy(teacher), states[torch.randint(0, 256, (128,), generator=held_out)], held_out)
    start = ConsistencyHead.from_policy(teacher)
    with torch.no_grad():
        errors = {name: torch.nn.functional.mse_loss(h(noise, cond), target).item() for name, h in (("start", start), ("fresh", fresh), ("reused", reused))}
    assert errors["fresh"] < 0.5 * errors["start"] and errors["reused"] < 0.5 * errors["start"], errors
    assert errors["reused"] < 1.5 * errors["fresh"], errors


def test_one_pool_labels_every_batch_the_steps_need_before_the_first_step():
    """``pool_batches=None``: the teacher's chains all run up front, one per batch of targets, and the steps then draw
    from all of them (a head from x_K = 0 has one fixed target per state)."""
    torch.manual_seed(0)
    teacher = tiny_policy(STATE_ONLY, "mlp", 4).eval().requires_grad_(False)
    with torch.no_grad():
        states = teacher.encode(batch(STATE_ONLY, 256))
    head, events = ConsistencyHead.from_policy(teacher), []
    sample = teacher.sample
    teacher.sample = lambda *a, **k: (events.append("chain"), sample(*a, **k))[1]
    try:
        distill(teacher, head, make_head_optimizer(head, 1e-3), states, 40, torch.Generator().manual_seed(0), batch_size=32, reuse=4,
                pool_batches=None, on_step=lambda step, _: events.append("step"))  # fmt: skip
    finally:
        del teacher.sample
    assert events == ["chain"] * 10 + ["step"] * 40


def test_a_head_whose_rate_decays_to_the_end_fits_its_teacher_closer_than_at_a_constant_rate():
    torch.manual_seed(0)
    teacher = tiny_policy(STATE_ONLY, "mlp", 4).eval().requires_grad_(False)
    with torch.no_grad():
        states = teacher.encode(batch(STATE_ONLY, 256))
    held_out = torch.Generator().manual_seed(1)
    noise, cond, target = distill_targets(teacher, ConsistencyHead.from_policy(teacher), states[torch.randint(0, 256, (256,), generator=held_out)], held_out)
    errors, rates = {}, []
    for name in ("constant", "decayed"):
        head = ConsistencyHead.from_policy(teacher)
        optimizer = make_head_optimizer(head, 1e-2)
        schedule = head_schedule(optimizer, 1000) if name == "decayed" else None
        distill(teacher, head, optimizer, states, 1000, torch.Generator().manual_seed(0), batch_size=32, schedule=schedule,
                on_step=lambda step, _: rates.append(optimizer.param_groups[0]["lr"]) if schedule else None)  # fmt: skip
        with torch.no_grad():
            errors[name] = torch.nn.functional.mse_loss(head(noise, cond), target).item()
    assert len(rates) == 1000 and rates == sorted(rates, reverse=True) and rates[0] > 0.99e-2 and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert errors["decayed"] < 0.9 * errors["constant"], errors  # 0.135 against 0.163


def test_distill_refuses_bad_settings():
    teacher = tiny_policy(STATE_ONLY, "mlp", 4).eval()
    head = ConsistencyHead.from_policy(teacher)
    with pytest.raises(ValueError, match="reuse"):
        distill(teacher, head, make_head_optimizer(head, 1e-3), torch.zeros(4, teacher.cond_dim), 3, torch.Generator(), reuse=0)
    with pytest.raises(ValueError, match="target_reuse"):
        DistillConfig(policy="p", data="d", out="o", target_reuse=0)
    with pytest.raises(ValueError, match="pool_batches"):
        distill(teacher, head, make_head_optimizer(head, 1e-3), torch.zeros(4, teacher.cond_dim), 3, torch.Generator(), pool_batches=0)
    with pytest.raises(ValueError, match="distill_pool"):
        OnlineConfig(policy="p", out="o", distill_pool=0)


def test_the_adaptive_learning_rate_follows_the_target_kl():
    from workflow.online_update import adapt_lr

    cfg = OnlineConfig(policy="p", out="o", actor_lr=1e-5, target_kl=0.01, adaptive_lr=True)
    assert adapt_lr(1e-5, 0.05, cfg) == pytest.approx(1e-5 / 1.5)  # far over: slower
    assert adapt_lr(1e-5, 0.001, cfg) == pytest.approx(1.5e-5)  # far under: faster
    assert adapt_lr(1e-5, 0.01, cfg) == pytest.approx(1e-5)  # on target: kept
    assert adapt_lr(1e-4, 0.0, cfg) == pytest.approx(1e-4)  # never past 10x the configured rate
    with pytest.raises(ValueError, match="kl_stop"):
        OnlineConfig(policy="p", out="o", kl_stop=1.0)


def scripted_selection(monkeypatch, tmp_path, wins_of):
    """Selection without sims: ``evaluate`` returns ``wins_of(controller, episodes, call)`` successes (the first
    episodes), policies load as their paths, and snapshots live in tmp_path/step-N. Returns the evaluations'
    ``(controller, seed, episodes)`` calls and the run to select in."""
    import workflow.online as online
    from workflow.rollout import EvalReport

    calls = []

    def scripted(robot, task, controller, *, episodes, seed, ddp=None, lanes=None):
        wins = wins_of(controller, episodes, len(calls))
        calls.append((controller, seed, episodes))
        successes = tuple([True] * wins + [False] * (episodes - wins))
        return EvalReport("push", episodes, wins / episodes, 0.0, 10.0, None, None, tuple(range(seed, seed + episodes)), successes)

    class Run:
        def snapshot_dir(self, it):
            return tmp_path / f"step-{it}"

    monkeypatch.setattr(online, "evaluate", scripted)
    monkeypatch.setattr(online.DiffusionController, "load", staticmethod(lambda path, **kw: path))
    return calls, Run()


@pytest.mark.parametrize(
    "confirm, kept",
    [
        ((10, 18), "iteration 0"),  # the fresh episodes confirm the screen's winner: 8 won, 0 lost
        ((10, 11), "start"),  # one more success on fresh seeds is no evidence
        (None, "start"),  # the screen's best lost more than it won: no fresh episodes run
    ],
)
def test_a_screened_snapshot_replaces_the_start_only_when_fresh_episodes_confirm_it(monkeypatch, tmp_path, confirm, kept):
    """Selection as screen then confirmation: the start and the snapshot that scored best on the selection
    episodes run again on the seeds after them, and the sign test reads those alone."""
    import workflow.online as online

    screen = [4, 6, 5] if confirm else [6, 5, 4]  # successes of 8: start, iteration 0, 1
    script = screen + (list(confirm) if confirm else [])
    calls, run = scripted_selection(monkeypatch, tmp_path, lambda controller, episodes, call: script[call])
    cfg = OnlineConfig(policy=str(tmp_path / "start"), out=str(tmp_path / "on"), iterations=2, select_episodes=8, select_every=1, confirm_episodes=20,
                       challengers="snapshots", seed=1)
    selected, scored, path = online.select_policy(None, None, cfg, run)
    assert selected == kept and [name for name, _, _ in scored][:3] == ["start", "iteration 0", "iteration 1"]
    assert path == (tmp_path / "step-0" if kept == "iteration 0" else online.policy_dir(tmp_path / "start"))
    screen_seed = online.SELECTION_SEED + 1000
    seeds = [(seed, episodes) for _, seed, episodes in calls]
    assert seeds[:3] == [(screen_seed, 8)] * 3 and seeds[3:] == ([(screen_seed + 8, 20)] * 2 if confirm else [])
    if confirm:
        assert [name for name, _, _ in scored][3:] == ["start confirming", "iteration 0 confirming"]
    with pytest.raises(ValueError, match="at most 1000"):
        OnlineConfig(policy="p", out="o", select_episodes=500, confirm_episodes=501)
    assert online.selection_episodes(cfg, scored) == 8 * 3 + (20 * 2 if confirm else 0)


@pytest.mark.parametrize(
    "last, kept",
    [
        (24, "iteration 2"),  # 4 won, 0 lost over all 28 seeds: p = 0.0625
        (21, "start"),  # 1 won, 0 lost: no evidence
        (19, "start"),  # worse
    ],
)
def test_only_the_last_snapshot_challenges_the_start_on_every_selection_seed(monkeypatch, tmp_path, last, kept):
    """``challengers="last"``: no screen among snapshots (which picks the luckiest), the start and the last
    snapshot run on the selection and confirmation seeds together and one sign test reads them all."""
    import workflow.online as online

    calls, run = scripted_selection(monkeypatch, tmp_path, lambda controller, episodes, call: 20 if controller == online.policy_dir(tmp_path / "start") else last)
    cfg = OnlineConfig(policy=str(tmp_path / "start"), out=str(tmp_path / "on"), iterations=3, select_episodes=8, confirm_episodes=20, seed=1)
    assert cfg.challengers == "last"  # the default
    selected, scored, path = online.select_policy(None, None, cfg, run)
    seed = online.SELECTION_SEED + 1000
    assert calls == [(online.policy_dir(tmp_path / "start"), seed, 28), (tmp_path / "step-2", seed, 28)]  # iterations 0 and 1 never run
    assert selected == kept and [name for name, _, _ in scored] == ["start", "iteration 2"]
    assert path == (tmp_path / "step-2" if kept == "iteration 2" else online.policy_dir(tmp_path / "start"))
    assert online.selection_episodes(cfg, scored) == 56


def test_online_rl_can_fine_tune_only_the_last_denoising_steps(policy, tmp_path):
    """``ft_steps``: the policy handed on freezes the leading steps in a copy of the start's denoiser (saved with it)
    and RL moved only the denoiser of the last ones."""
    cfg = OnlineConfig(policy=str(policy[1]), out=str(tmp_path / "on"), iterations=1, episodes_per_iteration=2, epochs=2, ft_steps=3,
                       critic=CriticConfig(hidden_dims=(32, 32)), distill_steps=0, value_warmup_epochs=1, select_episodes=0)  # fmt: skip
    report = train_online(cfg, show_progress=False)
    start, tuned = DiffusionController.load(policy[1]).model, DiffusionController.load(report.policy).model
    k = start.config.num_inference_steps
    assert tuned.config.frozen_steps == k - 3 and start.config.frozen_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(start.denoiser.state_dict().values(), tuned.base_denoiser.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(start.denoiser.state_dict().values(), tuned.denoiser.state_dict().values()))
    with pytest.raises(ValueError, match="ft_steps must be >= 1"):
        OnlineConfig(policy="p", out="o", ft_steps=0)
    again = OnlineConfig(policy=report.policy, out=str(tmp_path / "again"), iterations=1, episodes_per_iteration=1, ft_steps=4, select_episodes=0)
    with pytest.raises(ValueError, match="pass --ft-steps 3"):
        train_online(again, show_progress=False)


def test_an_online_run_saved_before_the_head_s_student_and_pool_existed_still_resumes(tmp_path):
    """Its config.json lacks ``head`` and ``distill_pool``: their defaults are what it ran with, so the same command
    resumes it; a changed student does not."""
    import json

    from robot.config import to_dict
    from workflow.run import RunDir

    config = OnlineConfig(policy="p", out=str(tmp_path))
    old = {**{k: v for k, v in to_dict(config).items() if k not in ("head", "distill_pool")}, "distill_lr": 3e-4, "distill_reuse": 4}  # as saved then
    (tmp_path / "config.json").write_text(json.dumps(old))
    RunDir(tmp_path, config).close()
    from policies.consistency import MLP

    with pytest.raises(ValueError, match="differs in head"):
        RunDir(tmp_path, OnlineConfig(policy="p", out=str(tmp_path), head=MLP))
