"""Dataset transitions in the policy's frozen feature space, for critics, dynamics and PPO.

Offline RL works on chunk-level transitions: from step t the policy executes
``Ta`` actions, collects their discounted reward and lands at step t + Ta. With
the encoder frozen, every step's conditioning vector ``s_t = encode(obs[t-To+1..t])``
is computed once and reused by the critics, the latent dynamics ensemble, the PPO
update and the AM-Q gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policies.critics import chunk_returns
from policies.diffusion import DiffusionPolicy
from robot.normalize import Normalizer
from robot.sampler import WindowConfig, WindowSampler
from robot.store import ZarrEpisodeStore
from robot.types import ACTION, DONE, REWARD, SUCCESS
from workflow.run import finite_episodes


@dataclass
class LatentTransitions:
    """Chunk transitions of every dataset step; all tensors share the first axis N."""

    features: torch.Tensor  # (N, Dc) s_t
    actions: torch.Tensor  # (N, Ta * Da) normalised executed chunk a_t..a_{t+Ta-1}
    returns: torch.Tensor  # (N,) discounted reward of the chunk
    discounts: torch.Tensor  # (N,) gamma^n, n = steps the chunk covers
    terminals: torch.Tensor  # (N,) 1 where the episode succeeded inside the chunk: no bootstrap
    next_index: torch.Tensor  # (N,) row of s_{t+n}
    steps_to_go: np.ndarray  # (N,) steps left in the episode (for the OPE horizon check)
    episode: np.ndarray  # (N,) episode index of each row
    success: np.ndarray  # (N,) whether the row's episode succeeded
    demonstration: np.ndarray  # (N,) whether the row's episode is a demonstration (source "demo", not a rollout)

    @property
    def next_features(self) -> torch.Tensor:
        return self.features[self.next_index]

    def __len__(self) -> int:
        return int(self.features.shape[0])


@torch.no_grad()
def encode_store(
    store: ZarrEpisodeStore,
    policy: DiffusionPolicy,
    normalizer: Normalizer,
    *,
    gamma: float,
    device: torch.device,
    episodes: list[int] | None = None,
    batch_size: int = 512,
    drop_nonfinite: bool = False,
) -> LatentTransitions:
    """Encode every step of ``episodes`` (all by default) with the policy's frozen encoder.

    An episode holding NaN or inf is refused (``workflow.run.finite_episodes``), or left out with ``drop_nonfinite``."""
    cfg = policy.config
    obs_keys = sorted(k for k in policy.input_features if k.startswith("observation."))
    wanted = {**policy.input_features, **policy.action_features}
    wrong = [f"{k} is {store.features[k].describe()} there, the policy takes {f.describe()}" for k, f in wanted.items()
             if k in store.features and tuple(store.features[k].shape) != tuple(f.shape)]  # fmt: skip
    if wrong:
        raise ValueError(f"{store.path} was not recorded for this policy: {wrong[0]}")
    data = store.load([*obs_keys, ACTION, REWARD, DONE, SUCCESS])
    ends = store.episode_ends
    chosen = list(range(store.num_episodes)) if episodes is None else list(episodes)
    chosen = finite_episodes(store.path, data, ends, chosen, drop=drop_nonfinite)
    sampler = WindowSampler(data, ends, WindowConfig(cfg.n_obs_steps, cfg.n_action_steps), episodes=chosen, obs_keys=obs_keys)
    policy.eval()
    feats, acts = [], []
    for start in range(0, len(sampler), batch_size):
        rows = np.arange(start, min(start + batch_size, len(sampler)))
        batch = sampler.batch(rows)
        obs = {k: _tensor(batch[k], normalizer, k, device) for k in obs_keys}
        feats.append(policy.encode(obs))
        acts.append(_tensor(batch[ACTION], normalizer, ACTION, device).flatten(1))  # (B, Ta * Da)

    # rewards, terminal flags and next rows, episode by episode, over the chosen episodes only
    lengths = np.diff(np.concatenate([[0], ends]))[chosen]
    local_ends = np.cumsum(lengths)
    frames = np.concatenate([np.arange(*store.episode_bounds(e)) for e in chosen])
    terminal = data[SUCCESS][frames].astype(bool)  # success ends an episode; a time limit does not
    chunks = chunk_returns(data[REWARD][frames], terminal, local_ends, cfg.n_action_steps, gamma)
    episode = np.repeat(np.asarray(chosen), lengths)
    steps_to_go = np.concatenate([np.arange(n, 0, -1) for n in lengths])
    success = np.repeat(np.array([store.metas[e].success for e in chosen]), lengths)
    return LatentTransitions(
        features=torch.cat(feats),
        actions=torch.cat(acts),
        returns=torch.as_tensor(chunks.rewards, dtype=torch.float32, device=device),
        discounts=torch.as_tensor(chunks.discounts, dtype=torch.float32, device=device),
        terminals=torch.as_tensor(chunks.terminals, dtype=torch.float32, device=device),
        next_index=torch.as_tensor(chunks.next_indices, dtype=torch.long, device=device),
        steps_to_go=steps_to_go,
        episode=episode,
        success=success,
        demonstration=np.repeat(np.array([store.metas[e].source == "demo" for e in chosen]), lengths),
    )


def _tensor(x: np.ndarray, normalizer: Normalizer, key: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x).to(device)
    return normalizer.normalize(key, t).float() if key in normalizer else t
