"""One-step consistency head: ``(x_K, cond) -> action`` in a single network call.

The head is a skip parametrisation (as in consistency models, c_skip = 1, c_out = -1)::

    action = x_K - f(x_K, cond)

A head distils the teacher's deterministic chain from x_K = 0 (``noise_scale`` 0): the
deployed policy is deterministic (one action per state, on a robot as in its tests), and
that chain barely depends on its start anyway (over fresh x_K its output varies by a mean
square of 0.0010 against the actions' 0.117; from 0 the teacher scored 75.8%, from noise 76.8%,
over 600 paired seeds, 24 won, 30 lost). From 0 the head is a plain regression of the
conditioning onto the teacher's chunk, one fixed target per state.

``f`` is the student (:class:`StudentConfig`):

- ``copy`` (the default): the teacher's denoiser evaluated once, at the first DDIM timestep t_K,
  warm-started from it. Its timestep never changes, so the copy is folded to that timestep
  (``denoiser.fold_timestep``): the same function with no timestep input.
- ``mlp``: a small residual MLP trained from scratch, a tenth of the copy's step and of its
  latency (a chunk in 0.2 ms on one core against 2 ms; 10-step DDIM 20-30 ms). On the README
  run's teacher (81.2% over 600 paired seeds) five MLP heads of 8,000-20,000 steps fitted it 2-8
  times closer than U-Net copies of 600 steps (held-out error 0.0003-0.0013 against 0.0024) and
  scored 75.5-80.3%, copies of 2,400-4,800 steps 78.3-78.8%: the closed loop's gap does not follow
  the average error at these sizes, and heads of one recipe scatter by 5 points (docs/RESULTS.md,
  session 30).

Heads saved before session 30 are copies; those saved before session 29 were distilled from
fresh noise and keep drawing it (``noise_scale`` 1). Distillation (in ``workflow``) regresses
the student onto the teacher's deterministic output from the head's start:
``mse(head(x_K, cond), teacher.sample(cond, True, noise=x_K))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from policies.denoisers import DenoiserConfig, build_denoiser
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig, Generators, make_schedulers, randn
from robot.checkpoint import load_module_state


@dataclass(frozen=True)
class StudentConfig:
    """The head's network ``f``."""

    kind: Literal["copy", "mlp"] = "copy"
    """``copy``: the teacher's denoiser at t_K, warm-started from it; ``mlp``: a residual MLP from scratch (a tenth
    of the copy's step and of its latency: fit it long, 20,000 steps at ``MLP.lr``)."""
    hidden_dim: int = 128
    """Width of the MLP's residual stream (its blocks expand 4x)."""
    num_blocks: int = 3
    """Residual blocks of the MLP."""

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "copy") or self.hidden_dim < 1 or self.num_blocks < 0:
            raise ValueError(f"student: kind must be 'mlp' or 'copy', hidden_dim >= 1 and num_blocks >= 0, got {self}")

    @property
    def lr(self) -> float:
        """The distillation rate it was measured with: 1e-3 from scratch, 3e-4 (the configs' default) for the
        warm-started copy."""
        return 1e-3 if self.kind == "mlp" else 3e-4

    def denoiser(self, teacher: DenoiserConfig) -> DenoiserConfig:
        """The denoiser architecture ``f`` is built as."""
        return teacher if self.kind == "copy" else DenoiserConfig(kind="mlp", mlp_hidden_dim=self.hidden_dim, mlp_num_blocks=self.num_blocks)


COPY, MLP = StudentConfig(kind="copy"), StudentConfig(kind="mlp")


class ConsistencyHead(nn.Module):
    """One-call student for a :class:`DiffusionPolicy` with ``config``, ``action_dim`` and ``cond_dim``."""

    def __init__(self, config: DiffusionPolicyConfig, action_dim: int, cond_dim: int, student: StudentConfig = COPY) -> None:
        super().__init__()
        self.config, self.student = config, student
        self.action_dim, self.cond_dim = action_dim, cond_dim
        self.denoiser = build_denoiser(student.denoiser(config.denoiser), action_dim, config.horizon, cond_dim, timestep_input=False)
        # t_K: the first DDIM timestep, the noise level the teacher starts from (90 for 100 / 10 steps)
        _, ddim = make_schedulers(config)
        ddim.set_timesteps(config.num_inference_steps)
        self.timestep = int(ddim.timesteps[0])
        self.register_buffer("noise_scale", torch.tensor(0.0))
        """x_K's scale: 0, the chain from 0 (a deterministic policy); 1, fresh noise (heads saved before session 29)."""

    @staticmethod
    def from_policy(policy: DiffusionPolicy, student: StudentConfig = COPY) -> "ConsistencyHead":
        """A head for ``policy`` on its device: a fresh MLP, or ``policy.denoiser`` folded to t_K (the copy's warm start)."""
        head = ConsistencyHead(policy.config, policy.action_dim, policy.cond_dim, student).to(policy.alphas_cumprod.device)
        if student.kind == "copy":
            head.denoiser.load_state_dict(policy.denoiser_at(head.timestep).fold_timestep(head.timestep).state_dict())
        return head

    def upgrade_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weights of a head saved before the fold (a full copy of the denoiser, with its timestep
        embedding) or before ``noise_scale`` (distilled from fresh noise, so 1) in this head's layout;
        current weights pass through unchanged."""
        state = {"noise_scale": torch.tensor(1.0), **state}
        if self.student.kind != "copy" or not any(k.startswith("denoiser.time_embed.") for k in state):
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
