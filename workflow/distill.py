"""Consistency distillation: a one-step head that reproduces the K-step DDIM policy.

The student (a warm-started copy of the denoiser, or a small MLP: ``StudentConfig``) maps its x_K (0:
``ConsistencyHead.noise_scale``) and the conditioning straight to the action the teacher's deterministic chain
reaches from the same x_K. It has its own optimiser and can run as a stage of its own (``robot train distill``) or
a few steps at a time alongside online RL, so it tracks the policy as RL changes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from policies.consistency import ConsistencyHead, StudentConfig
from policies.diffusion import DiffusionPolicy
from robot.checkpoint import load_checkpoint
from robot.store import ZarrEpisodeStore
from workflow.distill_onpolicy import ONPOLICY_SEED, distill_visiting
from workflow.distributed import init_distributed
from workflow.latent import encode_store
from workflow.policy import KIND, build_from_checkpoint, policy_dir, policy_task, save_policy
from workflow.run import RunDir, check_finite_loss, progress, resolve_device, seed_everything, warmup_cosine


Target = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (x_K, cond, teacher's output from it), this rank's rows
DISTILL_BATCH = 256
"""States per distillation step, every rank's rows together."""


def distill_targets(teacher: DiffusionPolicy, head: ConsistencyHead, cond: torch.Tensor, generator: torch.Generator, *,
                    local: slice = slice(None)) -> Target:
    """The teacher's deterministic output from the head's x_K for a global batch ``cond``.

    Distributed: x_K is drawn for the whole batch and ``local`` keeps this rank's rows,
    so the ranks slice one draw and compute only their own targets.
    """
    noise = head.initial_noise(cond, generator)[local]  # (b, horizon, Da)
    cond = cond[local]
    with torch.no_grad():
        target = teacher.sample(cond, deterministic=True, noise=noise)  # (b, horizon, Da)
    return noise, cond, target


