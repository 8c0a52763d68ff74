"""Offline policy evaluation by AM-Q, and the gate that accepts or rejects a candidate policy.

AM-Q (RL-100, Uni-O4): from dataset states, roll the policy H chunk-steps through the
learned latent dynamics and average min(Q1, Q2) of the actions it takes along the way.
Both policies are scored from the same start states with the same noise (common random
numbers), so the difference between them is far less noisy than either estimate.

The gate accepts a candidate only when its gain is beyond the estimate's own noise: the
per-start-state differences J_i(candidate) - J_i(reference) give a standard error, and the gain
must exceed ``z`` of them (a one-sided confidence bound). A threshold relative to |J| means little
where J's sign and size come from a step penalty (near J = 0 it accepts noise: all six candidates
of a random-advantage control passed 5% of |J| on lift); the bound scales with what the critics
and the model actually disagree on between the two policies.

Along the way the dynamics ensemble's disagreement is averaged too and recorded for both
policies (a candidate whose imagined rollouts go where the members disagree is scored where
the model has no data). It is not subtracted from J: on lift the candidates that lost sim
success had lower disagreement than their reference, not higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from policies.critics import IqlCritics
from policies.diffusion import DiffusionPolicy
from policies.dynamics import DynamicsEnsemble


@dataclass(frozen=True)
class GateConfig:
    horizon: int = 5
    """H: chunk-steps imagined through the dynamics per start state."""
    start_states: int = 256
    """Dataset states each estimate starts from."""
    z: float = 1.645
    """Accept only if the gain exceeds ``z`` standard errors of the per-start-state gains (1.645: a one-sided
    95% bound) plus the deltas below; 0 leaves only the deltas."""
    delta_relative: float = 0.0
    """Also required: a gain above ``delta_relative * |J(reference)|`` (RL-100's paper: 0.05)."""
    delta_absolute: float = 0.0
    """Absolute AM-Q gain the candidate must also beat (in return units)."""

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.start_states < 1 or self.delta_relative < 0 or self.delta_absolute < 0 or self.z < 0:
            raise ValueError(f"horizon and start_states must be >= 1, z and the deltas >= 0, got {self}")


@dataclass(frozen=True)
class GateDecision:
    update: int
    j_reference: float
    j_candidate: float
    threshold: float
    accepted: bool
    u_reference: float = float("nan")
    """Mean dynamics-ensemble disagreement along the reference's imagined rollouts."""
    u_candidate: float = float("nan")
    gain_stderr: float = float("nan")
    """Standard error of the gain over the start states (the threshold's noise part is ``z`` of it)."""
    source: str = "ppo"
    """What made the candidate: ``ppo`` (the update numbered ``update``) or ``pace`` (``workflow.pace``)."""

    @property
    def gain(self) -> float:
        return self.j_candidate - self.j_reference


@dataclass(frozen=True)
class AmqEstimate:
    value: float
    """Mean min-Q over the imagined chunk-steps."""
    disagreement: float
    """Mean ensemble disagreement (``DynamicsEnsemble.disagreement``) over the same steps."""
    per_start: torch.Tensor | None = None
    """(S,) mean min-Q of each start state's imagined rollout (``value`` is their mean)."""


@torch.no_grad()
def amq_estimate(
    policy: DiffusionPolicy,
    critics: IqlCritics,
    dynamics: DynamicsEnsemble,
    starts: torch.Tensor,
    *,
    horizon: int,
    n_action_steps: int,
    seed: int,
) -> AmqEstimate:
    """Mean min-Q of the policy's deterministic actions over ``horizon`` imagined chunk-steps.

    ``starts (S, Dc)`` are frozen-encoder features of dataset states.
    """
    generator = torch.Generator(device=starts.device).manual_seed(seed)
    s = starts
    total, spread = torch.zeros(len(starts), device=starts.device), 0.0
    for _ in range(horizon):
        noise = policy.initial_noise(s, generator)
        action = policy.sample(s, deterministic=True, noise=noise)[:, :n_action_steps].flatten(1)  # (S, Ta * Da)
        total += critics.target_q.min_q(s, action).reshape(-1)
        spread += float(dynamics.disagreement(s, action).mean())
        s, _ = dynamics.predict(s, action, generator=generator)
    per_start = total / horizon
    return AmqEstimate(float(per_start.mean()), spread / horizon, per_start)


def gate(
    candidate: DiffusionPolicy,
    reference: DiffusionPolicy,
    critics: IqlCritics,
    dynamics: DynamicsEnsemble,
    starts: torch.Tensor,
    config: GateConfig,
    *,
    n_action_steps: int,
    update: int,
    seed: int,
) -> GateDecision:
    """Score both policies from the same states with the same noise; accept only a gain beyond the estimate's noise."""
    kwargs = dict(horizon=config.horizon, n_action_steps=n_action_steps, seed=seed)
    ref = amq_estimate(reference, critics, dynamics, starts, **kwargs)
    cand = amq_estimate(candidate, critics, dynamics, starts, **kwargs)
    threshold, stderr = gain_threshold(ref.per_start, cand.per_start, config)
    return GateDecision(update=update, j_reference=ref.value, j_candidate=cand.value, threshold=threshold, accepted=cand.value - ref.value > threshold,
                        u_reference=ref.disagreement, u_candidate=cand.disagreement, gain_stderr=stderr)  # fmt: skip


def gain_threshold(reference: torch.Tensor, candidate: torch.Tensor, config: GateConfig) -> tuple[float, float]:
    """``(threshold, standard error)`` the gain mean(candidate - reference) must exceed, from the two
    policies' per-start-state estimates ``(S,)`` (paired: same starts, same noise)."""
    gains = candidate - reference
    stderr = float(gains.std() / math.sqrt(len(gains))) if len(gains) > 1 else 0.0
    return config.z * stderr + config.delta_relative * abs(float(reference.mean())) + config.delta_absolute, stderr


def horizon_warning(steps_to_go: np.ndarray, success: np.ndarray, horizon: int, n_action_steps: int) -> str | None:
    """A warning when H x chunk length is shorter than a typical successful state's distance to its reward."""
    reach = horizon * n_action_steps
    if not success.any():
        return "no successful episode in the data: the critics have never seen the task's reward"
    typical = float(np.median(steps_to_go[success]))
    if reach < typical:
        return (
            f"OPE horizon reaches {horizon} x {n_action_steps} = {reach} steps, but a median successful dataset state "
            f"is {math.ceil(typical)} steps from its reward; raise --ope-horizon to about {math.ceil(typical / n_action_steps)}"
        )
    return None
