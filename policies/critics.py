"""IQL critics on frozen encoder features, for offline RL on (chunked) diffusion policies.

Implicit Q-learning (Kostrikov et al. 2022) as used by RL-100: twin Q with a min, V by
expectile regression toward the *target* min-Q of dataset actions (so no action is ever
sampled from the policy), Q toward the n-step chunk target ``r_chunk + gamma^n (1 - done) V(s')``,
Polyak-averaged target Q. States are the frozen ``DiffusionPolicy.encode`` features
``(B, Dc)``; actions are normalised chunks ``(B, H, Da)`` (flattened to ``(B, H * Da)``).

:func:`chunk_returns` turns flat per-step rewards into the chunk targets the critics train on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class CriticConfig:
    """Architecture and IQL hyperparameters of :class:`IqlCritics`."""

    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of every Q and V MLP."""
    layer_norm: bool = True
    """LayerNorm after each hidden linear layer (keeps Q bounded on out-of-distribution inputs)."""
    expectile: float = 0.7
    """IQL expectile of V: 0.5 = mean (SARSA), -> 1 = max over dataset actions.
    RL-100: 0.7 single action, 0.9 chunks (:meth:`for_horizon`)."""
    gamma: float = 0.99
    """Per-environment-step discount; pass it to :func:`chunk_returns` (a chunk of n steps bootstraps with gamma^n)."""
    tau: float = 0.005
    """Soft target update rate: ``target <- (1 - tau) target + tau online`` after every step."""
    lr: float = 3e-4
    """Adam learning rate of Q and V."""
    grad_clip_norm: float = 10.0
    """Global gradient-norm clip of one :meth:`IqlCritics.update` (0 disables)."""

    def __post_init__(self) -> None:
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"hidden_dims must be non-empty positive widths, got {self.hidden_dims}")
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {self.expectile}; "
                             "use 0.7 (single action) or 0.9 (chunks)")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.lr <= 0 or self.grad_clip_norm < 0:
            raise ValueError(f"lr must be > 0 and grad_clip_norm >= 0, got {self.lr}, {self.grad_clip_norm}")

    @staticmethod
    def for_horizon(horizon: int, **overrides: Any) -> "CriticConfig":
        """RL-100 defaults for a policy horizon: expectile 0.7 for a single action, 0.9 for chunks."""
        return replace(CriticConfig(expectile=0.7 if horizon == 1 else 0.9), **overrides)


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, layer_norm: bool) -> nn.Sequential:
    """Linear -> [LayerNorm] -> ReLU per hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width) if layer_norm else nn.Identity(), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs on ``features (B, Dc)`` and flattened actions ``(B, action_size)``."""

    def __init__(self, feature_dim: int, action_size: int, config: CriticConfig = CriticConfig()) -> None:
        super().__init__()
        self.feature_dim, self.action_size = feature_dim, action_size
        self.q1 = mlp(feature_dim + action_size, config.hidden_dims, 1, config.layer_norm)
        self.q2 = mlp(feature_dim + action_size, config.hidden_dims, 1, config.layer_norm)

    def forward(self, features: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``features (B, Dc)``, ``actions (B, H, Da)`` or ``(B, H * Da)`` -> ``(q1 (B,), q2 (B,))``."""
        actions = actions.flatten(1)
        if actions.shape[1] != self.action_size or features.shape[1] != self.feature_dim:
            raise ValueError(f"TwinQ expects features (B, {self.feature_dim}) and actions flattening to "
                             f"(B, {self.action_size}), got {tuple(features.shape)} and {tuple(actions.shape)}")
        x = torch.cat([features, actions], dim=1)
        return self.q1(x).squeeze(1), self.q2(x).squeeze(1)

    def min_q(self, features: Tensor, actions: Tensor) -> Tensor:
        """(B,) pessimistic value ``min(q1, q2)``."""
        return torch.minimum(*self(features, actions))


class ValueNet(nn.Module):
    """State value V(s) on ``features (B, Dc)`` -> ``(B,)``."""

    def __init__(self, feature_dim: int, config: CriticConfig = CriticConfig()) -> None:
        super().__init__()
        self.net = mlp(feature_dim, config.hidden_dims, 1, config.layer_norm)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(1)


@dataclass(frozen=True, eq=False)
class CriticBatch:
    """One IQL minibatch of chunk transitions; also accepted as a dict with these keys."""

    features: Tensor
    """(B, Dc) encoder features of s_t."""
    actions: Tensor
    """(B, H, Da) or (B, H * Da) normalised action chunk taken at s_t."""
    rewards: Tensor
    """(B,) discounted reward sum of the chunk's n executed steps (:func:`chunk_returns`)."""
    discounts: Tensor
    """(B,) bootstrap discount gamma^n, n = steps actually executed (fewer at an episode's end)."""
    terminals: Tensor
    """(B,) 1 where the episode terminated inside the chunk (no bootstrap), else 0."""
    next_features: Tensor
    """(B, Dc) encoder features of s_{t+n}."""


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric L2 ``|expectile - 1[diff < 0]| * diff^2``, averaged; ``diff = target - prediction``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


class IqlCritics(nn.Module):
    """Twin Q, its Polyak target and V, trained with IQL on frozen features.

    ``action_dim`` and ``horizon`` describe the chunk the critic scores (``action_size = horizon * action_dim``).
    One training step: ``stats = critics.update(batch, optimizer)`` with ``optimizer = critics.make_optimizer()``.
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        horizon: int = 1,
        config: CriticConfig = CriticConfig(),
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.config = config
        self.feature_dim, self.action_size = feature_dim, action_dim * horizon
        self.q = TwinQ(feature_dim, action_dim * horizon, config)
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)
        self.v = ValueNet(feature_dim, config)
        self.to(device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Q and V parameters (the target Q only moves by :meth:`soft_update`)."""
        return [*self.q.parameters(), *self.v.parameters()]

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable_parameters(), lr=self.config.lr)

    def losses(self, batch: CriticBatch | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """IQL loss terms; ``losses/total`` is the one to backpropagate.

        Keys: ``losses/q_td`` (sum of both Q heads' MSE to the chunk target),
        ``losses/v_expectile``, ``losses/total``, ``values/q_mean``, ``values/v_mean`` (detached).
        """
        b = batch if isinstance(batch, CriticBatch) else CriticBatch(**batch)
        s, s_next = b.features.detach(), b.next_features.detach()
        with torch.no_grad():
            target_q = self.target_q.min_q(s, b.actions)  # (B,)
            bootstrap = b.discounts * (1.0 - b.terminals.float()) * self.v(s_next)
            td_target = b.rewards + bootstrap  # (B,)
        v = self.v(s)
        v_loss = expectile_loss(target_q - v, self.config.expectile)
        q1, q2 = self.q(s, b.actions)
        q_loss = F.mse_loss(q1, td_target) + F.mse_loss(q2, td_target)
        return {
            "losses/q_td": q_loss,
            "losses/v_expectile": v_loss,
            "losses/total": q_loss + v_loss,
            "values/q_mean": torch.minimum(q1, q2).mean().detach(),
            "values/v_mean": v.mean().detach(),
        }

    def update(
        self,
        batch: CriticBatch | Mapping[str, Tensor],
        optimizer: torch.optim.Optimizer,
        *,
        loss_scale: float = 1.0,
        sync: Callable[[Iterable[nn.Parameter]], None] | None = None,
    ) -> dict[str, float]:
        """One gradient step on Q and V, then a soft target update; returns the loss terms as floats.

        Data-parallel training passes this rank's share of the global batch, the ``loss_scale``
        that makes its mean a share of the global mean, and ``sync`` to average the gradients.
        """
        terms = self.losses(batch)
        optimizer.zero_grad(set_to_none=True)
        (terms["losses/total"] * loss_scale).backward()
        if sync is not None:
            sync(self.trainable_parameters())
        if self.config.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(self.trainable_parameters(), self.config.grad_clip_norm)
        optimizer.step()
        self.soft_update()
        return {key: float(value.detach()) for key, value in terms.items()}

    @torch.no_grad()
    def soft_update(self, tau: float | None = None) -> None:
        """``target <- (1 - tau) target + tau online`` (``tau`` defaults to ``config.tau``)."""
        tau = self.config.tau if tau is None else tau
        for target, online in zip(self.target_q.parameters(), self.q.parameters()):
            target.lerp_(online, tau)

    @torch.no_grad()
    def advantage(self, features: Tensor, actions: Tensor) -> Tensor:
        """(B,) ``min target Q(s, a) - V(s)``: the (unnormalised) PPO advantage of RL-100."""
        return self.target_q.min_q(features, actions) - self.v(features)

    @torch.no_grad()
    def value(self, features: Tensor) -> Tensor:
        """(B,) V(s), e.g. to warm-start the online value function."""
        return self.v(features)


class ChunkReturns(NamedTuple):
    """Per-step chunk targets from :func:`chunk_returns`, all ``(N,)``."""

    rewards: np.ndarray
    """float32: sum_{i<n} gamma^i r_{t+i}."""
    discounts: np.ndarray
    """float32: gamma^n."""
    terminals: np.ndarray
    """bool: the episode terminated (``done``) inside the chunk, so there is no bootstrap."""
    next_indices: np.ndarray
    """int64: index of s_{t+n}, clamped to the episode's last frame."""
    steps: np.ndarray
    """int64: n, the steps the chunk actually covers."""


def chunk_returns(
    rewards: np.ndarray, dones: np.ndarray, episode_ends: np.ndarray, horizon: int, gamma: float
) -> ChunkReturns:
    """n-step chunk targets for every step t of flat, concatenated episodes.

    ``rewards (N,)``, ``dones (N,)`` per step; ``episode_ends`` the exclusive end of each
    episode (the store's ``meta/episode_ends``). For step t, n = min(horizon, steps left in the
    episode), cut after the first ``done`` inside the chunk. A time-limit end (no ``done``)
    bootstraps from the episode's last frame, which stands in for the unrecorded state after it.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    dones = np.asarray(dones, dtype=bool)
    ends = np.asarray(episode_ends, dtype=np.int64)
    n_steps = len(rewards)
    if dones.shape != rewards.shape or rewards.ndim != 1:
        raise ValueError(f"rewards and dones must both be (N,), got {rewards.shape} and {dones.shape}")
    if len(ends) == 0 or ends[-1] != n_steps or np.any(np.diff(ends) <= 0) or ends[0] <= 0:
        raise ValueError(f"episode_ends must be strictly increasing and end at N={n_steps}, got {ends.tolist()}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    t = np.arange(n_steps)
    end = ends[np.searchsorted(ends, t, side="right")]  # (N,) exclusive end of each step's episode
    total = np.zeros(n_steps)
    steps = np.zeros(n_steps, dtype=np.int64)
    terminals = np.zeros(n_steps, dtype=bool)
    alive = np.ones(n_steps, dtype=bool)
    for i in range(horizon):
        idx = np.minimum(t + i, n_steps - 1)
        inside = alive & (t + i < end)
        total += np.where(inside, gamma**i * rewards[idx], 0.0)
        steps += inside
        hit = inside & dones[idx]
        terminals |= hit
        alive = inside & ~hit
    next_indices = np.minimum(t + steps, end - 1)
    discounts = np.power(gamma, steps)
    return ChunkReturns(total.astype(np.float32), discounts.astype(np.float32), terminals, next_indices, steps)
