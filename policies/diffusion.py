"""Conditional diffusion policy over a single action or an action chunk, with per-step log-probs.

Training: epsilon-prediction MSE on *normalised* actions (the caller normalises),
noise and alphas from diffusers' ``DDPMScheduler`` (cosine ``squaredcos_cap_v2``, 100 steps).

Sampling: K denoising steps on diffusers' ``DDIMScheduler`` timesteps (K = 10).
Each step x_k -> x_{k-1} is the Gaussian N(mu_k, sigma_k^2 I) of DDIM (eq. 12/16 of
Song et al.), with sigma_k = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
clipped to [sigma_min, sigma_max] (DPPO / RL-100). ``deterministic=True`` (deployment,
OPE, distillation targets) follows step means without noise: of DDIM (eta = 0, ``ddim``) or
of the eta-1 chain (``ddpm-mean``), as ``config.deterministic_sampler`` says; otherwise
eta = ``config.eta`` (1: training and RL).

This makes every environment step a K-step MDP of its own: :meth:`DiffusionPolicy.sample_chain`
records ``x_K .. x_0`` and ``log N(x_{k-1}; mu_k, sigma_k)`` summed over the *executed* actions
(the first ``n_action_steps`` of the window: the ones the robot runs and a critic scores; the rest
of the predicted window never reaches the environment, as in DPPO's and RL-100's code) and their
action dims, and :meth:`DiffusionPolicy.chain_log_prob` re-evaluates them under the current
weights, which is what PPO's per-denoising-step ratios need.

The stochastic step is the eta-1 (DDPM posterior) mean plus noise whose std is clipped to
``[sigma_min, sigma_max]``, as DPPO samples: its mean is exactly the ``ddpm-mean`` sampler's step,
so the chain RL explores with is the deterministic policy it deploys plus small noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from policies.denoisers import DenoiserConfig, build_denoiser
from policies.encoders import EncoderConfig, ObservationEncoder
from robot.config import from_dict as config_from_dict
from robot.config import to_dict as config_to_dict
from robot.types import ACTION, Feature

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
LOG_PROB_REDUCTIONS = ("sum", "mean")
MEAN_ETA = {"ddim": 0.0, "ddpm-mean": 1.0}
"""Deterministic K-step samplers: the eta whose step means the noise-free chain follows."""


@dataclass(frozen=True)
class DiffusionPolicyConfig:
    """Everything that defines a diffusion policy's architecture and sampler.

    The predicted window of ``horizon`` actions starts at the latest observation
    frame (the current step); the first ``n_action_steps`` of it are executed.
    Use :meth:`single_action` or :meth:`action_chunk` for the two RL-100 settings.
    """

    n_obs_steps: int = 2
    """Observation frames the policy conditions on (To)."""
    horizon: int = 16
    """Actions predicted per sample (1 = single action)."""
    n_action_steps: int = 8
    """Actions executed from each predicted window (Ta <= horizon)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Observation encoders."""
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    """Denoiser network (``mlp`` for single actions, ``unet`` for chunks)."""
    num_train_steps: int = 100
    """Diffusion timesteps of the training noise schedule."""
    num_inference_steps: int = 10
    """Denoising steps K at sampling (DDIM timesteps)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers beta schedule; ``squaredcos_cap_v2`` is the cosine schedule."""
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    """What the denoiser predicts: the added noise or the clean action."""
    clip_sample: bool = True
    """Clip the predicted clean action to [-clip_sample_range, clip_sample_range] at every step."""
    clip_sample_range: float = 1.0
    """Bound of normalised actions (the normaliser maps actions to [-1, 1])."""
    eta: float = 1.0
    """DDIM stochasticity of ``deterministic=False`` sampling: 1 = DDPM-like variance."""
    sigma_min: float = 0.007
    """Lower clip of every denoising step's std (keeps log-probs finite at the last step)."""
    sigma_max: float = 0.1
    """Upper clip of every denoising step's std (RL-100: 0.8 single action, 0.1 chunks)."""
    deterministic_sampler: Literal["ddim", "ddpm-mean"] = "ddpm-mean"
    """What ``deterministic=True`` runs (deployment, OPE, distillation targets): ``ddpm-mean`` (the eta-1
    chain's step means) or ``ddim`` (eta-0 step means). DDIM maps each starting noise to a sample of the
    demonstrated action distribution, operator noise included (on push demos at noise 0.3 its first action
    varied with the noise by 0.38 normalised, the demos' own noise 0.33, ddpm-mean's 0.06); ``ddpm-mean``
    leans on the predicted clean action at every step and lands near the mean action. On few-demo lift, push
    and Meta-World policies it succeeded 9-74 points more often (docs/RESULTS.md); it may fall between two
    strategies of multimodal demonstrations, where ``ddim`` picks one."""
    log_prob_reduction: Literal["sum", "mean"] = "sum"
    """How a denoising step's log-prob reduces over chunk and action dims: ``sum`` is the exact
    Gaussian log-density; ``mean`` (DPPO's implementation) makes each step's PPO ratio the geometric
    mean of per-dimension ratios, far less sharp when a chunk has many dimensions."""
    frozen_steps: int = 0
    """Leading denoising steps (of ``num_inference_steps``) run by a frozen copy of the denoiser, so RL fine-tunes
    only the last ones (DPPO's ``ft_denoising_steps``; set by ``OnlineConfig.ft_steps``, never by imitation); 0: one
    denoiser runs every step."""

    def __post_init__(self) -> None:
        if min(self.n_obs_steps, self.horizon, self.n_action_steps) < 1:
            raise ValueError(f"n_obs_steps, horizon, n_action_steps must be >= 1, got {self.n_obs_steps}, "
                             f"{self.horizon}, {self.n_action_steps}")
        if self.n_action_steps > self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} exceeds horizon={self.horizon}")
        if not 1 <= self.num_inference_steps <= self.num_train_steps:
            raise ValueError(f"num_inference_steps={self.num_inference_steps} must be in [1, "
                             f"num_train_steps={self.num_train_steps}]")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {self.prediction_type!r}")
        if not 0.0 < self.sigma_min <= self.sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.deterministic_sampler not in MEAN_ETA:
            raise ValueError(f"deterministic_sampler must be one of {tuple(MEAN_ETA)}, got {self.deterministic_sampler!r}")
        if self.log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction must be one of {LOG_PROB_REDUCTIONS}, got {self.log_prob_reduction!r}")
        if not 0 <= self.frozen_steps < self.num_inference_steps:
            raise ValueError(f"frozen_steps={self.frozen_steps} must be in [0, num_inference_steps={self.num_inference_steps})")
        if self.eta < 0 or self.clip_sample_range <= 0:
            raise ValueError(f"eta must be >= 0 and clip_sample_range > 0, got {self.eta}, {self.clip_sample_range}")

    @staticmethod
    def single_action(**overrides: Any) -> "DiffusionPolicyConfig":
        """RL-100 single-action setting: horizon 1, MLP-ResNet denoiser, sigma_max 0.8."""
        base = DiffusionPolicyConfig(horizon=1, n_action_steps=1, denoiser=DenoiserConfig(kind="mlp"), sigma_max=0.8)
        return replace(base, **overrides)

    @staticmethod
    def action_chunk(**overrides: Any) -> "DiffusionPolicyConfig":
        """RL-100 chunk setting: horizon 16 (8 executed), FiLM U-Net denoiser, sigma_max 0.1."""
        return replace(DiffusionPolicyConfig(), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); ``robot.config`` does the work."""
        return config_to_dict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "DiffusionPolicyConfig":
        """Inverse of :meth:`to_dict`; an unknown key is an error naming it."""
        return config_from_dict(DiffusionPolicyConfig, d)


@dataclass(frozen=True)
class ChainSampler:
    """How the stochastic denoising chain is drawn and scored, passed to the sampling and scoring calls
    (the policy's config is never changed to switch it): each step's eta, its std clipped to
    ``[sigma_min, sigma_max]``, and the reduction of a step's log-prob over the executed actions' numbers.
    :meth:`DiffusionPolicy.chain_sampler` gives the policy's own, or RL's with the std floored."""

    eta: float
    sigma_min: float
    sigma_max: float
    log_prob_reduction: str = "sum"
    chunk_corr: float = 0.0
    """Correlation of each step's noise between any two actions of the window, per action dim (0: white noise).
    Correlated noise moves a whole chunk one way (faster, slower, turned), where white noise averages out over its
    actions; its covariance is fixed, so log-probs and PPO ratios stay exact."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.chunk_corr < 1.0:
            raise ValueError(f"chunk_corr must be in [0, 1), got {self.chunk_corr}")

    def _cholesky(self, n: int, like: Tensor) -> Tensor:
        """(n, n) lower Cholesky factor of the window's correlation: 1 on the diagonal, ``chunk_corr`` elsewhere."""
        eye = torch.eye(n, device=like.device, dtype=like.dtype)
        return torch.linalg.cholesky((1.0 - self.chunk_corr) * eye + self.chunk_corr * torch.ones_like(eye))

    def noise(self, z: Tensor) -> Tensor:
        """``(B, T, Da)`` standard normal draws made this sampler's noise (correlated over T when ``chunk_corr`` > 0)."""
        return z if self.chunk_corr == 0.0 else self._cholesky(z.shape[-2], z) @ z

    def log_prob(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """log N(x; mean, std^2 C) over the last two dims ``(B, T, Da) -> (B,)``, reduced as ``log_prob_reduction`` says;
        C is the correlation over T (the identity for white noise). The first actions of a window are as correlated
        as the whole window, so the executed actions' log-prob uses their own block of it."""
        if self.chunk_corr == 0.0:
            return gaussian_log_prob(x, mean, std, self.log_prob_reduction)
        chol = self._cholesky(x.shape[-2], x)
        white = torch.linalg.solve_triangular(chol, (x - mean) / std, upper=False)
        n = x.shape[-2] * x.shape[-1]
        total = (-0.5 * white.square() - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=(-2, -1))
        total = total - x.shape[-1] * torch.log(torch.diagonal(chol)).sum()
        return total / n if self.log_prob_reduction == "mean" else total

    def step_kl(self, means: Tensor, anchor_means: Tensor, stds: Tensor) -> Tensor:
        """``(B, K)`` KL between each denoising step's Gaussian under the anchor and under the current weights, for
        means ``(B, K, T, Da)`` and the steps' stds ``(K,)``: both share the covariance, so it is half the squared
        whitened distance of the means, reduced as the log-probs are."""
        diff = (means - anchor_means) / stds.view(1, -1, 1, 1)
        if self.chunk_corr != 0.0:
            diff = torch.linalg.solve_triangular(self._cholesky(diff.shape[-2], diff), diff, upper=False)
        half_z2 = 0.5 * diff.square()
        return half_z2.mean(dim=(-2, -1)) if self.log_prob_reduction == "mean" else half_z2.sum(dim=(-2, -1))

    def floored(self, min_std: float, log_prob_reduction: str | None = None) -> "ChainSampler":
        """Every step's std at least ``min_std`` (DPPO fine-tunes with 0.1); optionally another reduction.

        At the policy's own floor (~0.007) the last steps' log-probs are so sharp that a tiny change of the mean
        sends a per-step PPO ratio out of its clip range; ``mean`` gives DPPO's far less sharp ratios."""
        return replace(self, sigma_min=max(self.sigma_min, min_std), sigma_max=max(self.sigma_max, min_std),
                       log_prob_reduction=log_prob_reduction or self.log_prob_reduction)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Chain:
    """One batch of stochastic denoising chains, stored for PPO on the denoising MDP."""

    samples: Tensor
    """(B, K+1, T, Da): x_K (pure noise) ... x_0 (the action)."""
    log_probs: Tensor
    """(B, K): log N(x_{k-1}; mu_k, sigma_k) summed (or averaged, see ``log_prob_reduction``) over the executed
    actions (the first ``n_action_steps`` of T) and Da, one per denoising step."""
    timesteps: Tensor
    """(K,): diffusion timestep of each denoising step, in sampling order."""
    sampler: ChainSampler | None = None
    """The sampler that drew the chain, which re-scoring it uses too; None: the policy's own."""

    @property
    def actions(self) -> Tensor:
        """(B, T, Da): the final sample x_0."""
        return self.samples[:, -1]

    def __getitem__(self, index: Tensor | slice) -> "Chain":
        """A sub-batch (PPO minibatches); timesteps are shared."""
        return Chain(self.samples[index], self.log_probs[index], self.timesteps, self.sampler)

    def to(self, device: torch.device | str) -> "Chain":
        return Chain(self.samples.to(device), self.log_probs.to(device), self.timesteps.to(device), self.sampler)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduction: str = "sum") -> Tensor:
    """log N(x; mean, std^2 I) summed (or averaged) over the last two dims: ``(B, T, Da) -> (B,)``."""
    z = (x - mean) / std
    log_density = -0.5 * z.square() - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=(-2, -1)) if reduction == "mean" else log_density.sum(dim=(-2, -1))


