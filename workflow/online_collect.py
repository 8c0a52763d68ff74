"""Online RL's data: stochastic episodes on the episode engine, read as chunk decisions.

Each chunk the policy plans is one decision of the denoising MDP's outer level: the frozen encoder's
features it was planned from, the stochastic chain it sampled (with each denoising step's log-prob), the
chunk's discounted reward, and the features where the next decision was planned. Under torchrun every rank
collects its share of an iteration's episodes and every rank ends with all decisions, in seed order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from policies.diffusion import Chain
from robot.protocols import Robot, Task
from workflow.distributed import Distributed
from workflow.episode import Episode, PolicyActor
from workflow.policy import DiffusionController


@dataclass(frozen=True)
class Batch:
    """One iteration's decisions as tensors, in time order (episodes one after another)."""

    cond: torch.Tensor
    """(N, Dc) features each chunk was planned from."""
    next_cond: torch.Tensor
    """(N, Dc) features after the chunk (where the next one was planned)."""
    chains: Chain
    """The N chains, with their sampling-time log-probs and sampler."""
    rewards: torch.Tensor
    """(N,) each chunk's discounted reward."""
    discounts: torch.Tensor
    """(N,) gamma^n for a chunk of n steps."""
    terminal: torch.Tensor
    """(N,) 1.0 where the task succeeded inside the chunk (no future value)."""
    last: torch.Tensor
    """(N,) the last decision of its episode."""

    def __len__(self) -> int:
        return len(self.cond)


@dataclass
class Decisions:
    """Chunk decisions, in time order, episodes concatenated."""

    cond: list[torch.Tensor] = field(default_factory=list)  # (1, Dc) each
    chains: list[Chain] = field(default_factory=list)  # batch 1 each
    rewards: list[float] = field(default_factory=list)  # discounted chunk reward
    discounts: list[float] = field(default_factory=list)  # gamma^n
    terminal: list[bool] = field(default_factory=list)  # success inside the chunk
    last: list[bool] = field(default_factory=list)  # last decision of its episode
    next_cond: list[torch.Tensor] = field(default_factory=list)  # (1, Dc) after the chunk

    @staticmethod
    def concat(parts: list["Decisions"]) -> "Decisions":
        """Episodes' decisions one after the other."""
        out = Decisions()
        for part in parts:
            for name in out.__dataclass_fields__:
                getattr(out, name).extend(getattr(part, name))
        return out

    def batch(self, device: torch.device | str) -> Batch:
        chains = self.chains
        return Batch(
            cond=torch.cat(self.cond),
            next_cond=torch.cat(self.next_cond),
            chains=Chain(torch.cat([c.samples for c in chains]), torch.cat([c.log_probs for c in chains]), chains[0].timesteps, chains[0].sampler),
            rewards=torch.tensor(self.rewards, device=device),
            discounts=torch.tensor(self.discounts, device=device),
            terminal=torch.tensor(self.terminal, device=device, dtype=torch.float32),
            last=torch.tensor(self.last, device=device),
        )


def collect_episodes(
    robot: Robot, task: Task, controller: DiffusionController, seeds: list[int], gamma: float, ddp: Distributed
) -> list[tuple[int, dict[str, np.ndarray], bool, Decisions]]:
    """This rank's episodes, then every rank's in seed order: ``(seed, frames, success, decisions)`` each.
    Frames travel to rank 0 only (the one that stores them)."""
    mine = []
    for seed in seeds:
        decisions = Decisions()  # the controller draws this episode's noise from (its seed, the episode's) alone
        frames, success = collect_episode(robot, task, controller, decisions, gamma, seed=seed)
        mine.append((seed, frames, success, decisions))
    if not ddp.enabled:
        return mine
    light = [(seed, {}, success, decisions) for seed, _, success, decisions in mine]
    everyone = sorted((e for part in ddp.gather(light) for e in part), key=lambda e: e[0])
    frames = ddp.gather_to_main({seed: f for seed, f, _, _ in mine})  # only rank 0 stores them
    if frames is not None:
        by_seed = {seed: f for part in frames for seed, f in part.items()}
        everyone = [(seed, by_seed[seed], success, decisions) for seed, _, success, decisions in everyone]
    return everyone


@torch.no_grad()
def collect_episode(
    robot: Robot, task: Task, controller: DiffusionController, out: Decisions, gamma: float, *, seed: int
) -> tuple[dict[str, np.ndarray], bool]:
    """One stochastic episode; its chunk decisions go to ``out``, its frames are returned for the store.

    A decision's reward is its chunk's discounted reward; its next features are those the next decision was
    planned from (the last decision's: the history with the final observation added)."""
    episode = Episode(robot, task, PolicyActor(controller), seed=seed)
    reward, n = 0.0, 0
    for step in episode:
        if step.policy.chunk_started:
            decision = step.policy.decision
            if n:  # the previous chunk ends where this one was planned
                _add_outcome(out, reward, gamma**n, terminal=False, last=False, next_cond=decision.cond)
            out.cond.append(decision.cond)
            out.chains.append(decision.chain)
            reward, n = 0.0, 0
        reward += gamma**n * step.reward
        n += 1
    _add_outcome(out, reward, gamma**n, terminal=episode.success, last=True, next_cond=controller.peek_condition(episode.last.next_observation))
    return episode.frames.arrays(), episode.success


def _add_outcome(out: Decisions, reward: float, discount: float, *, terminal: bool, last: bool, next_cond: torch.Tensor) -> None:
    out.rewards.append(reward)
    out.discounts.append(discount)
    out.terminal.append(terminal)
    out.last.append(last)
    out.next_cond.append(next_cond)
