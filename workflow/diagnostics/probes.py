"""What the stages log for diagnostics: fixed probe batches and a held-out episode split.

A stage calls one function per log point and merges the returned dict into its
metrics row (CleanRL-style names):

- imitation (:func:`imitation_metrics`): ``losses/denoise_train_probe`` and
  ``losses/denoise_val``, the denoising loss of fixed training and held-out windows
  under the same noise, so the two curves differ only by what the model has seen, and
  ``losses/action_mse_train_probe`` / ``losses/action_mse_val``, the error of the
  deterministic DDIM actions the policy would execute (on push the held-out denoising
  loss rose while the held-out action error and sim success kept improving);
- offline critics (:func:`critic_metrics`) on fixed rows of the training and the
  held-out episodes: ``critic/q_dataset`` (average dataset Q, Kumar et al.'s
  overfitting signal), ``critic/td_train`` vs ``critic/td_val`` (and ``_rel``: the TD
  error over the variance of its targets, a scale-free 1 - R^2), ``critic/v_expectile``
  (the expectile regulariser), ``critic/adv_std`` and ``critic/adv_saturation``
  (spread of min Q - V and the share of normalised advantages beyond a bound), and
  ``critic/q_gap``: Q(policy action) - Q(dataset action);
- offline PPO (:func:`advantage_metrics` per update, :func:`policy_gap_metrics` per
  gate check): ``ppo/adv_std``, ``ppo/adv_saturation``, ``ppo/q_gap``.

The offline stage logs its round as a field of each row (``{"round": 0, "critic/td_val": ...}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from policies.critics import IqlCritics, expectile_loss
from policies.diffusion import DiffusionPolicy
from robot.normalize import Normalizer
from robot.sampler import split_episodes
from robot.types import ACTION
from workflow.ppo import per_state_centred


@dataclass(frozen=True)
class ProbeConfig:
    """How the offline stage watches its critics."""

    val_fraction: float = 0.1
    """Episodes held out from critic training, for the validation TD error (whole episodes)."""
    size: int = 512
    """Rows in each fixed probe batch (training and held-out)."""
    every: int = 50
    """Critic steps between probe rows in metrics.jsonl."""
    checkpoint_every: int = 200
    """Critic steps between critic snapshots (round-M/critic-checkpoints/step-N, ~1.5 MB each at 256x256): the checkpoints a rule can choose."""
    adv_bound: float = 2.0
    """A normalised advantage with |A| above this counts as saturated."""
    seed: int = 0
    """Seeds the episode split and the probe rows."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"ProbeConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if min(self.size, self.every, self.checkpoint_every) < 1 or self.adv_bound <= 0:
            raise ValueError(f"ProbeConfig size, every and checkpoint_every must be >= 1 and adv_bound > 0, got {self}")


# ------------------------------------------------------------------ imitation


