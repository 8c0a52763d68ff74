"""Fitted Q Evaluation: an off-policy estimate of a policy checkpoint, independent of the training critics.

FQE (Le et al. 2019; the OPE baseline of Fu et al.'s benchmark) fits a fresh Q network to
``Q(s, a) <- r + gamma^n (1 - done) Q'(s', pi(s'))`` on logged chunk transitions, where
``pi(s')`` is the candidate's own deterministic chunk, and reports
``J = mean over start states of Q(s0, pi(s0))``. Nothing here is shared with the IQL
critics or the AM-Q gate: its own network, its own data (by default the episodes the
candidate's stage never trained on), and no expectile (it evaluates, it does not improve).

States are the candidate's frozen encoder features (each checkpoint is scored in its
own feature space, so image policies work too); actions are its normalised executed
chunk ``(Ta * Da)``, as in :mod:`workflow.latent`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from policies.critics import mlp
from robot.checkpoint import load_checkpoint
from robot.store import ZarrEpisodeStore
from workflow.latent import LatentTransitions, encode_store
from workflow.policy import KIND, build_from_checkpoint, policy_dir


@dataclass(frozen=True)
class FqeConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of the Q network (LayerNorm after each)."""
    steps: int = 1500
    """Gradient steps per candidate (tests/test_diagnostics.py checks FQE against Monte-Carlo returns)."""
    batch_size: int = 256
    """Transitions per FQE step."""
    lr: float = 1e-3
    """Learning rate of the Q network."""
    tau: float = 0.02
    """Soft target update rate."""
    gamma: float = 0.99
    """Per environment step; a chunk of n steps bootstraps with gamma^n."""
    seed: int = 0
    """Seeds the Q network, the batches and the policy's initial noise (the same for every candidate)."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.hidden_dims:
            raise ValueError(f"FqeConfig: steps and batch_size must be >= 1 and hidden_dims non-empty, got {self}")
        if not 0 < self.gamma <= 1 or not 0 < self.tau <= 1 or self.lr <= 0:
            raise ValueError(f"FqeConfig: gamma and tau must be in (0, 1] and lr > 0, got {self}")


@dataclass(frozen=True)
class FqeEstimate:
    checkpoint: str
    value: float
    """J: mean Q(s0, pi(s0)) over the first state of every evaluation episode."""
    value_states: float
    """Mean Q(s, pi(s)) over every state of those episodes (less noisy with few episodes)."""
    td_error: float
    """Final mean squared TD error over all transitions (how well Q fits its own targets)."""
    transitions: int
    episodes: int


@torch.no_grad()
def policy_chunks(model, features: torch.Tensor, *, seed: int, batch: int = 1024) -> torch.Tensor:
    """(N, Ta * Da) deterministic executed chunks of ``model`` at ``features (N, Dc)``, fixed initial noise."""
    generator = torch.Generator(device=features.device).manual_seed(seed)
    ta = model.config.n_action_steps
    out = []
    for start in range(0, len(features), batch):
        cond = features[start : start + batch]
        out.append(model.sample(cond, deterministic=True, noise=model.initial_noise(cond, generator))[:, :ta].flatten(1))
    return torch.cat(out)


def fqe_estimate(checkpoint: str | Path, store: str | Path, episodes: Sequence[int], config: FqeConfig = FqeConfig()) -> FqeEstimate:
    """Fit FQE for one policy checkpoint on ``episodes`` of ``store`` and return its estimate."""
    episodes = sorted(int(e) for e in episodes)
    if not episodes:
        raise ValueError(f"FQE of {checkpoint} needs at least one episode of {store}; got none (hold out episodes: val_fraction > 0)")
    device = torch.device(config.device)
    ckpt = load_checkpoint(policy_dir(checkpoint), kind=KIND)
    model, _ = build_from_checkpoint(ckpt, device=str(device))
    model.eval().requires_grad_(False)
    opened = ZarrEpisodeStore.open(store)
    try:
        data = encode_store(opened, model, ckpt.normalizer, gamma=config.gamma, device=device, episodes=episodes)
    finally:
        opened.close()
    pi = policy_chunks(model, data.features, seed=config.seed)  # (N, Ta * Da)
    q_pi, td = fit_fqe(data, pi, config)
    starts = torch.as_tensor(start_rows(data), device=device)
    return FqeEstimate(str(checkpoint), float(q_pi[starts].mean()), float(q_pi.mean()), td, len(data), len(episodes))


def fit_fqe(data: LatentTransitions, pi: torch.Tensor, config: FqeConfig) -> tuple[torch.Tensor, float]:
    """Fit Q to ``r + gamma^n (1 - done) Q'(s', pi(s'))`` on ``data``; ``pi (N, Ta * Da)`` is the evaluated
    policy's chunk at every row's state. Returns ``(Q(s, pi(s)) (N,), final mean squared TD error)``."""
    device = data.features.device
    pi_next = pi[data.next_index]
    not_done = data.discounts * (1.0 - data.terminals)  # (N,)
    torch.manual_seed(config.seed)
    q = mlp(data.features.shape[1] + data.actions.shape[1], config.hidden_dims, 1, layer_norm=True).to(device)
    target = copy.deepcopy(q).requires_grad_(False)
    optimizer = torch.optim.Adam(q.parameters(), lr=config.lr)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    n = len(data)
    for _ in range(config.steps):
        idx = torch.randint(0, n, (min(config.batch_size, n),), generator=gen).to(device)
        with torch.no_grad():
            y = data.returns[idx] + not_done[idx] * target(torch.cat([data.next_features[idx], pi_next[idx]], 1)).squeeze(1)
        loss = F.mse_loss(q(torch.cat([data.features[idx], data.actions[idx]], 1)).squeeze(1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for t, o in zip(target.parameters(), q.parameters()):
                t.lerp_(o, config.tau)
    with torch.no_grad():
        q_pi = q(torch.cat([data.features, pi], 1)).squeeze(1)
        y = data.returns + not_done * target(torch.cat([data.next_features, pi_next], 1)).squeeze(1)
        td = float(F.mse_loss(q(torch.cat([data.features, data.actions], 1)).squeeze(1), y))
    return q_pi, td


def start_rows(data: LatentTransitions) -> np.ndarray:
    """Row of the first state of every episode in ``data``."""
    return np.flatnonzero(np.r_[True, data.episode[1:] != data.episode[:-1]])


def rank_agreement(estimates: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """How well ``estimates`` order candidates compared with ``truth`` (e.g. sim returns).

    ``spearman``: rank correlation (NaN with fewer than 3 candidates or a constant side);
    ``regret_at_1``: best true value minus the true value of the estimate's top pick (0 = picked the best).
    """
    from scipy.stats import spearmanr

    est, true = np.asarray(estimates, dtype=float), np.asarray(truth, dtype=float)
    if est.shape != true.shape or est.ndim != 1 or len(est) == 0:
        raise ValueError(f"rank_agreement needs two equal-length non-empty lists, got {est.shape} and {true.shape}")
    rho = float("nan")
    if len(est) >= 3 and np.ptp(est) > 0 and np.ptp(true) > 0:
        rho = float(spearmanr(est, true).statistic)
    regret = float(true.max() - true[int(np.argmax(est))])
    return {"spearman": rho if math.isfinite(rho) else float("nan"), "regret_at_1": regret}
