"""Diffusion policy: shapes, agreement with diffusers' DDIM, per-step log-probs, std clipping, learning."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler

from policies.denoisers import DenoiserConfig
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from policies.encoders import EncoderConfig
from robot.types import ACTION, POINTCLOUD, STATE, Feature, image_key

TINY_ENCODER = EncoderConfig(
    state_hidden_dim=32, state_feature_dim=16, image_channels=(8, 16), image_keypoints=8, image_feature_dim=16,
    group_norm_groups=4, point_channels=(16, 32), point_feature_dim=16,
)
TINY_DENOISER = DenoiserConfig(
    timestep_embed_dim=16, mlp_hidden_dim=64, mlp_num_blocks=2, unet_down_dims=(16, 32), unet_kernel_size=3,
    unet_groups=4,
)
STATE_ONLY = {STATE: Feature((3,))}
RGB = {STATE: Feature((3,)), image_key("front"): Feature((24, 24, 3), "uint8")}
POINTS = {POINTCLOUD: Feature((64, 3))}




def tiny_policy(
    features: dict[str, Feature] = STATE_ONLY,
    kind: str = "mlp",
    horizon: int = 1,
    action_dim: int = 2,
    **overrides: Any,
) -> DiffusionPolicy:
    """A policy with tiny encoders and denoiser; ``overrides`` replace DiffusionPolicyConfig fields."""
    settings = dict(n_obs_steps=2, horizon=horizon, n_action_steps=1, encoder=TINY_ENCODER)
    settings["denoiser"] = DenoiserConfig(**{**TINY_DENOISER.__dict__, "kind": kind})
    config = DiffusionPolicyConfig(**{**settings, **overrides})
    return DiffusionPolicy(config, features, {ACTION: Feature((action_dim,))}, device="cpu")


def batch(features: dict[str, Feature], b: int, to: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    for key, f in features.items():
        shape = (b, to, *f.shape)
        out[key] = torch.randint(0, 256, shape, dtype=torch.uint8) if f.dtype == "uint8" else torch.randn(shape)
    return out


@pytest.mark.parametrize(
    "features,kind,horizon", [(STATE_ONLY, "mlp", 1), (RGB, "unet", 8), (POINTS, "unet", 4), (POINTS, "mlp", 1)]
)
def test_shapes_for_each_input_and_single_action_or_chunk(features: dict, kind: str, horizon: int) -> None:
    torch.manual_seed(0)
    policy = tiny_policy(features, kind, horizon, action_dim=3)
    obs = batch(features, 4)
    loss = policy.compute_loss(obs, torch.rand(4, horizon, 3) * 2 - 1)
    assert loss.ndim == 0 and loss.item() > 0
    policy.eval()
    cond = policy.encode(obs)
    assert cond.shape == (4, policy.cond_dim)
    for deterministic in (True, False):
        assert policy.sample(cond, deterministic).shape == (4, horizon, 3)
    chain = policy.sample_chain(cond)
    assert chain.samples.shape == (4, 11, horizon, 3)
    assert chain.log_probs.shape == (4, 10)
    assert chain.timesteps.tolist() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert policy.sample(cond, True, num_steps=5).shape == (4, horizon, 3)
    with pytest.raises(ValueError, match=rf"actions must be \(B, {horizon}, 3\)"):
        policy.compute_loss(obs, torch.zeros(4, horizon + 1, 3))


def test_a_chains_rows_are_the_rows_of_the_whole_batchs_chain() -> None:
    """A torchrun rank denoises only its rows of a batch, with the noise the whole batch draws: the chains one process samples."""
    torch.manual_seed(0)
    policy = tiny_policy(RGB, "unet", 8, action_dim=3, n_action_steps=4).eval()
    cond = policy.encode(batch(RGB, 5))
    whole = policy.sample_chain(cond, generator=torch.Generator().manual_seed(7))
    rows = torch.tensor([1, 3])
    part = policy.sample_chain(cond, generator=torch.Generator().manual_seed(7), rows=rows)
    torch.testing.assert_close(part.samples, whole.samples[rows], rtol=1e-4, atol=1e-5)  # up to the batch size's float order
    torch.testing.assert_close(part.log_probs, whole.log_probs[rows], rtol=1e-4, atol=1e-3)
    alone = policy.sample_chain(cond[rows], generator=torch.Generator().manual_seed(7))  # its own draw: other chains
    assert not torch.allclose(alone.samples[:, -1], whole.samples[rows, -1])


def _diffusers_ddim(policy: DiffusionPolicy) -> DDIMScheduler:
    cfg = policy.config
    ddim = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    ddim.set_timesteps(cfg.num_inference_steps)
    return ddim


def test_deterministic_sampling_is_diffusers_ddim_eta0_and_reproducible() -> None:
    torch.manual_seed(0)
    policy = tiny_policy(RGB, "unet", 8, deterministic_sampler="ddim").eval()
    cond = policy.encode(batch(RGB, 3))
    noise = torch.randn(3, 8, 2)
    actions = policy.sample(cond, deterministic=True, noise=noise)
    assert torch.equal(actions, policy.sample(cond, deterministic=True, noise=noise))
    seeded = [policy.sample(cond, True, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*seeded)
    ddim, x = _diffusers_ddim(policy), noise
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(policy.denoiser(x, t.repeat(3), cond), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(actions, x, rtol=1e-5, atol=1e-5)


def test_stochastic_sampling_is_diffusers_ddim_eta1_when_stds_are_not_clipped() -> None:
    torch.manual_seed(0)
    policy = tiny_policy(sigma_min=1e-12, sigma_max=100.0).eval()
    cond = policy.encode(batch(STATE_ONLY, 5))
    chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(3))
    actions = policy.sample(cond, deterministic=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(actions, chain.actions)  # same seed, same draws, same action
    other = policy.sample(cond, deterministic=False, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(actions, other)
    ddim, g = _diffusers_ddim(policy), torch.Generator().manual_seed(3)
    x = torch.randn(5, 1, 2, generator=g)
    with torch.no_grad():
        for k, t in enumerate(ddim.timesteps):
            eps = policy.denoiser(x, t.repeat(5), cond)
            x = ddim.step(eps, t, x, eta=1.0, variance_noise=torch.randn(5, 1, 2, generator=g)).prev_sample
            torch.testing.assert_close(chain.samples[:, k + 1], x, rtol=1e-5, atol=1e-5)


def test_ddpm_mean_sampling_is_the_eta1_chain_without_its_noise() -> None:
    """The ``ddpm-mean`` deployment sampler: diffusers' DDIM eta-1 steps with zero variance noise,
    reproducible from the same initial noise, and a different action from DDIM eta 0."""
    torch.manual_seed(0)
    policy = tiny_policy(RGB, "unet", 8).eval()
    cond = policy.encode(batch(RGB, 3))
    noise = torch.randn(3, 8, 2)
    actions = policy.sample(cond, deterministic=True, noise=noise, mean_eta=1.0)
    assert torch.equal(actions, policy.sample(cond, deterministic=True, noise=noise, mean_eta=1.0))
    assert not torch.allclose(actions, policy.sample(cond, deterministic=True, noise=noise, mean_eta=0.0))
    ddim, x = _diffusers_ddim(policy), noise
    with torch.no_grad():
        for t in ddim.timesteps:
            eps = policy.denoiser(x, t.repeat(3), cond)
            x = ddim.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    torch.testing.assert_close(actions, x, rtol=1e-5, atol=1e-5)


def test_the_configured_deterministic_sampler_is_what_deterministic_sampling_runs() -> None:
    """A policy trained with ``deterministic_sampler="ddpm-mean"`` deploys, is scored by OPE and
    distils its head through the eta-1 means wherever ``sample(deterministic=True)`` is called."""
    torch.manual_seed(0)
    ddim_policy = tiny_policy(STATE_ONLY, "unet", 8, deterministic_sampler="ddim").eval()
    mean_policy = tiny_policy(STATE_ONLY, "unet", 8, deterministic_sampler="ddpm-mean").eval()
    mean_policy.load_state_dict(ddim_policy.state_dict())
    cond, noise = ddim_policy.encode(batch(STATE_ONLY, 3)), torch.randn(3, 8, 2)
    assert torch.equal(mean_policy.sample(cond, deterministic=True, noise=noise), ddim_policy.sample(cond, deterministic=True, noise=noise, mean_eta=1.0))
    assert torch.equal(mean_policy.sample(cond, deterministic=True, noise=noise, mean_eta=0.0), ddim_policy.sample(cond, deterministic=True, noise=noise))
    with pytest.raises(ValueError, match="deterministic_sampler must be one of"):
        DiffusionPolicyConfig(deterministic_sampler="ddpm")


def test_chain_log_probs_are_gaussian_and_reevaluated_exactly() -> None:
    """Each step's log-prob is the Gaussian density of the executed actions (the first n_action_steps of the window)."""
    torch.manual_seed(0)
    policy = tiny_policy(RGB, "unet", 8, action_dim=3, n_action_steps=4).eval()
    cond = policy.encode(batch(RGB, 4))
    chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(0))
    ddim, cfg = _diffusers_ddim(policy), policy.config
    with torch.no_grad():
        for k, t in enumerate(ddim.timesteps):
            x = chain.samples[:, k]
            eps = policy.denoiser(x, t.repeat(4), cond)
            mean = ddim.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
            raw_std = ddim.step(eps, t, x, eta=1.0, variance_noise=torch.ones_like(x)).prev_sample - mean
            std = raw_std.clamp(cfg.sigma_min, cfg.sigma_max)
            expected = torch.distributions.Normal(mean, std).log_prob(chain.samples[:, k + 1])[:, :4].sum(dim=(1, 2))
            torch.testing.assert_close(chain.log_probs[:, k], expected, rtol=1e-4, atol=1e-3)
    again = policy.chain_log_prob(cond, chain)
    assert torch.equal(again, chain.log_probs)  # PPO ratios start at exactly 1
    # a minibatch of chains runs the nets at another batch size: equal up to float rounding
    torch.testing.assert_close(policy.chain_log_prob(cond[:2], chain[:2]), chain.log_probs[:2])
    with torch.no_grad():
        next(policy.denoiser.parameters()).add_(0.05)
    moved = policy.chain_log_prob(cond, chain)
    assert not torch.allclose(moved, chain.log_probs)
    moved.sum().backward()
    assert next(policy.denoiser.parameters()).grad is not None


