"""Curve tools of the diagnostic rules: smoothing, noise, and the trend tests each rule is made of.

Curves are smoothed by a centred rolling median; a change counts only when it is
larger than ``noise_k`` times the curve's own point noise (1.4826 x the median
absolute second difference / sqrt 6, which a locally linear trend does not
touch), so noise alone never flips a verdict.
Each test returns a :class:`Finding` (regime, where it turned, a sentence with the
numbers, the numbers) or None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workflow.diagnostics.curves import Curve


@dataclass(frozen=True)
class RulesConfig:
    """Thresholds of the rules (defaults measured on push runs, see tests/test_diagnostics.py)."""

    min_points: int = 4
    """Fewer finite points than this on the curve a rule needs: that rule stays silent."""
    smooth_fraction: float = 0.2
    """Rolling-median window as a share of a curve's points (odd, at least 3)."""
    noise_k: float = 3.0
    """A change counts only beyond noise_k x the curve's point noise (1.4826 x median |second difference| / sqrt 6)."""
    overfit_rise: float = 0.1
    """Overfitting: the held-out loss ends this share above its minimum."""
    q_drop: float = 0.25
    """Overfitting (Kumar et al.): the dataset Q falls from its peak by this share of its earlier rise."""
    underfit_ratio: float = 0.5
    """Underfitting: the training loss ends above this share of its starting level."""
    td_rel_high: float = 0.5
    """Underfitting: the critics' training TD error ends above this share of its targets' variance."""
    still_falling: float = 0.1
    """Advice 'train longer': the training loss fell by this share of its start over the last quarter."""
    still_improving: float = 0.05
    """Advice 'train longer' (imitation): the held-out action error fell by this share of its end value over the last
    quarter. On push-rim from 100 demonstrations a 4,000-step run ended with 10.6% (54% success) where an 8,000-step run
    reached 93.5%; six 8,000-step push runs ended between -5% and 3.2% (docs/RESULTS.md, session 22). The training
    loss fell 0.5-1% of its start over the last quarter in all of them."""
    explode_factor: float = 10.0
    """Diverging: a loss or |Q| ends this many times its mid-run level and still grows."""
    kl_max: float = 0.1
    """Diverging: median approximate KL per policy update over the last third above this."""
    gap_widen: float = 0.05
    """Overfitting (PPO): the policy/data Q gap widened at every gate check by this share of |J| in all."""
    demo_drift: float = 0.12
    """Overfitting (PPO): an accepted candidate's action error on the demonstrations (``ppo/demo_action_error``) this share
    above the round's starting policy's. Drawn from runs where every PPO step lost success (docs/RESULTS.md, session 10): the
    further a candidate drifted from the demonstrations, the more it lost. Within the limit is "a little worse at most", not
    "better"."""
    clip_saturated: float = 0.3
    """PPO advice: a final clip fraction above this means the per-step ratios, not the learning rate, limit each update."""
    success_drop: float = 0.2
    """Diverging (online): smoothed success falls this far (absolute) below its peak."""
    ev_low: float = 0.2
    """Underfitting (online): the value function's explained variance stays below this."""
    imitation_signal: str = "action"
    """Held-out curve that decides imitation overfitting: ``action`` (the deterministic action error, when logged)
    or ``denoise`` (the denoising loss). On push the held-out denoising loss rose in runs whose sim success kept
    improving (16% -> 24%, 6% -> 22% from the early to the last checkpoint), while the DDIM action error kept falling.
    With the ddpm-mean sampler the action error turned there too (8% at the turn, 24% at the end): neither curve is
    closed-loop success, so an overfitting verdict asks for a sim check (``robot diagnose --sim-eval``)."""
    imitation_keep: str = "last"
    """Checkpoint an imitation overfitting verdict keeps: ``last`` (the turn stays the early-stopping candidate the
    advice names) or ``turn``. Every imitation run measured in sim did worse at the turn than at its last step
    (push-mixed, 30 demonstrations: 10.0% at the turn, step 2,000, against 55.0% at step 8,000, 200 seeds; push, 12
    demonstrations: 8% against 18%), as diffusion_policy reports: its held-out losses rise while success keeps
    climbing. A diverging run still keeps the checkpoint before its turn."""

    def __post_init__(self) -> None:
        if self.min_points < 3:
            raise ValueError(f"RulesConfig.min_points must be >= 3 (a trend needs a start, a middle and an end), got {self.min_points}")
        if self.imitation_keep not in ("last", "turn"):
            raise ValueError(f"RulesConfig.imitation_keep must be 'last' or 'turn', got {self.imitation_keep!r}")
        if self.imitation_signal not in ("action", "denoise"):
            raise ValueError(f"RulesConfig.imitation_signal must be 'action' or 'denoise', got {self.imitation_signal!r}")
        if not 0 < self.smooth_fraction < 1 or self.noise_k < 0 or self.explode_factor <= 1:
            raise ValueError(f"RulesConfig: smooth_fraction in (0, 1), noise_k >= 0 and explode_factor > 1 needed, got {self}")


