"""Latent dynamics: a Gaussian MLP ensemble over frozen encoder features, as in MBPO / PETS.

Each member maps ``(s (B, Dc), a (B, H * Da))`` to a diagonal Gaussian over
``(s' - s, r)`` of size ``Dc + 1``. Inputs and targets are standardised with statistics
of the training split (kept as buffers, so they travel with the checkpoint). The
log-variance is soft-clamped between learned bounds (PETS), which keeps the NLL from
collapsing a variance to zero. :meth:`DynamicsEnsemble.fit` trains all members at once on
their own shuffles, stops early on held-out MSE, restores each member's best epoch and
keeps the ``elites`` best members; :meth:`DynamicsEnsemble.predict` then draws one random
elite per sample (TS-1), which is how the AM-Q gate rolls a policy through the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DynamicsConfig:
    """Architecture and training schedule of :class:`DynamicsEnsemble`."""

    members: int = 7
    """Ensemble members trained."""
    elites: int = 5
    """Members with the lowest held-out MSE that :meth:`DynamicsEnsemble.predict` draws from."""
    hidden_dims: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden widths of each member's MLP (SiLU activations)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 5e-5
    """AdamW weight decay on the member weights."""
    batch_size: int = 256
    """Transitions per member per gradient step."""
    holdout_fraction: float = 0.1
    """Share of transitions held out for early stopping and elite selection."""
    max_holdout: int = 5000
    """Cap on held-out transitions (large datasets need no more to rank members)."""
    max_epochs: int = 200
    """Upper bound on passes over the training split."""
    patience: int = 5
    """Stop after this many epochs in which no member improved its held-out MSE."""
    min_improvement: float = 0.01
    """Relative held-out MSE decrease that counts as an improvement."""
    init_min_log_var: float = -10.0
    """Initial lower soft bound of the (standardised) log-variance."""
    init_max_log_var: float = 0.5
    """Initial upper soft bound of the (standardised) log-variance."""
    log_var_bound_weight: float = 0.01
    """Weight of the penalty ``sum(max_log_var) - sum(min_log_var)`` that tightens the bounds."""

    def __post_init__(self) -> None:
        if not 1 <= self.elites <= self.members:
            raise ValueError(f"need 1 <= elites <= members, got elites={self.elites}, members={self.members}")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"hidden_dims must be non-empty positive widths, got {self.hidden_dims}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if min(self.batch_size, self.max_holdout, self.max_epochs, self.patience) < 1:
            raise ValueError(f"batch_size, max_holdout, max_epochs, patience must be >= 1, got {self}")
        if self.lr <= 0 or self.weight_decay < 0 or self.min_improvement < 0:
            raise ValueError(f"need lr > 0, weight_decay >= 0, min_improvement >= 0, got {self}")
        if self.init_min_log_var >= self.init_max_log_var:
            raise ValueError(f"init_min_log_var={self.init_min_log_var} must be < "
                             f"init_max_log_var={self.init_max_log_var}")


@dataclass(frozen=True)
class DynamicsFitReport:
    """What :meth:`DynamicsEnsemble.fit` did."""

    epochs: int
    """Epochs run."""
    stopped_early: bool
    """True when patience ran out before ``max_epochs``."""
    holdout_mse: list[float]
    """Best held-out MSE of each member (standardised units: 1.0 is as good as predicting the mean)."""
    elites: list[int]
    """Indices of the elite members, best first."""
    train_nll: float
    """Gaussian NLL of the last training step (summed over members)."""
    num_train: int
    num_holdout: int


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied with one batched matmul: (M, B, in) -> (M, B, out)."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        weight = nn.init.trunc_normal_(torch.empty(members, in_dim, out_dim), std=0.5 / math.sqrt(in_dim))
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(members, 1, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class DynamicsEnsemble(nn.Module):
    """Gaussian ensemble ``(s (B, Dc), a (B, action_dim)) -> (s' (B, Dc), r (B,))``.

    ``action_dim`` is the flattened chunk ``H * Da``; actions may be passed as ``(B, H, Da)``.
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        config: DynamicsConfig = DynamicsConfig(),
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.config, self.feature_dim, self.action_dim = config, feature_dim, action_dim
        in_dim, self.out_dim = feature_dim + action_dim, feature_dim + 1
        dims = (in_dim, *config.hidden_dims)
        self.layers = nn.ModuleList(EnsembleLinear(config.members, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.head = EnsembleLinear(config.members, dims[-1], 2 * self.out_dim)
        self.max_log_var = nn.Parameter(torch.full((self.out_dim,), config.init_max_log_var))
        self.min_log_var = nn.Parameter(torch.full((self.out_dim,), config.init_min_log_var))
        for name, dim in (("input_mean", in_dim), ("target_mean", self.out_dim)):
            self.register_buffer(name, torch.zeros(dim))
        for name, dim in (("input_std", in_dim), ("target_std", self.out_dim)):
            self.register_buffer(name, torch.ones(dim))
        self.register_buffer("elite_indices", torch.arange(config.elites))
        self.to(device)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised inputs ``(M, B, in)`` -> standardised mean and soft-bounded log-variance ``(M, B, Dc + 1)``."""
        for layer in self.layers:
            x = F.silu(layer(x))
        mean, log_var = self.head(x).chunk(2, dim=-1)
        log_var = self.max_log_var - F.softplus(self.max_log_var - log_var)
        return mean, self.min_log_var + F.softplus(log_var - self.min_log_var)

    def _inputs(self, features: Tensor, actions: Tensor) -> Tensor:
        """(B, Dc), (B, ...) -> standardised (M, B, Dc + action_dim)."""
        x = torch.cat([features, actions.flatten(1)], dim=1)
        if x.shape[1] != self.input_mean.shape[0]:
            raise ValueError(f"DynamicsEnsemble expects features (B, {self.feature_dim}) and actions flattening to "
                             f"(B, {self.action_dim}), got {tuple(features.shape)} and {tuple(actions.shape)}")
        return ((x - self.input_mean) / self.input_std).expand(self.config.members, -1, -1)

    @torch.no_grad()
    def predict(
        self, features: Tensor, actions: Tensor, generator: torch.Generator | None = None, deterministic: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Next features ``(B, Dc)`` and reward ``(B,)``.

        Stochastic: one uniformly drawn elite per sample, plus its Gaussian noise (TS-1).
        ``deterministic``: the average of the elites' means, no randomness at all.
        ``generator`` (on the features' device) makes stochastic draws reproducible.
        """
        mean, log_var = self(self._inputs(features, actions))  # (M, B, Dc + 1)
        if deterministic:
            out = mean[self.elite_indices].mean(dim=0)
        else:
            batch = features.shape[0]
            draw = torch.randint(len(self.elite_indices), (batch,), generator=generator, device=features.device)
            rows = torch.arange(batch, device=features.device)
            member = self.elite_indices[draw]
            noise = torch.randn(mean.shape[1:], generator=generator, device=mean.device, dtype=mean.dtype)
            out = mean[member, rows] + (0.5 * log_var[member, rows]).exp() * noise
        out = out * self.target_std + self.target_mean
        return features + out[:, : self.feature_dim], out[:, self.feature_dim]

    @torch.no_grad()
    def disagreement(self, features: Tensor, actions: Tensor) -> Tensor:
        """Epistemic uncertainty ``(B,)``: the elites' spread (std across members) of their predicted means,
        averaged over next-feature and reward dimensions in standardised target units. It grows where the
        inputs leave the data the members were fitted on (MOPO's model-exploitation signal)."""
        mean, _ = self(self._inputs(features, actions))
        return mean[self.elite_indices].std(dim=0).mean(dim=-1)

    @torch.no_grad()
    def member_mse(self, features: Tensor, actions: Tensor, next_features: Tensor, rewards: Tensor) -> Tensor:
        """(M,) each member's mean-prediction MSE on standardised ``(s' - s, r)`` targets."""
        mean, _ = self(self._inputs(features, actions))
        return (mean - self._targets(features, next_features, rewards)).square().mean(dim=(1, 2))

    def _targets(self, features: Tensor, next_features: Tensor, rewards: Tensor) -> Tensor:
        """Standardised (B, Dc + 1) targets ``(s' - s, r)``."""
        y = torch.cat([next_features - features, rewards.reshape(-1, 1)], dim=1)
        return (y - self.target_mean) / self.target_std

    def fit(
        self,
        features: Tensor,
        actions: Tensor,
        next_features: Tensor,
        rewards: Tensor,
        seed: int = 0,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> DynamicsFitReport:
        """Train on in-memory transitions ``(N, Dc), (N, ...), (N, Dc), (N,)`` on their device.

        ``seed`` fixes the held-out split and the shuffles; ``on_epoch(epoch, metrics)`` is for logging.
        """
        cfg, n = self.config, features.shape[0]
        if not n == actions.shape[0] == next_features.shape[0] == rewards.shape[0] or n < 2:
            raise ValueError(f"fit needs >= 2 transitions with matching lengths, got features {tuple(features.shape)}, "
                             f"actions {tuple(actions.shape)}, next_features {tuple(next_features.shape)}, "
                             f"rewards {tuple(rewards.shape)}")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen).to(features.device)
        n_hold = min(max(1, round(n * cfg.holdout_fraction)), cfg.max_holdout, n - 1)
        hold, train = order[:n_hold], order[n_hold:]
        self._set_normalisers(features[train], actions[train], next_features[train], rewards[train])
        x = self._inputs(features[train], actions[train])[0]  # (N_train, in)
        y = self._targets(features[train], next_features[train], rewards[train])  # (N_train, Dc + 1)
        held = (features[hold], actions[hold], next_features[hold], rewards[hold])

        bounds = [self.max_log_var, self.min_log_var]
        weights = [p for p in self.parameters() if all(p is not b for b in bounds)]
        optimizer = torch.optim.AdamW([{"params": weights}, {"params": bounds, "weight_decay": 0.0}],
                                      lr=cfg.lr, weight_decay=cfg.weight_decay)
        best = self.member_mse(*held)
        best_params = [p.detach().clone() for p in weights]
        stale, nll, epoch = 0, float("nan"), 0
        for epoch in range(1, cfg.max_epochs + 1):
            shuffles = torch.stack([torch.randperm(len(train), generator=gen) for _ in range(cfg.members)]).to(x.device)
            for start in range(0, len(train), cfg.batch_size):
                idx = shuffles[:, start : start + cfg.batch_size]  # (M, b): each member its own minibatch
                mean, log_var = self(x[idx])
                loss = ((mean - y[idx]).square() * (-log_var).exp() + log_var).mean(dim=(1, 2)).sum()
                loss = loss + cfg.log_var_bound_weight * (self.max_log_var.sum() - self.min_log_var.sum())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                nll = float(loss.detach())
            mse = self.member_mse(*held)
            improved = (best - mse) / best.clamp_min(1e-12) > cfg.min_improvement  # (M,)
            best = torch.where(improved, mse, best)
            for saved, p in zip(best_params, weights):
                saved[improved] = p.detach()[improved]
            stale = 0 if bool(improved.any()) else stale + 1
            if on_epoch is not None:
                on_epoch(epoch, {"losses/dynamics_nll": nll, "dynamics/holdout_mse": float(best.min())})
            if stale >= cfg.patience:
                break
        with torch.no_grad():
            for saved, p in zip(best_params, weights):
                p.copy_(saved)
        ranking = torch.argsort(best)
        self.elite_indices.copy_(ranking[: cfg.elites])
        return DynamicsFitReport(epoch, stale >= cfg.patience, best.tolist(), ranking[: cfg.elites].tolist(),
                                 nll, len(train), n_hold)

    @torch.no_grad()
    def _set_normalisers(self, features: Tensor, actions: Tensor, next_features: Tensor, rewards: Tensor) -> None:
        """Standardise inputs and targets with training-split statistics (near-constant dims keep std 1)."""
        x = torch.cat([features, actions.flatten(1)], dim=1)
        y = torch.cat([next_features - features, rewards.reshape(-1, 1)], dim=1)
        for data, mean, std in ((x, self.input_mean, self.input_std), (y, self.target_mean, self.target_std)):
            mean.copy_(data.mean(dim=0))
            s = data.std(dim=0) if len(data) > 1 else torch.ones_like(mean)
            std.copy_(torch.where(s < 1e-6, torch.ones_like(s), s))
