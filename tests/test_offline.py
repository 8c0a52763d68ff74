"""The OPE gate on real PPO updates: a harmful update is rejected, a helpful one accepted.

Slow: each case trains critics, a dynamics ensemble and 40 PPO updates. With critics
this small a single AM-Q check is noisy (on seed 0 even the helpful update scored
lower after 40 updates), so the cases use one fixed seed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import math

import pytest
import torch

from policies.critics import CriticConfig
from policies.dynamics import DynamicsConfig
from robot.checkpoint import load_checkpoint
from robot.store import ZarrEpisodeStore
from workflow.imitation import ImitationConfig, train_imitation
from workflow.offline import OfflineConfig, train_offline
from workflow.ope import GateConfig, horizon_warning
from tests.test_imitation import TINY, record_demos


@pytest.fixture(scope="module")
def imitation(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("offline")
    demos = record_demos(root / "push.zarr", 20)
    cfg = ImitationConfig(data=str(demos), out=str(root / "il"), policy=TINY, steps=500, batch_size=64, eval_every=500, checkpoint_every=500)
    train_imitation(cfg, show_progress=False)
    return demos, root / "il"


def _offline(imitation, out: Path, flip: bool, rollout_episodes: int = 0, retrain_steps: int = 0, z: float = 0.0, **options) -> list[dict]:
    """One round; ``z`` 0 by default: 40 updates this small move AM-Q by under its noise bound (the bound has its own test)."""
    demos, policy = imitation
    cfg = OfflineConfig(
        policy=str(policy), data=str(demos), out=str(out), rounds=1, critic=CriticConfig(hidden_dims=(64, 64)), critic_steps=500,
        dynamics=DynamicsConfig(hidden_dims=(64, 64), max_epochs=20), ppo_updates=40, ppo_batch=128, gate_every=40, actor_lr=1e-4,
        gate=GateConfig(horizon=3, start_states=128, delta_relative=0.0, z=z), rollout_episodes=rollout_episodes, retrain_steps=retrain_steps, flip_advantages=flip,
        seed=1, **options,
    )  # fmt: skip
    train_offline(cfg, show_progress=False)
    return [json.loads(line) for line in (out / "gate.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_gate_rejects_a_harmful_update_and_keeps_the_reference(imitation, tmp_path):
    decisions = _offline(imitation, tmp_path / "flipped", flip=True, rollout_episodes=2, retrain_steps=5, retrain_when_rejected=False, z=1.645)
    assert len(decisions) == 1
    assert not decisions[0]["accepted"] and decisions[0]["j_candidate"] < decisions[0]["j_reference"], decisions
    before = load_checkpoint(imitation[1] / "policy").modules["policy"]
    after = load_checkpoint(tmp_path / "flipped" / "policy").modules["policy"]
    assert all(torch.equal(before[k], after[k]) for k in before), "a rejected candidate became the policy"
    # with retrain_when_rejected=False a round whose gate accepted nothing neither rolls the candidate out nor
    # retrains; only the reference's own rollouts (run before PPO, data for the critics) joined the store
    merged = ZarrEpisodeStore.open(tmp_path / "flipped" / "data.zarr")
    assert merged.num_episodes == ZarrEpisodeStore.open(imitation[0]).num_episodes + 2
    assert [m.source for m in merged.metas[-2:]] == ["offline-rollout"] * 2
    assert not (tmp_path / "flipped" / "round-0" / "imitation").exists()
    report = json.loads((tmp_path / "flipped" / "round-0" / "report.json").read_text())
    assert report["rollout_success"] is None and report["reference_success"] is None and not report["refused"] and not report["retrained"]
    assert report["rollouts_success"] is not None and report["verify_episodes"] == 0  # nothing accepted: nothing to verify


@pytest.mark.slow
def test_verification_refuses_a_gate_accepted_policy_that_succeeds_less_often(imitation, tmp_path, monkeypatch):
    import workflow.offline as offline

    real, verified = offline.run_verification, []

    def run_verification(policy, config, m, journal=None, name="policy", **seeds):  # real deterministic episodes, but the sim "says" the accepted policy is worse
        verified.append(Path(policy))
        report = real(policy, config, m, journal, name, **seeds)
        won = len(verified) == 1
        return replace(report, success_rate=0.9 if won else 0.1, successes=(won,) * report.episodes)

    real_retrain, warm_starts = offline.train_imitation, []

    def train_imitation(config, *, show_progress=True, init=None, normalizer=None):
        warm_starts.append({k: v.clone() for k, v in init.state_dict().items()})
        return real_retrain(config, show_progress=show_progress, init=init, normalizer=normalizer)

    monkeypatch.setattr(offline, "run_verification", run_verification)
    monkeypatch.setattr(offline, "train_imitation", train_imitation)
    out = tmp_path / "refused"
    decisions = _offline(imitation, out, flip=False, rollout_episodes=2, retrain_steps=5, verify_episodes=3)
    assert decisions[0]["accepted"], decisions  # the same update the helpful case accepts
    assert verified == [imitation[1] / "policy", out / "round-0" / "accepted", out / "round-0" / "imitation" / "policy"]  # each once
    report = json.loads((out / "round-0" / "report.json").read_text())
    assert report["refused"] and report["retrained"] and report["reference_success"] == 0.9 and report["rollout_success"] == 0.1
    assert report["retrained_success"] == 0.1 and report["retrain_refused"]  # it lost to the reference's 0.9 too: the reference stays
    assert report["verify_episodes"] == 9 and report["verify_steps"] > 9 and report["rollouts_success"] is not None
    # the round still retrains on the merged data (the flywheel), warm-started from the reference, not the refused policy
    before = load_checkpoint(imitation[1] / "policy").modules["policy"]
    assert len(warm_starts) == 1 and all(torch.equal(before[k], warm_starts[0][k]) for k in before), "retrained from the refused policy"
    assert (out / "round-0" / "imitation" / "policy").is_dir()
    after = load_checkpoint(out / "policy").modules["policy"]
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused policy became the policy"
    # only the reference's rollouts joined the data: verification episodes judge, they are not stored
    assert ZarrEpisodeStore.open(out / "data.zarr").num_episodes == ZarrEpisodeStore.open(imitation[0]).num_episodes + 2


@pytest.mark.slow
def test_verification_keeps_an_accepted_policy_as_successful_and_faster_for_its_pace(imitation, tmp_path, monkeypatch):
    """Success tied on every verification seed, the accepted policy 20 steps quicker on each: kept for its pace, the
    round's report says so; with verify_pace off the same round keeps the reference."""
    import workflow.offline as offline

    real = offline.run_verification

    def run_verification(policy, config, m, journal=None, name="policy", **seeds):
        report = real(policy, config, m, journal, name, **seeds)
        steps = 30 if name == "accepted" else 50
        return replace(report, success_rate=0.5, successes=tuple(i % 2 == 0 for i in range(report.episodes)), lengths=(steps,) * report.episodes)

    monkeypatch.setattr(offline, "run_verification", run_verification)
    for pace in (True, False):
        out = tmp_path / f"pace-{pace}"
        decisions = _offline(imitation, out, flip=False, verify_episodes=8, verify_max_episodes=16, verify_pace_margin=0.0 if pace else None)  # 4 both solved: p 0.06
        assert decisions[0]["accepted"], decisions
        report = json.loads((out / "round-0" / "report.json").read_text())
        assert report["accepted_wins_losses"] == [0, 0] and report["accepted_steps"] == [50.0, 30.0], report
        assert report["refused"] is not pace and report["accepted_on_pace"] is pace, report
        assert (Path(report["policy"]) == out / "round-0" / "accepted") is pace, report["policy"]