def make_schedulers(config: DiffusionPolicyConfig) -> tuple[DDPMScheduler, DDIMScheduler]:
    """diffusers schedulers sharing one noise schedule: DDPM adds training noise, DDIM gives sampling timesteps."""
    schedule = dict(
        num_train_timesteps=config.num_train_steps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
        clip_sample_range=config.clip_sample_range,
    )
    return DDPMScheduler(**schedule), DDIMScheduler(**schedule)


Generators = torch.Generator | Sequence[torch.Generator] | None
"""Where sampling noise comes from: one generator for the batch, or one per row (episodes planned together, each
drawing from its own, as it would alone: ``workflow.lanes``)."""


def randn(shape: tuple[int, ...], generator: Generators, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """Standard normal noise of ``shape``, seeded by ``generator``; with one generator per row, row i is what
    ``generator[i]`` draws for a batch of one."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def _randn_like(x: Tensor, generator: Generators) -> Tensor:
    """``torch.randn_like`` that takes a generator (for seeded, reproducible sampling)."""
    return randn(tuple(x.shape), generator, x.device, x.dtype)


class DiffusionPolicy(nn.Module):
    """Observation encoder + denoiser + diffusers schedulers.

    ``obs`` batches map ``observation.*`` keys to ``(B, To, ...)`` tensors; actions are
    ``(B, horizon, Da)``, normalised to [-1, 1] by the caller.
    """

    def __init__(
        self,
        config: DiffusionPolicyConfig,
        input_features: Mapping[str, Feature],
        action_features: Mapping[str, Feature],
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        action = action_features.get(ACTION)
        if action is None or len(action.shape) != 1:
            raise ValueError(f"DiffusionPolicy needs a flat {ACTION!r} feature, got {dict(action_features)}")
        self.config = config
        self.input_features = dict(input_features)
        self.action_features = dict(action_features)
        self.action_dim = int(action.shape[0])
        self.encoder = ObservationEncoder(input_features, config.n_obs_steps, config.encoder)
        self.denoiser = build_denoiser(config.denoiser, self.action_dim, config.horizon, self.encoder.output_dim)
        self.base_denoiser = (build_denoiser(config.denoiser, self.action_dim, config.horizon, self.encoder.output_dim).requires_grad_(False)
                              if config.frozen_steps else None)  # fmt: skip
        self.noise_scheduler, self.sampler = make_schedulers(config)
        # (N,) cumulative alphas, as a buffer so it follows .to(device); derived from config, not saved
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False)
        # the frozen copy runs every timestep at or above the last frozen step's (any number of sampling steps)
        self._frozen_from = int(self.timesteps()[config.frozen_steps - 1]) if config.frozen_steps else None
        self.to(device)

    @property
    def cond_dim(self) -> int:
        return self.encoder.output_dim

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Observation batch ``{key: (B, To, ...)}`` -> conditioning ``(B, To * D)``."""
        return self.encoder(obs)

    def compute_loss(self, obs: Mapping[str, Tensor], actions: Tensor, noise: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """Denoising MSE on normalised ``actions (B, horizon, Da)``; gradients reach the encoder.

        ``noise (B, horizon, Da)`` and diffusion steps ``t (B,)`` are drawn here unless given
        (distributed training draws them for the global batch so every rank slices the same draw).
        """
        return self.denoising_loss(self.encode(obs), actions, noise, t)

    def denoising_loss(self, cond: Tensor, actions: Tensor, noise: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """:meth:`compute_loss` on conditioning ``cond (B, Dc)`` already encoded (the denoiser's part alone)."""
        expected = (self.config.horizon, self.action_dim)
        if actions.ndim != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"actions must be (B, {expected[0]}, {expected[1]}), got {tuple(actions.shape)}")
        noise = torch.randn_like(actions) if noise is None else noise
        if t is None:
            t = torch.randint(0, self.config.num_train_steps, (actions.shape[0],), device=actions.device)
        noisy = self.noise_scheduler.add_noise(actions, noise, t)
        target = noise if self.config.prediction_type == "epsilon" else actions
        return F.mse_loss(self.denoiser(noisy, t, cond), target)

    def timesteps(self, num_steps: int | None = None) -> Tensor:
        """(K,) DDIM timesteps in sampling order (``[90, 80, ..., 0]`` for 100 train / 10 steps)."""
        self.sampler.set_timesteps(num_steps or self.config.num_inference_steps)
        return self.sampler.timesteps.clone().to(self.alphas_cumprod.device)

    def _pairs(self, timesteps: Tensor) -> Iterator[tuple[int, int]]:
        """(t, t_prev) per denoising step; t_prev = -1 stands for the clean end (alpha = 1)."""
        ts = [int(t) for t in timesteps]
        return zip(ts, ts[1:] + [-1])

    def chain_sampler(self, min_std: float | None = None, log_prob_reduction: str | None = None, chunk_corr: float = 0.0) -> ChainSampler:
        """The policy's own stochastic chain, or RL's: every step's std floored at ``min_std``, log-probs reduced by
        ``log_prob_reduction``, the noise correlated over the window by ``chunk_corr``."""
        cfg = self.config
        own = ChainSampler(cfg.eta, cfg.sigma_min, cfg.sigma_max, cfg.log_prob_reduction, chunk_corr)
        return own if min_std is None and log_prob_reduction is None else own.floored(min_std or 0.0, log_prob_reduction)

    def denoising_stds(self, num_steps: int | None = None, eta: float | None = None, sampler: ChainSampler | None = None) -> Tensor:
        """(K,) std of each stochastic denoising step, after clipping to the sampler's [sigma_min, sigma_max]."""
        sampler = sampler or self.chain_sampler()
        eta = sampler.eta if eta is None else eta
        sigmas = [self._ddim_sigma(t, p, eta) for t, p in self._pairs(self.timesteps(num_steps))]
        return torch.stack(sigmas).clamp(sampler.sigma_min, sampler.sigma_max)

    def denoiser_at(self, t: int) -> nn.Module:
        """The network that denoises at timestep ``t``: the frozen copy for the leading ``frozen_steps``, else ``denoiser``."""
        return self.base_denoiser if self._frozen_from is not None and t >= self._frozen_from else self.denoiser

    def with_frozen_steps(self, frozen_steps: int) -> "DiffusionPolicy":
        """A copy of this policy whose first ``frozen_steps`` denoising steps run a frozen copy of its denoiser (the
        rest run the denoiser RL updates): the same samples until the denoiser moves."""
        if self.config.frozen_steps:
            raise ValueError(f"this policy already freezes its first {self.config.frozen_steps} denoising steps")
        policy = DiffusionPolicy(replace(self.config, frozen_steps=frozen_steps), self.input_features, self.action_features, self.alphas_cumprod.device)
        policy.load_state_dict(self.state_dict(), strict=False)  # everything but the frozen copy
        policy.base_denoiser.load_state_dict(self.denoiser.state_dict())
        return policy

    def _alpha(self, t: int) -> Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.ones((), device=self.alphas_cumprod.device)

    def _ddim_sigma(self, t: int, t_prev: int, eta: float) -> Tensor:
        """Unclipped DDIM std: eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))."""
        a_t, a_prev = self._alpha(t), self._alpha(t_prev)
        return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()

    def step_moments(self, x: Tensor, t: int, t_prev: int, cond: Tensor, eta: float, sampler: ChainSampler | None = None) -> tuple[Tensor, Tensor]:
        """Mean ``(B, T, Da)`` and std ``()`` clipped as ``sampler`` says (the policy's own by default) of
        p(x_{t_prev} | x_t, cond), as in diffusers' DDIM step."""
        cfg = self.config
        out = self.denoiser_at(t)(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), cond)
        a_t, a_prev = self._alpha(t), self._alpha(t_prev)
        if cfg.prediction_type == "epsilon":
            eps, x0 = out, (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
        else:
            eps, x0 = (x - a_t.sqrt() * out) / (1 - a_t).sqrt(), out
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        sigma = self._ddim_sigma(t, t_prev, eta)
        mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma.square()).clamp(min=0).sqrt() * eps
        clip = sampler or cfg
        return mean, sigma.clamp(clip.sigma_min, clip.sigma_max)

    def initial_noise(self, cond: Tensor, generator: Generators = None) -> Tensor:
        """x_K ~ N(0, I) of shape ``(B, horizon, Da)`` on ``cond``'s device."""
        return randn((cond.shape[0], self.config.horizon, self.action_dim), generator, cond.device, cond.dtype)

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        deterministic: bool,
        generator: Generators = None,
        num_steps: int | None = None,
        noise: Tensor | None = None,
        trajectory: list[Tensor] | None = None,
        mean_eta: float | None = None,
        sampler: ChainSampler | None = None,
    ) -> Tensor:
        """Normalised actions ``(B, horizon, Da)`` from ``cond (B, Dc)``.

        ``deterministic``: each step goes to the mean of the eta = ``mean_eta`` step and adds no
        noise, from ``noise`` (or a draw from ``generator``): same noise, same action. ``mean_eta``
        0 is DDIM; 1 follows the stochastic chain's means (the DDPM posterior), which leans on the
        predicted clean action at every step; None is the config's ``deterministic_sampler``.
        Otherwise each step adds Gaussian noise with the std ``sampler`` clips (the policy's own by default).
        A ``trajectory`` list receives x_K .. x_0 (for visualising the chain).
        """
        x = self.initial_noise(cond, generator) if noise is None else noise
        if mean_eta is None:
            mean_eta = MEAN_ETA[self.config.deterministic_sampler]
        sampler = sampler or self.chain_sampler()
        eta = mean_eta if deterministic else sampler.eta
        if trajectory is not None:
            trajectory.append(x)
        for t, t_prev in self._pairs(self.timesteps(num_steps)):
            mean, std = self.step_moments(x, t, t_prev, cond, eta, sampler)
            x = mean if deterministic else mean + std * sampler.noise(_randn_like(x, generator))
            if trajectory is not None:
                trajectory.append(x)
        return x

    @torch.no_grad()
    def sample_chain(
        self, cond: Tensor, generator: Generators = None, num_steps: int | None = None, sampler: ChainSampler | None = None,
        rows: Tensor | None = None,
    ) -> Chain:
        """Stochastic sampling with ``sampler`` (the policy's own by default) that keeps the whole chain and
        each step's log-prob (no gradients). ``rows``: denoise only these rows of ``cond``, with the noise the whole
        batch would draw (the chains one process gets for them; a torchrun rank's share)."""
        sampler = sampler or self.chain_sampler()
        timesteps = self.timesteps(num_steps)
        x = self.initial_noise(cond, generator)
        keep = slice(None) if rows is None else rows
        batch, x, cond = x, x[keep], cond[keep]
        samples, log_probs = [x], []
        for t, t_prev in self._pairs(timesteps):
            mean, std = self.step_moments(x, t, t_prev, cond, sampler.eta, sampler)
            x = mean + std * sampler.noise(_randn_like(batch, generator)[keep])
            samples.append(x)
            log_probs.append(sampler.log_prob(self.executed(x), self.executed(mean), std))
        return Chain(torch.stack(samples, dim=1), torch.stack(log_probs, dim=1), timesteps, sampler)

    def chain_moments(self, cond: Tensor, chain: Chain, first: int = 0) -> tuple[Tensor, Tensor]:
        """Mean ``(B, K - first, T, Da)`` and clipped std ``(K - first,)`` of the steps from ``first`` on of a stored
        chain under the current weights and the chain's own sampler (differentiable)."""
        sampler = chain.sampler or self.chain_sampler()
        pairs = list(self._pairs(chain.timesteps))
        moments = [self.step_moments(chain.samples[:, k], *pairs[k], cond, sampler.eta, sampler) for k in range(first, len(pairs))]
        return torch.stack([m for m, _ in moments], dim=1), torch.stack([s for _, s in moments])

    def chain_log_prob(self, cond: Tensor, chain: Chain, moments: tuple[Tensor, Tensor] | None = None, first: int = 0) -> Tensor:
        """(B, K - first) log-probs of a stored chain's steps from ``first`` on under the current weights and the
        chain's sampler (differentiable); ``moments`` from ``chain_moments`` (with the same ``first``) saves
        computing them twice.

        With unchanged weights, the same ``cond`` and the model in eval mode this
        reproduces ``chain.log_probs`` exactly, so PPO ratios start at 1.
        """
        means, stds = self.chain_moments(cond, chain, first) if moments is None else moments
        sampler = chain.sampler or self.chain_sampler()
        samples, means = self.executed(chain.samples[:, first:]), self.executed(means)
        return torch.stack([sampler.log_prob(samples[:, k + 1], means[:, k], stds[k]) for k in range(len(stds))], dim=1)

    def executed(self, x: Tensor) -> Tensor:
        """The executed actions of a window: ``(..., T, Da) -> (..., Ta, Da)``, the first ``n_action_steps``."""
        return x[..., : self.config.n_action_steps, :]