def test_unexecuted_actions_do_not_enter_the_chain_log_prob() -> None:
    """Moving only the actions past n_action_steps (never run, never scored) leaves every step's log-prob as it was."""
    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "unet", 8, action_dim=3, n_action_steps=4).eval()
    cond = policy.encode(batch(STATE_ONLY, 5))
    chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(0))
    tail = chain.samples.clone()
    tail[:, 1:, 4:] += 0.3  # every denoised sample's unexecuted actions
    head = chain.samples.clone()
    head[:, 1:, :4] += 0.3
    unchanged = policy.chain_log_prob(cond, type(chain)(tail, chain.log_probs, chain.timesteps))
    changed = policy.chain_log_prob(cond, type(chain)(head, chain.log_probs, chain.timesteps))
    # the inputs of later steps changed too, so compare the first step only: its mean depends on x_K alone
    torch.testing.assert_close(unchanged[:, 0], chain.log_probs[:, 0])
    assert not torch.allclose(changed[:, 0], chain.log_probs[:, 0])


def test_mean_log_prob_reduction_averages_the_same_densities_and_damps_ratios() -> None:
    torch.manual_seed(0)
    policy = tiny_policy(RGB, "unet", 8, action_dim=3, n_action_steps=4).eval()
    cond = policy.encode(batch(RGB, 4))
    chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(0))
    averaged = policy.chain_sampler(log_prob_reduction="mean")
    mean_lp = policy.chain_log_prob(cond, replace(chain, sampler=averaged))
    torch.testing.assert_close(mean_lp, chain.log_probs / (4 * 3))  # same densities, averaged over 4 executed x 3 dims
    again = policy.sample_chain(cond, generator=torch.Generator().manual_seed(0), sampler=averaged)
    torch.testing.assert_close(again.log_probs, mean_lp)  # sampling and re-scoring agree
    with torch.no_grad():
        next(policy.denoiser.parameters()).add_(0.05)
    moved_mean = (policy.chain_log_prob(cond, again) - mean_lp).abs()
    moved_sum = (policy.chain_log_prob(cond, chain) - chain.log_probs).abs()
    torch.testing.assert_close(moved_mean, moved_sum / 12)  # the log-ratio shrinks by the number of dims
    with pytest.raises(ValueError, match="log_prob_reduction"):
        replace(policy.config, log_prob_reduction="max")