def test_verification_runs_the_deployed_sampler_on_seeds_of_its_own(tmp_path, monkeypatch):
    import workflow.evaluate as evaluate_module
    from workflow.offline import run_verification, verify_seed

    calls = []
    monkeypatch.setattr(evaluate_module, "evaluate_policy", lambda policy, task, **kw: calls.append((policy, task, kw)) or "report")
    config = OfflineConfig(policy="p", data="d", out=str(tmp_path), task="lift", seed=3, rollout_episodes=40, verify_episodes=7)
    assert run_verification("/pol", config, 1) == "report"
    (policy, task, kw), = calls
    assert (policy, task, kw["episodes"], kw["seed"]) == ("/pol", "lift", 7, verify_seed(config, 1))
    assert kw.get("sampler") is None  # the policy's own deterministic sampler, whatever the rollouts used
    rollouts = range(3 + 10_000 * 2, 3 + 10_000 * 2 + 40)
    assert verify_seed(config, 1) >= rollouts.stop and verify_seed(config, 0) + config.verify_max_episodes <= rollouts.start
    assert run_verification("/pol", config, 1, first=verify_seed(config, 1) + 7, episodes=5) == "report"  # a later look: the next seeds
    assert (calls[-1][2]["episodes"], calls[-1][2]["seed"]) == (5, verify_seed(config, 1) + 7)
    for bad in ({"verify_episodes": 0}, {"verify_episodes": 60, "verify_max_episodes": 50}, {"verify_max_episodes": 5001}):
        with pytest.raises(ValueError, match="need 1 <= verify_episodes <= verify_max_episodes <= 5000"):
            OfflineConfig(policy="p", data="d", out=str(tmp_path), **bad)


