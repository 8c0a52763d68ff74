"""One-step consistency head: ``(x_K, cond) -> action`` in a single network call.

The student is a copy of the teacher's denoiser evaluated once, at the first DDIM
timestep t_K, with a skip parametrisation (as in consistency models, c_skip = 1,
c_out = -1)::

    action = x_K - f(x_K, t_K, cond)

Its timestep never changes, so the copy is folded to that timestep
(``denoiser.fold_timestep``): the same function with no timestep input, which
saves the embedding MLP and the FiLM layers' timestep share on every call.

A head distils the teacher's deterministic chain from x_K = 0 (``noise_scale`` 0): the
deployed policy is deterministic (one action per state, on a robot as in its tests), and
that chain barely depends on its start anyway (over fresh x_K its output varies by a mean
square of 0.0010 against the actions' 0.117; from 0 the teacher scored 75.8%, from noise 76.8%,
over 600 paired seeds, 24 won, 30 lost). Fed noise, the head spends its fit carrying x_K
through to cancel it: on session 27's main-job teacher the same 600 steps left a held-out
error of 0.0038 fed noise and 0.0024 fed 0, and over 600 paired seeds those heads scored 3.8
and 1.7 points under the teacher (between them 63 won, 50 lost: not beyond noise). On the
README run's teacher (sessions 28-29) heads are 4-7 points under it over 600 seeds at 600
steps and 2-3 at 2,400-4,800 (docs/RESULTS.md, session 29). Heads saved before then were distilled from
fresh noise and keep drawing it (``noise_scale`` 1).

Warm-started from an epsilon-prediction teacher, the student starts at the teacher's
first step. Distillation (in ``workflow``) regresses it onto the teacher's deterministic
output from the head's start: ``mse(head(x_K, cond), teacher.sample(cond, True, noise=x_K))``.
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
        self.register_buffer("noise_scale", torch.tensor(0.0))
        """x_K's scale: 0, the chain from 0 (a deterministic policy); 1, fresh noise (heads saved before session 29)."""

    @staticmethod
    def from_policy(policy: DiffusionPolicy) -> "ConsistencyHead":
        """A head whose denoiser is ``policy.denoiser`` folded to t_K (warm start), on the policy's device."""
        head = ConsistencyHead(policy.config, policy.action_dim, policy.cond_dim).to(policy.alphas_cumprod.device)
        head.denoiser.load_state_dict(policy.denoiser_at(head.timestep).fold_timestep(head.timestep).state_dict())
        return head

    def upgrade_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weights of a head saved before the fold (a full copy of the denoiser, with its timestep
        embedding) or before ``noise_scale`` (distilled from fresh noise, so 1) in this head's layout;
        current weights pass through unchanged."""
        state = {"noise_scale": torch.tensor(1.0), **state}
        if not any(k.startswith("denoiser.time_embed.") for k in state):
            return state
        c = self.config
        unfolded = build_denoiser(c.denoiser, self.action_dim, c.horizon, self.cond_dim)
        load_module_state(unfolded, {k.removeprefix("denoiser."): v for k, v in state.items() if k.startswith("denoiser.")}, what="consistency head")
        folded = {f"denoiser.{k}": v for k, v in unfolded.fold_timestep(self.timestep).state_dict().items()}
        return {"noise_scale": state["noise_scale"], **folded}

    def forward(self, noise: Tensor, cond: Tensor) -> Tensor:
        """``noise (B, horizon, Da)``, ``cond (B, Dc)`` -> normalised action ``(B, horizon, Da)``."""
        return noise - self.denoiser(noise, None, cond)

    def initial_noise(self, cond: Tensor, generator: Generators = None) -> Tensor:
        """x_K ``(B, horizon, Da)``: 0, or fresh noise for a head distilled from it (``generator`` is drawn from either way)."""
        return randn((cond.shape[0], self.config.horizon, self.action_dim), generator, cond.device, cond.dtype) * self.noise_scale

    @torch.no_grad()
    def sample(self, cond: Tensor, generator: Generators = None, noise: Tensor | None = None) -> Tensor:
        """Action ``(B, horizon, Da)`` from the head's x_K (or ``noise``), clipped like the teacher's predictions."""
        if noise is None:
            noise = self.initial_noise(cond, generator)
        action = self(noise, cond)
        if self.config.clip_sample:
            action = action.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return action