def test_noise_correlated_over_the_window_is_scored_exactly() -> None:
    """``chunk_corr``: every step's noise has correlation rho between any two actions of the window, per action
    dim; log-probs are the multivariate Gaussian's over the executed actions, re-scored exactly, and the KL between
    two steps' Gaussians is the multivariate one."""
    from policies.diffusion import ChainSampler

    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "unet", 8, action_dim=3, n_action_steps=4).eval()
    cond = policy.encode(batch(STATE_ONLY, 5))
    rho = 0.6
    sampler = policy.chain_sampler(min_std=0.1, chunk_corr=rho)
    corr = (1 - rho) * torch.eye(8) + rho * torch.ones(8, 8)
    draws = sampler.noise(torch.randn(20000, 8, 1))[..., 0]
    torch.testing.assert_close(torch.cov(draws.T), corr, atol=0.03, rtol=0.0)
    chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(0), sampler=sampler)
    assert torch.equal(policy.chain_log_prob(cond, chain), chain.log_probs)  # PPO ratios start at exactly 1
    means, stds = policy.chain_moments(cond, chain)
    k = 3
    x, mu = chain.samples[:, k + 1, :4], means[:, k, :4]  # the executed actions: their own 4 x 4 block of the correlation
    mvn = torch.distributions.MultivariateNormal(mu.transpose(1, 2), covariance_matrix=stds[k] ** 2 * corr[:4, :4])
    expected = mvn.log_prob(x.transpose(1, 2)).sum(dim=1)  # (B,): the action dims are independent
    torch.testing.assert_close(chain.log_probs[:, k], expected, rtol=1e-4, atol=1e-3)
    averaged = replace(sampler, log_prob_reduction="mean")
    torch.testing.assert_close(averaged.log_prob(x, mu, stds[k]), expected / 12, rtol=1e-4, atol=1e-4)
    shifted = means + 0.01 * torch.randn_like(means)
    kl = sampler.step_kl(shifted[:, :, :4], means[:, :, :4], stds)
    other = torch.distributions.MultivariateNormal(shifted[:, k, :4].transpose(1, 2), covariance_matrix=stds[k] ** 2 * corr[:4, :4])
    torch.testing.assert_close(kl[:, k], torch.distributions.kl_divergence(mvn, other).sum(dim=1), rtol=1e-4, atol=1e-5)
    white = policy.chain_sampler(min_std=0.1)
    assert not torch.allclose(white.log_prob(x, mu, stds[k]), sampler.log_prob(x, mu, stds[k]))
    with pytest.raises(ValueError, match=r"chunk_corr must be in \[0, 1\)"):
        ChainSampler(1.0, 0.0, 1.0, chunk_corr=1.0)


