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

With ``pace_margin`` a change may also be kept for speed, RL-100's other measure: when it is faster beyond noise
on the seeds both policies solved (the one-sided sign test of paired steps to success, at ``max_p``, and a lower
mean over them: lift's candidate was faster on 94 and slower on 18, and slower on average) the looks go
on to ``most`` episodes, and there it is kept if it lost at most ``pace_margin`` of them more than it won. That is
the non-inferiority margin. At 1 point over 200 episodes (the offline round's default) it keeps a faster change of
equal success 55% of the time, one really 2 points less successful 37%, 5 points less 14% and 10 points less 1%;
at 0 those are 46%, 31%, 11% and 1% (``python -m bench.verification_power``, session 36: a third of the seeds split,
a quarter of those both solve; docs/RESULTS.md). A change neither faster nor ahead is refused as before.

Each policy's episodes run once: a policy judged twice in a round (the reference, then the bar a retrained
policy must clear) reuses the seeds it already ran and runs only the ones it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from workflow.paired import PairedPace, paired_pace, pick_beyond_noise, sign_test_p, wins_losses
from workflow.rollout import EvalReport

RunEpisodes = Callable[[str, Path, int, int], EvalReport]
"""``(name, policy path, first seed, episodes)`` -> that policy's report on those consecutive seeds."""


@dataclass(frozen=True)
class Verdict:
    kept: bool
    """The challenger's paired wins over the incumbent are beyond noise (or, ``on_pace``, it is about as successful and faster)."""
    incumbent: EvalReport
    """The incumbent on the judged seeds."""
    challenger: EvalReport
    """The challenger on the same seeds."""
    on_pace: bool = False
    """Kept for speed: within the pace margin in success over the most episodes, faster beyond noise on the seeds both solved."""

    @property
    def episodes(self) -> int:
        return self.challenger.episodes

    @property
    def wins_losses(self) -> tuple[int, int]:
        return wins_losses(self.incumbent.successes, self.challenger.successes)

    @property
    def pace(self) -> PairedPace:
        """The challenger's steps to success against the incumbent's on the seeds both solved."""
        return _pace(self.incumbent, self.challenger)

    def line(self, incumbent: str) -> str:
        """The challenger's success against ``incumbent``'s (what to call it), with the paired evidence."""
        wins, losses = self.wins_losses
        line = (f"{self.challenger.success_rate:.0%} vs {incumbent} {self.incumbent.success_rate:.0%} over {self.episodes} verification "
                f"episodes (won {wins}, lost {losses}, p = {sign_test_p(wins, losses, 'greater'):.2f})")  # fmt: skip
        pace = self.pace
        if pace.both:  # reports without lengths carry none (``_pace``)
            line += (f"; {pace.steps_after:.1f} vs {pace.steps_before:.1f} steps on the {pace.both} seeds both solved (faster on "
                     f"{pace.faster}, slower on {pace.slower}, p = {pace.p:.2g})")  # fmt: skip
        return line


def _pace(incumbent: EvalReport, challenger: EvalReport) -> PairedPace:
    if not (incumbent.lengths and challenger.lengths):  # reports without lengths (older journals) carry no pace
        return PairedPace(0, 0, 0, None, None)
    return paired_pace(incumbent.successes, incumbent.lengths, challenger.successes, challenger.lengths)


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

    def __init__(self, run: RunEpisodes, *, first_seed: int, look: int, most: int, max_p: float, pace_margin: float | None = None):
        if look < 1 or most < look:
            raise ValueError(f"need 1 <= look <= most, got look {look} and most {most}")
        if not 0 < max_p <= 1:
            raise ValueError(f"max_p must be in (0, 1], got {max_p}")
        if pace_margin is not None and not 0 <= pace_margin < 1:
            raise ValueError(f"pace_margin must be in [0, 1) or None, got {pace_margin}")
        self.run, self.first_seed, self.look, self.most, self.max_p, self.pace_margin = run, first_seed, look, most, max_p, pace_margin
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
        """Whether ``challenger`` (name, policy path) beats ``incumbent`` beyond noise, looking ``look`` episodes at a
        time; with ``pace_margin``, or is faster beyond noise and at most that much behind in success over ``most``."""
        episodes = self.look
        while True:
            before, after = self.report(*incumbent, episodes), self.report(*challenger, episodes)
            if pick_beyond_noise([before.successes, after.successes], self.max_p) == 1:
                return Verdict(True, before, after)
            wins, losses = wins_losses(before.successes, after.successes)
            pace = _pace(before, after)  # faster on most shared seeds beyond noise, and on their mean (lift: 94 faster, 18 slower, mean up)
            faster = self.pace_margin is not None and pace.p <= self.max_p and pace.steps_after is not None and pace.steps_after < pace.steps_before
            if episodes >= self.most:
                on_pace = faster and losses - wins <= self.pace_margin * episodes
                return Verdict(on_pace, before, after, on_pace=on_pace)
            if wins <= losses and not faster:
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
