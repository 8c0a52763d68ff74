"""Offline policy evaluation by AM-Q, and the gate that accepts or rejects a candidate policy.

AM-Q (RL-100, Uni-O4): from dataset states, roll the policy H chunk-steps through the
learned latent dynamics and average min(Q1, Q2) of the actions it takes along the way.
Both policies are scored from the same start states with the same noise (common random
numbers), so the difference between them is far less noisy than either estimate.

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
    delta_relative: float = 0.05
    """Accept only if J(candidate) - J(reference) > delta_relative * |J(reference)| + delta_absolute."""
    delta_absolute: float = 0.0

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.start_states < 1 or self.delta_relative < 0 or self.delta_absolute < 0:
            raise ValueError(f"horizon and start_states must be >= 1 and the deltas >= 0, got {self}")


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

    @property
    def gain(self) -> float:
        return self.j_candidate - self.j_reference


@dataclass(frozen=True)
class AmqEstimate:
    value: float
    """Mean min-Q over the imagined chunk-steps."""
    disagreement: float
    """Mean ensemble disagreement (``DynamicsEnsemble.disagreement``) over the same steps."""


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
    total = spread = 0.0
    for _ in range(horizon):
        noise = policy.initial_noise(s, generator)
        action = policy.sample(s, deterministic=True, noise=noise)[:, :n_action_steps].flatten(1)  # (S, Ta * Da)
        total += float(critics.target_q.min_q(s, action).mean())
        spread += float(dynamics.disagreement(s, action).mean())
        s, _ = dynamics.predict(s, action, generator=generator)
    return AmqEstimate(total / horizon, spread / horizon)


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
    """Score both policies from the same states with the same noise; accept only a clear gain."""
    kwargs = dict(horizon=config.horizon, n_action_steps=n_action_steps, seed=seed)
    ref = amq_estimate(reference, critics, dynamics, starts, **kwargs)
    cand = amq_estimate(candidate, critics, dynamics, starts, **kwargs)
    threshold = config.delta_relative * abs(ref.value) + config.delta_absolute
    return GateDecision(update=update, j_reference=ref.value, j_candidate=cand.value, threshold=threshold, accepted=cand.value - ref.value > threshold,
                        u_reference=ref.disagreement, u_candidate=cand.disagreement)  # fmt: skip


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