@pytest.mark.slow
def test_gate_accepts_a_helpful_update(imitation, tmp_path):
    decisions = _offline(imitation, tmp_path / "helpful", flip=False, verify_rollouts=False)  # the gate's decision alone
    assert decisions[0]["accepted"] and decisions[0]["j_candidate"] > decisions[0]["j_reference"], decisions
    before = load_checkpoint(imitation[1] / "policy").modules["policy"]
    after = load_checkpoint(tmp_path / "helpful" / "policy").modules["policy"]
    assert not all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "helpful" / "round-0" / "critics" / "checkpoint.json").is_file()


def test_horizon_warning_names_the_fix():
    import numpy as np

    steps_to_go = np.array([30, 20, 10, 40, 5])
    success = np.array([True, True, True, False, True])
    message = horizon_warning(steps_to_go, success, horizon=2, n_action_steps=4)
    assert "8 steps" in message and "raise --ope-horizon to about 4" in message
    assert horizon_warning(steps_to_go, success, horizon=5, n_action_steps=4) is None


def test_several_chains_per_state_leave_only_the_action_dependent_advantage():
    """min Q - V = a state's offset + the action's effect: centring each state's chains removes the offset
    (the noise that dominates with one chain per state), and the diagnostics report the action's share."""
    from workflow.diagnostics.probes import ProbeConfig, advantage_metrics
    from workflow.ppo import per_state_centred

    gen = torch.Generator().manual_seed(0)
    offsets = 3.0 * torch.randn(16, 1, generator=gen)  # per state, large
    effects = 0.5 * torch.randn(16, 4, generator=gen)  # per chain, small
    raw = (offsets + effects).flatten()
    centred = per_state_centred(raw, 4).view(16, 4)
    torch.testing.assert_close(centred, effects - effects.mean(dim=1, keepdim=True))
    assert torch.equal(per_state_centred(raw, 1), raw)
    share = advantage_metrics(raw, ProbeConfig(), chains_per_state=4)["ppo/adv_action_share"]
    expected = float(centred.square().mean() / (raw - raw.mean()).square().mean())
    assert share == pytest.approx(expected) and share < 0.1
    assert "ppo/adv_action_share" not in advantage_metrics(raw, ProbeConfig())
    with pytest.raises(ValueError, match="chains_per_state"):
        OfflineConfig(policy="p", data="d", out="o", chains_per_state=0)


