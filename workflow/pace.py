"""The critic's choice of pace: an offline policy-improvement step beyond PPO's clip.

Teleoperated demonstrations are slow (an operator hesitates, approaches carefully), and a policy cloned
from them keeps their pace. RL should shorten the task, as RL-100's rounds did, but PPO on the
denoising chain moves the policy only within its clip and the gate, and exploration noise around a
slow policy rarely tries a chunk twice as fast. The offline critics, though, rank pace already: on the
README's main job Q rose with the policy's chunk sped up in 86-88% of approach states, and letting Q
pick the speed at every decision raised success (docs/RESULTS.md, session 33).

This step follows that ranking and hands it to the policy:

1. at every dataset state, the policy's deterministic chunk and the same chunk with its motion
   entries (the end effector's translation and rotation deltas) scaled by each of ``scales``,
   clipped to the action's bounds;
2. the critics' min Q of each candidate's executed actions picks one, the policy's own chunk on a tie;
3. the denoiser (the encoder stays frozen, as in PPO) regresses onto the chosen chunks by the
   denoising loss it was trained with, and the weights' moving average is handed on.

The regressed policy is a candidate like PPO's: the AM-Q gate, then verification in sim, decide
whether it replaces the policy it came from. Scaling a chunk is only meaningful for delta actions,
so the step needs an ``ee_delta`` action layout (``hardware.arm.ActionLayout``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from hardware.arm import ActionLayout
from policies.critics import IqlCritics
from policies.diffusion import DiffusionPolicy
from policies.ema import EmaModel
from robot.normalize import Normalizer
from robot.types import ACTION, Feature
from workflow.distributed import Distributed
from workflow.ppo import denoiser_parameters


@dataclass(frozen=True)
class PaceConfig:
    scales: tuple[float, ...] = ()
    """Speeds besides 1 at which the critics may replay each chunk (``1.25, 1.5, 2``); empty: the step is off."""
    steps: int = 1000
    """Regression steps of the denoiser onto the chosen chunks."""
    batch: int = 256
    """Dataset states per regression step."""
    lr: float = 1e-4
    """Learning rate of the regression (Adam)."""
    ema: bool = True
    """Hand on the exponential moving average of the regressed weights (``policies.ema``, imitation's schedule)
    rather than the last step's: on the main job three draws scored 76.5-78.5% with it, 73.0-78.7% without
    (docs/RESULTS.md, session 34)."""
    optional: bool = False
    """For a policy whose actions are not end-effector deltas, skip the step with one line instead of refusing the run
    (the pipeline's budgets, which serve every task)."""

    def __post_init__(self) -> None:
        if any(k <= 0 or k == 1 for k in self.scales) or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"pace scales must be distinct, positive and not 1 (the policy's own pace is always offered), got {self.scales}")
        if self.steps < 1 or self.batch < 1 or self.lr <= 0:
            raise ValueError(f"pace steps and batch must be >= 1 and lr > 0, got {self.steps}, {self.batch}, {self.lr}")

    @property
    def enabled(self) -> bool:
        return bool(self.scales)


@dataclass(frozen=True)
class PaceTargets:
    """What the critics chose at each dataset state."""

    actions: torch.Tensor
    """(N, horizon, Da) normalised chunks the denoiser regresses onto."""
    scale: torch.Tensor
    """(N,) the speed chosen at each state (1: the policy's own chunk)."""
    q_gain: torch.Tensor
    """(N,) min Q of the chosen chunk minus min Q of the policy's own."""

    def summary(self) -> dict[str, float]:
        return {"pace/mean_scale": float(self.scale.mean()), "pace/changed": float((self.scale != 1).float().mean()),
                "pace/q_gain": float(self.q_gain.mean())}  # fmt: skip


def pace_applies(action: Feature) -> bool:
    """Whether actions of this feature are end-effector deltas, whose motion entries a speed can scale."""
    return ActionLayout.of_scene(action).mode == "ee_delta"


def motion_layout(policy: DiffusionPolicy) -> ActionLayout:
    """The policy's action layout, refused unless its motion entries are end-effector deltas a speed can scale."""
    layout = ActionLayout.of_scene(policy.action_features[ACTION])
    if layout.mode != "ee_delta":
        raise ValueError(f"the critic's choice of pace scales end-effector delta actions; this policy's actions are {layout.mode} "
                         f"({policy.action_features[ACTION].describe()}): leave pace scales empty")  # fmt: skip
    return layout


@torch.no_grad()
def scaled_chunks(policy: DiffusionPolicy, chunks: torch.Tensor, scales: tuple[float, ...], normalizer: Normalizer) -> torch.Tensor:
    """(N, 1 + S, horizon, Da) normalised: each of the policy's ``chunks (N, horizon, Da)`` as it is, then with its motion
    entries scaled by each of ``scales``, clipped to the action's bounds and to what the policy can output (its
    ``clip_sample_range``, when it clips)."""
    feature, motion = policy.action_features[ACTION], list(motion_layout(policy).motion)
    raw = normalizer.unnormalize(ACTION, chunks)
    low = None if feature.low is None else torch.as_tensor(feature.low, dtype=raw.dtype, device=raw.device)
    high = None if feature.high is None else torch.as_tensor(feature.high, dtype=raw.dtype, device=raw.device)
    out = [chunks]
    for k in scales:
        scaled = raw.clone()
        scaled[..., motion] = scaled[..., motion] * k
        scaled = scaled.clamp(low, high) if low is not None or high is not None else scaled
        scaled = normalizer.normalize(ACTION, scaled).to(chunks.dtype)
        if policy.config.clip_sample:
            scaled = scaled.clamp(-policy.config.clip_sample_range, policy.config.clip_sample_range)
        out.append(scaled)
    return torch.stack(out, dim=1)


@torch.no_grad()
def pace_targets(policy: DiffusionPolicy, critics: IqlCritics, features: torch.Tensor, normalizer: Normalizer, config: PaceConfig, *,
                 seed: int, batch_size: int = 1024) -> PaceTargets:  # fmt: skip
    """At each row of ``features (N, Dc)`` (frozen-encoder features of dataset states), the policy's deterministic
    chunk at the speed whose executed actions the critics' min Q ranks first."""
    scales = torch.tensor([1.0, *config.scales], device=features.device)
    generator = torch.Generator(device=features.device).manual_seed(seed)
    chosen, picked, gains = [], [], []
    for start in range(0, len(features), batch_size):
        cond = features[start : start + batch_size]
        chunk = policy.sample(cond, deterministic=True, noise=policy.initial_noise(cond, generator))
        candidates = scaled_chunks(policy, chunk, config.scales, normalizer)  # (B, C, H, Da)
        b, c = candidates.shape[:2]
        executed = policy.executed(candidates).flatten(2)  # (B, C, Ta * Da)
        q = critics.q.min_q(cond.repeat_interleave(c, 0), executed.flatten(0, 1)).view(b, c)
        best = q.argmax(1)  # the first (the policy's own) on a tie
        chosen.append(candidates[torch.arange(b, device=cond.device), best])
        picked.append(scales[best])
        gains.append(q[torch.arange(b, device=cond.device), best] - q[:, 0])
    return PaceTargets(torch.cat(chosen), torch.cat(picked), torch.cat(gains))


def regress_onto(policy: DiffusionPolicy, features: torch.Tensor, targets: torch.Tensor, config: PaceConfig, *, seed: int,
                 ddp: Distributed | None = None) -> tuple[DiffusionPolicy, float]:  # fmt: skip
    """A copy of ``policy`` whose denoiser regressed onto ``targets (N, horizon, Da)`` at ``features (N, Dc)`` by the
    denoising loss; returns it (eval mode, no gradients) and the last steps' mean loss. Under torchrun every rank
    draws the whole batch (rows, noise, timesteps) from ``seed`` and trains on its rows of it: one process's result."""
    ddp = ddp or Distributed()
    candidate = copy.deepcopy(policy).requires_grad_(False).train()
    params = denoiser_parameters(candidate)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ema = EmaModel(candidate) if config.ema else None
    recent: list[float] = []
    for _ in range(config.steps):
        batch = min(config.batch, len(features))
        idx = torch.randint(0, len(features), (batch,), generator=generator)
        noise = torch.randn((batch, *targets.shape[1:]), generator=generator)
        t = torch.randint(0, candidate.config.num_train_steps, (batch,), generator=generator)
        rows, scale = ddp.rows(torch.arange(batch))
        at = idx[rows].to(features.device)
        loss = candidate.denoising_loss(features[at], targets[at], noise[rows].to(features.device), t[rows].to(features.device))
        optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()
        ddp.average_gradients(params)
        optimizer.step()
        if ema is not None:
            ema.update(candidate)
        recent = (recent + [loss.item()])[-50:]
    handed = candidate if ema is None else ema.averaged
    return handed.eval().requires_grad_(False), ddp.mean(sum(recent) / len(recent))  # one all-reduce, after the loop


@torch.no_grad()
def chunk_speed(policy: DiffusionPolicy, chunks: torch.Tensor, normalizer: Normalizer) -> float:
    """Mean norm of the end-effector translation of the executed actions of normalised ``chunks (N, horizon, Da)``, in
    the action's units (metres a step for the sim scenes)."""
    raw = normalizer.unnormalize(ACTION, policy.executed(chunks))[..., list(motion_layout(policy).translation)]
    return float(raw.norm(dim=-1).mean())


@torch.no_grad()
def policy_speed(policy: DiffusionPolicy, features: torch.Tensor, normalizer: Normalizer, *, seed: int) -> float:
    """:func:`chunk_speed` of the policy's deterministic chunks at ``features``: what the regression moved."""
    generator = torch.Generator(device=features.device).manual_seed(seed)
    return chunk_speed(policy, policy.sample(features, deterministic=True, noise=policy.initial_noise(features, generator)), normalizer)
