"""Trend rules: each stage's regime, the checkpoint to keep and what to change, with the evidence.

After the offline RL workflow of Kumar et al. (CoRL 2021), read within one run:

- overfitting: the held-out loss (denoising or TD error) rises while the training one
  falls, or the average dataset Q peaks and then falls, or the policy/data Q gap keeps
  widening; keep the last checkpoint before the turn, then regularise (smaller
  network, dropout, an information bottleneck), stop early or add data;
- underfitting: the training loss stays high (relative to where it started, or for
  critics a TD error that leaves most of its targets' variance unexplained); add
  capacity or steps;
- diverging: non-finite values, a loss or Q that explodes, policy steps whose KL is
  too large, a success rate that collapses; resume from before it and lower the
  learning rate;
- healthy: none of the above; keep the last checkpoint.

Curves are smoothed by a rolling median and a change counts only when it is larger
than a few times the curve's own noise, so one noisy point never flips a verdict.
Too few points give ``unknown`` rather than a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from workflow.diagnostics.curves import StageData
from workflow.diagnostics.trends import (
    Finding,
    RulesConfig,
    above_for_long,
    end_value,
    explodes,
    falls_from_peak,
    first,
    level_high,
    level_low,
    nonfinite,
    peaks_then_falls,
    rises_after_minimum,
    stays_high,
    still_falling,
    still_improving,
    trend,
)

__all__ = ["REGIMES", "RulesConfig", "Verdict", "diagnose_stage", "choose_checkpoint"]

REGIMES = ("healthy", "underfitting", "overfitting", "diverging", "unknown")


@dataclass(frozen=True)
class Verdict:
    """One stage's diagnosis."""

    stage: str
    kind: str
    regime: str
    """One of REGIMES."""
    checkpoint_step: int | None
    """Step (iteration, PPO update) of the checkpoint to keep; None when the stage saved none."""
    checkpoint: str | None
    """Its directory."""
    turn_step: int | None
    """Where the regime turned (val minimum, Q peak, first non-finite value, ...); None when it did not."""
    reasons: tuple[str, ...]
    """What the rules saw, in words with the numbers."""
    advice: tuple[str, ...]
    evidence: dict[str, float] = field(default_factory=dict)
    """The numbers behind the verdict."""


def choose_checkpoint(checkpoints: dict[int, Path], turn: int | None, regime: str, finding: Finding | None = None, config: RulesConfig = RulesConfig()) -> tuple[int | None, Path | None]:
    """The checkpoint to keep: the last one when nothing turned; when diverging the last one strictly
    before the turn; when overfitting the one at the turn, else the last one before it, unless the
    first one after it scores better on the curve that turned (checkpoints sparser than the curve)."""
    if not checkpoints:
        return None, None
    steps = sorted(checkpoints)
    if turn is None or regime not in ("overfitting", "diverging"):
        return steps[-1], checkpoints[steps[-1]]
    before = [s for s in steps if (s < turn if regime == "diverging" else s <= turn)]
    step = before[-1] if before else steps[0]
    after = [s for s in steps if s > turn]
    t = trend(finding.score, config) if regime == "overfitting" and finding is not None and finding.score is not None else None
    if t is not None and step != turn and after and after[0] != step:
        here, there = np.interp([step, after[0]], t.steps, t.smooth)
        if (there < here) if finding.lower_is_better else (there > here):
            step = after[0]
    return step, checkpoints[step]


def finish(data: StageData, finding: Finding | None, advice: list[str], extra: dict[str, float], notes: list[str], config: RulesConfig, *, enough: bool,
           keep_last: bool = False) -> Verdict:
    """Build the verdict: regime from the finding (healthy without one, unknown without enough points);
    ``keep_last``: the last checkpoint whatever turned."""
    regime = finding.regime if finding else ("healthy" if enough else "unknown")
    turn = finding.turn_step if finding else None
    step, path = choose_checkpoint(data.checkpoints, None if keep_last else turn, regime, finding, config)
    if step is None and data.final is not None:
        path = data.final
    reasons = ([finding.reason] if finding else []) + notes
    if regime == "unknown":
        reasons.append(f"fewer than {config.min_points} logged points on the curves the rules read")
        advice = [f"log more often (at least {config.min_points} points per curve) and run diagnose again"]
    elif regime in ("overfitting", "diverging") and step is not None and turn is not None and step != turn and not keep_last:
        advice.append(f"the nearest checkpoint is step {step}, the turn step {turn}: save checkpoints more often")
    evidence = {**(finding.evidence if finding else {}), **{k: v for k, v in extra.items() if v is not None and math.isfinite(v)}}
    return Verdict(data.stage, data.kind, regime, step, str(path) if path is not None else None, turn, tuple(reasons), tuple(advice), evidence)


