"""Each stage's curves as a PNG (matplotlib, Agg, no pyplot state) and in Rerun, with the verdict marked.

Every figure: one panel per group of related curves, the raw curve faint and its
rolling median bold where it is noisy, a red dashed line where the regime turned, a
green line at the chosen checkpoint, grey ticks at every checkpoint the rule could
choose, axes labelled and the stage and regime in the title.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from workflow.diagnostics.curves import Curve, StageData
from workflow.diagnostics.rules import Verdict
from workflow.diagnostics.trends import smooth

# kind -> (x label, [(panel title, y label, metric names, log y)])
PANELS: dict[str, tuple[str, list[tuple[str, str, tuple[str, ...], bool]]]] = {
    "imitation": ("training step", [
        ("denoising loss: training vs held-out episodes", "noise-prediction MSE", ("losses/denoise", "losses/denoise_train_probe", "losses/denoise_val"), True),
        ("deterministic action error: training vs held-out", "MSE of executed actions (normalised)", ("losses/action_mse_train_probe", "losses/action_mse_val"), True),
        ("learning rate", "lr", ("charts/lr",), False),
    ]),
    "critics": ("critic step", [
        ("average dataset Q (Kumar et al.)", "min Q(s, a_data)", ("critic/q_dataset", "critic/q_dataset_val"), False),
        ("TD error: training vs held-out episodes", "mean squared TD error", ("critic/td_train", "critic/td_val"), True),
        ("TD error / target variance", "1 - R^2 of TD targets", ("critic/td_train_rel", "critic/td_val_rel"), True),
        ("expectile regulariser (V loss)", "expectile loss", ("critic/v_expectile", "critic/v_expectile_val"), True),
        ("advantage spread and saturation", "std of min Q - V / share", ("critic/adv_std", "critic/adv_saturation"), False),
        ("Q(policy action) - Q(dataset action)", "Q gap", ("critic/q_gap",), False),
    ]),
    "ppo": ("PPO update", [
        ("AM-Q at each gate check", "AM-Q estimate J", ("ope/amq_reference", "ope/amq_candidate"), False),
        ("policy step size", "KL / clip fraction", ("charts/approx_kl", "charts/clip_fraction"), False),
        ("advantage saturation", "share of |A| beyond the bound", ("ppo/adv_saturation",), False),
        ("Q(policy action) - Q(dataset action)", "Q gap", ("ppo/q_gap",), False),
        ("distance from the demonstrations", "action MSE (normalised)", ("ppo/demo_action_error",), False),
        ("latent model disagreement on imagined rollouts", "elite std (standardised)", ("ope/disagreement_reference", "ope/disagreement_candidate"), False),
    ]),
    "online": ("iteration", [
        ("rollout success", "success rate", ("charts/success",), False),
        ("policy step size", "KL / clip fraction", ("charts/approx_kl", "charts/clip_fraction"), False),
        ("value function", "explained variance", ("charts/value_explained_variance",), False),
        ("value loss", "MSE", ("losses/value",), True),
    ]),
    "distill": ("training step", [("consistency distillation", "MSE to the K-step output", ("losses/distill",), True)]),
}  # fmt: skip


def file_name(stage: str) -> str:
    """``offline/round-0/critics`` -> ``offline.round-0.critics.png``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", ".", stage).strip(".") + ".png"


def _draw(ax, curve: Curve, color) -> None:
    steps, values = curve.steps, curve.values
    finite = np.isfinite(values)
    sm = smooth(values[finite], 0.05) if finite.sum() > 30 else None
    noisy = sm is not None and np.median(np.abs(values[finite] - sm)) > 0.01 * max(np.ptp(values[finite]), 1e-12)
    if noisy:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps[finite], sm, color=color, linewidth=1.8, label=f"{curve.name} (median-smoothed)")
    elif sm is not None:
        ax.plot(steps, values, color=color, linewidth=1.5, label=curve.name)
    else:
        ax.plot(steps, values, color=color, marker="o", markersize=3, linewidth=1.5, label=curve.name)
    if (~finite).any():
        ax.plot(steps[~finite], np.zeros((~finite).sum()), "kx", markersize=8, label=f"{curve.name}: non-finite")