def test_the_anchor_keeps_chain_ppo_near_the_policy_it_started_from():
    """Advantages without signal still move the denoiser (Adam steps every weight by about the learning rate);
    the penalty on each step's KL to the starting policy holds the chain near it. The KL is the Gaussian one."""
    import copy

    from tests.test_policies_diffusion import STATE_ONLY, batch, tiny_policy
    from policies.diffusion import ChainSampler
    from workflow.ppo import chain_ppo_loss, denoiser_parameters, normalize_advantages

    torch.manual_seed(0)
    start = tiny_policy(STATE_ONLY, "unet", 8, action_dim=3, sigma_min=0.05, log_prob_reduction="mean").eval()
    with torch.no_grad():
        cond = start.encode(batch(STATE_ONLY, 32))
        chain = start.sample_chain(cond, generator=torch.Generator().manual_seed(0))
        anchor_means, stds = start.chain_moments(cond, chain)
    shifted = anchor_means + 0.01 * torch.randn_like(anchor_means)
    gaussian = torch.distributions.Normal(anchor_means, stds.view(1, -1, 1, 1))
    exact = torch.distributions.kl_divergence(gaussian, torch.distributions.Normal(shifted, stds.view(1, -1, 1, 1)))
    for reduction, reduce in (("sum", torch.sum), ("mean", torch.mean)):
        torch.testing.assert_close(ChainSampler(1.0, 0.0, 1.0, reduction).step_kl(shifted, anchor_means, stds), reduce(exact, dim=(-2, -1)))

    advantages = normalize_advantages(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    drift = {}
    for coef in (0.0, 3.0):
        policy = copy.deepcopy(start)
        optimizer = torch.optim.Adam(denoiser_parameters(policy), lr=1e-3)
        for _ in range(30):
            loss, stats = chain_ppo_loss(policy, cond, chain, advantages, 0.25, anchor_means if coef else None, coef)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert (stats.anchor_kl is None) == (coef == 0)
        with torch.no_grad():
            drift[coef] = float(ChainSampler(1.0, 0.0, 1.0, "mean").step_kl(policy.chain_moments(cond, chain)[0], anchor_means, stds).mean())
    assert drift[3.0] < 0.5 * drift[0.0], drift
    with pytest.raises(ValueError, match="anchor_coef"):
        OfflineConfig(policy="p", data="d", out="o", anchor_coef=-1.0)


def test_dppo_step_schedule_clips_the_early_denoising_steps_tighter_and_discounts_them():
    """DPPO's schedule: clip ranges rise from ``clip_first`` (noisiest step) to ``clip_eps`` (last); advantages are
    discounted towards the first step. A ratio of 1.005 sits inside the last step's clip and outside the first's,
    so only the late steps carry gradient; the default schedule is the plain clipped surrogate."""
    from tests.test_policies_diffusion import STATE_ONLY, batch, tiny_policy
    from workflow.online import OnlineConfig
    from workflow.ppo import StepSchedule, chain_ppo_loss

    schedule = StepSchedule(clip_first=0.001, denoising_gamma=0.99)
    clips = schedule.clips(10, 0.01)
    assert clips[0] == pytest.approx(0.001) and clips[-1] == pytest.approx(0.01) and bool((clips.diff() > 0).all())
    torch.testing.assert_close(schedule.discounts(3), torch.tensor([0.99**2, 0.99, 1.0]))
    torch.testing.assert_close(StepSchedule().clips(4, 0.2), torch.full((4,), 0.2))

    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "unet", 8, action_dim=3, sigma_min=0.05, log_prob_reduction="mean").eval()
    with torch.no_grad():
        cond = policy.encode(batch(STATE_ONLY, 16))
        chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(0))
    k = chain.log_probs.shape[1]
    shifted = type(chain)(**{**chain.__dict__, "log_probs": chain.log_probs - math.log(1.005)})  # every ratio 1.005
    advantages = torch.ones(16)
    plain, _ = chain_ppo_loss(policy, cond, shifted, advantages, 0.01)
    assert float(plain.detach()) == pytest.approx(-1.005, abs=1e-4)  # inside every clip: the unclipped surrogate
    scheduled, stats = chain_ppo_loss(policy, cond, shifted, advantages, 0.01, steps=StepSchedule(clip_first=0.001))
    expected = float(torch.minimum(torch.tensor(1.005), 1 + StepSchedule(clip_first=0.001).clips(k, 0.01)).mean())
    assert float(scheduled.detach()) == pytest.approx(-expected, abs=1e-4) and 0 < stats.clip_fraction < 1
    with pytest.raises(ValueError, match="denoising_gamma"):
        OnlineConfig(policy="p", out="o", denoising_gamma=1.5)


