"""Paired comparisons of policies evaluated on the same seeds: wins, losses and the sign test.

Two policies run on the same sim seeds succeed or fail episode by episode; the episodes where
exactly one succeeds carry all the evidence about which is better. The sign test asks how likely
that split is if both were equally good (ties dropped), the test the kit's benchmarks report. Each
policy's own success rate comes with its Wilson interval and its mean steps to success.
"""

from __future__ import annotations

import math
from statistics import NormalDist
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, Sequence


def wilson_interval(successes: int, episodes: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of a success rate of ``successes`` out of ``episodes``.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0% or 100%.
    """
    if episodes < 1 or not 0 <= successes <= episodes:
        raise ValueError(f"need 0 <= successes <= episodes and episodes >= 1, got {successes} of {episodes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n = successes / episodes, episodes
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_steps_to_success(successes: Sequence[bool], lengths: Sequence[int]) -> float | None:
    """Mean length of the successful episodes (RL-100's efficiency measure); None when none succeeded."""
    if len(successes) != len(lengths):
        raise ValueError(f"one length per episode: got {len(successes)} outcomes and {len(lengths)} lengths")
    steps = [n for s, n in zip(successes, lengths) if s]
    return sum(steps) / len(steps) if steps else None


def wins_losses(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int]:
    """``(wins, losses)`` of ``after`` against ``before`` on the same seeds: episodes only it solved, only ``before`` solved."""
    if len(before) != len(after):
        raise ValueError(f"paired results must cover the same seeds, got {len(before)} and {len(after)} episodes")
    wins = sum(bool(b) and not bool(a) for a, b in zip(before, after))
    losses = sum(bool(a) and not bool(b) for a, b in zip(before, after))
    return wins, losses


@dataclass(frozen=True)
class PairedPace:
    """Steps to success of two policies on the seeds both solved: the paired reading of which is faster."""

    both: int
    """Seeds both solved (only these compare steps)."""
    faster: int
    """Of those, seeds ``after`` solved in fewer steps than ``before``."""
    slower: int
    """Seeds it solved in more steps."""
    steps_before: float | None
    """``before``'s mean steps over those seeds (None: none)."""
    steps_after: float | None

    @property
    def p(self) -> float:
        """One-sided sign test that ``after`` is faster (equal lengths dropped)."""
        return sign_test_p(self.faster, self.slower, "greater")


def paired_pace(before: Sequence[bool], before_lengths: Sequence[int], after: Sequence[bool], after_lengths: Sequence[int]) -> PairedPace:
    """How ``after``'s steps to success compare with ``before``'s, seed by seed, on the seeds both solved."""
    if not len(before) == len(after) == len(before_lengths) == len(after_lengths):
        raise ValueError(f"paired results must cover the same seeds with one length each, got {len(before)}, {len(after)} "
                         f"outcomes and {len(before_lengths)}, {len(after_lengths)} lengths")  # fmt: skip
    pairs = [(int(m), int(n)) for a, b, m, n in zip(before, after, before_lengths, after_lengths) if a and b]
    return PairedPace(len(pairs), sum(n < m for m, n in pairs), sum(n > m for m, n in pairs),
                      sum(m for m, _ in pairs) / len(pairs) if pairs else None, sum(n for _, n in pairs) / len(pairs) if pairs else None)  # fmt: skip


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


def best_challenger(results: Sequence[Sequence[bool]]) -> int:
    """Index of the challenger (``results[1:]``) with the most successes, the earliest on ties."""
    if len(results) < 2:
        raise ValueError("need an incumbent and at least one challenger")
    return max(range(1, len(results)), key=lambda i: (sum(map(bool, results[i])), -i))


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
    best = best_challenger(results)
    wins, losses = wins_losses(results[0], results[best])
    return best if wins > losses and sign_test_p(wins, losses, "greater") <= max_p else 0


def paired_table(names: Sequence[str], results: Sequence[Sequence[bool]], lengths: Sequence[Sequence[int]], title: str | None = None) -> str:
    """One row per policy (or sampler) run on the same seeds: success with its Wilson interval, mean steps to
    success, and wins, losses and the two-sided sign-test p against the first row."""
    from robot.report import format_table

    if not (len(names) == len(results) == len(lengths)) or not names:
        raise ValueError(f"one name, result list and length list per row, got {len(names)}, {len(results)}, {len(lengths)}")
    rows = []
    for i, (name, outcome, steps) in enumerate(zip(names, results, lengths)):
        low, high = wilson_interval(sum(map(bool, outcome)), len(outcome))
        versus = "-"
        if i:
            wins, losses = wins_losses(results[0], outcome)
            versus = f"{wins} won, {losses} lost, p = {sign_test_p(wins, losses):.2g}"
        rows.append([name, f"{sum(map(bool, outcome)) / len(outcome):.1%}", f"{low:.1%}-{high:.1%}", mean_steps_to_success(outcome, steps), versus])
    return format_table(["", "success", "95% interval", "mean steps to success", f"vs {names[0]} (same seeds)"], rows, title=title)


@dataclass(frozen=True)
class SeedOutcomes:
    """One policy's episodes on a run of seeds, episode by episode: what a paired comparison reads
    (``robot eval --outcomes``; ``python -m bench.recipe``'s ``<stage>.paired.json`` files have the same keys)."""

    policy: str
    sampler: str | None
    seeds: tuple[int, ...]
    successes: tuple[bool, ...]
    lengths: tuple[int, ...]
    returns: tuple[float, ...]

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @staticmethod
    def read(path: str | Path) -> "SeedOutcomes":
        """The outcomes in ``path``; one clear ValueError for a file that holds none."""
        try:
            data = json.loads(Path(path).read_text())
            return SeedOutcomes(**{f.name: tuple(data[f.name]) if isinstance(data[f.name], list) else data[f.name] for f in fields(SeedOutcomes)})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} holds no per-seed outcomes (write them with `robot eval --outcomes FILE`): {e}") from None

    def table(self, before: "SeedOutcomes", names: tuple[str, str] | None = None) -> str:
        """:func:`paired_table` of ``before`` then this; both must cover the same seeds."""
        if before.seeds != self.seeds:
            raise ValueError(f"{before.policy} and {self.policy} ran on different seeds ({_span(before.seeds)} and {_span(self.seeds)}): "
                             "a paired comparison needs the same")  # fmt: skip
        names = names or (f"{before.policy} ({before.sampler or 'own sampler'})", f"{self.policy} ({self.sampler or 'own sampler'})")
        return paired_table(names, [before.successes, self.successes], [before.lengths, self.lengths], title=f"{len(self.seeds)} paired episodes, seeds {_span(self.seeds)}")


def _span(seeds: Sequence[int]) -> str:
    return f"{min(seeds)}-{max(seeds)}" if seeds else "none"