# ------------------------------------------------------------------ stages


def _either(a, b):
    return a if a is not None else b


def diagnose_stage(data: StageData, config: RulesConfig = RulesConfig()) -> Verdict:
    """The verdict of one stage (``data.kind`` picks the rules)."""
    rules = {"imitation": diagnose_imitation, "critics": diagnose_critics, "ppo": diagnose_ppo, "online": diagnose_online, "distill": diagnose_distill}
    if data.kind not in rules:
        raise ValueError(f"no rules for stage kind {data.kind!r}; known: {', '.join(rules)}")
    return rules[data.kind](data, config)


def diagnose_imitation(data: StageData, config: RulesConfig) -> Verdict:
    c = data.curves
    train, val = c.get("losses/denoise"), c.get("losses/denoise_val")
    probe = _either(c.get("losses/denoise_train_probe"), train)  # the same windows-and-noise protocol as val where logged
    act_train, act_val = c.get("losses/action_mse_train_probe"), c.get("losses/action_mse_val")
    epsilon = data.config.get("policy", {}).get("prediction_type", "epsilon") == "epsilon"
    # Overfitting is read on the held-out action error where logged (RulesConfig.imitation_signal says why).
    denoise_rise = rises_after_minimum(val, probe, config)
    by_action = config.imitation_signal == "action" and act_val is not None
    finding = first(
        nonfinite(train),
        nonfinite(val),
        nonfinite(act_val),
        explodes(train, config),
        rises_after_minimum(act_val, act_train, config) if by_action else denoise_rise,
        stays_high(train, config, reference=1.0 if epsilon else None),
    )
    falling = still_falling(train, config)
    more = falling is not None and falling > config.still_falling
    improving = still_improving(act_val, config)
    regime = finding.regime if finding else None
    keep_last = regime == "overfitting" and config.imitation_keep == "last"
    advice = {
        "overfitting": [(f"kept the last checkpoint; early stop at the turn (step {finding.turn_step}) only if sim says it is better: "
                         if keep_last else "early stop only if sim agrees: ")
                        + "score the checkpoints with robot diagnose RUN --sim-eval 100 (push-mixed, 30 demonstrations: 10% at the turn, "
                        "step 2,000, and 55% at step 8,000)",
                        "more demonstrations, or less capacity: a smaller denoiser/encoder, dropout (DenoiserConfig.mlp_dropout), more weight decay"],
        "underfitting": ["more capacity: a wider/deeper denoiser (unet_down_dims, mlp_hidden_dim) and encoder",
                         "more steps" + (f" (the loss was still falling: {falling:.0%} of its start over the last quarter)" if more else ""),
                         "check the learning rate and warmup"],
        "diverging": ["resume from the chosen checkpoint with a smaller learning rate", "tighter gradient clipping (grad_clip)"],
    }.get(regime, ["more steps: the loss was still falling at the end"] if more else [])  # fmt: skip
    if regime is None and improving is not None and improving > config.still_improving:
        advice.append(f"more steps: the held-out action error fell {improving:.0%} over the last quarter, and closed-loop success can rise "
                      "long after the losses flatten (push-rim: 54% at 4,000 steps, 93.5% at 8,000); check with robot diagnose RUN --sim-eval 100")
    notes = [] if val is not None else ["no held-out episodes (val_fraction 0): overfitting cannot be seen"]
    if regime == "overfitting":
        notes.append("closed-loop success can keep rising after the held-out error turns (on push, 12 demos: 8% at the turn, "
                     "18% 300 steps later): check the chosen and the last checkpoint in sim with robot diagnose RUN --sim-eval 100")
    if by_action and denoise_rise is not None and (finding is None or finding.regime != "overfitting"):
        notes.append(f"{denoise_rise.reason}, but the held-out action error did not turn: not counted as overfitting")
    extra = {"train_end": end_value(train), "train_probe_end": end_value(c.get("losses/denoise_train_probe")), "val_end": end_value(val),
             "action_mse_train_end": end_value(act_train), "action_mse_val_end": end_value(act_val), "train_drop_last_quarter": falling,
             "action_mse_val_drop_last_quarter": improving}  # fmt: skip
    return finish(data, finding, advice, extra, notes, config, enough=trend(train, config) is not None, keep_last=keep_last)


