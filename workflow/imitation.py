"""Stage 1: imitation. Fit the diffusion policy to demonstrations by denoising MSE.

``train_imitation`` reads top to bottom: load the store, split by episode, fit the
normaliser, build the policy, then the training loop (AdamW, warmup + cosine lr,
EMA weights), a validation denoising loss on held-out episodes, periodic policy
snapshots and a resumable training state. A killed run restarts from its last
state when called again with the same config.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from policies.ema import EmaConfig, EmaModel
from robot.checkpoint import Checkpoint, load_checkpoint, load_module_state, save_checkpoint
from robot.normalize import Normalizer
from robot.sampler import WindowConfig, WindowSampler, flagged_segments, split_episodes
from robot.store import ZarrEpisodeStore
from robot.types import ACTION, INTERVENTION, POINTCLOUD, Feature, is_image_key
from workflow.distributed import init_distributed
from workflow.diagnostics.probes import imitation_metrics
from workflow.policy import save_policy
from workflow.run import RunDir, check_finite_loss, finite_episodes, progress, resolve_device, restore_rng, rng_state, seed_everything, warmup_cosine


@dataclass(frozen=True)
class ImitationConfig:
    data: str
    """Episode store to learn from."""
    out: str
    """Run directory (created; an existing one with the same config is resumed)."""
    policy: DiffusionPolicyConfig = field(default_factory=DiffusionPolicyConfig)
    """Architecture and sampler of the policy."""
    obs_keys: tuple[str, ...] = ()
    """Observation keys the policy sees; empty = every observation.* key of the store."""
    successful_only: bool = True
    """Train on episodes labelled successful only (failed demonstrations teach failure)."""
    rollout_steps: Literal["episodes", "interventions"] = "episodes"
    """What an episode the policy ran (any source but ``demo``: offline or online rollouts, deployments) teaches.
    ``episodes``: the whole episode, like a demonstration (successful ones only with ``successful_only``).
    ``interventions``: only the steps the operator drove (flagged ``intervention``), from every such episode,
    successful or not, with the demonstrations: HIL-SERL's demonstration buffer. The policy's own steps never
    enter then, not even as the action targets of a window that starts in an intervention (they are padded with
    the operator's last action); its observations before the takeover are still the window's history."""
    drop_nonfinite: bool = False
    """Leave out episodes whose frames hold NaN or inf (named on stderr) instead of refusing the store."""
    steps: int = 3000
    """Optimiser steps."""
    batch_size: int = 64
    """Windows per optimiser step."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warmup, then cosine decay to 0 at ``steps``."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for the validation denoising loss."""
    eval_every: int = 250
    """Steps between validation losses."""
    checkpoint_every: int = 500
    """Steps between resumable states and policy snapshots."""
    ema: EmaConfig = field(default_factory=EmaConfig)
    seed: int = 0
    """Seed of the split, the batches and the weights."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if self.policy.frozen_steps:
            raise ValueError("policy.frozen_steps is set by RL fine-tuning (OnlineConfig.ft_steps), not by imitation: pass 0")
        if self.rollout_steps not in ("episodes", "interventions"):
            raise ValueError(f"rollout_steps must be 'episodes' or 'interventions', got {self.rollout_steps!r}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise ValueError(f"steps, batch_size, eval_every and checkpoint_every must be >= 1, got {self}")
        if not 0 < self.lr < 1 or self.grad_clip <= 0:
            raise ValueError(f"lr must be in (0, 1) and grad_clip > 0, got lr={self.lr}, grad_clip={self.grad_clip}")


@dataclass(frozen=True)
class ImitationReport:
    run: str
    policy: str
    steps: int
    episodes_train: int
    episodes_val: int
    final_train_loss: float
    final_val_loss: float | None
    best_val_step: int | None
    minutes: float
    intervention_steps: int = 0
    """Operator-driven steps of rollouts trained on (``rollout_steps="interventions"``)."""


def normalizer_modes(features: dict[str, Feature]) -> dict[str, str]:
    """Actions and proprio to [-1, 1]; images and point clouds stay as they are (the encoders handle them)."""
    return {k: ("identity" if is_image_key(k) or k == POINTCLOUD else "limits") for k in features}


def to_tensors(batch: dict[str, np.ndarray], normalizer: Normalizer, keys: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """``keys`` of a numpy batch as tensors on ``device``, normalised where the normaliser has statistics."""
    return normalizer.normalize_batch({k: torch.as_tensor(batch[k]).to(device) for k in keys})


def train_imitation(
    config: ImitationConfig,
    *,
    show_progress: bool = True,
    init: DiffusionPolicy | None = None,
    normalizer: Normalizer | None = None,
) -> ImitationReport:
    """Train (or resume) an imitation policy.

    ``init`` warm-starts from another policy's weights; pass its ``normalizer`` too so
    the warm-started weights see inputs scaled as they were trained on (offline rounds).
    """
    started = time.perf_counter()
    ddp, device = init_distributed(resolve_device(config.device))  # torchrun: one rank per process
    run = RunDir(config.out, config, write=ddp.is_main)
    rng = seed_everything(config.seed)  # the same on every rank: all draw the same global batch
    local = ddp.local_slice(config.batch_size)

    # --- data: whole episodes, split by episode, everything in RAM
    store = ZarrEpisodeStore.open(config.data)
    metas = store.metas
    obs_keys = list(config.obs_keys) or [k for k in store.features if k.startswith("observation.")]
    missing = [k for k in obs_keys + [ACTION] if k not in store.features]
    if missing:
        raise ValueError(f"{config.data} has no {missing[0]}; it has {', '.join(store.features)}")
    data = store.load(obs_keys + [ACTION])
    whole = config.rollout_steps == "episodes"  # else rollouts teach only their intervention steps
    usable = [i for i, m in enumerate(metas) if (whole or m.source == "demo") and (m.success or not config.successful_only)]
    usable = finite_episodes(config.data, data, store.episode_ends, usable, drop=config.drop_nonfinite)
    if len(usable) < 2:
        raise ValueError(f"{config.data}: {len(usable)} usable episodes (successful_only={config.successful_only}); record at least 2")
    train_idx, val_idx = split_episodes(len(usable), config.val_fraction, config.seed)
    train_eps, val_eps = [usable[i] for i in train_idx], [usable[i] for i in val_idx]
    interventions = [] if whole else intervention_segments(config, store, data)
    window = WindowConfig(n_obs_steps=config.policy.n_obs_steps, horizon=config.policy.horizon)
    train_windows = WindowSampler(data, store.episode_ends, window, episodes=train_eps, obs_keys=obs_keys, segments=interventions)
    val_windows = WindowSampler(data, store.episode_ends, window, episodes=val_eps, obs_keys=obs_keys) if val_eps else None
    features = {k: store.features[k] for k in obs_keys}
    train_frames = np.concatenate([np.arange(*store.episode_bounds(e)) for e in train_eps] + [np.arange(a, b) for _, a, b in interventions])
    if normalizer is None:
        normalizer = Normalizer.fit(
            {k: data[k][train_frames] for k in obs_keys + [ACTION]},
            normalizer_modes({**features, ACTION: store.features[ACTION]}),
        )

    # --- model, optimiser, schedule
    model = DiffusionPolicy(config.policy, features, {ACTION: store.features[ACTION]}).to(device)
    if init is not None:
        load_module_state(model, init.state_dict(), what="warm-start policy")
    ema = EmaModel(model, config.ema)
    objective = ddp.wrap(_DenoisingObjective(model))  # DDP averages the gradients of the ranks' slices
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, config.steps, config.warmup_steps)
    step = 0
    if (run.state_dir / "checkpoint.json").is_file():  # resume a killed run
        state = load_checkpoint(run.state_dir, kind="imitation-state")
        load_module_state(model, state.modules["model"], what=str(run.state_dir))
        load_module_state(ema.averaged, state.modules["ema"], what=str(run.state_dir))
        optimizer.load_state_dict(state.state["optimizer"])
        scheduler.load_state_dict(state.state["scheduler"])
        ema.num_updates = int(state.state["ema_updates"])
        restore_rng(rng, state.state["rng"])
        normalizer = state.normalizer
        step = int(state.extra["step"])

    keys = obs_keys + [ACTION]
    val_batches = [val_windows.sample(config.batch_size, np.random.default_rng(1000 + i)) for i in range(4)] if val_windows else []
    probe_batches = [train_windows.sample(config.batch_size, np.random.default_rng(2000 + i)) for i in range(4)]  # fixed training windows

    def save_state() -> None:
        if not ddp.is_main:
            return
        save_checkpoint(
            run.state_dir,
            Checkpoint(
                kind="imitation-state",
                config={"policy": config.policy.to_dict()},
                modules={"model": model.state_dict(), "ema": ema.averaged.state_dict()},
                normalizer=normalizer,
                extra={"step": step},
                state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "ema_updates": ema.num_updates, "rng": rng_state(rng)},
            ),
        )
        save_policy(run.snapshot_dir(step), ema.averaged, normalizer, extra=_extra(config, store, step))

    # --- training loop
    bar = progress(config.steps, step, "imitation", show_progress)
    train_loss, best = float("nan"), (math.inf, None)
    val_loss = None
    model.train()
    while step < config.steps:
        batch = train_windows.sample(config.batch_size, rng)  # the global batch; this rank trains on rows `local`
        tensors = to_tensors({k: v[local] for k, v in batch.items()}, normalizer, keys, device)
        noise = torch.randn((config.batch_size, config.policy.horizon, model.action_dim))[local].to(device)  # (B, H, Da)
        t = torch.randint(0, config.policy.num_train_steps, (config.batch_size,))[local].to(device)
        loss = objective({k: tensors[k] for k in obs_keys}, tensors[ACTION], noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update(model)
        step += 1
        train_loss = ddp.mean(loss.item())
        check_finite_loss(train_loss, "imitation", step)
        metrics = {"losses/denoise": train_loss, "charts/grad_norm": float(grad_norm), "charts/lr": scheduler.get_last_lr()[0]}
        if ddp.is_main and (step % config.eval_every == 0 or step == config.steps):
            metrics.update(imitation_metrics(ema.averaged, probe_batches, val_batches, normalizer, obs_keys, device))  # diagnostics
            val_loss = metrics.get("losses/denoise_val")
            if val_loss is not None and val_loss < best[0]:
                best = (val_loss, step)
            model.train()
        run.metrics.log(metrics, step)
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}" if val_loss is not None else "-")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_state()
    bar.close()

    if ddp.is_main:
        save_policy(run.policy_dir, ema.averaged, normalizer, extra=_extra(config, store, step))
    ddp.barrier()  # the other ranks return once the policy is on disk
    report = ImitationReport(
        run=str(run.path),
        policy=str(run.policy_dir),
        steps=step,
        episodes_train=len(train_eps),
        episodes_val=len(val_eps),
        final_train_loss=train_loss,
        final_val_loss=val_loss,
        best_val_step=best[1],
        minutes=(time.perf_counter() - started) / 60,
        intervention_steps=sum(b - a for _, a, b in interventions),
    )
    run.write_report(report)
    run.close()
    return report


def intervention_segments(config: ImitationConfig, store: ZarrEpisodeStore, data: dict[str, np.ndarray]) -> list[tuple[int, int, int]]:
    """``(episode start, first, end)`` of each run of steps the operator drove in the store's rollouts
    (every episode whose source is not ``demo``; one with NaN or inf left out as ``drop_nonfinite`` says)."""
    if INTERVENTION not in store.features:
        return []
    rollouts = [i for i, m in enumerate(store.metas) if m.source != "demo"]
    rollouts = finite_episodes(config.data, data, store.episode_ends, rollouts, drop=config.drop_nonfinite) if rollouts else []
    return flagged_segments(store.load([INTERVENTION])[INTERVENTION], store.episode_ends, rollouts)


class _DenoisingObjective(torch.nn.Module):
    """The denoising loss as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, policy: DiffusionPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: dict[str, torch.Tensor], actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.policy.compute_loss(obs, actions, noise, t)


def _extra(config: ImitationConfig, store: ZarrEpisodeStore, step: int) -> dict:
    first = store.metas[0]
    return {"stage": "imitation", "step": step, "task": first.task, "robot": first.robot, "fps": first.fps, "data": config.data}