@dataclass(frozen=True)
class Finding:
    regime: str
    turn_step: int | None
    reason: str
    evidence: dict[str, float]
    score: Curve | None = None
    """The curve that turned, to compare checkpoints on either side of the turn."""
    lower_is_better: bool = True


# ------------------------------------------------------------------ curve tools


@dataclass(frozen=True)
class Trend:
    steps: np.ndarray  # (N,) steps of the finite points
    raw: np.ndarray  # (N,) finite values
    smooth: np.ndarray  # (N,) rolling median
    noise: float  # robust std of a point around the trend


def smooth(values: np.ndarray, fraction: float) -> np.ndarray:
    """Centred rolling median; the window (odd, >= 3) shrinks at the ends."""
    n = len(values)
    w = max(3, int(round(fraction * n)) | 1)
    h = w // 2
    return np.array([np.median(values[max(0, i - h) : i + h + 1]) for i in range(n)])


def trend(curve: Curve | None, config: RulesConfig) -> Trend | None:
    """The finite part of a curve, smoothed; None if it has fewer than ``min_points`` finite points."""
    if curve is None:
        return None
    finite = np.isfinite(curve.values)
    if finite.sum() < config.min_points:
        return None
    raw, steps = curve.values[finite], curve.steps[finite]
    sm = smooth(raw, config.smooth_fraction)
    second = raw[2:] - 2 * raw[1:-1] + raw[:-2]  # blind to any locally linear trend; pure noise gives std x sqrt(6)
    noise = 1.4826 * float(np.median(np.abs(second))) / np.sqrt(6)
    return Trend(steps, raw, sm, noise)


def refine(t: Trend, i: int, config: RulesConfig, *, lowest: bool) -> int:
    """Index of the raw extreme within the smoothing window around smoothed index ``i``."""
    h = max(3, int(round(config.smooth_fraction * len(t.raw))) | 1) // 2
    lo, hi = max(0, i - h), min(len(t.raw), i + h + 1)
    window = t.raw[lo:hi]
    return lo + int(np.argmin(window) if lowest else np.argmax(window))


def at_step(t: Trend, step: int) -> float:
    """Smoothed value at ``step`` (linear between points)."""
    return float(np.interp(step, t.steps, t.smooth))


def nonfinite(curve: Curve | None) -> Finding | None:
    if curve is None or len(curve) == 0:
        return None
    bad = ~np.isfinite(curve.values)
    if not bad.any():
        return None
    step = int(curve.steps[np.argmax(bad)])
    return Finding("diverging", step, f"{curve.name} became {curve.values[np.argmax(bad)]} at step {step}", {f"{curve.name}:first_nonfinite_step": step})


