"""Paired comparisons of policies evaluated on the same seeds: wins, losses and the sign test.

Two policies run on the same sim seeds succeed or fail episode by episode; the episodes where
exactly one succeeds carry all the evidence about which is better. The sign test asks how likely
that split is if both were equally good (ties dropped), the test the kit's benchmarks report.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence


def wins_losses(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int]:
    """``(wins, losses)`` of ``after`` against ``before`` on the same seeds: episodes only it solved, only ``before`` solved."""
    if len(before) != len(after):
        raise ValueError(f"paired results must cover the same seeds, got {len(before)} and {len(after)} episodes")
    wins = sum(bool(b) and not bool(a) for a, b in zip(before, after))
    losses = sum(bool(a) and not bool(b) for a, b in zip(before, after))
    return wins, losses


def sign_test_p(wins: int, losses: int, alternative: Literal["two-sided", "greater"] = "two-sided") -> float:
    """Exact sign-test p-value of ``wins`` against ``losses`` (binomial, p = 1/2, ties already dropped).

    ``greater``: the chance of at least this many wins if neither is better (one-sided);
    ``two-sided``: twice the smaller tail, at most 1.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins} and {losses}")
    n = wins + losses
    if n == 0:
        return 1.0

    def tail(k: int) -> float:  # P(X >= k), X ~ Binomial(n, 1/2)
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n

    if alternative == "greater":
        return tail(wins)
    return min(1.0, 2 * tail(max(wins, losses)))


def pick_beyond_noise(results: Sequence[Sequence[bool]], max_p: float) -> int:
    """Index of the policy to keep among ``results[0]`` (the incumbent) and challengers, each a
    per-seed success list on the same seeds.

    The challenger with the most successes (the earliest on ties; returns never break them, their
    differences are float noise at equal success) replaces the incumbent only if its wins over it are
    unlikely by chance: one-sided sign-test p <= ``max_p``. Otherwise the incumbent stays.
    """
    if not results:
        raise ValueError("nothing to pick from")
    if len(results) == 1:
        return 0
    best = max(range(1, len(results)), key=lambda i: (sum(map(bool, results[i])), -i))
    wins, losses = wins_losses(results[0], results[best])
    return best if wins > losses and sign_test_p(wins, losses, "greater") <= max_p else 0
