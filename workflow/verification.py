"""Sequential paired verification: does a change beat the policy it would replace, on as few episodes as it takes?

An offline round's accepted (or retrained) policy and the policy it would replace run with their deterministic
sampler on the same seeds, in looks of ``look`` episodes each. After every look the episodes only one of them
solved decide (the one-sided sign test of :mod:`workflow.paired`):

- the change is kept as soon as its wins are beyond noise (p <= ``max_p``);
- it is refused as soon as it has won no more episodes than it lost (it is not ahead: more episodes would
  only tell by how much), or when ``most`` episodes have not settled it.

A clear gain or a clear loss is settled at the first look; only a change that leads without yet being beyond
noise costs more episodes. Against one look of 50 at p 0.25 (the rule before session 24) this keeps more real
gains and lets fewer ties through: in ``bench.verification_power``'s simulation of a change the size of the main
job's offline gain (it wins 22% of the seeds and loses 10.5%), one look keeps it 69% of the time and a change
worth nothing 20%; looks of 50 up to 200 at p 0.1 keep it 89% and a change worth nothing 14%, on 84 episodes a
policy on average (docs/RESULTS.md, session 24).

Each policy's episodes run once: a policy judged twice in a round (the reference, then the bar a retrained
policy must clear) reuses the seeds it already ran and runs only the ones it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from workflow.paired import pick_beyond_noise, sign_test_p, wins_losses
from workflow.rollout import EvalReport

RunEpisodes = Callable[[str, Path, int, int], EvalReport]
"""``(name, policy path, first seed, episodes)`` -> that policy's report on those consecutive seeds."""


@dataclass(frozen=True)
class Verdict:
    kept: bool
    """The challenger's paired wins over the incumbent are beyond noise."""
    incumbent: EvalReport
    """The incumbent on the judged seeds."""
    challenger: EvalReport
    """The challenger on the same seeds."""

    @property
    def episodes(self) -> int:
        return self.challenger.episodes

    @property
    def wins_losses(self) -> tuple[int, int]:
        return wins_losses(self.incumbent.successes, self.challenger.successes)

    def line(self, incumbent: str) -> str:
        """The challenger's success against ``incumbent``'s (what to call it), with the paired evidence."""
        wins, losses = self.wins_losses
        return (f"{self.challenger.success_rate:.0%} vs {incumbent} {self.incumbent.success_rate:.0%} over {self.episodes} verification "
                f"episodes (won {wins}, lost {losses}, p = {sign_test_p(wins, losses, 'greater'):.2f})")  # fmt: skip


def joined(first: EvalReport, then: EvalReport) -> EvalReport:
    """One report of ``first``'s episodes followed by ``then``'s (the next seeds of the same policy)."""
    n, m = first.episodes, then.episodes

    def mean(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else (a * n + b * m) / (n + m)

    safety = dict(first.safety)
    for k, v in then.safety.items():
        safety[k] = safety.get(k, 0) + v
    successes = first.successes + then.successes
    return replace(first, episodes=n + m, success_rate=float(np.mean(successes)), mean_return=mean(first.mean_return, then.mean_return),
                   mean_length=mean(first.mean_length, then.mean_length), inference_ms_mean=mean(first.inference_ms_mean, then.inference_ms_mean),
                   inference_ms_p95=max((v for v in (first.inference_ms_p95, then.inference_ms_p95) if v is not None), default=None),
                   seeds=first.seeds + then.seeds, successes=successes, lengths=first.lengths + then.lengths, returns=first.returns + then.returns,
                   safety=safety, seconds=first.seconds + then.seconds)  # fmt: skip


def leading(report: EvalReport, episodes: int) -> EvalReport:
    """``report`` cut to its first ``episodes`` episodes (rates recomputed; latency and wall time kept whole)."""
    if episodes >= report.episodes:
        return report
    successes, lengths, returns = report.successes[:episodes], report.lengths[:episodes], report.returns[:episodes]
    return replace(report, episodes=episodes, seeds=report.seeds[:episodes], successes=successes, lengths=lengths, returns=returns,
                   success_rate=float(np.mean(successes)), mean_return=float(np.mean(returns)) if returns else report.mean_return,
                   mean_length=float(np.mean(lengths)) if lengths else report.mean_length)  # fmt: skip


class Verifier:
    """Runs and judges verification episodes on consecutive seeds from ``first_seed``, each policy's once."""

    def __init__(self, run: RunEpisodes, *, first_seed: int, look: int, most: int, max_p: float):
        if look < 1 or most < look:
            raise ValueError(f"need 1 <= look <= most, got look {look} and most {most}")
        if not 0 < max_p <= 1:
            raise ValueError(f"max_p must be in (0, 1], got {max_p}")
        self.run, self.first_seed, self.look, self.most, self.max_p = run, first_seed, look, most, max_p
        self.reports: dict[str, EvalReport] = {}
        self.paths: dict[str, Path] = {}

    def report(self, name: str, path: str | Path, episodes: int) -> EvalReport:
        """``name``'s first ``episodes`` verification episodes, running only those it has not run yet."""
        path = Path(path)
        if self.paths.setdefault(name, path) != path:
            raise ValueError(f"verification name {name!r} was {self.paths[name]}, not {path}")
        have = self.reports.get(name)
        ran = have.episodes if have is not None else 0
        if ran < episodes:
            more = self.run(name, path, self.first_seed + ran, episodes - ran)
            self.reports[name] = more if have is None else joined(have, more)
        return leading(self.reports[name], episodes)

    def judge(self, incumbent: tuple[str, str | Path], challenger: tuple[str, str | Path]) -> Verdict:
        """Whether ``challenger`` (name, policy path) beats ``incumbent`` beyond noise, looking ``look`` episodes at a time."""
        episodes = self.look
        while True:
            before, after = self.report(*incumbent, episodes), self.report(*challenger, episodes)
            if pick_beyond_noise([before.successes, after.successes], self.max_p) == 1:
                return Verdict(True, before, after)
            wins, losses = wins_losses(before.successes, after.successes)
            if wins <= losses or episodes >= self.most:
                return Verdict(False, before, after)
            episodes = min(episodes + self.look, self.most)

    @property
    def episodes(self) -> int:
        """Verification episodes run so far, every policy's together."""
        return sum(r.episodes for r in self.reports.values())

    @property
    def steps(self) -> int:
        return sum(sum(r.lengths) for r in self.reports.values())

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.reports.values())
