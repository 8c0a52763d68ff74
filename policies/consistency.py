"""One-step consistency head: ``(x_K noise, cond) -> action`` in a single network call.

The student is a copy of the teacher's denoiser evaluated once, at the first DDIM
timestep t_K, with a skip parametrisation (as in consistency models, c_skip = 1,
c_out = -1)::

    action = x_K - f(x_K, t_K, cond)

Warm-started from an epsilon-prediction teacher, ``f(x_K) ~ eps ~ x_K`` at that
noise level, so the student starts near the mean action instead of near the noise.
Distillation (in ``workflow``) regresses it onto the teacher's deterministic DDIM
output from the same noise: ``mse(head(noise, cond), teacher.sample(cond, True, noise=noise))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from policies.denoisers import build_denoiser
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig, make_schedulers


class ConsistencyHead(nn.Module):
    """One-call student for a :class:`DiffusionPolicy` with ``config``, ``action_dim`` and ``cond_dim``."""

    def __init__(self, config: DiffusionPolicyConfig, action_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.config = config
        self.action_dim = action_dim
        self.denoiser = build_denoiser(config.denoiser, action_dim, config.horizon, cond_dim)
        # t_K: the first DDIM timestep, the noise level the teacher starts from (90 for 100 / 10 steps)
        _, ddim = make_schedulers(config)
        ddim.set_timesteps(config.num_inference_steps)
        self.timestep = int(ddim.timesteps[0])

    @staticmethod
    def from_policy(policy: DiffusionPolicy) -> "ConsistencyHead":
        """A head whose denoiser is a copy of ``policy.denoiser`` (warm start), on the policy's device."""
        head = ConsistencyHead(policy.config, policy.action_dim, policy.cond_dim)
        head.denoiser.load_state_dict(policy.denoiser.state_dict())
        return head.to(policy.alphas_cumprod.device)

    def forward(self, noise: Tensor, cond: Tensor) -> Tensor:
        """``noise (B, horizon, Da)``, ``cond (B, Dc)`` -> normalised action ``(B, horizon, Da)``."""
        t = torch.full((noise.shape[0],), self.timestep, device=noise.device, dtype=torch.long)
        return noise - self.denoiser(noise, t, cond)

    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """Action ``(B, horizon, Da)`` from fresh (or given) noise, clipped like the teacher's predictions."""
        if noise is None:
            shape = (cond.shape[0], self.config.horizon, self.action_dim)
            noise = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        action = self(noise, cond)
        if self.config.clip_sample:
            action = action.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return action
