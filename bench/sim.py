"""Simulation throughput: control steps per second per task, with and without a camera,
single environment and gymnasium AsyncVectorEnv, plus each scripted expert's success.

    python -m bench.sim [--tasks push,lift,lift-ur5e,can] [--steps 200] [--envs 2] [--expert-seeds 50]

Single-env numbers step the safety-wrapped robot (``hardware.registry.make_sim``)
with random in-limit actions; vectorised numbers step ``hardware.gym.make_vector_env``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from robot.report import format_table  # noqa: E402

CAMERAS = {"push": ("top",), "lift": ("agentview",), "lift-ur5e": ("agentview",), "can": ("agentview",)}


def single_rate(task: str, steps: int, cameras: tuple[str, ...] | None) -> float:
    from hardware.registry import make_sim

    robot, _ = make_sim(task, cameras=cameras, image_size=84) if cameras else make_sim(task)
    rng = np.random.default_rng(0)
    feature = robot.action_features["action"]
    low, high = np.asarray(feature.low, np.float32), np.asarray(feature.high, np.float32)
    with robot:
        robot.reset(0)
        start = time.perf_counter()
        for _ in range(steps):
            robot.send_action(rng.uniform(low, high).astype(np.float32))
            robot.get_observation()
        return steps / (time.perf_counter() - start)


def vector_rate(task: str, steps: int, envs: int, cameras: tuple[str, ...] | None) -> float:
    from hardware.gym import make_vector_env

    opts = {"cameras": cameras, "image_size": 84} if cameras else {}
    venv = make_vector_env(task, envs, **opts)
    try:
        venv.reset(seed=0)
        start = time.perf_counter()
        for _ in range(steps // envs):
            venv.step(venv.action_space.sample())
        return (steps // envs) * envs / (time.perf_counter() - start)
    finally:
        venv.close()


def expert_success(task: str, seeds: int, noise: float) -> float:
    from hardware.registry import make_sim

    robot, sim_task = make_sim(task)
    wins = 0
    with robot:
        for seed in range(seeds):
            expert = sim_task.scene.expert(noise=noise, seed=seed)
            expert.reset()
            obs = robot.reset(seed)
            for _ in range(sim_task.max_steps):
                applied = robot.send_action(expert.act(obs))
                obs = robot.get_observation()
                if sim_task.evaluate(obs, applied).success:
                    wins += 1
                    break
    return wins / seeds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="push,lift,lift-ur5e,can")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--envs", type=int, default=2)
    p.add_argument("--expert-seeds", type=int, default=50)
    a = p.parse_args(argv)
    speed, experts = [], []
    for task in a.tasks.split(","):
        cams = CAMERAS.get(task)
        speed.append([
            task,
            single_rate(task, a.steps, None),
            single_rate(task, a.steps, cams),
            vector_rate(task, a.steps, a.envs, None),
            vector_rate(task, a.steps, a.envs, cams),
        ])  # fmt: skip
        if a.expert_seeds:
            experts.append([task, a.expert_seeds, f"{expert_success(task, a.expert_seeds, 0.0):.0%}", f"{expert_success(task, a.expert_seeds, 0.5):.0%}"])
    print(format_table(["task", "steps/s", "steps/s, 84x84 camera", f"steps/s, {a.envs} envs", f"steps/s, {a.envs} envs + camera"], speed, title="Simulation throughput (control steps, safety layer included)"))
    if experts:
        print()
        print(format_table(["task", "seeds", "clean expert", "noisy expert (0.5)"], experts, title="Scripted expert success"))


if __name__ == "__main__":
    main()