def diagnose_critics(data: StageData, config: RulesConfig) -> Verdict:
    c = data.curves
    q, td, td_val = c.get("critic/q_dataset"), _either(c.get("critic/td_train"), c.get("losses/q_td")), c.get("critic/td_val")
    finding = first(
        nonfinite(q),
        nonfinite(td),
        explodes(q, config),
        explodes(td, config),
        rises_after_minimum(td_val, td, config),
        peaks_then_falls(q, config),
        level_high(c.get("critic/td_train_rel"), config.td_rel_high, config, "TD error over its targets' variance: most of it unexplained"),
    )
    regime = finding.regime if finding else None
    advice = {
        "overfitting": ["early stop: use the chosen critic snapshot (round-M/critic-checkpoints) or fewer critic_steps",
                        "regularise the critic: smaller hidden_dims, dropout or a variational information bottleneck on its input features",
                        "more data: more rollout episodes per round"],
        "underfitting": ["more capacity: wider/deeper critics (CriticConfig.hidden_dims)", "more critic_steps",
                         "richer frozen features: the imitation encoder may not separate the states the reward depends on"],
        "diverging": ["a smaller critic learning rate (CriticConfig.lr) and slower target updates (tau)", "a lower gamma; keep LayerNorm on"],
    }.get(regime, [])  # fmt: skip
    notes = []
    saturation = end_value(c.get("critic/adv_saturation"))
    if saturation is not None and saturation > 0.1:
        notes.append(f"advantages are heavy-tailed: {saturation:.0%} of normalised advantages beyond the bound (PPO steps are driven by few states)")
    widening = _still_widening(c.get("critic/q_gap"), end_value(q), config)
    if widening is not None:
        notes.append(f"Q(policy action) - Q(dataset action) still widening: +{widening:.3g} over the last third (the critic prefers actions it has no data for)")
    extra = {"q_dataset_end": end_value(q), "td_train_end": end_value(td), "td_val_end": end_value(td_val), "td_train_rel_end": end_value(c.get("critic/td_train_rel")),
             "v_expectile_end": end_value(c.get("critic/v_expectile")), "adv_std_end": end_value(c.get("critic/adv_std")),
             "adv_saturation_end": saturation, "q_gap_end": end_value(c.get("critic/q_gap"))}  # fmt: skip
    return finish(data, finding, advice, extra, notes, config, enough=trend(td, config) is not None)


