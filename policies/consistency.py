"""One-step consistency head: ``(x_K noise, cond) -> action`` in a single network call.

The student is a copy of the teacher's denoiser evaluated once, at the first DDIM
timestep t_K, with a skip parametrisation (as in consistency models, c_skip = 1,
c_out = -1)::

    action = x_K - f(x_K, t_K, cond)

Its timestep never changes, so the copy is folded to that timestep
(``denoiser.fold_timestep``): the same function with no timestep input, which
saves the embedding MLP and the FiLM layers' timestep share on every call.

Warm-started from an epsilon-prediction teacher, ``f(x_K) ~ eps ~ x_K`` at that
noise level, so the student starts near the mean action instead of near the noise.
Distillation (in ``workflow``) regresses it onto the teacher's deterministic DDIM
output from the same noise: ``mse(head(noise, cond), teacher.sample(cond, True, noise=noise))``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from policies.denoisers import build_denoiser
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig, Generators, make_schedulers, randn
from robot.checkpoint import load_module_state


class ConsistencyHead(nn.Module):
    """One-call student for a :class:`DiffusionPolicy` with ``config``, ``action_dim`` and ``cond_dim``."""

    def __init__(self, config: DiffusionPolicyConfig, action_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.config = config
        self.action_dim, self.cond_dim = action_dim, cond_dim
        self.denoiser = build_denoiser(config.denoiser, action_dim, config.horizon, cond_dim, timestep_input=False)
        # t_K: the first DDIM timestep, the noise level the teacher starts from (90 for 100 / 10 steps)
        _, ddim = make_schedulers(config)
        ddim.set_timesteps(config.num_inference_steps)
        self.timestep = int(ddim.timesteps[0])

    @staticmethod
    def from_policy(policy: DiffusionPolicy) -> "ConsistencyHead":
        """A head whose denoiser is ``policy.denoiser`` folded to t_K (warm start), on the policy's device."""
        head = ConsistencyHead(policy.config, policy.action_dim, policy.cond_dim).to(policy.alphas_cumprod.device)
        head.denoiser.load_state_dict(policy.denoiser_at(head.timestep).fold_timestep(head.timestep).state_dict())
        return head

    def upgrade_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weights of a head saved before the fold (a full copy of the denoiser, with its timestep
        embedding) in this head's layout; current weights pass through unchanged."""
        if not any(k.startswith("denoiser.time_embed.") for k in state):
            return dict(state)
        c = self.config
        unfolded = build_denoiser(c.denoiser, self.action_dim, c.horizon, self.cond_dim)
        load_module_state(unfolded, {k.removeprefix("denoiser."): v for k, v in state.items()}, what="consistency head")
        return {f"denoiser.{k}": v for k, v in unfolded.fold_timestep(self.timestep).state_dict().items()}

    def forward(self, noise: Tensor, cond: Tensor) -> Tensor:
        """``noise (B, horizon, Da)``, ``cond (B, Dc)`` -> normalised action ``(B, horizon, Da)``."""
        return noise - self.denoiser(noise, None, cond)

    @torch.no_grad()
    def sample(self, cond: Tensor, generator: Generators = None, noise: Tensor | None = None) -> Tensor:
        """Action ``(B, horizon, Da)`` from fresh (or given) noise, clipped like the teacher's predictions."""
        if noise is None:
            noise = randn((cond.shape[0], self.config.horizon, self.action_dim), generator, cond.device, cond.dtype)
        action = self(noise, cond)
        if self.config.clip_sample:
            action = action.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return action