def test_step_stds_are_clipped_and_used_for_the_noise() -> None:
    torch.manual_seed(0)
    for sigma_max in (0.8, 0.1):
        policy = tiny_policy(sigma_max=sigma_max).eval()
        stds = policy.denoising_stds()
        assert stds.shape == (10,)
        assert (stds >= policy.config.sigma_min).all() and (stds <= sigma_max).all()
        assert stds[0] == sigma_max and stds[-1] == policy.config.sigma_min  # both clips are active
    cond = policy.encode(batch(STATE_ONLY, 1000))
    chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(1))
    for k, t in enumerate(chain.timesteps.tolist()):
        mean, std = policy.step_moments(chain.samples[:, k], t, [*chain.timesteps.tolist(), -1][k + 1], cond, 1.0)
        assert std == stds[k]
        empirical = (chain.samples[:, k + 1] - mean).std()
        assert abs(empirical / stds[k] - 1) < 0.1  # 2000 draws: ~1.6% standard error


def test_rl_s_floored_sampler_is_an_argument_that_leaves_the_policy_alone() -> None:
    """RL draws chains with every step's std floored at 0.1 and mean log-probs; the policy's config (what a
    checkpoint saves and deployment samples with) never changes, and a chain is re-scored under its own sampler."""
    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "unet", 8, n_action_steps=4).eval()
    before = policy.config
    floored = policy.chain_sampler(0.1, "mean")
    assert (floored.sigma_min, floored.log_prob_reduction) == (0.1, "mean") and policy.chain_sampler().sigma_min == before.sigma_min
    assert (policy.denoising_stds(sampler=floored) >= 0.1).all() and policy.denoising_stds().min() < 0.1
    cond = policy.encode(batch(STATE_ONLY, 500))
    chain = policy.sample_chain(cond, generator=torch.Generator().manual_seed(0), sampler=floored)
    assert policy.config is before and chain.sampler == floored
    assert torch.equal(policy.chain_log_prob(cond, chain), chain.log_probs)  # scored under the sampler that drew it
    own = policy.chain_log_prob(cond, replace(chain, sampler=None))  # the same samples under the policy's own, sharper steps
    assert not torch.allclose(own, chain.log_probs)
    with torch.no_grad():
        last = policy.executed(chain.samples[:, -1] - policy.chain_moments(cond, chain)[0][:, -1])
    assert abs(float(last.std()) / 0.1 - 1) < 0.1  # the last step's noise is the floor's, not the policy's 0.007