def test_train_offline_on_the_command_line_with_centred_and_anchored_chains(tmp_path):
    from typer.testing import CliRunner

    from robot.cli import app

    demos = record_demos(tmp_path / "push.zarr", 4)
    il = ImitationConfig(data=str(demos), out=str(tmp_path / "il"), policy=TINY, steps=5, batch_size=8, eval_every=5, checkpoint_every=5)
    train_imitation(il, show_progress=False)
    out = tmp_path / "off"
    args = ["train", "offline", "--policy", str(tmp_path / "il"), "--data", str(demos), "--out", str(out), "--rounds", "1", "--critic-steps", "10",
            "--ppo-updates", "4", "--gate-every", "2", "--rollout-episodes", "0", "--retrain-steps", "0", "--chains-per-state", "2", "--anchor-coef", "1.0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "round 0: " in result.output and "gate record" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["chains_per_state"] == 2 and config["anchor_coef"] == 1.0
    assert len((out / "gate.jsonl").read_text().splitlines()) == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    drift = [r["ppo/anchor_kl"] for r in rows if "ppo/anchor_kl" in r]
    assert len(drift) == 4 and all(r["round"] == 0 for r in rows if "ppo/anchor_kl" in r)
    assert drift[0] == 0 and drift[1] > 0  # the first update starts at the anchor (the round's start); one step later it has moved
    assert any("ppo/adv_action_share" in r for r in rows) and not any(k.endswith("_r0") for r in rows for k in r)  # the round is a field, not a suffix


def test_stochastic_rollouts_vary_the_actions_and_repeat_on_the_same_seeds(tmp_path):
    """``rollout_std``: the rollouts sample the chain PPO samples (varied actions for the critics);
    per-episode noise keeps the reference and the accepted policy on the same draws."""
    import shutil

    import numpy as np

    from workflow.offline import rollout_into

    demos = record_demos(tmp_path / "push.zarr", 2)
    il = ImitationConfig(data=str(demos), out=str(tmp_path / "il"), policy=TINY, steps=5, batch_size=8, eval_every=5, checkpoint_every=5)
    train_imitation(il, show_progress=False)

    def actions(name: str, rollout_std: float | None) -> np.ndarray:
        store = shutil.copytree(demos, tmp_path / name)
        # each its own run: a run's rollouts resume from the episodes it committed
        cfg = OfflineConfig(policy=str(tmp_path / "il"), data=str(demos), out=str(tmp_path / f"off-{name}"), rollout_episodes=1, rollout_std=rollout_std)
        rollout_into(store, tmp_path / "il" / "policy", cfg, 0)
        s = ZarrEpisodeStore.open(store)
        return s.episode(s.num_episodes - 1).data["action"][:20]

    deterministic, stochastic = actions("d.zarr", None), actions("s.zarr", 0.5)
    assert np.array_equal(deterministic, actions("d2.zarr", None))
    assert np.array_equal(stochastic, actions("s2.zarr", 0.5))  # same seed, same noise
    assert not np.allclose(stochastic, deterministic)
    with pytest.raises(ValueError, match="rollout_std"):
        OfflineConfig(policy="p", data="d", out="o", rollout_std=-0.1)


def test_the_gate_threshold_is_the_noise_of_the_paired_gains_not_a_share_of_J():
    """Near J = 0 a share of |J| is no bar at all; the bound over start states is."""
    from workflow.ope import gain_threshold

    gen = torch.Generator().manual_seed(0)
    reference = 0.001 * torch.randn(256, generator=gen)  # J about 0: a 5% bar would be about 0
    noise_only = reference + 0.05 * torch.randn(256, generator=gen)  # the same policy, scored with noise
    better = reference + 0.05 + 0.05 * torch.randn(256, generator=gen)
    threshold, stderr = gain_threshold(reference, noise_only, GateConfig())
    assert stderr == pytest.approx(0.05 / 16, rel=0.15) and threshold == pytest.approx(1.645 * stderr)
    assert float((noise_only - reference).mean()) < threshold  # noise is not accepted
    assert float((better - reference).mean()) > gain_threshold(reference, better, GateConfig())[0]
    relative_only = GateConfig(z=0.0, delta_relative=0.05)
    assert gain_threshold(reference, noise_only, relative_only)[0] < 1e-3  # what the old 5%-of-|J| bar asked here


def test_a_verification_p_of_zero_is_refused():
    with pytest.raises(ValueError, match="verify_max_p"):
        OfflineConfig(policy="p", data="d", out="o", verify_max_p=0.0)


def test_offline_ppo_with_ft_steps_moves_only_the_last_denoising_steps(tmp_path, monkeypatch):
    """``ft_steps``: the round's PPO scores and updates only the last steps; the leading ones stay the start's."""
    import workflow.offline as offline

    demos = record_demos(tmp_path / "push.zarr", 4)
    il = ImitationConfig(data=str(demos), out=str(tmp_path / "il"), policy=TINY, steps=5, batch_size=8, eval_every=5, checkpoint_every=5)
    train_imitation(il, show_progress=False)
    start = {k: v.clone() for k, v in load_checkpoint(tmp_path / "il" / "policy").modules["policy"].items() if k.startswith("denoiser.")}
    seen = []
    real_loss = offline.chain_ppo_loss

    def watched(candidate, cond, chain, advantages, *args):
        loss, stats = real_loss(candidate, cond, chain, advantages, *args)
        seen.append((candidate.config.frozen_steps, {k: v.clone() for k, v in candidate.state_dict().items() if "denoiser." in k}))
        return loss, stats

    monkeypatch.setattr(offline, "chain_ppo_loss", watched)
    cfg = OfflineConfig(policy=str(tmp_path / "il"), data=str(demos), out=str(tmp_path / "off"), rounds=1, critic_steps=10, ppo_updates=3, gate_every=3,
                        critic=CriticConfig(hidden_dims=(32, 32)), dynamics=DynamicsConfig(hidden_dims=(32, 32), max_epochs=2),
                        gate=GateConfig(horizon=2, start_states=16), ppo_batch=16, rollout_episodes=0, verify_rollouts=False, ft_steps=2, actor_lr=1e-3, seed=1)  # fmt: skip
    train_offline(cfg, show_progress=False)
    k = TINY.num_inference_steps
    assert [frozen for frozen, _ in seen] == [k - 2] * 3
    after = seen[-1][1]  # after two Adam steps (the third loss is computed before its step)
    for name, value in start.items():
        assert torch.equal(after[f"base_{name}"], value), f"the frozen copy of {name} moved"
    assert any(not torch.equal(after[name], value) for name, value in start.items()), "PPO never moved the fine-tuned steps' denoiser"
    with pytest.raises(ValueError, match="retraining imitates into every step"):
        replace(cfg, retrain_steps=10)
    with pytest.raises(ValueError, match="ft_steps must be >= 1"):
        replace(cfg, ft_steps=0)
    with pytest.raises(ValueError, match=rf"ft_steps must be in \[1, {k}\]"):
        train_offline(replace(cfg, out=str(tmp_path / "bad"), ft_steps=k + 1), show_progress=False)
    assert not (tmp_path / "bad").exists(), "a refused --ft-steps must leave no run directory to block the corrected rerun"
