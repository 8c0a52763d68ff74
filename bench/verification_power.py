"""How often an offline round's verification keeps a change, by how much the change is really worth.

Simulates paired verification episodes: on each seed the challenger alone succeeds with probability ``win``, the
incumbent alone with ``loss`` (both or neither otherwise), and on the seeds both solve the challenger takes fewer
steps with probability ``faster`` (0.5: the same pace). Runs :class:`workflow.verification.Verifier` on them with
each rule and prints, per kind of change and rule, the share of trials that kept the change and the verification
episodes it cost per policy on average. The kinds are read off the main job (push-rim from 30 hesitant
demonstrations): its offline round won 44 and lost 21 of 200 paired seeds (docs/RESULTS.md, session 22). The
rules with pace also keep a change that is faster and at most a margin behind in success (``Verifier(pace_margin=...)``):
the faster losses measure what that margin lets through.

    python -m bench.verification_power [--trials 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from robot.report import format_table
from workflow.rollout import EvalReport
from workflow.verification import Verifier

CHANGES = {  # (wins, losses, faster) per paired seed
    "the main job's gain (+11.5 points)": (0.22, 0.105, 0.5),
    "a smaller gain (+5 points)": (0.18, 0.13, 0.5),
    "no change": (0.16, 0.16, 0.5),
    "a loss (-5 points)": (0.13, 0.18, 0.5),
    "no change, faster": (0.16, 0.16, 0.75),
    "a loss (-2 points), faster": (0.15, 0.17, 0.75),
    "a loss (-3 points), faster": (0.145, 0.175, 0.75),
    "a loss (-5 points), faster": (0.13, 0.18, 0.75),
    "a loss (-10 points), faster": (0.10, 0.20, 0.75),
}
RULES = {  # (look, most, max_p, pace margin)
    "one look of 50, p 0.25 (before session 24)": (50, 50, 0.25, None),
    "one look of 100, p 0.25": (100, 100, 0.25, None),
    "looks of 50 up to 200, p 0.1 (session 24)": (50, 200, 0.1, None),
    "the same, or faster and not behind": (50, 200, 0.1, 0.0),
    "the same, or faster and at most 1 point behind (default)": (50, 200, 0.1, 0.01),
    "the same, or faster and at most 2 points behind": (50, 200, 0.1, 0.02),
}


def trial(rng: np.random.Generator, win: float, loss: float, look: int, most: int, max_p: float, faster: float = 0.5,
          pace_margin: float | None = None) -> tuple[bool, int]:  # fmt: skip
    """One verification of a change worth ``win``/``loss`` (and ``faster``): whether it was kept, and its episodes per policy."""
    kind = rng.choice(3, size=most, p=[win, loss, 1 - win - loss])  # 0: the challenger alone, 1: the incumbent alone
    both = rng.random(most) < 0.5  # seeds neither decides: both succeed or both fail
    outcomes = {"incumbent": (kind == 1) | ((kind == 2) & both), "challenger": (kind == 0) | ((kind == 2) & both)}
    quicker = rng.random(most) < faster  # where both succeed: 40 steps against 50, or 60
    lengths = {"incumbent": np.where(outcomes["incumbent"], 50, 100), "challenger": np.where(outcomes["challenger"], np.where(quicker, 40, 60), 100)}

    def run(name: str, path: Path, first: int, episodes: int) -> EvalReport:
        s = tuple(bool(x) for x in outcomes[name][first : first + episodes])
        n = tuple(int(x) for x in lengths[name][first : first + episodes])
        return EvalReport("sim", episodes, float(np.mean(s)), 0.0, 0.0, None, None, tuple(range(first, first + episodes)), s, lengths=n)

    verdict = Verifier(run, first_seed=0, look=look, most=most, max_p=max_p, pace_margin=pace_margin).judge(("incumbent", "i"), ("challenger", "c"))
    return verdict.kept, verdict.episodes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.verification_power", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=2000, help="simulated verifications per change and rule")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    rows = []
    for change, (win, loss, faster) in CHANGES.items():
        for rule, (look, most, max_p, margin) in RULES.items():
            results = [trial(rng, win, loss, look, most, max_p, faster, margin) for _ in range(a.trials)]
            rows.append([change, rule, f"{np.mean([k for k, _ in results]):.0%}", f"{np.mean([n for _, n in results]):.0f}"])
    print(format_table(["change", "rule", "kept", "episodes per policy"], rows))
    print(f"{a.trials} simulated verifications per row (seed {a.seed})")


if __name__ == "__main__":
    main()
