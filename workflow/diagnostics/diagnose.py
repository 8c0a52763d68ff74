"""``robot diagnose RUN``: every stage's verdict, plots, optional FQE and sim scores, one table.

Writes ``RUN/diagnostics/<stage>.png`` and ``RUN/diagnostics/diagnostics.json``; with
``rrd`` also the curves as a Rerun recording per stage. With ``fqe`` every candidate
checkpoint of an imitation or online stage is scored by Fitted Q Evaluation on the
episodes that stage never trained on; with ``sim_eval`` > 0 each candidate also runs
that many episodes in sim, and the FQE ranking is compared with the sim returns
(Spearman rank correlation, regret@1).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robot.report import format_table
from workflow.diagnostics.curves import StageData, load_stages
from workflow.diagnostics.fqe import FqeConfig, fqe_estimate, rank_agreement
from workflow.diagnostics.rules import Verdict, diagnose_stage
from workflow.diagnostics.trends import RulesConfig
from workflow.paired import pick_beyond_noise


@dataclass(frozen=True)
class DiagnoseConfig:
    run: str
    """Run directory of any stage, or a pipeline directory."""
    fqe: bool = False
    """Score candidate checkpoints (imitation, online) with FQE on held-out episodes."""
    sim_eval: int = 0
    """Sim episodes per candidate checkpoint (0: none); gives FQE's rank correlation and regret@1."""
    rrd: str | None = None
    """Also log every stage's curves and verdict to this .rrd file."""
    plots: bool = True
    """Draw each stage's curves with its verdict to PNG files next to diagnostics.json."""
    max_candidates: int = 6
    """Checkpoints scored per stage at most (evenly spaced; the chosen and the last always among them)."""
    eval_seed: int = 100_000
    """First seed of the sim evaluation episodes (the same for every candidate)."""
    task: str | None = None
    """Simulated task of the sim evaluation (``sim_eval``); None: the checkpoint's task."""
    fqe_config: FqeConfig = field(default_factory=FqeConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)

    def __post_init__(self) -> None:
        if self.sim_eval < 0 or self.max_candidates < 2:
            raise ValueError(f"sim_eval must be >= 0 and max_candidates >= 2, got {self.sim_eval}, {self.max_candidates}")


@dataclass(frozen=True)
class CandidateScore:
    step: int
    checkpoint: str
    fqe: float | None = None
    """FQE's J: mean Q(s0, pi(s0)) over held-out start states."""
    fqe_states: float | None = None
    sim_success: float | None = None
    sim_return: float | None = None


@dataclass(frozen=True)
class StageDiagnosis:
    verdict: Verdict
    plot: str | None = None
    candidates: tuple[CandidateScore, ...] = ()
    fqe_episodes: str | None = None
    """Which episodes FQE fitted on."""
    fqe_best_step: int | None = None
    fqe_confirms: bool | None = None
    """FQE ranks the chosen checkpoint above the last one (chosen earlier), or in the top half (chosen = last)."""
    ranking: dict[str, float] = field(default_factory=dict)
    """FQE vs sim: spearman_return, regret_at_1_return, spearman_success, regret_at_1_success."""
    sim_best_step: int | None = None
    """The scored checkpoint with the highest sim success (the latest on ties: the curves' verdict is what is tested)."""
    sim_confirms: bool | None = None
    """Sim success of the chosen checkpoint is at least the sim-best's less its noise (None: no sim episodes)."""