def _still_widening(gap, q_end: float | None, config: RulesConfig) -> float | None:
    """How much the smoothed policy/data Q gap grew over the last third, if more than gap_widen x |Q|."""
    t = trend(gap, config)
    if t is None or q_end is None:
        return None
    n = len(t.smooth)
    growth = float(t.smooth[-1] - t.smooth[min(n - 1, (2 * n) // 3)])
    return growth if growth > max(config.gap_widen * abs(q_end), config.noise_k * t.noise) else None


def _gap_widens(gap, gate: list[dict], config: RulesConfig) -> Finding | None:
    """Overfitting (PPO): Q(policy) - Q(data) widened at every gate check, in all by gap_widen x |J|."""
    if gap is None or len(gap) < 3 or not gate:
        return None
    values = gap.values
    scale = abs(float(gate[-1]["j_reference"])) or 1.0
    if np.all(np.isfinite(values)) and np.all(np.diff(values) > 0) and values[-1] - values[0] > config.gap_widen * scale:
        turn = int(gap.steps[0])
        return Finding("overfitting", turn, f"ppo/q_gap widened at every gate check: {values[0]:.3g} -> {values[-1]:.3g} (|J| {scale:.3g}): the policy climbs the critic where it has no data",
                       {"ppo/q_gap:first": float(values[0]), "ppo/q_gap:last": float(values[-1])})  # fmt: skip
    return None


def _leaves_demonstrations(error, gate: list[dict], config: RulesConfig) -> Finding | None:
    """Overfitting (PPO): an accepted candidate acts further from the demonstrations than the round's start by
    more than ``demo_drift`` of the start's own error. AM-Q rose along the way (the gate accepted it), so the gain
    was found where the critics and the latent model have no data: the sim success of such candidates fell."""
    if error is None or not len(error) or int(error.steps[0]) != 0:
        return None
    start = float(error.values[0])
    at = dict(zip(error.steps.tolist(), error.values.tolist()))
    for g in gate:
        update = int(g["update"])
        if g["accepted"] and update in at and math.isfinite(at[update]) and at[update] > (1 + config.demo_drift) * start:
            rise = at[update] / start - 1
            return Finding("overfitting", update, f"the gate accepted update {update}, whose actions are {rise:.0%} further from the demonstrations than the "
                           f"round's start (ppo/demo_action_error {start:.3g} -> {at[update]:.3g}, limit +{config.demo_drift:.0%}): its AM-Q gain "
                           "comes from actions the data does not cover", {"ppo/demo_action_error:start": start, "ppo/demo_action_error:turn": at[update]})  # fmt: skip
    return None


def diagnose_ppo(data: StageData, config: RulesConfig) -> Verdict:
    c = data.curves
    paced = [g for g in data.gate if g.get("source") == "pace"]  # the pace step's candidate (workflow.pace): not a PPO update
    gate = [g for g in data.gate if g.get("source", "ppo") == "ppo"]
    kl = c.get("charts/approx_kl")
    accepted = [g for g in gate if g["accepted"]]
    harmful = bool(gate) and not accepted and all(g["gain"] < -g["threshold"] for g in gate)
    stalled = bool(gate) and not accepted and all(abs(g["gain"]) <= g["threshold"] for g in gate)
    gains = ", ".join(f"{g['gain']:+.3g}" for g in gate)
    drift = _leaves_demonstrations(c.get("ppo/demo_action_error"), gate, config)
    too_large = above_for_long(kl, config.kl_max, config, "policy steps too large")
    gap = _gap_widens(c.get("ppo/q_gap"), gate, config)
    finding = first(
        nonfinite(c.get("losses/ppo")),
        nonfinite(kl),
        too_large,
        _refused_by_rollouts(data.report, accepted),
        drift,
        Finding("diverging", int(gate[0]["update"]), f"every candidate scored below the reference by more than the gate's threshold (gains {gains})", {}) if harmful else None,
        gap,
        Finding("underfitting", None, f"no candidate moved AM-Q past the gate's threshold (gains {gains}, threshold {gate[-1]['threshold']:.3g})", {}) if stalled else None,
    )  # fmt: skip
    confirmed = _verified_gain(data.report)
    if finding is not None and confirmed is not None and finding in (too_large, drift, gap):  # sim outranks the offline proxies
        notes = [f"offline signs ({finding.reason}) were outweighed in sim: {confirmed}"]
        finding = None
    else:
        notes = [confirmed] if confirmed else []
    regime = finding.regime if finding else None
    refused = bool(data.report.get("refused"))
    advice = {
        "overfitting": [("the round kept its reference; " if refused else "") + "fewer PPO updates per gate check or a smaller actor lr",
                        "a larger gate delta, or a more conservative critic (higher expectile is less, lower is more conservative)"],
        "underfitting": _ppo_underfitting_advice(end_value(c.get("charts/clip_fraction")), data.config, config),
        "diverging": ["a smaller actor lr; check the advantage sign and saturation (critic/adv_saturation, ppo/adv_saturation)"],
    }.get(regime, [])  # fmt: skip
    regime = finding.regime if finding else ("healthy" if gate else "unknown")
    handed = [g for g in data.gate if g["accepted"]]  # the round hands on its last accepted candidate, PPO's or the pace step's
    step = int(handed[-1]["update"]) if handed and not refused else (0 if data.gate else None)
    checkpoint = data.report["policy"] if refused else (str(data.final) if data.final is not None else None)
    if finding is not None and (finding is drift or finding is too_large) and not refused:  # the last accepted candidate before the turn
        step = max([int(g["update"]) for g in accepted if int(g["update"]) < finding.turn_step], default=0)
        checkpoint = str(data.checkpoints[step]) if step in data.checkpoints else None
        keep = "the round's starting policy" if step == 0 else f"the candidate of update {step}"
        where = f" ({checkpoint})" if checkpoint else " (not saved: run with save_candidates on)"
        advice.insert(0, f"keep {keep}{where}, not the later one the round handed on")
    reasons = ([finding.reason] if finding else []) + notes + [f"gate: {len(accepted)}/{len(gate)} candidates accepted"] * bool(gate)
    reasons += [f"the pace step's candidate {'accepted' if g['accepted'] else 'rejected'} (AM-Q gain {g['gain']:+.3g}, needed {g['threshold']:.3g})" for g in paced]
    if regime == "unknown":
        reasons.append("no gate decisions recorded")
    evidence = {**(finding.evidence if finding else {}), "gate_checks": float(len(gate)), "accepted": float(len(accepted))}
    for key, name in (("kl_end", "charts/approx_kl"), ("clip_fraction_end", "charts/clip_fraction"), ("adv_saturation_end", "ppo/adv_saturation"), ("q_gap_end", "ppo/q_gap")):
        value = end_value(c.get(name))
        if value is not None and math.isfinite(value):
            evidence[key] = value
    if gate:
        evidence["last_gain"] = float(gate[-1]["gain"])
    return Verdict(data.stage, data.kind, regime, step, checkpoint, finding.turn_step if finding else None, tuple(reasons), tuple(advice), evidence)


def _verified_gain(report: dict) -> str | None:
    """The round's verification kept its accepted policy: it beat the reference in sim beyond noise."""
    wins_losses = report.get("accepted_wins_losses")
    if report.get("refused") or not wins_losses or report.get("rollout_success") is None:
        return None
    line = (f"the accepted policy succeeded {float(report['rollout_success']):.0%} against the reference's {float(report['reference_success']):.0%} "
            f"on the round's verification episodes (won {wins_losses[0]}, lost {wins_losses[1]})")  # fmt: skip
    steps = report.get("accepted_steps")
    if report.get("accepted_on_pace") and steps:
        line += f" and was faster where both succeeded ({float(steps[1]):.1f} against {float(steps[0]):.1f} steps)"
    return line


def _refused_by_rollouts(report: dict, accepted: list[dict]) -> Finding | None:
    """Overfitting (PPO): the gate accepted a candidate that then succeeded less often in sim than the
    reference on the same seeds: the updates climbed the critics and the latent model where they are wrong."""
    if not report.get("refused") or not accepted:
        return None
    ref, got = float(report["reference_success"]), float(report["rollout_success"])
    if got >= ref:  # refused for want of evidence, not for losing: no sign that the updates left the data
        return None
    return Finding("overfitting", int(accepted[0]["update"]), f"the gate accepted update {int(accepted[-1]['update'])} but in sim it succeeded "
                   f"{got:.0%} against the reference's {ref:.0%} on the same verification seeds: the round kept the reference",
                   {"rollouts/reference_success": ref, "rollouts/accepted_success": got})  # fmt: skip


def _ppo_underfitting_advice(clip_fraction: float | None, run_config: dict, config: RulesConfig) -> list[str]:
    """A stalled gate: when most per-step ratios sit outside the clip range, each update is already as
    large as the trust region lets it be (on lift a 10x larger actor lr drove KL to 16 and AM-Q down),
    so the fix is a less sharp ratio; otherwise the policy has room to move further per gate check."""
    horizon = "check the OPE horizon reaches the reward (horizon x chunk)"
    if clip_fraction is not None and math.isfinite(clip_fraction) and clip_fraction > config.clip_saturated:
        fix = ("log_prob_reduction=mean (per-dimension ratios)" if run_config.get("log_prob_reduction", "sum") == "sum"
               else "a larger clip_eps or a higher std floor (min_std)")
        return [f"the per-step ratios are saturated (clip fraction {clip_fraction:.2f}): {fix}, not a larger actor lr", horizon]
    return ["more PPO updates between gate checks (gate_every), then a larger actor lr while the clip fraction stays low", horizon]


def _never_succeeds(success, config: RulesConfig) -> Finding | None:
    t = trend(success, config)
    if t is None or t.raw.max() > 0:
        return None
    return Finding("underfitting", None, f"charts/success never rose above 0 in {len(t.raw)} iterations: no successful rollout to learn from", {"charts/success:max": 0.0})


def diagnose_online(data: StageData, config: RulesConfig) -> Verdict:
    c = data.curves
    success, kl = c.get("charts/success"), c.get("charts/approx_kl")
    finding = first(
        nonfinite(c.get("losses/ppo")),
        nonfinite(kl),
        above_for_long(kl, config.kl_max, config, "policy steps too large"),
        falls_from_peak(success, config.success_drop, config, "the policy got worse"),
        _never_succeeds(success, config),
        level_low(c.get("charts/value_explained_variance"), config.ev_low, config, "the value function does not predict returns"),
    )
    regime = finding.regime if finding else None
    advice = {
        "underfitting": ["start from a policy that succeeds sometimes (PPO needs successful rollouts to learn from)"] if finding and "never" in finding.reason
        else ["a better value function: more value_warmup_epochs, a larger critic, warm-start it from the offline critics (value_from)"],
        "diverging": ["keep the chosen checkpoint; a smaller actor lr or a lower target_kl", "a higher std floor (min_std) keeps per-step ratios sane"],
    }.get(regime, [])  # fmt: skip
    extra = {"success_end": end_value(success), "kl_end": end_value(kl), "clip_fraction_end": end_value(c.get("charts/clip_fraction")),
             "value_explained_variance_end": end_value(c.get("charts/value_explained_variance"))}  # fmt: skip
    verdict = finish(data, finding, advice, extra, [], config, enough=trend(success, config) is not None)
    return _defer_to_selection(verdict, data)


def _defer_to_selection(verdict: Verdict, data: StageData) -> Verdict:
    """An online run that scored its candidates in sim (deterministic, as deployed) already measured
    which one to keep: the verdict keeps that one, and says where the curves alone would have pointed.
    The training-success curve is of the stochastic policy; the selection is the better evidence."""
    selected, selection = data.report.get("selected"), data.report.get("selection")
    if not selected or not selection:
        return verdict
    scores = ", ".join(f"{name} {success:.0%}" for name, success, _ in selection)
    if selected == "start":
        from workflow.policy import policy_dir  # imports torch, which the rules otherwise do not need

        step, path = None, policy_dir(data.config.get("policy", ""))
    else:  # the run's own policy is the selected snapshot when that one is gone
        step = int(selected.split()[1])
        path = data.checkpoints.get(step, data.final)
    if step == verdict.checkpoint_step and path is not None:
        note = f"the run's selection episodes kept {selected} ({scores}), as the curves do"
    else:
        curves_pick = "-" if verdict.checkpoint_step is None else f"iteration {verdict.checkpoint_step}"
        note = f"the run's selection episodes kept {selected} ({scores}); the training curves alone point at {curves_pick}"
    evidence = {**verdict.evidence, "selected_success": max(s for _, s, _ in selection)}
    return replace(verdict, checkpoint_step=step, checkpoint=str(path) if path is not None else None, reasons=(*verdict.reasons, note), evidence=evidence)


def diagnose_distill(data: StageData, config: RulesConfig) -> Verdict:
    loss = data.curves.get("losses/distill")
    finding = first(nonfinite(loss), explodes(loss, config))
    advice = ["a smaller distill lr; resume from the chosen checkpoint"] if finding else []
    return finish(data, finding, advice, {"loss_end": end_value(loss)}, [], config, enough=trend(loss, config) is not None)
