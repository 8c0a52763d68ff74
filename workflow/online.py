"""Stage 3: online RL. PPO over denoising chains on live rollouts, with the one-step head tracking it.

Each iteration reads top to bottom:

1. roll out the stochastic policy: at each chunk decision store the frozen-encoder
   features, the sampled denoising chain and its per-step log-probs, then execute
   ``Ta`` actions and sum their discounted reward;
2. GAE over chunk decisions (discount gamma^n for an n-step chunk, lambda 0.95),
   bootstrapping time-limit ends from V and not success ends;
3. a few epochs of the clipped objective over the denoising steps (one normalised
   advantage per decision shared by its K steps) and of the value regression;
4. a few consistency-distillation steps on this iteration's states;
5. every episode is appended to the run's store as ``online-rollout``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from policies.consistency import ConsistencyHead
from policies.critics import CriticConfig, ValueNet
from robot.checkpoint import load_checkpoint, load_module_state
from robot.protocols import Robot, Task
from robot.store import ZarrEpisodeStore
from robot.types import EpisodeMeta
from workflow.distill import distill_step, make_head_optimizer
from workflow.distributed import require_single_process
from workflow.envs import make_sim_for
from workflow.latent import encode_store
from workflow.policy import KIND, DiffusionController, build_from_checkpoint, policy_dir, save_policy
from workflow.ppo import chain_ppo_loss, denoiser_parameters, floor_denoising_std, normalize_advantages
from workflow.rollout import EpisodeFrames, episode_features, evaluate
from workflow.run import RunDir, progress, resolve_device, seed_everything

SELECTION_SEED = 500_000  # first sim seed of the selection episodes (apart from rollout and evaluation seeds)


@dataclass(frozen=True)
class OnlineConfig:
    policy: str
    """Run directory or policy checkpoint to fine-tune (usually the offline stage's)."""
    out: str
    """Run directory: policy snapshots, metrics, rollouts.zarr."""
    task: str = "push"
    iterations: int = 10
    """Collect-then-update iterations."""
    episodes_per_iteration: int = 8
    epochs: int = 4
    """Passes over each iteration's decisions."""
    minibatch: int = 64
    actor_lr: float = 1e-5
    """Denoiser learning rate (small: the policy starts good)."""
    value_lr: float = 1e-3
    clip_eps: float = 0.2
    grad_clip: float = 0.5
    gamma: float = 0.99
    """Per environment step; a chunk of n steps discounts by gamma^n."""
    gae_lambda: float = 0.95
    target_kl: float = 0.05
    """Stop an iteration's epochs once the approximate KL exceeds this."""
    value_warmup_epochs: int = 20
    """Value-only regression epochs on the first iteration (V must be sensible before it shapes advantages)."""
    value_from: str | None = None
    """Checkpoint of offline critics (``round-M/critics``) whose V warm-starts the value function."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    min_std: float = 0.1
    """Floor on each denoising step's std while fine-tuning (``workflow.ppo.floor_denoising_std``)."""
    distill_steps: int = 50
    """Consistency-distillation steps per iteration (0: no one-step head)."""
    distill_lr: float = 1e-4
    distill_data: str | None = None
    """Episode store (e.g. the demonstrations) whose states the handed-on policy's one-step head is finally
    distilled on, for the whole budget; None: the last iteration's states, for what its snapshot has not had.
    On push, demonstration states gave the head 73% vs 50% from rollout states (teacher 83%)."""
    select_episodes: int = 16
    """Deterministic episodes scoring the starting policy and every ``select_every``-th snapshot at the end;
    the stage hands on the best scorer, the start on ties, so it never passes on a policy that scored lower
    than the one it got. 0 hands on the last iteration's policy unscored."""
    select_every: int = 2
    """Iterations between scored snapshots (the last iteration is always scored)."""
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.episodes_per_iteration < 1 or self.epochs < 1 or self.minibatch < 1 or self.select_every < 1:
            raise ValueError(f"iterations, episodes_per_iteration, epochs and minibatch must be >= 1, got {self}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")


@dataclass(frozen=True)
class OnlineReport:
    run: str
    policy: str
    iterations: int
    episodes: int
    success_first: float
    success_last: float
    minutes: float
    selected: str = "last"  # "start" or "iteration N": the policy this stage hands on
    selection: tuple[tuple[str, float, float], ...] = ()  # (candidate, deterministic success, return) on the selection seeds


@dataclass
class Decisions:
    """One iteration's chunk decisions, in time order, episodes concatenated."""

    cond: list[torch.Tensor] = field(default_factory=list)  # (1, Dc) each
    chains: list = field(default_factory=list)  # policies.diffusion.Chain of batch 1
    rewards: list[float] = field(default_factory=list)  # discounted chunk reward
    discounts: list[float] = field(default_factory=list)  # gamma^n
    terminal: list[bool] = field(default_factory=list)  # success inside the chunk
    last: list[bool] = field(default_factory=list)  # last decision of its episode
    next_cond: list[torch.Tensor] = field(default_factory=list)  # (1, Dc) after the chunk


def train_online(config: OnlineConfig, *, show_progress: bool = True) -> OnlineReport:
    started = time.perf_counter()
    require_single_process("online RL")
    device = resolve_device(config.device)
    run = RunDir(config.out, config)
    seed_everything(config.seed)
    ckpt = load_checkpoint(policy_dir(config.policy), kind=KIND)
    model, head = build_from_checkpoint(ckpt, device=str(device))
    own_config = floor_denoising_std(model, config.min_std)
    model.requires_grad_(False)
    actor_params = denoiser_parameters(model)
    for p in actor_params:
        p.requires_grad_(True)
    actor_opt = torch.optim.Adam(actor_params, lr=config.actor_lr)
    value = ValueNet(model.cond_dim, config.critic).to(device)
    if config.value_from:
        critics = load_checkpoint(config.value_from, kind="iql-critics")
        load_module_state(value, {k[2:]: v for k, v in critics.modules["critics"].items() if k.startswith("v.")}, what=config.value_from)
    value_opt = torch.optim.Adam(value.parameters(), lr=config.value_lr)
    head = head if head is not None else (ConsistencyHead.from_policy(model) if config.distill_steps else None)
    head_opt = make_head_optimizer(head, config.distill_lr) if head is not None else None
    controller = DiffusionController(model, ckpt.normalizer, deterministic=False, seed=config.seed, device=str(device))

    robot, task = make_sim_for(config.task, controller.input_features)
    store = ZarrEpisodeStore.open_or_create(run.path / "rollouts.zarr", episode_features(robot))
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    successes: list[float] = []
    episode_seed = config.seed * 1_000_003 + store.num_episodes
    bar = progress(config.iterations, 0, "online", show_progress)
    with robot:
        for it in range(config.iterations):
            # 1. collect
            model.eval()
            decisions, results = Decisions(), []
            for _ in range(config.episodes_per_iteration):
                frames, success = collect_episode(robot, task, controller, decisions, config.gamma, gen, seed=episode_seed)
                store.append_episode(frames, EpisodeMeta(task=task.name, robot=robot.name, fps=task.fps, success=success, source="online-rollout", seed=episode_seed))
                results.append(success)
                episode_seed += 1
            successes.append(float(np.mean(results)))

            # 2. advantages, 3. PPO + value epochs
            cond = torch.cat(decisions.cond)
            next_cond = torch.cat(decisions.next_cond)
            chains = _stack_chains(decisions.chains)
            rewards = torch.tensor(decisions.rewards, device=device)
            discounts = torch.tensor(decisions.discounts, device=device)
            terminal = torch.tensor(decisions.terminal, device=device, dtype=torch.float32)
            last = torch.tensor(decisions.last, device=device)
            if it == 0:
                for _ in range(config.value_warmup_epochs):
                    with torch.no_grad():
                        adv, returns = gae(value, cond, next_cond, rewards, discounts, terminal, last, config.gae_lambda)
                    _value_epoch(value, value_opt, cond, returns, config.minibatch, gen)
            with torch.no_grad():
                adv, returns = gae(value, cond, next_cond, rewards, discounts, terminal, last, config.gae_lambda)
            stats = {}
            for epoch in range(config.epochs):
                order = torch.randperm(len(cond), generator=gen)
                kls = []
                for start in range(0, len(order), config.minibatch):
                    idx = order[start : start + config.minibatch].to(device)
                    loss, s = chain_ppo_loss(model, cond[idx], chains[idx], normalize_advantages(adv[idx]), config.clip_eps)
                    actor_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(actor_params, config.grad_clip)
                    actor_opt.step()
                    kls.append(s.approx_kl)
                    stats = {"charts/clip_fraction": s.clip_fraction, "charts/approx_kl": s.approx_kl, "losses/ppo": loss.item()}
                value_loss = _value_epoch(value, value_opt, cond, returns, config.minibatch, gen)
                if np.mean(kls) > config.target_kl:
                    break

            # 4. the one-step head follows the updated policy
            distill_loss = float("nan")
            if head is not None:
                model.eval()
                for _ in range(config.distill_steps):
                    idx = torch.randint(0, len(cond), (min(256, len(cond)),), generator=gen).to(device)
                    distill_loss = distill_step(model, head, head_opt, cond[idx], gen)
            with torch.no_grad():
                explained = 1 - float(torch.var(returns - value(cond)) / (torch.var(returns) + 1e-8))
            run.metrics.log(
                {**stats, "charts/success": successes[-1], "losses/value": value_loss, "charts/value_explained_variance": explained,
                 "losses/distill": distill_loss, "charts/decisions": len(cond)},
                it,
            )  # fmt: skip
            save_policy(run.snapshot_dir(it), _with_config(model, own_config), ckpt.normalizer, consistency=head, extra={**ckpt.extra, "stage": "online", "iteration": it})
            bar.update(1)
            bar.set_postfix(success=f"{successes[-1]:.2f}")
        bar.close()
        store.close()

        # 5. hand on the best of the start and the scored snapshots (deterministic, as deployed)
        selected, selection = "last", ()
        final = _with_config(model, own_config)
        if config.select_episodes:
            selected, selection, path = select_policy(robot, task, config, run)
            if selected == "start":
                final = _with_config(build_from_checkpoint(ckpt, device=str(device))[0], own_config)
                head, done = (ConsistencyHead.from_policy(final), 0) if head is not None else (None, 0)
            else:
                final, head = build_from_checkpoint(load_checkpoint(path, kind=KIND), device=str(device))
                done = (int(selected.split()[1]) + 1) * config.distill_steps
            if head is not None:  # the head of the policy handed on gets the whole distillation budget
                states, steps = cond, config.distill_steps * config.iterations - done
                if config.distill_data:
                    store = ZarrEpisodeStore.open(config.distill_data)
                    states, steps = encode_store(store, final, ckpt.normalizer, gamma=config.gamma, device=device).features, steps + done
                head_opt = make_head_optimizer(head, config.distill_lr)
                for _ in range(steps):
                    idx = torch.randint(0, len(states), (min(256, len(states)),), generator=gen).to(device)
                    distill_step(final, head, head_opt, states[idx], gen)
            run.metrics.log({"charts/selected_success": max(s for _, s, _ in selection)}, config.iterations)
    save_policy(run.policy_dir, final, ckpt.normalizer, consistency=head, extra={**ckpt.extra, "stage": "online", "selected": selected})
    report = OnlineReport(
        run=str(run.path),
        policy=str(run.policy_dir),
        iterations=config.iterations,
        episodes=config.iterations * config.episodes_per_iteration,
        success_first=successes[0],
        success_last=successes[-1],
        minutes=(time.perf_counter() - started) / 60,
        selected=selected,
        selection=selection,
    )
    run.write_report(report)
    run.close()
    return report


def select_policy(robot, task, config: OnlineConfig, run: RunDir) -> tuple[str, tuple[tuple[str, float, float], ...], Path]:
    """Score the starting policy and the snapshots on the same seeds; the best wins, earlier on ties."""
    last = config.iterations - 1
    candidates = [("start", policy_dir(config.policy))] + [
        (f"iteration {it}", run.snapshot_dir(it)) for it in range(config.iterations) if (it + 1) % config.select_every == 0 or it == last
    ]
    scored = []
    for name, path in candidates:
        controller = DiffusionController.load(path, device=config.device, seed=config.seed)
        r = evaluate(robot, task, controller, episodes=config.select_episodes, seed=SELECTION_SEED + 1000 * config.seed)
        scored.append((name, r.success_rate, r.mean_return))
    best = max(range(len(scored)), key=lambda i: (scored[i][1], scored[i][2], -i))
    return scored[best][0], tuple(scored), candidates[best][1]


@torch.no_grad()
def collect_episode(
    robot: Robot, task: Task, controller: DiffusionController, out: Decisions, gamma: float, gen: torch.Generator, *, seed: int
) -> tuple[dict[str, np.ndarray], bool]:
    """One stochastic episode; chunk decisions go to ``out``, the frames are returned for the store."""
    model, ta = controller.model, controller.n_action_steps
    frames = EpisodeFrames(list(robot.observation_features))
    controller.reset()
    obs = robot.reset(seed)
    steps, success = 0, False
    while steps < task.max_steps and not success:
        controller.push_observation(obs)
        cond = controller.condition()
        chain = model.sample_chain(cond, generator=gen)
        reward, n = 0.0, 0
        for action in controller.unnormalize_actions(chain.actions[0, :ta]):
            applied = robot.send_action(action)
            next_obs = robot.get_observation()
            outcome = task.evaluate(next_obs, applied)
            success = outcome.success
            n, steps = n + 1, steps + 1
            ended = success or steps >= task.max_steps
            frames.add(obs, applied, outcome.reward, success, ended)
            reward += gamma ** (n - 1) * outcome.reward
            obs = next_obs
            if ended:
                break
            if n < ta:  # frames inside the chunk enter the history like in closed-loop control
                controller.push_observation(obs)
        out.cond.append(cond)
        out.chains.append(chain)
        out.rewards.append(reward)
        out.discounts.append(gamma**n)
        out.terminal.append(success)
        out.last.append(ended)
        out.next_cond.append(controller.peek_condition(obs))
    return frames.arrays(), success


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


def _value_epoch(value, optimizer, cond, returns, minibatch: int, gen: torch.Generator) -> float:
    order = torch.randperm(len(cond), generator=gen)
    loss = torch.zeros(())
    for start in range(0, len(order), minibatch):
        idx = order[start : start + minibatch].to(cond.device)
        loss = F.mse_loss(value(cond[idx]), returns[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _with_config(model, config):
    """The model as saved: its own sampler settings, not the fine-tuning std floor."""
    saved = copy.copy(model)
    saved.config = config
    return saved


def _stack_chains(chains: list):
    from policies.diffusion import Chain

    return Chain(torch.cat([c.samples for c in chains]), torch.cat([c.log_probs for c in chains]), chains[0].timesteps)