@dataclass(frozen=True)
class DiagnosisReport:
    run: str
    stages: tuple[StageDiagnosis, ...]
    json_path: str
    rrd: str | None = None

    def table(self) -> str:
        rows = []
        for d in self.stages:
            v = d.verdict
            checkpoint = f"step {v.checkpoint_step}" if v.checkpoint_step is not None else ("start" if v.kind == "online" and v.checkpoint else "-")
            if d.fqe_confirms is not None:
                checkpoint += " (FQE agrees)" if d.fqe_confirms else " (FQE disagrees)"
            if d.sim_confirms is not None:
                checkpoint += " (sim: none better beyond noise)" if d.sim_confirms else f" (sim disagrees: step {d.sim_best_step} did better)"
            evidence = v.reasons[0] if v.reasons else ", ".join(f"{k} {x:.3g}" for k, x in list(v.evidence.items())[:3]) or "-"
            rows.append([v.stage, v.regime, checkpoint, evidence, v.advice[0] if v.advice else "-"])
        return format_table(["stage", "regime", "checkpoint", "evidence", "advice"], rows, title=f"diagnostics: {self.run}")

    def candidates_table(self) -> str | None:
        """FQE and sim scores of every scored checkpoint, with the ranking metrics per stage (None if nothing was scored)."""
        rows = []
        for d in self.stages:
            for c in d.candidates:
                marks = [m for m, on in (("chosen", c.step == d.verdict.checkpoint_step), ("FQE best", c.step == d.fqe_best_step),
                                         ("sim best", c.step == d.sim_best_step)) if on]  # fmt: skip
                mark = ", ".join(marks)
                rows.append([d.verdict.stage, c.step, mark, c.fqe, c.fqe_states, None if c.sim_success is None else f"{c.sim_success:.1%}", c.sim_return])
            if d.ranking:
                rows.append([d.verdict.stage, "FQE vs sim", "", f"spearman {d.ranking['spearman_return']:.2f} (return), {d.ranking['spearman_success']:.2f} (success)",
                             f"regret@1 {d.ranking['regret_at_1_return']:.3g} (return), {d.ranking['regret_at_1_success']:.1%} (success)", None, None])  # fmt: skip
        if not rows:
            return None
        return format_table(["stage", "checkpoint step", "", "FQE J (start states)", "FQE mean Q(s, pi(s))", "sim success", "sim return"], rows, title="candidate checkpoints")


def diagnose_run(config: DiagnoseConfig, *, log: Callable[[str], None] = lambda s: None) -> DiagnosisReport:
    run = Path(config.run)
    out = run / "diagnostics"
    stages = load_stages(run)
    if not stages:
        raise ValueError(f"{run} holds no stage with metrics to diagnose")
    results = []
    for data in stages:
        verdict = diagnose_stage(data, config.rules)
        plot = None
        if config.plots and _have_matplotlib(log):
            from workflow.diagnostics.plots import file_name, plot_stage

            written = plot_stage(data, verdict, out / file_name(data.stage))
            plot = str(written) if written else None
        result = StageDiagnosis(verdict, plot)
        if (config.fqe or config.sim_eval) and data.kind in ("imitation", "online") and data.checkpoints:
            log(f"[diagnose] scoring checkpoints of {data.stage}")
            result = score_candidates(data, result, config, log)
        results.append(result)
    rrd = None
    if config.rrd:
        from workflow.diagnostics.plots import log_to_rerun

        rrd = str(log_to_rerun([s for s in stages], [r.verdict for r in results], config.rrd))
    path = out / "diagnostics.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe({"run": str(run), "stages": [asdict(r) for r in results]}), indent=2) + "\n")
    return DiagnosisReport(str(run), tuple(results), str(path), rrd)