def _marks(ax, verdict: Verdict, data: StageData, first_panel: bool) -> None:
    for step in sorted(data.checkpoints):
        ax.axvline(step, color="0.75", linewidth=0.6, ymax=0.04)
    if verdict.checkpoint_step is not None and (data.checkpoints or data.kind == "ppo"):
        ax.axvline(verdict.checkpoint_step, color="tab:green", linewidth=3.0, alpha=0.6, label=f"chosen checkpoint (step {verdict.checkpoint_step})" if first_panel else None)
    if verdict.turn_step is not None:  # drawn over the checkpoint line, which often sits at the same step
        ax.axvline(verdict.turn_step, color="tab:red", linestyle="--", linewidth=1.5, label=f"regime turned (step {verdict.turn_step})" if first_panel else None)


def _gate(ax, gate: list[dict]) -> None:
    for g in gate:
        ax.plot(g["update"], g["j_candidate"], marker="o" if g["accepted"] else "x", color="tab:green" if g["accepted"] else "tab:red", markersize=9, linestyle="none")
    ax.plot([], [], "o", color="tab:green", label="accepted")
    ax.plot([], [], "x", color="tab:red", label="rejected")


def plot_stage(data: StageData, verdict: Verdict, path: str | Path) -> Path | None:
    """Write one stage's figure to ``path`` (PNG); None if the stage logged none of its curves."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    xlabel, panels = PANELS[data.kind]
    panels = [p for p in panels if any(name in data.curves for name in p[2])]
    if not panels:
        return None
    cols = 2 if len(panels) > 2 else 1
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(6.5 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = ["tab:blue", "tab:orange", "tab:purple", "tab:brown"]
    for i, (ax, (title, ylabel, names, log)) in enumerate(zip(axes, panels)):
        for name, color in zip([n for n in names if n in data.curves], colors):
            _draw(ax, data.curves[name], color)
        if data.kind == "ppo" and "ope/amq_candidate" in names and data.gate:
            _gate(ax, data.gate)
        _marks(ax, verdict, data, first_panel=i == 0)
        positive = all(np.all(data.curves[n].values[np.isfinite(data.curves[n].values)] > 0) for n in names if n in data.curves)
        if log and positive:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    where = f"checkpoint step {verdict.checkpoint_step}" if verdict.checkpoint_step is not None else "no checkpoint"
    fig.suptitle(f"{data.stage}: {verdict.regime} ({where})\n{data.path}", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def log_to_rerun(stages: Sequence[StageData], verdicts: Sequence[Verdict], save: str | Path) -> Path:
    """Every stage's curves as one Rerun recording each in ``save`` (.rrd), the verdict as a document and events."""
    import rerun as rr

    from robot.viewer import RecordingSet, log_metrics, metric_keys, metrics_blueprint

    with RecordingSet(save=Path(save)) as recordings:
        for data, verdict in zip(stages, verdicts):
            rows = [{"step": int(s), name: float(v)} for name, c in data.curves.items() for s, v in zip(c.steps, c.values)]
            keys = metric_keys(rows)
            rec = recordings.new("robot-diagnose", recording_id=f"{data.stage}/curves", name=f"{data.stage}: {verdict.regime}", blueprint=metrics_blueprint(keys))
            log_metrics(rec, rows)
            rec.log("verdict", rr.TextDocument(verdict_markdown(verdict), media_type=rr.MediaType.MARKDOWN), static=True)
            for step, text, level in ((verdict.turn_step, f"regime turned: {verdict.regime}", "WARN"), (verdict.checkpoint_step, f"chosen checkpoint: {verdict.checkpoint}", "INFO")):
                if step is not None:
                    rec.set_time("train_step", sequence=int(step))
                    rec.log("events", rr.TextLog(text, level=level))
            rec.reset_time()
    return Path(save)


def verdict_markdown(verdict: Verdict) -> str:
    lines = [f"# {verdict.stage}: {verdict.regime}", "", f"checkpoint: step {verdict.checkpoint_step} ({verdict.checkpoint})", ""]
    lines += [f"- {r}" for r in verdict.reasons] + [""] + [f"- advice: {a}" for a in verdict.advice] + ["", "| evidence | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in verdict.evidence.items()]
    return "\n".join(lines)
