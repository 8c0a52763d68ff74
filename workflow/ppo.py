"""PPO's clipped objective on the denoising chain (shared by offline and online RL).

Each environment step hides a K-step denoising chain; every denoising step is a
Gaussian policy step of its own. One advantage per environment step (or chunk) is
shared by its K denoising steps; the ratio is taken per denoising step between the
current weights and the weights that sampled the chain (DPPO, RL-100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from policies.diffusion import Chain, DiffusionPolicy


@dataclass(frozen=True)
class ChainLossStats:
    clip_fraction: float  # share of (sample, denoising step) ratios outside [1 - eps, 1 + eps]
    approx_kl: float  # E[(r - 1) - log r], the k3 estimator of KL(old || new)
    ratio_mean: float
    anchor_kl: float | None = None  # mean per-step KL(anchor || current) on the chain's inputs (with an anchor)


def normalize_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the batch (a batch of one is only centred)."""
    centred = advantages - advantages.mean()
    return centred / (advantages.std() + 1e-8) if advantages.numel() > 1 else centred


def per_state_centred(advantages: torch.Tensor, chains_per_state: int) -> torch.Tensor:
    """``(B * n,)`` advantages of n chains per state (side by side), less their state's mean (n = 1: unchanged)."""
    if chains_per_state == 1:
        return advantages
    grouped = advantages.view(-1, chains_per_state)
    return (grouped - grouped.mean(dim=1, keepdim=True)).flatten()


@dataclass(frozen=True)
class StepSchedule:
    """How PPO treats the K denoising steps of a chain (DPPO's ``diffusion_ppo.py``; the defaults treat every
    step alike, as RL-100's code does)."""

    clip_first: float | None = None
    """Clip range of the first (noisiest) denoising step, rising exponentially to the last step's ``clip_eps``
    (DPPO: 0.001 up to 0.01 at rate 3): the early steps, which set the action's mode, move least. None: one clip."""
    clip_rate: float = 3.0
    """Steepness of that rise (DPPO's ``clip_ploss_coef_rate``)."""
    denoising_gamma: float = 1.0
    """Discount over the chain: step k of K gets the advantage times ``denoising_gamma ** (K - 1 - k)`` (DPPO: 0.99)."""

    def __post_init__(self) -> None:
        if self.clip_first is not None and not 0 < self.clip_first < 1:
            raise ValueError(f"clip_first must be in (0, 1), got {self.clip_first}")
        if self.clip_rate <= 0 or not 0 < self.denoising_gamma <= 1:
            raise ValueError(f"clip_rate must be > 0 and denoising_gamma in (0, 1], got {self.clip_rate}, {self.denoising_gamma}")

    def clips(self, k: int, clip_eps: float) -> torch.Tensor:
        """``(K,)`` clip range per denoising step, first (noisiest) to last."""
        if self.clip_first is None or k == 1:
            return torch.full((k,), clip_eps)
        t = torch.linspace(0.0, 1.0, k)
        return self.clip_first + (clip_eps - self.clip_first) * torch.expm1(self.clip_rate * t) / math.expm1(self.clip_rate)

    def discounts(self, k: int) -> torch.Tensor:
        """``(K,)`` advantage weight per denoising step: the last step 1."""
        return self.denoising_gamma ** torch.arange(k - 1, -1, -1, dtype=torch.float32)


def chain_ppo_loss(
    policy: DiffusionPolicy,
    cond: torch.Tensor,
    chain: Chain,
    advantages: torch.Tensor,
    clip_eps: float,
    anchor_means: torch.Tensor | None = None,
    anchor_coef: float = 0.0,
    steps: StepSchedule = StepSchedule(),
) -> tuple[torch.Tensor, ChainLossStats]:
    """Clipped surrogate over the K denoising steps (those after a policy's ``frozen_steps``).

    ``cond (B, Dc)`` conditioning the chain was sampled with; ``chain`` with its
    sampling-time log-probs ``(B, K)``; ``advantages (B,)`` already normalised.
    ``clip_eps`` is the last denoising step's clip range (every step's unless ``steps`` schedules it).
    ``anchor_means (B, K, T, Da)``: each step's mean under a fixed anchor policy (the
    round's start); ``anchor_coef`` times the per-step KL to it is added to the loss,
    which keeps the update near the policy the data was imitated into.
    """
    first = policy.config.frozen_steps  # steps a frozen copy runs have ratio 1: only the fine-tuned ones are scored
    moments = policy.chain_moments(cond, chain, first)
    new_log_probs = policy.chain_log_prob(cond, chain, moments=moments, first=first)  # (B, K - first)
    log_ratio = (new_log_probs - chain.log_probs[:, first:]).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    k = ratio.shape[1]
    clip = steps.clips(k, clip_eps).to(ratio)[None, :]  # (1, K)
    adv = advantages[:, None] * steps.discounts(k).to(ratio)[None, :]  # (B, K): one advantage per chain, discounted over it
    surrogate = torch.minimum(ratio * adv, torch.minimum(torch.maximum(ratio, 1 - clip), 1 + clip) * adv)
    loss = -surrogate.mean()
    anchor_kl = None
    if anchor_means is not None:
        kl = (chain.sampler or policy.chain_sampler()).step_kl(policy.executed(moments[0]), policy.executed(anchor_means[:, first:]), moments[1]).mean()
        loss = loss + anchor_coef * kl
        anchor_kl = float(kl.detach())
    with torch.no_grad():
        stats = ChainLossStats(
            clip_fraction=float(((ratio - 1).abs() > clip).float().mean()),
            approx_kl=float(((ratio - 1) - log_ratio).mean()),
            ratio_mean=float(ratio.mean()),
            anchor_kl=anchor_kl,
        )
    return loss, stats


def denoiser_parameters(policy: DiffusionPolicy) -> list[torch.nn.Parameter]:
    """The parameters RL updates: the denoiser's; the observation encoder (and the frozen steps' copy) stay frozen."""
    return list(policy.denoiser.parameters())


def fine_tuned_steps(policy: DiffusionPolicy, ft_steps: int | None) -> DiffusionPolicy:
    """``policy`` with only its last ``ft_steps`` denoising steps left to RL (DPPO), the earlier ones run by a frozen
    copy of its denoiser; None: every step. A policy that already freezes steps must freeze the same number."""
    if ft_steps is None:
        return policy
    k = policy.config.num_inference_steps
    if not 1 <= ft_steps <= k:
        raise ValueError(f"ft_steps must be in [1, {k}] (the policy's denoising steps), got {ft_steps}")
    frozen = k - ft_steps
    if policy.config.frozen_steps == frozen:
        return policy
    if policy.config.frozen_steps:
        raise ValueError(f"the policy already freezes its first {policy.config.frozen_steps} of {k} denoising steps: pass --ft-steps "
                         f"{k - policy.config.frozen_steps}, or start from a policy that freezes none")  # fmt: skip
    return policy.with_frozen_steps(frozen)
