"""Sim episodes per CPU minute, one at a time against side by side in lanes (``workflow.lanes``).

    python -m bench.lanes [--task push-rim] [--episodes 64] [--lanes 1,8,32] [--sampler ddpm-mean] [--threads 1]

The policy is the chunk preset (``workflow.presets``) with freshly initialised weights on the task's state:
what an episode costs does not depend on what the weights learned, only on its length, and an untrained
policy runs every episode to the task's step limit. Each lane count runs the same seeds; ``success`` is
there to show the episodes agree, not to score the policy.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from policies.diffusion import DiffusionPolicy
from robot.normalize import Normalizer
from robot.report import format_table
from robot.types import ACTION
from workflow.envs import make_sim_for, sim_lanes
from workflow.policy import DiffusionController
from workflow.presets import policy_preset
from workflow.rollout import evaluate


def fresh_controller(task: str, sampler: str) -> DiffusionController:
    """A freshly initialised chunk policy on ``task``'s state, its normaliser fitted to the reset states and the action limits."""
    robot, _ = make_sim_for(task, {})
    with robot:
        states = np.stack([robot.reset(seed)["observation.state"] for seed in range(8)])
    features = {k: f for k, f in robot.observation_features.items() if k == "observation.state"}
    actions = robot.action_features[ACTION]
    policy = DiffusionPolicy(policy_preset("chunk", deterministic_sampler=sampler), features, {ACTION: actions}, device="cpu").eval()
    normalizer = Normalizer.fit({"observation.state": states, ACTION: np.stack([-np.ones(actions.shape), np.ones(actions.shape)])},
                                {"observation.state": "limits", ACTION: "limits"})  # fmt: skip
    return DiffusionController(policy, normalizer, sampler=sampler)


def run(task: str, episodes: int, lane_counts: list[int], sampler: str) -> list[list]:
    controller = fresh_controller(task, sampler)
    rows, base = [], None
    for count in lane_counts:
        robot, sim_task = make_sim_for(task, controller.input_features)
        lanes = sim_lanes(task, controller.input_features, count)
        with robot, lanes or contextlib.nullcontext():
            cpu, wall = time.process_time(), time.perf_counter()  # building the lanes' sims counts: a run builds them once
            report = evaluate(robot, sim_task, controller, episodes=episodes, seed=0, lanes=lanes)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        steps = sum(report.lengths)
        per_minute = episodes / (cpu / 60)
        base = base or per_minute
        rows.append([count, episodes, steps, f"{report.success_rate:.1%}", round(cpu, 1), round(wall, 1), round(1e3 * cpu / steps, 2), round(per_minute),
                     f"{per_minute / base:.1f}x"])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="push-rim")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--lanes", default="1,8,32", help="comma-separated lane counts")
    p.add_argument("--sampler", default="ddpm-mean")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    counts = [int(x) for x in a.lanes.split(",")]
    rows = run(a.task, a.episodes, counts, a.sampler)
    title = f"Sim episodes of a fresh chunk policy on {a.task} ({a.sampler}, 10 denoising steps), torch threads {a.threads}"
    print(format_table(["lanes", "episodes", "env steps", "success", "CPU s", "wall s", "CPU ms / step", "episodes / CPU min", "vs 1 lane"], rows, title=title))


if __name__ == "__main__":
    main()
