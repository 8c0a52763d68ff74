"""Consistency distillation: a one-step head that reproduces the K-step DDIM policy.

The student (a warm-started copy of the denoiser) maps the initial noise x_K and the
conditioning straight to the action the teacher's deterministic DDIM chain reaches
from the same noise. It has its own optimiser and can run as a stage of its own
(``robot train distill``) or a few steps at a time alongside online RL, so it tracks
the policy as RL changes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from policies.consistency import ConsistencyHead
from policies.diffusion import DiffusionPolicy
from robot.checkpoint import load_checkpoint
from robot.store import ZarrEpisodeStore
from workflow.distributed import init_distributed
from workflow.latent import encode_store
from workflow.policy import KIND, build_from_checkpoint, policy_dir, save_policy
from workflow.run import RunDir, progress, resolve_device, seed_everything


def distill_step(
    teacher: DiffusionPolicy,
    head: ConsistencyHead,
    optimizer: torch.optim.Optimizer,
    cond: torch.Tensor,
    generator: torch.Generator,
    *,
    local: slice = slice(None),
    trainable: torch.nn.Module | None = None,
) -> float:
    """One regression step of the head onto the teacher's deterministic DDIM output from the same noise.

    Distributed: ``cond`` is the global batch, ``local`` this rank's rows and ``trainable``
    the head under DDP; the noise is drawn for the whole batch, so ranks slice one draw.
    """
    noise = teacher.initial_noise(cond, generator)[local]  # (b, horizon, Da)
    cond = cond[local]
    with torch.no_grad():
        target = teacher.sample(cond, deterministic=True, noise=noise)  # (b, horizon, Da)
    loss = F.mse_loss((trainable or head)(noise, cond), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def make_head_optimizer(head: ConsistencyHead, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(head.parameters(), lr=lr)


@dataclass(frozen=True)
class DistillConfig:
    policy: str
    """Run directory or policy checkpoint of the teacher."""
    data: str
    """Episode store whose states the head is distilled on."""
    out: str
    """Run directory; its policy/ holds the teacher plus the one-step head."""
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not 0 < self.lr < 1:
            raise ValueError(f"steps and batch_size must be >= 1 and lr in (0, 1), got {self}")


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
    states = encode_store(store, teacher, ckpt.normalizer, gamma=1.0, device=device).features  # (N, Dc)
    head = ConsistencyHead.from_policy(teacher)
    optimizer = make_head_optimizer(head, config.lr)
    trainable = ddp.wrap(head)
    batch_size = min(config.batch_size, len(states))
    local = ddp.local_slice(batch_size)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    bar = progress(config.steps, 0, "distill", show_progress)
    loss = float("nan")
    for step in range(1, config.steps + 1):
        idx = torch.randint(0, len(states), (batch_size,), generator=gen)  # the global batch, the same on every rank
        loss = ddp.mean(distill_step(teacher, head, optimizer, states[idx.to(device)], gen, local=local, trainable=trainable))
        run.metrics.log({"losses/distill": loss}, step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.5f}")
    bar.close()
    if ddp.is_main:
        save_policy(run.policy_dir, teacher, ckpt.normalizer, consistency=head, extra={**ckpt.extra, "stage": "distill"})
    ddp.barrier()
    report = DistillReport(run=str(run.path), policy=str(run.policy_dir), steps=config.steps, final_loss=loss, minutes=(time.perf_counter() - started) / 60)
    run.write_report(report)
    run.close()
    return report