def regress_step(head: ConsistencyHead, optimizer: torch.optim.Optimizer, batch: Target, *, trainable: torch.nn.Module | None = None) -> float:
    """One step of the head onto the teacher's output from the same noise (``trainable``: the head under DDP)."""
    noise, cond, target = batch
    loss = F.mse_loss((trainable or head)(noise, cond), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def distill(
    teacher: DiffusionPolicy,
    head: ConsistencyHead,
    optimizer: torch.optim.Optimizer,
    states: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    *,
    batch_size: int = DISTILL_BATCH,
    reuse: int = 4,
    pool_batches: int | None = 16,
    local: slice = slice(None),
    trainable: torch.nn.Module | None = None,
    on_step: Callable[[int, float], None] | None = None,
    draw: Callable[[int, torch.Generator], torch.Tensor] | None = None,
    first_step: int = 0,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """``steps`` regression steps of ``head`` onto ``teacher`` on batches of ``states``; the last loss.
    ``draw(n, generator)`` picks a batch's states instead of uniformly from ``states`` (the on-policy pool,
    ``workflow.distill_onpolicy``); ``first_step`` numbers ``on_step``'s steps after earlier phases; ``schedule``
    is stepped after every step (:func:`head_schedule` for a head distilled once, to the end).

    The teacher's K-step chain costs about three times the U-Net copy's forward and backward
    pass and thirty times the MLP student's, so targets are drawn ``pool_batches`` batches at a
    time (None: every batch the steps need, up front) and each batch is regressed on ``reuse``
    times (in a fresh order every pass) before the next pool. A head from x_K = 0 has one fixed
    target per state, so reusing one costs nothing but spread: pools of 32 batches reused 64 times
    left the MLP's error at 0.0013 on other states after 8,000 steps against 0.0008 on its pool's;
    one pool, 0.00055 on both after 12,000 (docs/RESULTS.md, session 30).
    """
    if steps < 0 or reuse < 1 or (pool_batches is not None and pool_batches < 1):
        raise ValueError(f"steps must be >= 0, reuse and pool_batches >= 1, got {steps}, {reuse}, {pool_batches}")
    pool_batches = pool_batches or -(-steps // reuse)
    batch_size = min(batch_size, len(states))
    draw = draw or (lambda n, gen: states[torch.randint(0, len(states), (n,), generator=gen).to(states.device)])
    done, loss = 0, float("nan")
    while done < steps:
        pool = [
            distill_targets(teacher, head, draw(batch_size, generator), generator, local=local)
            for _ in range(min(pool_batches, -(-(steps - done) // reuse)))
        ]  # the global batches are the same on every rank (one generator), each rank keeps its rows
        for _ in range(reuse):
            for b in torch.randperm(len(pool), generator=generator).tolist():
                if done == steps:
                    break
                loss = regress_step(head, optimizer, pool[b], trainable=trainable)
                if schedule is not None:
                    schedule.step()
                done += 1
                if on_step is not None:
                    on_step(first_step + done, loss)
    return loss


def make_head_optimizer(head: ConsistencyHead, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(head.parameters(), lr=lr)


def head_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The rate of a head distilled once, to the end, falls to 0 at its last step along a half cosine (a head that
    tracks a policy still changing, as in-loop distillation, keeps a constant rate).

    The head has to match its teacher closely, not just on average: on push-rim's main job a constant 3e-4 left a
    held-out error of 0.0060 after 600 steps and the head 8-10 points below its teacher; decayed, 0.0038, and after
    2,400 steps 0.0014 against 0.0030 (docs/RESULTS.md, session 28). Over 600 paired seeds, heads of 600 decaying steps scored
    2-7 points under their teachers, of 2,400-4,800 steps 1-3 (session 29)."""
    return warmup_cosine(optimizer, steps)


@dataclass(frozen=True)
class DistillConfig:
    policy: str
    """Run directory or policy checkpoint of the teacher."""
    data: str
    """Episode store whose states the head is distilled on."""
    out: str
    """Run directory; its policy/ holds the teacher plus the one-step head."""
    head: StudentConfig = field(default_factory=StudentConfig)
    """The head's network: a copy of the teacher's denoiser, or a small MLP from scratch (``--head-kind mlp``, with
    about ``--steps 20000 --lr 1e-3 --target-reuse 64 --target-pool none``: on push-rim 5 CPU minutes besides the targets)."""
    steps: int = 2000
    """Distillation steps."""
    batch_size: int = DISTILL_BATCH
    """States per step."""
    lr: float = 3e-4
    """Peak learning rate (a half cosine takes it to 0). On push, 1,200 steps at 3e-4 brought the copy within 2 points
    of its teacher; at 1e-4, 6 short. The MLP student was measured at 1e-3 (``StudentConfig.lr``)."""
    target_reuse: int = 4
    """Regression steps per teacher target batch (the teacher's chain is the expensive part)."""
    target_pool: int | None = 16
    """Target batches labelled at a time; None: all the steps need, up front (``distill``)."""
    onpolicy_rounds: int = 0
    """DAgger rounds: the steps are split into this many + 1 phases, and after each but the last the head is
    rolled out in sim and the teacher labels the states it planned at (``workflow.distill_onpolicy``). 0: the
    store's states alone."""
    onpolicy_episodes: int = 32
    """Sim episodes of the head per on-policy round."""
    onpolicy_fraction: float = 0.5
    """Share of each batch drawn from the head's own states once it has some."""
    task: str | None = None
    """Sim task of the on-policy rounds; None: the checkpoint's."""
    drop_nonfinite: bool = False
    """Leave out episodes holding NaN or inf (named on stderr) instead of refusing the data."""
    seed: int = 0
    """Seed of the batches and the teacher chains."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.target_reuse < 1 or (self.target_pool is not None and self.target_pool < 1) \
                or not 0 < self.lr < 1:
            raise ValueError(f"steps, batch_size, target_pool and target_reuse must be >= 1 and lr in (0, 1), got {self}")
        if self.onpolicy_rounds < 0 or self.onpolicy_episodes < 1 or not 0 <= self.onpolicy_fraction <= 1:
            raise ValueError(f"onpolicy_rounds must be >= 0, onpolicy_episodes >= 1 and onpolicy_fraction in [0, 1], got "
                             f"{self.onpolicy_rounds}, {self.onpolicy_episodes}, {self.onpolicy_fraction}")


@dataclass(frozen=True)
class DistillReport:
    run: str
    policy: str
    steps: int
    final_loss: float
    minutes: float


def train_distill(config: DistillConfig, *, show_progress: bool = True) -> DistillReport:
    started = time.perf_counter()
    ddp, device = init_distributed(resolve_device(config.device))  # torchrun: one rank per process
    run = RunDir(config.out, config, write=ddp.is_main)
    seed_everything(config.seed)
    ckpt = load_checkpoint(policy_dir(config.policy), kind=KIND)
    teacher, _ = build_from_checkpoint(ckpt, device=str(device))
    teacher.eval().requires_grad_(False)
    store = ZarrEpisodeStore.open(config.data)
    states = encode_store(store, teacher, ckpt.normalizer, gamma=1.0, device=device, drop_nonfinite=config.drop_nonfinite).features  # (N, Dc)
    head = ConsistencyHead.from_policy(teacher, config.head)
    optimizer = make_head_optimizer(head, config.lr)
    schedule = head_schedule(optimizer, config.steps)
    trainable = ddp.wrap(head)
    bar = progress(config.steps, 0, "distill", show_progress)

    def logged(step: int, loss: float) -> None:
        loss = ddp.mean(loss)
        run.metrics.log({"losses/distill": loss}, step)
        check_finite_loss(loss, "distillation", step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.5f}")

    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    batch = ddp.even_batch(config.batch_size, len(states))
    local = ddp.local_slice(batch)
    task = policy_task(config.policy, config.task, meta=ckpt.extra) if config.onpolicy_rounds else None

    def visited(r: int, states_now: int, success: float, step: int) -> None:
        run.metrics.log({"charts/onpolicy_success": success, "charts/onpolicy_states": states_now}, step)
        if ddp.is_main:
            bar.write(f"on-policy round {r}: the head succeeded in {success:.0%} of {config.onpolicy_episodes} episodes; {states_now} of its states in the pool")

    loss = ddp.mean(distill_visiting(teacher, head, ckpt.normalizer, optimizer, states, config.steps, gen, rounds=config.onpolicy_rounds,
                                     episodes=config.onpolicy_episodes, task=task, seed=ONPOLICY_SEED + 1000 * config.seed,
                                     fraction=config.onpolicy_fraction, device=str(device), on_round=visited, on_step=logged,
                                     batch_size=batch, reuse=config.target_reuse, pool_batches=config.target_pool, local=local, trainable=trainable, schedule=schedule))  # fmt: skip
    bar.close()
    if ddp.is_main:
        save_policy(run.policy_dir, teacher, ckpt.normalizer, consistency=head, extra={**ckpt.extra, "stage": "distill"})
    ddp.barrier()
    report = DistillReport(run=str(run.path), policy=str(run.policy_dir), steps=config.steps, final_loss=loss, minutes=(time.perf_counter() - started) / 60)
    run.write_report(report)
    run.close()
    return report
