"""Online RL's update: GAE over an iteration's chunk decisions, PPO epochs over their denoising chains, and
the value function's regression (``OnlineLearner``).

Under torchrun every rank holds all decisions; each PPO and value minibatch is split over the ranks and
their gradients averaged, so N ranks take the steps one process would (up to float summation order).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

import torch
import torch.nn.functional as F

from policies.consistency import ConsistencyHead
from policies.critics import ValueNet
from policies.diffusion import DiffusionPolicy
from robot.checkpoint import load_module_state
from workflow.critic_checkpoint import load_critics
from workflow.distill import distill, make_head_optimizer
from workflow.distributed import Distributed
from workflow.online_collect import Batch
from workflow.ppo import chain_ppo_loss, denoiser_parameters, normalize_advantages
from workflow.run import check_finite_loss

if TYPE_CHECKING:
    from workflow.online import OnlineConfig


class OnlineLearner:
    """Everything an iteration's update changes: the denoiser and its optimiser (the encoder stays frozen), the
    value function and its optimiser, the one-step head and its optimiser (when there is one), and the
    generators of the minibatch order and the distillation; plus the chain sampler RL explores with
    (``OnlineConfig.min_std``, ``log_prob_reduction``).

    :meth:`step` is one iteration's update; :meth:`state_dict` / :meth:`load_state_dict` carry all of it, so an
    update can be resumed (``workflow.online_resume``) or run in another process (``workflow.learner_link``)
    with the same result.
    """

    def __init__(self, model: DiffusionPolicy, config: "OnlineConfig", ddp: Distributed, device: torch.device, head: ConsistencyHead | None = None):
        self.model, self.config, self.ddp, self.head = model, config, ddp, head
        self.sampler = model.chain_sampler(config.min_std, config.log_prob_reduction, config.chunk_corr)
        model.requires_grad_(False)
        self.actor_params = denoiser_parameters(model)
        for p in self.actor_params:
            p.requires_grad_(True)
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=config.actor_lr)
        self.value = ValueNet(model.cond_dim, config.critic).to(device)
        if config.value_from:  # the offline round's V
            load_module_state(self.value, load_critics(config.value_from).v.state_dict(), what=config.value_from)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)
        self.gen = torch.Generator(device="cpu").manual_seed(config.seed)  # minibatch order: the same on every rank
        self.value_warm = False
        self.head_opt = make_head_optimizer(head, config.distill_lr) if head is not None else None
        self.distill_gen = torch.Generator(device="cpu").manual_seed(config.seed + 1)  # rank 0 only

    def step(self, batch: Batch, iteration: int) -> dict[str, float]:
        """One iteration's update: advantages, PPO and value epochs, then the one-step head follows the updated
        policy (only rank 0 saves it, so only rank 0 trains it); returns the iteration's charts."""
        cpu = time.process_time()
        stats = self.update(batch, iteration)
        updated = time.process_time()
        distill_loss = float("nan")
        if self.head is not None and self.ddp.is_main:
            self.model.eval()
            distill_loss = distill(self.model, self.head, self.head_opt, batch.cond, self.config.distill_steps, self.distill_gen, reuse=self.config.distill_reuse)
        return {**stats, "losses/distill": distill_loss, "cpu/update_s": updated - cpu, "cpu/distill_s": time.process_time() - updated}

    def state_dict(self) -> dict:
        """Every tensor and counter an update reads or changes (nested dicts of tensors and numbers)."""
        state = {"model": self.model.state_dict(), "value": self.value.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                 "value_opt": self.value_opt.state_dict(), "gen": self.gen.get_state(), "distill_gen": self.distill_gen.get_state(),
                 "value_warm": int(self.value_warm)}  # fmt: skip
        if self.head is not None:
            state.update(head=self.head.state_dict(), head_opt=self.head_opt.state_dict())
        return state

    def load_state_dict(self, state: dict, *, what: str) -> None:
        load_module_state(self.model, state["model"], what=what)
        load_module_state(self.value, state["value"], what=what)
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.value_opt.load_state_dict(state["value_opt"])
        self.gen.set_state(state["gen"].to(torch.uint8))
        self.distill_gen.set_state(state["distill_gen"].to(torch.uint8))
        self.value_warm = bool(state["value_warm"])
        if self.head is not None and "head" in state:
            load_module_state(self.head, state["head"], what=what)
            self.head_opt.load_state_dict(state["head_opt"])

    def update(self, batch: Batch, iteration: int) -> dict[str, float]:
        """Advantages, then PPO and value epochs on one iteration's decisions; returns the iteration's charts."""
        config, ddp, value = self.config, self.ddp, self.value
        if not self.value_warm:  # V must be sensible before it shapes advantages
            for _ in range(config.value_warmup_epochs):
                self._value_epoch(batch, self._advantages(batch)[1])
            self.value_warm = True
        adv, returns = self._advantages(batch)
        stats: dict[str, float] = {}
        kls: list[float] = []
        stopped = False
        for epoch in range(config.epochs):
            order = torch.randperm(len(batch), generator=self.gen)
            for k, (minibatch, rows, weight) in enumerate(_minibatches(order, config.minibatch, ddp)):
                normalized = normalize_advantages(adv[minibatch])  # over the whole minibatch, as one process would
                idx = minibatch[rows].to(batch.cond.device)
                loss, s = chain_ppo_loss(self.model, batch.cond[idx], batch.chains[idx], normalized[rows], config.clip_eps, steps=config.step_schedule)
                kl = ddp.mean(s.approx_kl * weight)  # the minibatch's KL, the same on every rank: all stop at the same minibatch
                kls.append(kl)
                if kl > config.kl_stop * config.target_kl:  # the policy moved far enough from the one that sampled the chains
                    stopped = True
                    break
                self.actor_opt.zero_grad(set_to_none=True)
                (loss * weight).backward()
                ddp.average_gradients(self.actor_params)
                torch.nn.utils.clip_grad_norm_(self.actor_params, config.grad_clip)
                self.actor_opt.step()
                stats = {"charts/clip_fraction": ddp.mean(s.clip_fraction * weight), "charts/approx_kl": kl, "losses/ppo": ddp.mean(loss.item() * weight),
                         "charts/ppo_epochs": epoch + k * config.minibatch / len(order)}  # fmt: skip
                check_finite_loss(stats["losses/ppo"], f"online RL iteration {iteration} PPO", epoch)
            value_loss = self._value_epoch(batch, returns)
            check_finite_loss(value_loss, f"online RL iteration {iteration} value function", epoch)
            if stopped:
                break
        if config.adaptive_lr and kls:
            lr = adapt_lr(self.actor_opt.param_groups[0]["lr"], float(np.mean(kls)), config)
            for group in self.actor_opt.param_groups:
                group["lr"] = lr
            stats["charts/actor_lr"] = lr
        with torch.no_grad():
            explained = 1 - float(torch.var(returns - value(batch.cond)) / (torch.var(returns) + 1e-8))
        return {**stats, "losses/value": value_loss, "charts/value_explained_variance": explained, "charts/decisions": len(batch)}

    @torch.no_grad()
    def _advantages(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return gae(self.value, batch.cond, batch.next_cond, batch.rewards, batch.discounts, batch.terminal, batch.last, self.config.gae_lambda)

    def _value_epoch(self, batch: Batch, returns: torch.Tensor) -> float:
        order = torch.randperm(len(batch), generator=self.gen)
        loss = torch.zeros(())
        for minibatch, rows, weight in _minibatches(order, self.config.minibatch, self.ddp):
            idx = minibatch[rows].to(batch.cond.device)
            loss = F.mse_loss(self.value(batch.cond[idx]), returns[idx])
            self.value_opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            self.ddp.average_gradients(self.value.parameters())
            self.value_opt.step()
        return self.ddp.mean(float(loss.detach()))


def adapt_lr(lr: float, kl: float, config: "OnlineConfig") -> float:
    """The actor's next learning rate from an iteration's mean minibatch KL (``OnlineConfig.adaptive_lr``)."""
    if kl > 2 * config.target_kl:
        lr /= 1.5
    elif kl < 0.5 * config.target_kl:
        lr *= 1.5
    return float(np.clip(lr, 0.1 * config.actor_lr, 10 * config.actor_lr))


def gae(value, cond, next_cond, rewards, discounts, terminal, last, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over chunk decisions; returns ``(advantages, returns)``."""
    v = value(cond)
    v_next = value(next_cond) * (1 - terminal)  # success: no future; time limit: bootstrap from V
    deltas = rewards + discounts * v_next - v
    adv = torch.zeros_like(deltas)
    running = torch.zeros(())
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + (0.0 if bool(last[t]) else float(discounts[t]) * lam) * running
        adv[t] = running
    return adv, adv + v


def _minibatches(order: torch.Tensor, size: int, ddp: Distributed):
    """``(minibatch, this rank's positions in it, loss weight)`` per minibatch of ``order``; a remainder
    too small to give every rank a row is skipped (never, on one process)."""
    for start in range(0, len(order), size):
        minibatch = order[start : start + size]
        if len(minibatch) >= ddp.world_size:
            yield (minibatch, *ddp.rows(torch.arange(len(minibatch))))