def test_compute_loss_gradients_reach_every_encoder() -> None:
    torch.manual_seed(0)
    features = {**RGB, **POINTS}
    policy = tiny_policy(features, "unet", 4)
    policy.compute_loss(batch(features, 3), torch.rand(3, 4, 2) * 2 - 1).backward()
    for name, encoder in policy.encoder.encoders.items():
        grads = [p.grad.abs().sum() for p in encoder.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, name


def test_tiny_policy_overfits_tiny_dataset() -> None:
    torch.manual_seed(0)
    denoiser = DenoiserConfig(kind="mlp", timestep_embed_dim=16, mlp_hidden_dim=128, mlp_num_blocks=2)
    policy = tiny_policy(n_obs_steps=1, denoiser=denoiser, sigma_max=0.8)
    states, actions = torch.randn(8, 1, 3), torch.rand(8, 1, 2) * 1.6 - 0.8
    optimiser = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        idx = torch.randint(0, 8, (64,))
        loss = policy.compute_loss({STATE: states[idx]}, actions[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.3 * first, (first, last)
    policy.eval()
    cond = policy.encode({STATE: states})
    predicted = policy.sample(cond, deterministic=True, generator=torch.Generator().manual_seed(0))
    baseline = (actions - actions.mean(0)).abs().mean()  # error of always answering the mean action
    assert (predicted - actions).abs().mean() < 0.4 * baseline


def test_config_validates_and_round_trips_through_json() -> None:
    single, chunk = DiffusionPolicyConfig.single_action(), DiffusionPolicyConfig.action_chunk()
    assert (single.horizon, single.denoiser.kind, single.sigma_max) == (1, "mlp", 0.8)
    assert (chunk.horizon, chunk.denoiser.kind, chunk.sigma_max) == (16, "unet", 0.1)
    for config in (single, chunk, tiny_policy().config):
        assert DiffusionPolicyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="sigma_min"):
        DiffusionPolicyConfig(sigma_min=0.2, sigma_max=0.1)
    with pytest.raises(ValueError, match="n_action_steps=9 exceeds horizon=8"):
        DiffusionPolicyConfig(horizon=8, n_action_steps=9)
    with pytest.raises(ValueError, match="flat 'action'"):
        DiffusionPolicy(single, STATE_ONLY, {"joints": Feature((2,))})


def test_frozen_leading_steps_run_a_copy_that_rl_does_not_move() -> None:
    """DPPO's partial fine-tuning: ``with_frozen_steps`` samples exactly as before; once the denoiser moves, the
    frozen steps' moments stay the start's, PPO scores only the fine-tuned steps, and the copy gets no gradient."""
    from workflow.ppo import chain_ppo_loss, denoiser_parameters, fine_tuned_steps

    torch.manual_seed(0)
    policy = tiny_policy(kind="unet", horizon=4, n_action_steps=2).eval()
    frozen = fine_tuned_steps(policy, 4).eval()  # the last 4 of 10 steps fine-tuned
    assert frozen.config.frozen_steps == 6 and fine_tuned_steps(frozen, 4) is frozen and fine_tuned_steps(policy, None) is policy
    cond = policy.encode(batch(STATE_ONLY, 5))
    noise = policy.initial_noise(cond, torch.Generator().manual_seed(1))
    torch.testing.assert_close(frozen.sample(cond, deterministic=True, noise=noise), policy.sample(cond, deterministic=True, noise=noise), rtol=0, atol=0)
    chain = frozen.sample_chain(cond, torch.Generator().manual_seed(2))
    torch.testing.assert_close(chain.samples, policy.sample_chain(cond, torch.Generator().manual_seed(2)).samples, rtol=0, atol=0)
    assert frozen.chain_log_prob(cond, chain, first=6).shape == (5, 4)
    torch.testing.assert_close(frozen.chain_log_prob(cond, chain, first=6), chain.log_probs[:, 6:])

    with torch.no_grad():
        for p in frozen.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved, start = frozen.chain_moments(cond, chain)[0], policy.chain_moments(cond, chain)[0]
    torch.testing.assert_close(moved[:, :6], start[:, :6], rtol=0, atol=0)  # the frozen copy's steps
    assert not torch.allclose(moved[:, 6:], start[:, 6:])
    frozen.requires_grad_(False)
    for p in denoiser_parameters(frozen):
        p.requires_grad_(True)
    loss, stats = chain_ppo_loss(frozen, cond, chain, torch.randn(5), 0.2)
    loss.backward()
    assert all(p.grad is None for p in frozen.base_denoiser.parameters()) and any(p.grad is not None for p in frozen.denoiser.parameters())
    with pytest.raises(ValueError, match="ft_steps must be in"):
        fine_tuned_steps(policy, 11)
    with pytest.raises(ValueError, match="already freezes its first 6"):
        fine_tuned_steps(frozen, 5)
    with pytest.raises(ValueError, match="frozen_steps"):
        DiffusionPolicyConfig(frozen_steps=10)
