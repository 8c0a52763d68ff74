"""What each pipeline stage reached, and the pipeline's closing table.

Every stage is evaluated on the same seeds, so the table compares each stage with the one it started from
episode by episode: the seeds only it solved, those only its predecessor solved, and the sign test's p
(``workflow.paired``). A success rate alone moves by several points between two runs of the same policy on
other seeds; the paired split says whether a stage's change is beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from robot.report import format_table
from workflow.paired import mean_steps_to_success, sign_test_p, wilson_interval, wins_losses

if TYPE_CHECKING:
    from workflow.pipeline import PipelineConfig

STARTS_FROM = {"offline": "imitation", "online": "offline", "one-step": "online"}
"""The stage each stage starts from (the one-step head: its teacher, the online policy)."""


@dataclass(frozen=True)
class StageResult:
    stage: str
    policy: str
    success: float
    mean_return: float
    episodes: int  # sim episodes this stage used (demos, rollouts)
    cpu_minutes: float
    ddim_ms: float | None = None
    one_step_ms: float | None = None
    decision: str = ""  # what the stage's gate or selection kept
    successes: Sequence[bool] = ()
    """Each evaluation episode's outcome, in seed order; every stage runs the same seeds (empty in results from before
    the pipeline kept them)."""
    lengths: Sequence[int] = ()
    """Each evaluation episode's steps (a successful one ends at the step it succeeded)."""


def versus(result: StageResult, before: StageResult | None) -> tuple[str | None, str | None]:
    """``("won/lost", "p")`` of ``result`` against ``before`` on their shared seeds; ``(None, None)`` without both outcomes."""
    if before is None or not result.successes or len(before.successes) != len(result.successes):
        return None, None
    wins, losses = wins_losses(before.successes, result.successes)
    return f"{wins}/{losses}", f"{sign_test_p(wins, losses):.2g}"


def pipeline_table(results: list[StageResult], config: PipelineConfig, processes: int = 1) -> str:
    """One row per stage: success with its 95% interval, the paired split against the stage it started from, mean steps
    to success, episodes used, CPU minutes and what the stage kept; then the latency of one chunk, DDIM against the head."""
    by_stage = {r.stage: r for r in results}
    rows = []
    for r in results:
        interval = None
        if r.successes:
            low, high = wilson_interval(sum(map(bool, r.successes)), len(r.successes))
            interval = f"{low:.1%}-{high:.1%}"
        steps = mean_steps_to_success(r.successes, r.lengths) if r.successes and len(r.lengths) == len(r.successes) else None
        won_lost, p = versus(r, by_stage.get(STARTS_FROM.get(r.stage, "")))
        rows.append([r.stage, f"{r.success:.1%}", interval, won_lost and f"{won_lost} vs {STARTS_FROM[r.stage]}", p,
                     None if steps is None else f"{steps:.1f}", r.episodes, f"{r.cpu_minutes:.1f}", r.decision])  # fmt: skip
    b = config.spend
    demos = f"{b.demos} demonstrations" + (f" at noise {b.demo_noise:g}" if b.demo_noise else "")
    if config.demo_style != "iid":
        demos += f" ({config.demo_style} operator)"
    title = (f"pipeline: task {config.task}, budget {config.budget_label}, {demos}, {b.eval_episodes} evaluation episodes per stage "
             f"(sampler {config.sampler}), torch threads {torch.get_num_threads()}")  # fmt: skip
    if processes > 1:
        title += f", {processes} processes (CPU min: rank 0's)"
    table = format_table(["stage", "success", "95% CI", "won/lost", "p", "steps to success", "episodes used", "CPU min", "kept"], rows, title=title)
    notes = ["every stage runs the same evaluation seeds; won/lost: seeds only this stage / only the one it started from solved; "
             "p: exact two-sided sign test, ties dropped (the one-step head against its teacher, online)"]  # fmt: skip
    timed = next((r for r in reversed(results) if r.ddim_ms is not None), None)
    if timed is not None:
        chunk = f"one action chunk at batch 1: DDIM {timed.ddim_ms:.1f} ms"
        if timed.one_step_ms:
            chunk += f", the one-step head {timed.one_step_ms:.2f} ms ({timed.ddim_ms / timed.one_step_ms:.0f}x faster)"
        notes.append(chunk)
    return table + "\n" + "\n".join(f"  {n}" for n in notes)