def explodes(curve: Curve | None, config: RulesConfig, *, magnitude: bool = True) -> Finding | None:
    """|value| (or the value) ends ``explode_factor`` times its mid-run level and is still growing."""
    t = trend(curve, config)
    if t is None:
        return None
    y = np.abs(t.smooth) if magnitude else t.smooth
    n = len(y)
    mid = float(np.median(y[n // 3 : max(n // 3 + 1, 2 * n // 3)]))
    end = float(y[-1])
    growing = end >= 0.9 * float(y.max()) and y[-1] > y[max(0, n - 1 - max(1, n // 4))]
    if mid > 0 and end > config.explode_factor * mid and growing:
        below = np.flatnonzero(y <= 2 * mid)
        turn = int(t.steps[below[-1]]) if len(below) else int(t.steps[0])
        return Finding("diverging", turn, f"{curve.name} grew from {mid:.3g} (mid-run) to {end:.3g} at the end", {f"{curve.name}:mid": mid, f"{curve.name}:end": end})
    return None


def rises_after_minimum(val: Curve | None, train: Curve | None, config: RulesConfig) -> Finding | None:
    """Overfitting: the held-out curve ends well above its minimum while the training curve does not rise."""
    tv = trend(val, config)
    if tv is None:
        return None
    i_min = int(np.argmin(tv.smooth))
    lo, end = float(tv.smooth[i_min]), float(tv.smooth[-1])
    rise = end - lo
    threshold = max(config.overfit_rise * abs(lo), config.noise_k * tv.noise)
    if i_min >= len(tv.smooth) - 1 or rise <= threshold:
        return None
    turn = int(tv.steps[refine(tv, i_min, config, lowest=True)])
    evidence = {f"{val.name}:min": lo, f"{val.name}:min_step": turn, f"{val.name}:end": end}
    tt = trend(train, config)
    if tt is not None:
        train_then, train_end = at_step(tt, turn), float(tt.smooth[-1])
        evidence.update({f"{train.name}:at_min": train_then, f"{train.name}:end": train_end})
        if train_end - train_then > max(config.overfit_rise * abs(train_then), config.noise_k * tt.noise):
            return Finding("diverging", turn, f"{val.name} and {train.name} both rose after step {turn} ({lo:.4g} -> {end:.4g}; {train_then:.4g} -> {train_end:.4g})", evidence)
        what = f"while {train.name} went {train_then:.4g} -> {train_end:.4g}"
    else:
        what = "(no training curve to compare)"
    return Finding("overfitting", turn, f"{val.name} rose {lo:.4g} -> {end:.4g} after step {turn} {what}", evidence, val)


def peaks_then_falls(q: Curve | None, config: RulesConfig) -> Finding | None:
    """Overfitting (Kumar et al.): the average dataset Q rose, peaked and fell back by a clear share of the rise."""
    t = trend(q, config)
    if t is None:
        return None
    i_peak = int(np.argmax(t.smooth))
    start, peak, end = float(t.smooth[0]), float(t.smooth[i_peak]), float(t.smooth[-1])
    rise, drop = peak - start, peak - end
    noise = config.noise_k * t.noise
    if 0 < i_peak < len(t.smooth) - 1 and rise > noise and drop > max(config.q_drop * rise, noise):
        turn = int(t.steps[refine(t, i_peak, config, lowest=False)])
        return Finding("overfitting", turn, f"{q.name} peaked at {peak:.4g} (step {turn}) and fell to {end:.4g}",
                       {f"{q.name}:peak": peak, f"{q.name}:peak_step": turn, f"{q.name}:end": end}, q, lower_is_better=False)  # fmt: skip
    return None


def stays_high(train: Curve | None, config: RulesConfig, *, reference: float | None = None) -> Finding | None:
    """Underfitting: the training loss ends above ``underfit_ratio`` of its starting level.

    ``reference`` replaces the measured start where the loss of a know-nothing model is
    known (1.0 for epsilon-prediction denoising), so a warm-started run is not judged
    against its own good start.
    """
    t = trend(train, config)
    if t is None:
        return None
    start = float(np.median(t.raw[:3])) if reference is None else reference
    end = float(t.smooth[-1])
    if start > 0 and end > config.underfit_ratio * start:
        what = "its start" if reference is None else "a model that knows nothing"
        return Finding("underfitting", None, f"{train.name} stayed high: {end:.4g} at the end, {end / start:.0%} of {what} ({start:.4g})",
                       {f"{train.name}:start": start, f"{train.name}:end": end})  # fmt: skip
    return None


def still_falling(train: Curve | None, config: RulesConfig) -> float | None:
    """Share of the starting level the training loss lost over the last quarter (None: too few points)."""
    t = trend(train, config)
    if t is None:
        return None
    start = float(np.median(t.raw[:3]))
    return _last_quarter_drop(t) / start if start > 0 else None


def still_improving(curve: Curve | None, config: RulesConfig) -> float | None:
    """Share of its end value a held-out error lost over the last quarter (negative: it rose; None: too few points)."""
    t = trend(curve, config)
    if t is None or t.smooth[-1] <= 0:
        return None
    return _last_quarter_drop(t) / float(t.smooth[-1])


def _last_quarter_drop(t: Trend) -> float:
    """How far the smoothed curve fell from three quarters of the way along to its end."""
    quarter = float(np.interp(t.steps[0] + 0.75 * (t.steps[-1] - t.steps[0]), t.steps, t.smooth))
    return quarter - float(t.smooth[-1])


def level_high(curve: Curve | None, bound: float, config: RulesConfig, what: str) -> Finding | None:
    t = trend(curve, config)
    if t is None or t.smooth[-1] <= bound:
        return None
    return Finding("underfitting", None, f"{curve.name} ended at {t.smooth[-1]:.3g} > {bound:g} ({what})", {f"{curve.name}:end": float(t.smooth[-1])})


def level_low(curve: Curve | None, bound: float, config: RulesConfig, what: str) -> Finding | None:
    t = trend(curve, config)
    if t is None:
        return None
    tail = float(np.median(t.raw[len(t.raw) // 2 :]))
    if tail >= bound:
        return None
    return Finding("underfitting", None, f"{curve.name} stayed at {tail:.3g} < {bound:g} over the second half ({what})", {f"{curve.name}:second_half": tail})


def above_for_long(curve: Curve | None, bound: float, config: RulesConfig, what: str) -> Finding | None:
    """Diverging: the median over the last third exceeds ``bound``; turns where the smoothed curve first crossed it."""
    t = trend(curve, config)
    if t is None:
        return None
    tail = float(np.median(t.raw[-max(1, len(t.raw) // 3) :]))
    if tail <= bound:
        return None
    crossed = np.flatnonzero(t.smooth > bound)
    turn = int(t.steps[crossed[0]]) if len(crossed) else int(t.steps[-1])
    return Finding("diverging", turn, f"{curve.name} stayed at {tail:.3g} > {bound:g} over the last third ({what})", {f"{curve.name}:last_third": tail})


def falls_from_peak(curve: Curve | None, drop: float, config: RulesConfig, what: str) -> Finding | None:
    """The smoothed curve ends more than ``drop`` (absolute) below its peak: turns at the peak."""
    t = trend(curve, config)
    if t is None:
        return None
    i_peak = int(np.argmax(t.smooth))
    peak, end = float(t.smooth[i_peak]), float(t.smooth[-1])
    if i_peak < len(t.smooth) - 1 and peak - end > max(drop, config.noise_k * t.noise):
        turn = int(t.steps[i_peak])
        return Finding("diverging", turn, f"{curve.name} fell from {peak:.3g} (step {turn}) to {end:.3g} ({what})", {f"{curve.name}:peak": peak, f"{curve.name}:end": end})
    return None


def first(*findings: Finding | None) -> Finding | None:
    return next((f for f in findings if f is not None), None)


def end_value(curve: Curve | None) -> float | None:
    if curve is None or not np.isfinite(curve.values).any():
        return None
    return float(curve.values[np.isfinite(curve.values)][-1])
