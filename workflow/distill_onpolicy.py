"""On-policy distillation of the one-step head (DAgger): the teacher labels the states the head itself visits.

Distilled on a store's states alone, the head learns the teacher where the teacher's data went. Deployed, it
goes where its own small errors take it, states the store rarely holds, and its errors there compound. DAgger's
answer (Ross et al., 2011): roll the student out, have the expert label the states it reached, train on the
union, repeat. Here the expert is the teacher's deterministic K-step chain from the head's x_K, so a label costs
one teacher chain and no robot time; the rollouts run in sim.

Only the states the head plans at (every ``n_action_steps``-th step) are kept: those are the only states where
its output is ever used. Batches are drawn half from the store's states and half from the head's own once it has
some (``onpolicy_fraction``), so a few hundred visited states are not drowned by tens of thousands of stored ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from policies.consistency import ConsistencyHead
from policies.diffusion import DiffusionPolicy
from robot.normalize import Normalizer
from workflow.planner import ChunkPlan
from workflow.policy import DiffusionController

ONPOLICY_SEED = 800_000  # first sim seed of the head's own rollouts (apart from evaluation, rollout, selection and ranking seeds)


class _VisitRecorder(DiffusionController):
    """The one-step head as a controller that keeps the condition ``(1, Dc)`` of every state it plans at."""

    def __init__(self, model: DiffusionPolicy, normalizer: Normalizer, head: ConsistencyHead, *, seed: int, device: str):
        super().__init__(model, normalizer, consistency=head, sampler="consistency", seed=seed, device=device)
        self.visited: list[torch.Tensor] = []

    def plan(self, frames: list[dict[str, np.ndarray]]) -> ChunkPlan:
        self.visited.append(self.condition(frames))
        return super().plan(frames)


def head_visits(teacher: DiffusionPolicy, head: ConsistencyHead, normalizer: Normalizer, task: str, *, episodes: int, seed: int,
                device: str = "cpu") -> tuple[torch.Tensor, float]:
    """Roll the head out on ``task`` (sim) for ``episodes`` seeds from ``seed``: the conditions ``(N, Dc)`` of the
    states it planned at, and its success rate there."""
    from workflow.envs import make_sim_for
    from workflow.rollout import evaluate

    training = head.training
    recorder = _VisitRecorder(teacher, normalizer, head, seed=seed, device=device)
    robot, sim_task = make_sim_for(task, recorder.input_features)
    recorder.check_robot(robot.name, robot.observation_features, robot.action_features)
    try:
        with robot:
            report = evaluate(robot, sim_task, recorder, episodes=episodes, seed=seed)
    finally:
        head.train(training)
    return torch.cat(recorder.visited), report.success_rate


class StatePool:
    """The states batches are drawn from: the store's, and the head's own visits as they come in."""

    def __init__(self, stored: torch.Tensor, onpolicy_fraction: float):
        if not 0 <= onpolicy_fraction <= 1:
            raise ValueError(f"onpolicy_fraction must be in [0, 1], got {onpolicy_fraction}")
        self.stored, self.visited, self.fraction = stored, stored[:0], onpolicy_fraction

    def add(self, visited: torch.Tensor) -> None:
        self.visited = torch.cat([self.visited, visited.to(self.stored.device, self.stored.dtype)])

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` states ``(n, Dc)``: ``round(n * fraction)`` of them from the visits (once there are any), the rest stored."""
        k = round(n * self.fraction) if len(self.visited) else 0
        rows = [self.stored[torch.randint(0, len(self.stored), (n - k,), generator=generator).to(self.stored.device)]]
        if k:
            rows.append(self.visited[torch.randint(0, len(self.visited), (k,), generator=generator).to(self.stored.device)])
        return torch.cat(rows)


def onpolicy_schedule(steps: int, rounds: int) -> list[int]:
    """Distillation steps before each of ``rounds`` rollouts and after the last: ``rounds + 1`` near-equal parts."""
    return [steps // (rounds + 1) + (i < steps % (rounds + 1)) for i in range(rounds + 1)]


RoundHook = Callable[[int, int, float, int], None]
"""``(round, states visited so far, the head's success in this round's episodes, distillation steps done)``."""


def distill_onpolicy(
    distill_phase: Callable[[int], float],
    visit: Callable[[int], tuple[torch.Tensor, float]],
    pool: StatePool,
    steps: int,
    rounds: int,
    on_round: RoundHook | None = None,
) -> float:
    """``steps`` distillation steps in ``rounds + 1`` phases (``distill_phase(n)`` runs n of them on ``pool``); after
    each of the first ``rounds`` the head is rolled out (``visit(round)``) and its states join the pool. The last loss."""
    loss, done = float("nan"), 0
    for r, n in enumerate(onpolicy_schedule(steps, rounds)):
        if n:
            loss = distill_phase(n)
            done += n
        if r < rounds:
            visited, success = visit(r)
            pool.add(visited)
            if on_round is not None:
                on_round(r, len(pool.visited), success, done)
    return loss


def distill_visiting(
    teacher: DiffusionPolicy,
    head: ConsistencyHead,
    normalizer: Normalizer,
    optimizer: torch.optim.Optimizer,
    states: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    *,
    rounds: int,
    episodes: int,
    task: str | None,
    seed: int,
    fraction: float = 0.5,
    device: str = "cpu",
    on_round: RoundHook | None = None,
    on_step: Callable[[int, float], None] | None = None,
    **batches: Any,
) -> float:
    """:func:`workflow.distill.distill` of ``head`` onto ``teacher`` for ``steps`` on ``states`` and, from the first
    of ``rounds`` on, on the states the head visits in ``episodes`` sim episodes of ``task`` per round (seeds from
    ``seed``). ``batches``: ``distill``'s batch keywords (``batch_size``, ``reuse``, ``local``, ``trainable``)."""
    from workflow.distill import distill

    if rounds and task is None:
        raise ValueError("on-policy distillation rolls the head out in sim: it needs a sim task")
    pool, done = StatePool(states, fraction), [0]

    def phase(n: int) -> float:
        loss = distill(teacher, head, optimizer, states, n, generator, draw=pool.draw, first_step=done[0], on_step=on_step, **batches)
        done[0] += n
        return loss

    def visit(r: int) -> tuple[torch.Tensor, float]:  # every rank rolls out the same seeds: the pools stay identical
        return head_visits(teacher, head, normalizer, task, episodes=episodes, seed=seed + r * episodes, device=device)

    return distill_onpolicy(phase, visit, pool, steps, rounds, on_round)
