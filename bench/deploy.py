"""Deployment loop rate and jitter: ``robot deploy`` on push at fixed rates, DDIM vs the one-step head.

    python -m bench.deploy [--rates 30 100] [--episodes 2] [--max-steps 100] [--robots sim:push]

The policy is the kit's chunk preset with freshly initialised weights and a
one-step head (timing does not depend on what the weights learned) and a
normaliser fitted on the robot's own action range. Each row is one
``workflow.deploy.deploy`` session with background inference; jitter is
|measured period - requested period| per tick. ``served:sim:push`` puts the
simulated arm behind ``robot serve`` (in this process, on loopback) and deploys
through the ``remote`` client, so the rows compare the loop locally and through
the server.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from policies.consistency import ConsistencyHead
from policies.diffusion import DiffusionPolicy
from robot.normalize import Normalizer
from robot.report import format_table
from robot.types import ACTION
from workflow.imitation import normalizer_modes
from workflow.policy import save_policy
from workflow.presets import policy_preset


def untrained_policy(path: Path, task: str = "push", fps: float = 10.0) -> Path:
    """A chunk-preset policy with a one-step head for ``task``'s features, saved as a checkpoint."""
    from hardware.registry import make_sim

    robot, _ = make_sim(task)
    features = {k: f for k, f in robot.observation_features.items()}
    action = robot.action_features[ACTION]
    model = DiffusionPolicy(policy_preset("chunk"), features, {ACTION: action}).eval()
    rng = np.random.default_rng(0)
    samples = {k: rng.uniform(-1, 1, (64, *f.shape)).astype(np.float32) for k, f in features.items()}
    samples[ACTION] = rng.uniform(action.low, action.high, (64, *action.shape)).astype(np.float32)
    normalizer = Normalizer.fit(samples, normalizer_modes({**features, ACTION: action}))
    save_policy(path, model, normalizer, consistency=ConsistencyHead.from_policy(model), extra={"task": task, "fps": fps, "stage": "bench"})
    return path


def _deploy(cfg, spec: str):
    """``served:sim:push`` runs the sim arm behind an in-process ``robot serve`` on loopback and
    deploys through ``RemoteRobot`` (the task scores the served scene, which lives in this process)."""
    from workflow.deploy import deploy

    if not spec.startswith("served:"):
        return deploy(cfg, stream=io.StringIO())
    from hardware.registry import open_robot
    from hardware.remote import RemoteConfig, RemoteRobot, RobotServer, ServerConfig

    arm, task = open_robot(cfg.robot)
    token = "bench-deploy-token-0123456789"
    with RobotServer(arm, token, ServerConfig(port=0)) as server:
        host, port = server.address
        return deploy(cfg, robot=RemoteRobot(RemoteConfig(host=host, port=port), token=token), task=task, stream=io.StringIO())


def run(rates: list[float], robots: list[str], episodes: int, max_steps: int, chunks: str) -> list[list]:
    from workflow.deploy import DeployConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        policy = untrained_policy(Path(tmp) / "policy")
        for robot in robots:
            for sampler in ("ddim", "consistency"):
                for hz in rates:
                    out = Path(tmp) / f"{robot.replace(':', '-')}-{sampler}-{hz}.zarr"
                    cfg = DeployConfig(policy=policy, robot=robot.removeprefix("served:"), episodes=episodes, hz=hz, max_steps=max_steps,
                                       sampler=sampler, chunks=chunks, inference="background", out=out)  # fmt: skip
                    r = _deploy(cfg, robot)
                    inf = np.asarray(r.inference_ms)
                    held = sum(e.held for e in r.episodes)
                    rows.append([robot, sampler, f"{hz:g}", f"{r.rate.mean_hz:.1f}", r.rate.jitter_p50_ms, r.rate.jitter_p99_ms,
                                 r.rate.overruns, float(np.mean(inf)), float(np.percentile(inf, 95)),
                                 f"{np.mean(r.action_age_ticks):.2f}", r.stale_dropped, held])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=float, nargs="+", default=[30.0, 100.0])
    p.add_argument("--robots", nargs="+", default=["sim:push", "served:sim:push"], help="robot specs; served:SPEC runs SPEC behind robot serve on loopback")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--chunks", default="receding", choices=["receding", "ensemble"])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = run(a.rates, a.robots, a.episodes, a.max_steps, a.chunks)
    title = f"robot deploy loop, {a.chunks} chunks (H 8, Ta 4), background inference, {a.episodes} x {a.max_steps} ticks per row"
    print(format_table(["robot", "head", "Hz asked", "Hz held", "jitter p50 ms", "jitter p99 ms", "overruns",
                        "inference ms", "inference p95", "plan age ticks", "stale dropped", "held ticks"], rows, title=title))  # fmt: skip


if __name__ == "__main__":
    main()
