"""Online RL's data: stochastic episodes on the episode engine, read as chunk decisions.

Each chunk the policy plans is one decision of the denoising MDP's outer level: the frozen encoder's
features it was planned from, the stochastic chain it sampled (with each denoising step's log-prob), the
chunk's discounted reward, and the features where the next decision was planned. Under torchrun every rank
collects its share of an iteration's episodes and every rank ends with all decisions, in seed order.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch

from policies.diffusion import Chain
from workflow.control import ControlStack
from workflow.distributed import Distributed
from workflow.episode import LABEL_REWARD
from workflow.lanes import SimLanes, can_run_in_lanes, run_in_lanes


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


@dataclass(frozen=True)
class Collected:
    """One collected episode."""

    seed: int
    frames: dict[str, np.ndarray]
    """What the store keeps (only on the rank that stores it under torchrun)."""
    success: bool
    decisions: Decisions
    label: str
    """How it ended (task, max-steps, operator, e-stop, ...)."""
    interventions: int
    """Steps the operator drove."""
    stop: str | None = None
    """estop or quit: the session stops after this episode."""
    seconds: float = 0.0
    """Wall time the robot spent on it, from the reset (home, the operator's start) to its end."""


def collect_episodes(control: ControlStack, seeds: list[int], gamma: float, ddp: Distributed, *, commit: Callable[[Collected], None] | None = None,
                     lanes: SimLanes | None = None) -> list[Collected]:
    """This rank's episodes, then every rank's in seed order. ``commit`` gets each episode (on rank 0 under
    torchrun, after the gather; in one process as soon as it ends, so a crash loses no finished episode).
    An e-stop or quit ends the collection early; what ran is returned. With ``lanes``, in sim with no operator,
    ``lanes.count`` episodes run side by side (``workflow.lanes``), committed in seed order all the same."""
    mine = []
    with closing(_collected(control, seeds, gamma, lanes)) as episodes:
        for collected in episodes:
            mine.append(collected)
            if commit is not None and not ddp.enabled:
                commit(collected)
            if collected.stop is not None:
                break
    if not ddp.enabled:
        return mine
    light = [replace(c, frames={}) for c in mine]
    everyone = sorted((e for part in ddp.gather(light) for e in part), key=lambda e: e.seed)
    frames = ddp.gather_to_main({c.seed: c.frames for c in mine})  # only rank 0 stores them
    if frames is not None:
        by_seed = {seed: f for part in frames for seed, f in part.items()}
        everyone = [replace(c, frames=by_seed[c.seed]) for c in everyone]
        for c in everyone if commit is not None else ():
            commit(c)
    return everyone


def _collected(control: ControlStack, seeds: list[int], gamma: float, lanes: SimLanes | None) -> Iterator[Collected]:
    """Each seed's episode, in seed order (the controller draws an episode's noise from its seed and its own alone)."""
    if control.operator is not None or control.loop.hz != 0 or not can_run_in_lanes(lanes, control.controller, len(seeds)):
        return (collect_episode(control, Decisions(), gamma, seed=seed) for seed in seeds)
    first = (control.robot, control.task)

    def run(robot, task, controller, seed: int) -> Collected:
        stack = ControlStack(robot, task, controller, hz=0.0, max_steps=control.max_steps)
        try:
            return collect_episode(stack, Decisions(), gamma, seed=seed)
        finally:
            stack.close()

    return run_in_lanes(control.controller, seeds, first, lanes, run)


@torch.no_grad()
def collect_episode(control: ControlStack, out: Decisions, gamma: float, *, seed: int) -> Collected:
    """One stochastic episode on ``control``; its chunk decisions go to ``out``.

    A decision's reward is its chunk's discounted reward; its next features are those the next decision was
    planned from (the last decision's: the history with the final observation added). Decisions are the
    policy's alone: a chunk the operator cut short by taking over leaves the batch, and the decision before it
    ends its run there, bootstrapped from the value where the operator took over (truncation; so does a chunk that
ran to its end just before the takeover); after the
    hand-back the policy replans and a new run starts. The operator's steps stay in the episode's frames, flagged
    ``intervention`` (demonstrations for the next offline round's imitation and critics), and never enter the PPO
    ratio. Scored by label (no task), a labelled success earns :data:`LABEL_REWARD` at the last step; an
    operator's label ends the episode (no future value), as does the task's success; the step limit, an e-stop
    or a quit truncate it.
    """
    started = time.perf_counter()
    episode = control.episode(seed)
    controller = control.controller
    reward, n, open_decision, interventions = 0.0, 0, False, 0
    for step in episode:
        if step.intervention:
            interventions += 1
            if open_decision and n < controller.n_action_steps:
                _cut(out)
            elif open_decision:  # its chunk ran to the end: its run ends at the operator's first step
                _add_outcome(out, reward, gamma**n, terminal=False, last=True, next_cond=controller.condition())
            open_decision = False
            continue
        if step.policy is not None and step.policy.chunk_started:
            decision = step.policy.decision
            if open_decision:  # the previous chunk ends where this one was planned
                _add_outcome(out, reward, gamma**n, terminal=False, last=False, next_cond=decision.cond)
            out.cond.append(decision.cond)
            out.chains.append(decision.chain)
            reward, n, open_decision = 0.0, 0, True
        if open_decision:
            reward += gamma**n * step.reward
            n += 1
    ending = episode.ending
    if open_decision:
        if episode.task is None and episode.success:
            reward += gamma ** (n - 1) * LABEL_REWARD
        terminal = episode.success or ending.label == "operator"
        _add_outcome(out, reward, gamma**n, terminal=terminal, last=True, next_cond=controller.peek_condition(episode.last.next_observation))
    frames = episode.frames.arrays() if len(episode.frames) else {}
    return Collected(seed, frames, episode.success, out, ending.label, interventions, ending.stop, time.perf_counter() - started)


def _cut(out: Decisions) -> None:
    """Drop the open decision (the operator cut its chunk short); the one before it, if any, ends its run."""
    out.cond.pop()
    out.chains.pop()
    if out.last:
        out.last[-1] = True
def _add_outcome(out: Decisions, reward: float, discount: float, *, terminal: bool, last: bool, next_cond: torch.Tensor) -> None:
    out.rewards.append(reward)
    out.discounts.append(discount)
    out.terminal.append(terminal)
    out.last.append(last)
    out.next_cond.append(next_cond)
