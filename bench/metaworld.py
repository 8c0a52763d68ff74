"""Meta-World's scripted experts through the kit's safety layer: success per task, clean and noisy, and the guards.

    python -m bench.metaworld [--tasks all|button-press-v3,...] [--seeds 10] [--noise 0.2]

Each task is ``hardware.registry.make_sim("metaworld:<task>")`` (the Sawyer's own safety config) driven by
its expert (``metaworld.policies``) on seeds 0..N-1 through the episode engine; an episode ends at success or
after Meta-World's 500 steps. Needs ``pip install -e ".[metaworld]"``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from bench.experts import run_expert  # noqa: E402
from robot.report import format_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="all")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.2)
    a = p.parse_args(argv)
    from sim.metaworld_scene import metaworld_tasks

    tasks = metaworld_tasks() if a.tasks == "all" else tuple(a.tasks.split(","))
    rows, total, start = [], [0, 0], time.perf_counter()
    for task in tasks:
        clean, steps, guards = run_expert(f"metaworld:{task}", a.seeds, 0.0)
        noisy, _, _ = run_expert(f"metaworld:{task}", a.seeds, a.noise) if a.noise else (None, 0, {})
        total[0] += clean
        total[1] += noisy or 0
        guard_text = ", ".join(f"{k} {v / steps:.0%}" for k, v in guards.items()) or "none"
        rows.append([task, f"{clean}/{a.seeds}", f"{noisy}/{a.seeds}" if a.noise else "-", round(steps / a.seeds), guard_text])
    n = a.seeds * len(tasks)
    rows.append(["all", f"{total[0]}/{n} ({total[0] / n:.1%})", f"{total[1]}/{n} ({total[1] / n:.1%})" if a.noise else "-", "", ""])
    print(format_table(["task", "clean expert", f"noise {a.noise:g}", "steps (clean, mean)", "guards (clean, share of steps)"], rows,
                       title=f"Meta-World experts through the safety layer, seeds 0-{a.seeds - 1} ({time.perf_counter() - start:.0f} s)"))  # fmt: skip


if __name__ == "__main__":
    main()
