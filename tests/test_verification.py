"""Sequential paired verification (workflow.verification): looks of episodes until a change is beyond noise or is not ahead."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from workflow.paired import sign_test_p
from workflow.rollout import EvalReport
from workflow.verification import Verifier, joined, leading


def _report(seeds: range, successes: list[bool]) -> EvalReport:
    n = len(successes)
    return EvalReport("push", n, sum(successes) / n, sum(successes) / n, 50.0, 2.0, 3.0, tuple(seeds), tuple(successes),
                      lengths=tuple(50 for _ in seeds), returns=tuple(float(s) for s in successes), safety={"speed": 1}, seconds=1.0 * n)  # fmt: skip


class Sim:
    """Per-seed outcomes of named policies (steps: 50 a success unless ``steps`` names the policy's); records every run
    as (name, first seed, episodes)."""

    def __init__(self, steps: dict[str, int] | None = None, **outcomes: list[bool]):
        self.outcomes, self.steps, self.runs = outcomes, steps or {}, []

    def __call__(self, name: str, path: Path, first: int, episodes: int) -> EvalReport:
        self.runs.append((name, first, episodes))
        seeds = range(first, first + episodes)
        report = _report(seeds, [self.outcomes[name][s - 100] for s in seeds])
        return replace(report, lengths=tuple(self.steps.get(name, 50) if ok else 100 for ok in report.successes))


def _outcomes(wins: int, losses: int, n: int = 200, *, every: int = 1) -> tuple[list[bool], list[bool]]:
    """Reference and challenger on ``n`` seeds: the challenger wins ``wins`` and loses ``losses`` episodes, spread
    one every ``every`` seeds from the first, alternating win and loss while both are left."""
    reference, challenger = [i % 2 == 0 for i in range(n)], [i % 2 == 0 for i in range(n)]
    at = 1
    for kind in ["w", "l"] * max(wins, losses):
        if kind == "w" and wins:
            wins -= 1
            challenger[at] = True  # the reference fails odd seeds
        elif kind == "l" and losses:
            losses -= 1
            challenger[at - 1] = False  # the reference solves even seeds
        else:
            continue
        at += 2 * every
    return reference, challenger


def test_a_clear_gain_or_a_loss_is_settled_at_the_first_look():
    sim = Sim(reference=[False] * 200, accepted=[True] * 200)
    verifier = Verifier(sim, first_seed=100, look=50, most=200, max_p=0.1)
    verdict = verifier.judge(("reference", "r"), ("accepted", "a"))
    assert verdict.kept and verdict.episodes == 50 and verdict.wins_losses == (50, 0)
    assert sim.runs == [("reference", 100, 50), ("accepted", 100, 50)] and verifier.episodes == 100

    sim = Sim(reference=[True] * 200, accepted=[False] * 200)
    verdict = Verifier(sim, first_seed=100, look=50, most=200, max_p=0.1).judge(("reference", "r"), ("accepted", "a"))
    assert not verdict.kept and verdict.episodes == 50 and len(sim.runs) == 2


def test_a_change_that_leads_without_being_beyond_noise_gets_more_episodes_until_it_is():
    """The case session 23 met: an accepted push policy led 7 to 5 on 50 verification episodes (p = 0.39) and one
    look refused it, though over 200 seeds the same kind of change won 44 and lost 21."""
    reference, accepted = _outcomes(wins=28, losses=14, every=2)  # spread over 200 seeds: 7 won, 6 lost in the first 50
    sim = Sim(reference=reference, accepted=accepted)
    one_look = Verifier(sim, first_seed=100, look=50, most=50, max_p=0.1).judge(("reference", "r"), ("accepted", "a"))
    wins, losses = one_look.wins_losses
    assert wins > losses and sign_test_p(wins, losses, "greater") > 0.1 and not one_look.kept  # one look of 50: refused

    sim.runs.clear()
    verifier = Verifier(sim, first_seed=100, look=50, most=200, max_p=0.1)
    verdict = verifier.judge(("reference", "r"), ("accepted", "a"))
    wins, losses = verdict.wins_losses
    assert verdict.kept and 50 < verdict.episodes <= 200 and sign_test_p(wins, losses, "greater") <= 0.1
    assert verdict.incumbent.seeds == verdict.challenger.seeds == tuple(range(100, 100 + verdict.episodes))
    assert [r[1:] for r in sim.runs if r[0] == "accepted"] == [(100 + e, 50) for e in range(0, verdict.episodes, 50)]  # each seed once


def test_a_lead_that_never_gets_beyond_noise_is_refused_at_the_cap():
    reference, accepted = _outcomes(wins=21, losses=19)  # 13 won, 12 lost in the first 50; 21 and 19 from 80 on
    verdict = Verifier(Sim(reference=reference, accepted=accepted), first_seed=100, look=50, most=120, max_p=0.1).judge(
        ("reference", "r"), ("accepted", "a"))  # fmt: skip
    wins, losses = verdict.wins_losses
    assert not verdict.kept and verdict.episodes == 120 and wins > losses  # looks at 50, 100 and the cap


def test_a_policy_judged_twice_runs_only_the_seeds_it_lacks():
    reference, accepted = _outcomes(wins=28, losses=14, every=2)
    sim = Sim(reference=reference, accepted=[not s for s in reference], retrained=accepted)
    verifier = Verifier(sim, first_seed=100, look=50, most=200, max_p=0.1)
    assert not verifier.judge(("reference", "r"), ("accepted", "a")).kept  # refused at the first look
    verdict = verifier.judge(("reference", "r"), ("retrained", "t"))  # the bar the retrained policy must clear
    assert verdict.kept and verdict.incumbent.episodes == verdict.episodes
    reference_runs = [r[1:] for r in sim.runs if r[0] == "reference"]
    assert reference_runs == [(100 + e, 50) for e in range(0, verdict.episodes, 50)]  # the first 50 were not run again
    assert verifier.episodes == 2 * verdict.episodes + 50
    with pytest.raises(ValueError, match="verification name 'reference'"):
        verifier.report("reference", "another", 10)


def test_joined_and_leading_reports_recompute_what_their_episodes_say():
    first, then = _report(range(0, 2), [True, False]), _report(range(2, 5), [True, True, True])
    both = joined(first, then)
    assert both.episodes == 5 and both.seeds == (0, 1, 2, 3, 4) and both.success_rate == pytest.approx(0.8)
    assert both.mean_return == pytest.approx(0.8) and both.safety == {"speed": 2} and both.seconds == pytest.approx(5.0)
    head = leading(both, 2)
    assert head.seeds == (0, 1) and head.success_rate == 0.5 and head.mean_return == 0.5 and head.episodes == 2
    assert leading(both, 9) is both
    with pytest.raises(ValueError, match="look <= most"):
        Verifier(Sim(), first_seed=0, look=50, most=40, max_p=0.1)


def test_a_verdict_reads_as_the_round_prints_it():
    sim = Sim(reference=[False] * 200, accepted=[True] * 5 + [False] * 195)
    verdict = Verifier(sim, first_seed=100, look=10, most=10, max_p=0.1).judge(("reference", "r"), ("accepted", "a"))
    assert verdict.kept and verdict.line("reference") == "50% vs reference 0% over 10 verification episodes (won 5, lost 0, p = 0.03)"


def test_with_pace_a_faster_change_as_successful_is_kept_after_the_most_episodes():
    """push-hesitant's pace candidate (session 35): about as successful as its reference and nearly twice as fast,
    refused because verification counted successes alone. With ``pace`` the looks go on to ``most`` and keep it."""
    reference, accepted = _outcomes(wins=9, losses=9)  # a tie, split 4 won / 5 lost in the first look
    sim = Sim(steps={"accepted": 30}, reference=reference, accepted=accepted)
    assert not Verifier(sim, first_seed=100, look=50, most=200, max_p=0.1).judge(("reference", "r"), ("accepted", "a")).kept  # success alone
    sim.runs.clear()
    verdict = Verifier(sim, first_seed=100, look=50, most=200, max_p=0.1, pace_margin=0.0).judge(("reference", "r"), ("accepted", "a"))
    assert verdict.kept and verdict.on_pace and verdict.episodes == 200 and verdict.wins_losses == (9, 9)
    pace = verdict.pace
    assert pace.faster == pace.both > 0 and pace.slower == 0 and (pace.steps_before, pace.steps_after) == (50, 30)
    assert "30.0 vs 50.0 steps on the" in verdict.line("reference")


def test_with_pace_a_faster_change_behind_in_success_or_one_no_faster_is_refused():
    reference, behind = _outcomes(wins=8, losses=12)
    verdict = Verifier(Sim(steps={"accepted": 30}, reference=reference, accepted=behind), first_seed=100, look=50, most=200, max_p=0.1,
                       pace_margin=0.01).judge(("reference", "r"), ("accepted", "a"))  # fmt: skip
    assert not verdict.kept and not verdict.on_pace and verdict.episodes == 200  # faster: judged at the most, 2 points behind there
    reference, tied = _outcomes(wins=9, losses=9)
    sim = Sim(reference=reference, accepted=tied)  # the same pace
    verdict = Verifier(sim, first_seed=100, look=50, most=200, max_p=0.1, pace_margin=0.0).judge(("reference", "r"), ("accepted", "a"))
    assert not verdict.kept and verdict.episodes == 50  # not ahead, not faster: refused at the first look as before


def test_the_pace_margin_is_how_many_more_episodes_a_faster_change_may_lose_than_win():
    """push-hesitant's pace candidate won 8 and lost 9 of 200 (session 35): within a 1-point margin, not within none."""
    reference, accepted = _outcomes(wins=8, losses=9)
    for margin, kept in ((0.0, False), (0.01, True)):
        verdict = Verifier(Sim(steps={"accepted": 30}, reference=reference, accepted=accepted), first_seed=100, look=50, most=200,
                           max_p=0.1, pace_margin=margin).judge(("reference", "r"), ("accepted", "a"))  # fmt: skip
        assert verdict.kept is kept and verdict.on_pace is kept and verdict.wins_losses == (8, 9) and verdict.episodes == 200
    with pytest.raises(ValueError, match="pace_margin"):
        Verifier(Sim(), first_seed=0, look=50, most=200, max_p=0.1, pace_margin=1.5)


def test_a_change_faster_on_most_seeds_but_slower_on_average_is_not_kept_for_its_pace():
    """lift-biased's pace candidate (session 36): faster on 94 of the seeds both solved, slower on 18, and 65.3 steps
    against 63.0 on average. The sign test alone would call it faster."""
    reference, accepted = _outcomes(wins=9, losses=9)

    class Uneven(Sim):
        def __call__(self, name, path, first, episodes):
            report = super().__call__(name, path, first, episodes)
            if name != "accepted":
                return report
            return replace(report, lengths=tuple((49 if s % 5 else 60) if ok else 100 for s, ok in zip(report.seeds, report.successes)))

    verdict = Verifier(Uneven(reference=reference, accepted=accepted), first_seed=100, look=50, most=200, max_p=0.1, pace_margin=0.01).judge(
        ("reference", "r"), ("accepted", "a"))  # fmt: skip
    assert verdict.pace.faster > 3 * verdict.pace.slower and verdict.pace.p <= 0.1 and verdict.pace.steps_after > verdict.pace.steps_before
    assert not verdict.kept and verdict.episodes == 50  # not faster on average: judged on success alone, refused at the first look
