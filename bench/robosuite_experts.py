"""The robosuite family's scripted experts through the kit's safety layer: success per environment and arm.

    python -m bench.robosuite_experts [--envs Lift,Stack,PickPlaceCan,Door] [--arms Panda,IIWA,UR5e,Kinova3]
                                      [--seeds 50] [--noise 0]

Each cell is ``hardware.registry.make_sim("robosuite:<Env>:<Arm>")`` (the arm's own safety config) driven by the
environment's expert on seeds 0..N-1 through the episode engine; an episode ends at success or at the task's step
limit. The table gives the success count, the mean episode length (a failure counts the limit) and each safety
guard's count over all the cell's steps.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from bench.experts import run_expert  # noqa: E402
from robot.report import format_table  # noqa: E402

EXPERT_ENVS = ("Lift", "Stack", "PickPlaceCan", "Door")
ARMS = ("Panda", "IIWA", "UR5e", "Kinova3")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", default=",".join(EXPERT_ENVS), help="comma-separated robosuite environments")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated robosuite arms")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--noise", type=float, default=0.0, help="expert noise in [0, 1]; 0 is the clean expert")
    a = p.parse_args(argv)
    rows, start = [], time.perf_counter()
    for env in a.envs.split(","):
        for arm in a.arms.split(","):
            began = time.perf_counter()
            wins, steps, guards = run_expert(f"robosuite:{env}:{arm}", a.seeds, a.noise)
            guard_text = ", ".join(f"{k} {v}" for k, v in guards.items()) or "none"
            rows.append([env, arm, f"{wins}/{a.seeds} ({wins / a.seeds:.0%})", round(steps / a.seeds), guard_text, round(time.perf_counter() - began)])
            print(f"{env} {arm}: {rows[-1][2]}", flush=True)
    print(format_table(["env", "arm", "success", "steps (mean)", "safety guards (count over all steps)", "seconds"], rows,
                       title=f"robosuite experts (noise {a.noise:g}) through the safety layer, seeds 0-{a.seeds - 1} "
                             f"({time.perf_counter() - start:.0f} s)"))  # fmt: skip


if __name__ == "__main__":
    main()
