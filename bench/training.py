"""Training throughput per stage: samples (or updates) per second of each stage's inner step.

    python -m bench.training [--seconds 5] [--threads 1] [--device cpu]

Synthetic inputs of the push task's sizes (9-D state, 2-D action, an 84x84
camera for the RGB row), the kit's chunk preset (H 8, Ta 4, 10 DDIM steps) and
each stage's default batch: imitation 64 windows, IQL critics 256
transitions, chain PPO 256 chains of K = 10 steps, distillation 256 states (the teacher's
chains that label them, then one regression step of each student on them).
A step counts as done when its optimiser step returned.
"""

from __future__ import annotations

import argparse
import time

import torch

from policies.consistency import COPY, MLP, ConsistencyHead
from policies.critics import CriticConfig, IqlCritics
from policies.diffusion import DiffusionPolicy
from robot.report import format_table
from robot.types import Feature
from workflow.distill import distill_targets, make_head_optimizer, regress_step
from workflow.ppo import chain_ppo_loss, denoiser_parameters, normalize_advantages
from workflow.presets import policy_preset

STATE = {"observation.state": Feature((9,))}
RGB = {"observation.images.top": Feature((84, 84, 3), "uint8"), **STATE}
ACTION = {"action": Feature((2,))}


def _rate(step, seconds: float) -> tuple[float, int]:
    """Steps per second of ``step()`` over about ``seconds`` (after one warm-up step)."""
    step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - start), n


def _obs(features: dict[str, Feature], batch: int, n_obs: int, device: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, f in features.items():
        if f.dtype == "uint8":
            out[key] = torch.randint(0, 255, (batch, n_obs, *f.shape), dtype=torch.uint8, device=device)
        else:
            out[key] = torch.randn(batch, n_obs, *f.shape, device=device)
    return out


def run(seconds: float, device: str) -> list[list]:
    rows = []
    config = policy_preset("chunk")
    for name, features, batch in (("state", STATE, 64), ("rgb 84x84", RGB, 64)):
        policy = DiffusionPolicy(config, features, ACTION, device=device).train()
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        obs, actions = _obs(features, batch, config.n_obs_steps, device), torch.randn(batch, config.horizon, 2, device=device)

        def imitation_step() -> None:
            loss = policy.compute_loss(obs, actions)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        per_s, n = _rate(imitation_step, seconds)
        rows.append(["imitation", name, batch, per_s, per_s * batch, n])

    policy = DiffusionPolicy(config, STATE, ACTION, device=device).eval()
    cond = policy.encode(_obs(STATE, 256, config.n_obs_steps, device)).detach()  # (256, Dc)
    ta = config.n_action_steps
    critics = IqlCritics(cond.shape[1], ta * 2, config=CriticConfig.for_horizon(ta), device=device)
    critic_opt = critics.make_optimizer()
    batch = {"features": cond, "actions": torch.randn(256, ta * 2), "rewards": torch.randn(256), "discounts": torch.full((256,), 0.96),
             "terminals": torch.zeros(256), "next_features": cond.roll(1, 0)}  # fmt: skip
    per_s, n = _rate(lambda: critics.update(batch, critic_opt), seconds)
    rows.append(["offline: IQL critics", "features", 256, per_s, per_s * 256, n])

    params = denoiser_parameters(policy)
    for p in params:
        p.requires_grad_(True)
    ppo_opt = torch.optim.Adam(params, lr=1e-5)

    def ppo_step() -> None:
        chain = policy.sample_chain(cond)
        with torch.no_grad():
            adv = normalize_advantages(critics.advantage(cond, chain.actions[:, :ta].flatten(1)))
        loss, _ = chain_ppo_loss(policy, cond, chain, adv, 0.25)
        ppo_opt.zero_grad(set_to_none=True)
        loss.backward()
        ppo_opt.step()

    per_s, n = _rate(ppo_step, seconds)
    rows.append(["offline/online: chain PPO", f"K={config.num_inference_steps}", 256, per_s, per_s * 256, n])

    gen = torch.Generator().manual_seed(0)
    for student in (MLP, COPY):  # the teacher's chain labels a batch once; the student regresses on it many times
        head = ConsistencyHead.from_policy(policy, student)
        targets = distill_targets(policy, head, cond, gen)
        if student == COPY:
            per_s, n = _rate(lambda: distill_targets(policy, head, cond, gen), seconds)
            rows.append(["distillation: teacher's targets", "features", 256, per_s, per_s * 256, n])
        head_opt = make_head_optimizer(head, student.lr)
        per_s, n = _rate(lambda: regress_step(head, head_opt, targets), seconds)
        rows.append([f"distillation: {student.kind} student", "features", 256, per_s, per_s * 256, n])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = run(a.seconds, a.device)
    title = f"Training throughput per stage, device {a.device}, torch threads {a.threads}"
    print(format_table(["stage", "input", "batch", "steps/s", "samples/s", "steps measured"], rows, title=title))


if __name__ == "__main__":
    main()