def _tensors(batch: Mapping[str, np.ndarray], normalizer: Normalizer, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    return normalizer.normalize_batch({k: torch.as_tensor(batch[k]).to(device) for k in keys})


@torch.no_grad()
def denoise_loss(net: DiffusionPolicy, batches: Sequence[Mapping[str, np.ndarray]], normalizer: Normalizer, obs_keys: Sequence[str], device: torch.device) -> float:
    """Mean denoising MSE over fixed window batches, with the same noise and timesteps on every call."""
    net.eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same noise every time: a curve, not a scatter
        losses = [float(net.compute_loss(_tensors(b, normalizer, obs_keys, device), _tensors(b, normalizer, [ACTION], device)[ACTION])) for b in batches]
    return float(np.mean(losses))


@torch.no_grad()
def action_error(net: DiffusionPolicy, batches: Sequence[Mapping[str, np.ndarray]], normalizer: Normalizer, obs_keys: Sequence[str], device: torch.device) -> float:
    """Mean squared error (normalised units) of the deterministic DDIM chunk's executed actions against the recorded ones.

    What deployment runs, unlike the denoising loss, which averages over every noise level.
    """
    net.eval()
    ta = net.config.n_action_steps
    errors = []
    generator = torch.Generator(device=device).manual_seed(0)  # the same initial noise every call
    for b in batches:
        cond = net.encode(_tensors(b, normalizer, obs_keys, device))
        actions = net.sample(cond, deterministic=True, noise=net.initial_noise(cond, generator))  # (B, horizon, Da)
        target = _tensors(b, normalizer, [ACTION], device)[ACTION]
        errors.append(float((actions[:, :ta] - target[:, :ta]).square().mean()))
    return float(np.mean(errors))


def imitation_metrics(
    net: DiffusionPolicy,
    train_batches: Sequence[Mapping[str, np.ndarray]],
    val_batches: Sequence[Mapping[str, np.ndarray]],
    normalizer: Normalizer,
    obs_keys: Sequence[str],
    device: torch.device,
) -> dict[str, float]:
    """On fixed training windows (``_train_probe``) and held-out episodes (``_val``, when any):
    ``losses/denoise_*``, the denoising loss, and ``losses/action_mse_*``, the deterministic action error."""
    out = {"losses/denoise_train_probe": denoise_loss(net, train_batches, normalizer, obs_keys, device),
           "losses/action_mse_train_probe": action_error(net, train_batches, normalizer, obs_keys, device)}  # fmt: skip
    if val_batches:
        out["losses/denoise_val"] = denoise_loss(net, val_batches, normalizer, obs_keys, device)
        out["losses/action_mse_val"] = action_error(net, val_batches, normalizer, obs_keys, device)
    return out


# ------------------------------------------------------------------ offline critics


@dataclass
class CriticProbe:
    """Rows of a round's transitions: the critics train on ``train_pool``; probes use fixed subsets."""

    train_pool: torch.Tensor  # (Nt,) rows of the training episodes (what the critics may sample)
    train_rows: torch.Tensor  # (P,) fixed probe rows of the training episodes
    val_rows: torch.Tensor  # (Pv,) fixed probe rows of the held-out episodes (empty with val_fraction 0)
    policy_actions: torch.Tensor  # (P, Ta * Da) the reference policy's deterministic executed chunk at train_rows
    val_episodes: tuple[int, ...]  # store indices of the held-out episodes
    demo_rows: torch.Tensor  # (Pd,) fixed probe rows of the demonstrations (either split): how far a fine-tuned policy left them


@torch.no_grad()
def make_critic_probe(data, policy: DiffusionPolicy, config: ProbeConfig, *, n_action_steps: int) -> CriticProbe:
    """Split ``data`` (``workflow.latent.LatentTransitions``) by episode and fix the probe rows.

    The reference policy's actions are computed once: its weights and the features are
    frozen while the critics train, so only Q moves under them.
    """
    episodes = np.unique(data.episode)
    train_idx, val_idx = split_episodes(len(episodes), config.val_fraction, config.seed)
    val_eps = episodes[val_idx]
    is_val = np.isin(data.episode, val_eps)
    rng = np.random.default_rng(config.seed)
    train_pool = np.flatnonzero(~is_val)
    val_pool = np.flatnonzero(is_val)
    train_rows = np.sort(rng.choice(train_pool, size=min(config.size, len(train_pool)), replace=False))
    val_rows = np.sort(rng.choice(val_pool, size=min(config.size, len(val_pool)), replace=False)) if len(val_pool) else val_pool
    device = data.features.device
    as_rows = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
    features = data.features[as_rows(train_rows)]
    actions = _deterministic_chunks(policy, features, config.seed, n_action_steps)
    demo_pool = np.flatnonzero(data.demonstration)
    demo_rows = np.sort(rng.choice(demo_pool, size=min(config.size, len(demo_pool)), replace=False)) if len(demo_pool) else demo_pool
    return CriticProbe(as_rows(train_pool), as_rows(train_rows), as_rows(val_rows), actions, tuple(int(e) for e in val_eps), as_rows(demo_rows))


@torch.no_grad()
def _split_terms(critics: IqlCritics, data, rows: torch.Tensor) -> dict[str, float]:
    s, a = data.features[rows], data.actions[rows]
    target = data.returns[rows] + data.discounts[rows] * (1.0 - data.terminals[rows]) * critics.v(data.next_features[rows])  # (P,)
    q1, q2 = critics.q(s, a)
    td = 0.5 * float(((q1 - target).square() + (q2 - target).square()).mean())  # per-head MSE, as the loss has it (/2)
    target_q = critics.target_q.min_q(s, a)
    v = critics.v(s)
    return {
        "q": float(torch.minimum(q1, q2).mean()),
        "td": td,
        "td_rel": td / (float(target.var()) + 1e-8) if len(rows) > 1 else float("nan"),
        "v_expectile": float(expectile_loss(target_q - v, critics.config.expectile)),
    }


def advantage_stats(advantages: torch.Tensor, bound: float) -> tuple[float, float]:
    """``(std, saturation)`` of raw advantages ``(B,)``: saturation is the share of |normalised A| > ``bound``."""
    if advantages.numel() < 2:
        return float("nan"), float("nan")
    std = float(advantages.std())
    normalised = (advantages - advantages.mean()) / (std + 1e-8)
    return std, float((normalised.abs() > bound).float().mean())


@torch.no_grad()
def critic_metrics(critics: IqlCritics, data, probe: CriticProbe, config: ProbeConfig) -> dict[str, float]:
    """The ``critic/*`` metrics of one log point (see the module docstring)."""
    train = _split_terms(critics, data, probe.train_rows)
    out = {
        "critic/q_dataset": train["q"],
        "critic/td_train": train["td"],
        "critic/td_train_rel": train["td_rel"],
        "critic/v_expectile": train["v_expectile"],
    }
    if len(probe.val_rows):
        val = _split_terms(critics, data, probe.val_rows)
        out.update({"critic/q_dataset_val": val["q"], "critic/td_val": val["td"], "critic/td_val_rel": val["td_rel"], "critic/v_expectile_val": val["v_expectile"]})
    s = data.features[probe.train_rows]
    q_data = critics.target_q.min_q(s, data.actions[probe.train_rows])
    out["critic/adv_std"], out["critic/adv_saturation"] = advantage_stats(q_data - critics.v(s), config.adv_bound)
    out["critic/q_gap"] = float((critics.target_q.min_q(s, probe.policy_actions) - q_data).mean())
    return out


def save_critic_snapshot(path: str | Path, critics: IqlCritics) -> Path:
    """A critic checkpoint in the layout of ``round-M/critics`` (``workflow.critic_checkpoint``)."""
    from workflow.critic_checkpoint import save_critics

    return save_critics(path, critics)


# ------------------------------------------------------------------ offline PPO


def advantage_metrics(advantages: torch.Tensor, config: ProbeConfig, chains_per_state: int = 1) -> dict[str, float]:
    """``ppo/adv_std`` and ``ppo/adv_saturation`` of one update's raw advantages ``(B,)``; with several chains per
    state (side by side), ``ppo/adv_action_share``: the share of their variance within states, i.e. due to the action."""
    std, saturation = advantage_stats(advantages, config.adv_bound)
    out = {"ppo/adv_std": std, "ppo/adv_saturation": saturation}
    if chains_per_state > 1:
        within = per_state_centred(advantages, chains_per_state).square().mean()
        out["ppo/adv_action_share"] = float(within / (advantages - advantages.mean()).square().mean().clamp(min=1e-12))
    return out


@torch.no_grad()
def policy_gap_metrics(policy: DiffusionPolicy, critics: IqlCritics, data, probe: CriticProbe, config: ProbeConfig, *, n_action_steps: int) -> dict[str, float]:
    """``ppo/q_gap``: mean min target Q of ``policy``'s deterministic chunk minus that of the dataset chunk, on the
    probe rows; ``ppo/demo_action_error``: mean squared distance (normalised actions) between the policy's chunk and
    the demonstrated one on the demonstration probe rows (how far fine-tuning has taken the policy from its data)."""
    s = data.features[probe.train_rows]
    gap = critics.target_q.min_q(s, _deterministic_chunks(policy, s, config.seed, n_action_steps)) - critics.target_q.min_q(s, data.actions[probe.train_rows])
    out = {"ppo/q_gap": float(gap.mean())}
    if len(probe.demo_rows):
        chunks = _deterministic_chunks(policy, data.features[probe.demo_rows], config.seed, n_action_steps)
        out["ppo/demo_action_error"] = float((chunks - data.actions[probe.demo_rows]).square().mean())
    return out


def _deterministic_chunks(policy: DiffusionPolicy, features: torch.Tensor, seed: int, n_action_steps: int) -> torch.Tensor:
    """``(B, Ta * Da)``: the policy's deterministic executed chunk from noise fixed by ``seed`` (a curve, not a scatter)."""
    generator = torch.Generator(device=features.device).manual_seed(seed)
    return policy.sample(features, deterministic=True, noise=policy.initial_noise(features, generator))[:, :n_action_steps].flatten(1)