def _have_matplotlib(log: Callable[[str], None]) -> bool:
    """Plots need matplotlib; without it the verdicts still come, with one line saying why there are no PNGs."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log("[diagnose] matplotlib is not installed: no plots (pip install matplotlib)")
        return False
    return True


def candidate_steps(checkpoints: dict[int, Path], chosen: int | None, most: int) -> list[int]:
    """Up to ``most`` checkpoint steps, evenly spaced, always with the chosen and the last one."""
    steps = sorted(checkpoints)
    if len(steps) <= most:
        return steps
    picks = [steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, most)]
    if chosen in checkpoints and chosen not in picks:  # the chosen one replaces its nearest pick (never the last)
        nearest = min(picks[:-1], key=lambda s: abs(s - chosen))
        picks[picks.index(nearest)] = chosen
    return sorted(picks)


def heldout_episodes(data: StageData) -> tuple[Path, list[int], str]:
    """The store and episodes a stage's policy never trained on (FQE's data)."""
    from robot.sampler import split_episodes
    from robot.store import ZarrEpisodeStore

    if data.kind == "online":
        store = data.path / "rollouts.zarr"
        n = ZarrEpisodeStore.open(store).num_episodes
        return store, list(range(n)), f"all {n} episodes of the run's own rollouts (online RL has no held-out split)"
    cfg = data.config
    store = Path(cfg["data"])
    metas = ZarrEpisodeStore.open(store).metas
    usable = [i for i, m in enumerate(metas) if m.success or not cfg.get("successful_only", True)]
    _, val_idx = split_episodes(len(usable), cfg.get("val_fraction", 0.1), cfg.get("seed", 0))
    unused = sorted(set(range(len(metas))) - set(usable))
    episodes = sorted([usable[i] for i in val_idx] + unused)
    if not episodes:
        return store, list(range(len(metas))), f"all {len(metas)} episodes (the stage held none out)"
    return store, episodes, f"{len(episodes)} held-out episodes ({len(val_idx)} validation, {len(unused)} not trained on)"


def score_candidates(data: StageData, result: StageDiagnosis, config: DiagnoseConfig, log: Callable[[str], None]) -> StageDiagnosis:
    verdict = result.verdict
    steps = candidate_steps(data.checkpoints, verdict.checkpoint_step, config.max_candidates)
    fqe_values: dict[int, Any] = {}
    where = None
    if config.fqe:
        store, episodes, where = heldout_episodes(data)
        for s in steps:
            fqe_values[s] = fqe_estimate(data.checkpoints[s], store, episodes, config.fqe_config)
            log(f"[diagnose]   step {s}: FQE J {fqe_values[s].value:.4g}")
    sims: dict[int, Any] = {}
    if config.sim_eval:
        from workflow.evaluate import evaluate_policy
        from workflow.policy import policy_task

        for i, s in enumerate(steps):
            task = policy_task(data.checkpoints[s], config.task, warn=i == 0)
            sims[s] = evaluate_policy(data.checkpoints[s], task, episodes=config.sim_eval, seed=config.eval_seed, show_progress=False)
            log(f"[diagnose]   step {s}: sim success {sims[s].success_rate:.1%}, return {sims[s].mean_return:.3g}")
    candidates = tuple(
        CandidateScore(s, str(data.checkpoints[s]), fqe_values[s].value if s in fqe_values else None, fqe_values[s].value_states if s in fqe_values else None,
                       sims[s].success_rate if s in sims else None, sims[s].mean_return if s in sims else None)
        for s in steps
    )  # fmt: skip
    best = confirms = None
    ranking: dict[str, float] = {}
    if fqe_values:
        best = max(fqe_values, key=lambda s: fqe_values[s].value)
        chosen, last = verdict.checkpoint_step, steps[-1]
        if chosen in fqe_values:
            values = [fqe_values[s].value for s in steps]
            confirms = fqe_values[chosen].value >= fqe_values[last].value if chosen != last else fqe_values[last].value >= float(np.median(values))
        if sims:
            est = [fqe_values[s].value for s in steps]
            for label, truth in (("return", [sims[s].mean_return for s in steps]), ("success", [sims[s].success_rate for s in steps])):
                agreement = rank_agreement(est, truth)
                ranking.update({f"spearman_{label}": agreement["spearman"], f"regret_at_1_{label}": agreement["regret_at_1"]})
    sim_best, sim_confirms = sim_check(verdict.checkpoint_step, {s: sims[s].successes for s in sims})
    return StageDiagnosis(verdict, result.plot, candidates, where, best, confirms, ranking, sim_best, sim_confirms)


def sim_check(chosen: int | None, outcomes: dict[int, tuple[bool, ...]], max_p: float = 0.05) -> tuple[int | None, bool | None]:
    """``(sim-best step, whether sim confirms the chosen step)`` from per-seed successes on the same seeds.

    Offline curves choose from held-out error, and in behaviour cloning closed-loop success can keep rising
    after that error turns (robomimic's lesson; on push, 12 demonstrations: step 700 chosen, 8% in sim, against
    18% at step 1000). Sim disagrees only when the best scored checkpoint beats the chosen one beyond noise
    (paired one-sided sign test, p <= ``max_p``)."""
    if not outcomes or chosen not in outcomes:
        return None, None
    best = max(outcomes, key=lambda s: (sum(outcomes[s]), s))
    return best, pick_beyond_noise([outcomes[chosen], outcomes[best]], max_p) == 0


def json_safe(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
