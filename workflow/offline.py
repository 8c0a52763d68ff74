"""Stage 2: OPE-gated offline RL on the denoising chain, iterated in rounds.

Each round reads top to bottom:

0. roll the reference out in sim (``offline-rollout``; the stochastic chain with ``rollout_std``):
   its episodes join the data the critics learn from and the round may retrain on;
1. encode every dataset step with the reference policy's frozen encoder;
2. fit IQL critics (twin Q with min, expectile V) and the latent dynamics ensemble;
3. PPO on the denoising chain: chains sampled from the reference on dataset states,
   one normalised advantage min Q - V per chain shared by its K steps (with several chains
   per state, centred on the state's chains instead of V); every
   ``gate_every`` updates the AM-Q gate compares candidate and reference and only
   a clear gain makes the candidate the new reference (a rejected one is reset);
3b. with ``pace`` scales, the critic's choice of pace (:mod:`workflow.pace`): the denoiser regresses onto its own
   chunks sped up where the critics prefer it, a candidate the same gate judges. PPO's clip keeps each update near
   the policy, and slow demonstrations leave exploration nothing fast to find; the critics rank pace already;
4. verify an accepted policy in sim: it and the reference run with their deterministic sampler on
   seeds of the round's own, and it is kept only when its paired wins there are beyond noise (the OPE
   can be fooled); a change that leads without being beyond noise gets more episodes, up to a cap
   (:mod:`workflow.verification`);
5. optionally retrain imitation on demonstrations + successful rollouts (or only the rollouts' steps the operator
   drove, ``retrain_rollout_steps``), warm-started from the kept
   policy, verified the same way against it (``retrain_steps``; the rounds as RL-100's data
   flywheel). Measured here it has only lost (docs/RESULTS.md, session 15), so the pipeline's
   budgets leave it off.

Each robot episode is committed as it ends, and the critics and the PPO stage's outcome as they finish
(:mod:`workflow.offline_resume`): rerunning the same command after a crash, an e-stop or a quit finishes the round
without running a committed episode or a finished stage again.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from policies.critics import CriticConfig, IqlCritics
from policies.diffusion import LOG_PROB_REDUCTIONS, DiffusionPolicy
from policies.dynamics import DynamicsConfig, DynamicsEnsemble
from robot.checkpoint import load_checkpoint
from robot.config import to_dict
from robot.normalize import Normalizer
from robot.store import ZarrEpisodeStore
from robot.types import ACTION, EpisodeMeta
from workflow.diagnostics.probes import CriticProbe, ProbeConfig, advantage_metrics, critic_metrics, make_critic_probe, policy_gap_metrics, save_critic_snapshot
from workflow.control import open_control
from workflow.critic_checkpoint import load_critics, save_critics
from workflow.distributed import Distributed, init_distributed
from workflow.envs import make_sim_for, sim_lanes
from workflow.imitation import ImitationConfig, train_imitation
from workflow.lanes import DEFAULT_LANES
from workflow.latent import LatentTransitions, encode_store
from workflow.offline_resume import RolloutCommit, RoundJournal, load_ppo_outcome, save_gate_record, save_ppo_outcome
from workflow.ope import GateConfig, GateDecision, gate, horizon_warning
from workflow.pace import PaceConfig, chunk_speed, motion_layout, pace_applies, pace_targets, policy_speed, regress_onto
from workflow.policy import KIND, DiffusionController, build_from_checkpoint, policy_dir, policy_task, save_policy
from workflow.ppo import StepSchedule, chain_ppo_loss, denoiser_parameters, fine_tuned_steps, normalize_advantages, per_state_centred
from workflow.rollout import EvalReport, evaluate
from workflow.run import RunDir, check_finite_loss, progress, resolve_device, seed_everything
from workflow.takeover import OperatorConfig, OperatorStop
from workflow.verification import Verifier


@dataclass(frozen=True)
class OfflineConfig:
    policy: str
    """Imitation run directory or policy checkpoint to start from."""
    data: str
    """Episode store the policy was trained on (demonstrations)."""
    out: str
    """Run directory; its data.zarr holds the demonstrations plus every round's rollouts."""
    task: str | None = None
    """Simulated task the rollouts between rounds run on; None: the checkpoint's task."""
    robot: str | None = None
    """Robot the rounds' rollouts and verification episodes run on, any spec `robot deploy` takes (ur5e:HOST,
    franka:standin:lift, remote:HOST:PORT...), through deploy's fixed-rate loop, chunk queue and safety layer;
    None: sim:<task>, unthrottled."""
    hz: float | None = None
    """Control rate on ``robot``; None: the policy's data rate on an arm (stand-ins included), unthrottled in sim."""
    max_steps: int | None = None
    """Ticks per episode on ``robot``; None: the task's limit (real arms: 600)."""
    lanes: int = DEFAULT_LANES
    """Sim episodes run side by side, their chunks planned in one batch (``workflow.lanes``; 1: one at a time).
    An arm, an operator's device or a policy that reads cameras runs one at a time."""
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    """Who watches the episodes on ``robot`` (a person or the scripted operator: start, labels, takeovers) and what
    scores them."""
    rounds: int = 2
    """Offline rounds M."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    critic_steps: int = 2000
    """Gradient steps of the IQL critics per round."""
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    ppo_updates: int = 200
    """PPO updates on the denoising chain per round."""
    ppo_batch: int = 256
    """Dataset states per PPO update."""
    chains_per_state: int = 1
    """Chains sampled per dataset state. 1 is RL-100's advantage min Q - V. With more, each chain's advantage is
    centred on its state's chains (min Q(s, a_i) - mean_j min Q(s, a_j)): what is left is the part that depends
    on the action. With one chain per state most of min Q - V's variance comes from the state (V, an upper
    expectile of the data's Q, is not the policy's mean Q), so the update is mostly noise; ``ppo/adv_action_share``
    logs the action's share (measured in docs/RESULTS.md, session 9)."""
    actor_lr: float = 1e-5
    """Learning rate of the denoiser during PPO (RL-100: 1e-6 .. 1e-5)."""
    ft_steps: int | None = None
    """PPO fine-tunes only the last this many denoising steps (DPPO's ``ft_denoising_steps``; ``workflow.ppo.fine_tuned_steps``),
    the earlier ones run by a frozen copy of the starting denoiser, as online RL's ``ft_steps``; None: every step. The
    policy handed on keeps the frozen steps, so online RL must fine-tune as many (or pass None)."""
    anchor_coef: float = 0.0
    """Weight of a penalty on each denoising step's KL to the round's starting policy (0: off, the paper's objective).
    The PPO step climbs the critics wherever they rank actions, including where they are wrong off the data; the
    anchor keeps every candidate near the policy imitated from the data (``ppo/anchor_kl`` logs the drift)."""
    clip_eps: float = 0.25
    """The PPO clip range (of the last denoising step when ``clip_first`` is set)."""
    clip_first: float | None = None
    """Clip range of the first denoising step, rising exponentially to ``clip_eps`` at the last (DPPO: 0.001 to
    0.01); None: every step clips at ``clip_eps`` (``workflow.ppo.StepSchedule``)."""
    denoising_gamma: float = 1.0
    """Discount of the advantage over the denoising chain, towards its first step (DPPO: 0.99; 1: none)."""
    grad_clip: float = 0.5
    """Gradient-norm clip of the PPO updates."""
    min_std: float = 0.1
    """Floor on each denoising step's std for the chains PPO samples and scores (``DiffusionPolicy.chain_sampler``)."""
    log_prob_reduction: Literal["sum", "mean"] = "sum"
    """Chain log-probs over chunk and action dims while fine-tuning: ``sum`` (exact) or ``mean`` (DPPO's, a far less sharp ratio)."""
    gate_every: int = 50
    """PPO updates between AM-Q gate checks."""
    gate: GateConfig = field(default_factory=GateConfig)
    pace: PaceConfig = field(default_factory=PaceConfig)
    """The critic's choice of pace (``workflow.pace``), after PPO: the denoiser regresses onto the policy's own chunks
    sped up where the critics prefer it, and the AM-Q gate and verification judge the result as a PPO candidate."""
    rollout_episodes: int = 20
    """Sim episodes of the round's reference added to the data before the critics are fitted."""
    rollout_std: float | None = None
    """None: rollouts with the deterministic sampler the policy deploys with. A float: the stochastic chain with
    each step's std floored there (``min_std`` is the chain PPO samples), so the critics see varied actions at the
    states the policy visits. Deterministic rollouts show one action per state, so critics trained on them cannot
    rank a state's candidate chunks (``robot critic-ranking``; measured in docs/RESULTS.md, sessions 11 and 15)."""
    retrain_steps: int = 0
    """Imitation steps on demonstrations + successful rollouts after each round, warm-started from the kept policy
    (RL-100's data flywheel); 0 keeps the round's policy as is. Off by default: measured here it has only lost."""
    retrain_rollout_steps: Literal["episodes", "interventions"] = "episodes"
    """What the rollouts teach the retraining (``ImitationConfig.rollout_steps``): ``episodes``, every successful
    rollout whole, as RL-100; ``interventions``, only the steps the operator drove (flagged ``intervention``) of every
    rollout, with the demonstrations: HIL-SERL's demonstration buffer, for a policy whose own steps should not be
    imitated back (its failures and detours) while the operator's corrections should."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Diagnostics: critic episodes held out for validation, probe rows, critic snapshots (``workflow.diagnostics.probes``)."""
    save_candidates: bool = True
    """Save every candidate the gate accepts (round-M/candidates/update-U): the checkpoints ``robot diagnose`` chooses
    among when the PPO stage overfits (the round itself hands on only its last accepted policy)."""
    verify_rollouts: bool = True
    """Run an accepted (then a retrained) policy and the policy it would replace on the same seeds, in looks of
    ``verify_episodes``, with the deterministic sampler they deploy with; the change is kept only when its paired
    wins there are beyond noise (``verify_max_p``). AM-Q can be climbed where the critics and the latent model are wrong, while
    success in sim falls (docs/RESULTS.md, session 5). A tie keeps the policy before it. The episodes are not
    stored: they judge, the rollouts teach."""
    verify_episodes: int = 50
    """Deterministic episodes per verified policy and look, on seeds of their own (``verify_seed``): a change that
    leads the policy it would replace without being beyond noise gets another look of as many, up to
    ``verify_max_episodes`` (``workflow.verification``). One look of 50 refused a gain that 200 seeds showed at
    p = 0.02 (docs/RESULTS.md, session 24)."""
    verify_max_episodes: int = 200
    """Most verification episodes per policy and judgement; ``verify_episodes`` makes it one look, as before session 24."""
    verify_max_p: float = 0.1
    """One-sided sign-test p-value a change's wins over the policy it would replace must reach at a look (the
    test online RL selects with). 1.0 keeps any change that wins more episodes than it loses, which lets noise
    through (docs/RESULTS.md, session 14)."""
    verify_pace_margin: float | None = 0.01
    """Also keep a change that is faster beyond noise (``verify_max_p``) on the verification seeds both policies
    solved, RL-100's shorter task times, if over ``verify_max_episodes`` paired episodes it lost at most this share
    of them more than it won: the non-inferiority margin (``workflow.verification`` gives what it lets through).
    None: success alone decides, as before session 36."""
    retrain_when_rejected: bool = True
    """Retrain on the merged data (demonstrations + every round's successful rollouts) even in a round whose gate
    accepted nothing, warm-started from the reference: the data flywheel. False: such a round hands on the
    reference exactly as it was."""
    drop_nonfinite: bool = False
    """Leave out episodes holding NaN or inf (named on stderr) instead of refusing the data."""
    flip_advantages: bool = False
    """Diagnostics only: negate advantages (a deliberately harmful update the gate must reject)."""
    seed: int = 0
    """Seed of the critics, the chains, the rollouts and the verification episodes."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""

    @property
    def step_schedule(self) -> StepSchedule:
        """PPO's treatment of the denoising steps (validated when the config is made)."""
        return StepSchedule(clip_first=self.clip_first, denoising_gamma=self.denoising_gamma)

    def __post_init__(self) -> None:
        self.step_schedule  # noqa: B018 (refuses a bad clip_first or denoising_gamma)
        if self.rounds < 1 or self.ppo_updates < 0 or self.gate_every < 1 or self.critic_steps < 0 or self.chains_per_state < 1 or self.lanes < 1:
            raise ValueError(f"rounds, gate_every, chains_per_state and lanes must be >= 1, ppo_updates and critic_steps >= 0, got {self}")
        if self.log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction must be one of {LOG_PROB_REDUCTIONS}, got {self.log_prob_reduction!r}")
        if self.anchor_coef < 0 or (self.rollout_std is not None and self.rollout_std < 0):
            raise ValueError(f"anchor_coef and rollout_std must be >= 0, got {self.anchor_coef} and {self.rollout_std}")
        if self.ft_steps is not None and self.ft_steps < 1:
            raise ValueError(f"ft_steps must be >= 1 (or None: every denoising step), got {self.ft_steps}")
        if self.ft_steps is not None and self.retrain_steps:
            raise ValueError(f"ft_steps freezes the leading denoising steps, but retraining imitates into every step: pass retrain_steps 0 "
                             f"with ft_steps (got {self.retrain_steps})")
        if self.retrain_rollout_steps not in ("episodes", "interventions"):
            raise ValueError(f"retrain_rollout_steps must be 'episodes' or 'interventions', got {self.retrain_rollout_steps!r}")
        if not 1 <= self.verify_episodes <= self.verify_max_episodes <= VERIFY_SEED_OFFSET:
            raise ValueError(f"need 1 <= verify_episodes <= verify_max_episodes <= {VERIFY_SEED_OFFSET} (the round's verification seeds), "
                             f"got {self.verify_episodes} and {self.verify_max_episodes}")
        if not 0 < self.verify_max_p <= 1:
            raise ValueError(f"verify_max_p must be in (0, 1], got {self.verify_max_p}")
        if self.verify_pace_margin is not None and not 0 <= self.verify_pace_margin < 1:
            raise ValueError(f"verify_pace_margin must be in [0, 1) or None, got {self.verify_pace_margin}")
        if not 0 < self.actor_lr < 1 or not 0 < self.clip_eps < 1:
            raise ValueError(f"actor_lr and clip_eps must be in (0, 1), got {self.actor_lr}, {self.clip_eps}")


@dataclass(frozen=True)
class RoundReport:
    round: int
    gate_checks: int
    accepted: int
    last_j_reference: float | None
    rollout_success: float | None
    """Success of the accepted policy on the verification episodes (None: not verified)."""
    merged_episodes: int
    policy: str
    reference_success: float | None = None
    """Success of the reference on the verification episodes (None: nothing to verify)."""
    refused: bool = False
    """The gate accepted a candidate but it did not beat the reference beyond noise on the verification episodes: the round kept the reference."""
    accepted_wins_losses: tuple[int, int] | None = None
    """Verification episodes only the accepted policy solved, and only the reference solved (None: not verified)."""
    retrained: bool = False
    """The round retrained a policy on the merged data (demonstrations + successful rollouts)."""
    retrained_success: float | None = None
    """Success of the retrained policy on the verification episodes (None: not verified)."""
    retrain_refused: bool = False
    """The retrained policy did not beat the policy it would replace beyond noise: the round kept that one."""
    retrained_wins_losses: tuple[int, int] | None = None
    """Verification episodes only the retrained policy solved, and only the policy it would replace solved (None: not verified)."""
    accepted_on_pace: bool = False
    """Verification kept the accepted policy for speed: as successful as the reference and faster beyond noise."""
    accepted_steps: tuple[float, float] | None = None
    """Mean steps of the reference and of the accepted policy on the verification seeds both solved (None: none such)."""
    retrained_on_pace: bool = False
    """Verification kept the retrained policy for speed."""
    rollouts_success: float | None = None
    """Success of the reference's rollouts that joined the data (with ``rollout_std``: the stochastic chain's)."""
    verify_episodes: int = 0
    """Verification episodes run in this round, every policy's together."""
    verify_steps: int = 0
    """Sim steps of those episodes (not stored: they judge, the rollouts teach)."""
    robot_minutes: float = 0.0
    """Wall time of the round's rollouts and verification episodes on ``OfflineConfig.robot`` (0 in sim)."""
    pace_accepted: bool | None = None
    """The gate's verdict on the pace step's policy (``OfflineConfig.pace``; None: no pace step)."""


@dataclass(frozen=True)
class OfflineReport:
    run: str
    policy: str
    rounds: tuple[RoundReport, ...]
    minutes: float
    warning: str | None = None


def train_offline(config: OfflineConfig, *, show_progress: bool = True) -> OfflineReport:
    started = time.perf_counter()
    ddp, device = init_distributed(resolve_device(config.device))  # torchrun: batches and rollouts split over ranks
    if ddp.enabled and on_robot(config):
        raise ValueError(f"torchrun splits simulated rollouts over ranks; robot {config.robot} is one arm: run the offline rounds in one process")
    config = replace(config, task=policy_task(config.policy, config.task, warn=ddp.is_main))  # the run's config.json names it
    if config.ft_steps is not None:  # a --ft-steps the policy cannot take fails before the run directory exists
        fine_tuned_steps(build_from_checkpoint(load_checkpoint(policy_dir(config.policy), kind=KIND))[0], config.ft_steps)
    if config.pace.enabled and not config.pace.optional:  # --pace-scales on actions a speed cannot scale fails here too
        motion_layout(build_from_checkpoint(load_checkpoint(policy_dir(config.policy), kind=KIND))[0])
    run = RunDir(config.out, config, write=ddp.is_main)
    seed_everything(config.seed)
    merged = run.path / "data.zarr"
    if ddp.is_main and not merged.exists():  # the demonstrations, then every round's rollouts, in one store
        shutil.copytree(config.data, merged)
    ddp.barrier()
    policy_path = config.policy
    rounds: list[RoundReport] = []
    warning = None
    for m in range(config.rounds):
        round_dir = run.path / f"round-{m}"
        if (round_dir / "report.json").is_file():  # finished before a kill: skip
            rounds.append(RoundReport(**json.loads((round_dir / "report.json").read_text())))
            policy_path = rounds[-1].policy
            continue
        ckpt = load_checkpoint(policy_dir(policy_path), kind=KIND)
        reference = fine_tuned_steps(build_from_checkpoint(ckpt, device=str(device))[0], config.ft_steps)
        normalizer = ckpt.normalizer
        reference.requires_grad_(False).eval()

        journal = RoundJournal(round_dir)  # the round's robot episodes, each committed as it ends (a rerun resumes)

        # 0. the reference's own rollouts: the flywheel's data
        rolled = rollout_into(merged, policy_dir(policy_path), config, m, ddp, journal) if config.rollout_episodes > 0 else None
        if rolled is not None and ddp.is_main:
            print(f"round {m}: rollouts of the reference {rolled.success_rate:.0%} over {config.rollout_episodes} episodes"
                  + ("" if config.rollout_std is None else f" (stochastic chain, std floored at {config.rollout_std:g})"))  # fmt: skip
        verifier = Verifier(lambda name, path, first, n: run_verification(path, config, m, journal, name, first=first, episodes=n), first_seed=verify_seed(config, m),
                            look=config.verify_episodes, most=config.verify_max_episodes, max_p=config.verify_max_p, pace_margin=config.verify_pace_margin)  # fmt: skip
        reference_at = ("reference", policy_dir(policy_path))

        finished = ddp.broadcast(load_ppo_outcome(round_dir) if ddp.is_main else None)  # the PPO stage ran before a kill: not again
        if finished is None:
            accepted_policy, decisions, warning = offline_stages(config, run, m, reference, ckpt, merged, device, show_progress, ddp, warning)
        else:
            decisions, warning = finished
            accepted_policy = build_from_checkpoint(load_checkpoint(round_dir / "accepted", kind=KIND), device=str(device))[0].requires_grad_(False).eval()

        # 4. roll an accepted policy out on the reference's seeds, 5. retrain imitation on the merged data
        accepted = any(d.accepted for d in decisions)
        verdict = verifier.judge(reference_at, ("accepted", round_dir / "accepted")) if accepted and config.verify_rollouts else None
        refused = verdict is not None and not verdict.kept
        if ddp.is_main:
            run.metrics.log({**({"rollouts/success": rolled.success_rate} if rolled else {}), **({"rollouts/reference_success": verdict.incumbent.success_rate} if verdict else {}),
                             **({"rollouts/accepted_success": verdict.challenger.success_rate} if verdict else {})}, m)  # fmt: skip
            if accepted:
                print(f"round {m}: accepted policy " + ("not verified" if verdict is None else f"{verdict.line('reference')}: "
                      + ("refused, the round keeps the reference" if refused else "kept for its pace" if verdict.on_pace else "kept")))  # fmt: skip
        keep_candidate = accepted and not refused
        warm_start = accepted_policy if keep_candidate else reference
        next_policy = round_dir / "accepted" if keep_candidate else Path(policy_path)
        retrained = bool(config.retrain_steps) and (keep_candidate or config.retrain_when_rejected)
        retrain_refused, check = False, None
        if retrained:
            retrain = ImitationConfig(
                data=str(merged),
                out=str(round_dir / "imitation"),
                policy=accepted_policy.config,
                obs_keys=tuple(sorted(accepted_policy.input_features)),
                steps=config.retrain_steps,
                seed=config.seed + m,
                device=config.device,
                warmup_steps=min(100, config.retrain_steps),
                lr=1e-4,
                drop_nonfinite=config.drop_nonfinite,
                rollout_steps=config.retrain_rollout_steps,
            )
            retrained_policy = Path(train_imitation(retrain, show_progress=show_progress, init=warm_start, normalizer=normalizer).policy)
            # the retrained policy is a change like any other: on the same seeds it must do at least as well as what it replaces
            check = None
            if config.verify_rollouts:
                check = verifier.judge(("accepted", round_dir / "accepted") if keep_candidate else reference_at, ("retrained", retrained_policy))
            retrain_refused = check is not None and not check.kept
            if check is not None and ddp.is_main:
                run.metrics.log({"rollouts/retrained_success": check.challenger.success_rate}, m)
                print(f"round {m}: retrained policy {check.line('the accepted policy' if keep_candidate else 'reference')}: "
                      + ("refused, the round keeps " + ("the accepted policy" if keep_candidate else "the reference") if retrain_refused else "kept for its pace" if check.on_pace else "kept"))
            next_policy = next_policy if retrain_refused else retrained_policy
        report = RoundReport(
            round=m,
            gate_checks=len(decisions),
            accepted=sum(d.accepted for d in decisions),
            pace_accepted=next((d.accepted for d in decisions if d.source == "pace"), None),
            last_j_reference=decisions[-1].j_reference if decisions else None,
            rollout_success=verdict.challenger.success_rate if verdict else None,
            reference_success=verdict.incumbent.success_rate if verdict else check.incumbent.success_rate if check and not keep_candidate else None,
            rollouts_success=rolled.success_rate if rolled else None,
            verify_episodes=verifier.episodes,
            verify_steps=verifier.steps,
            robot_minutes=(verifier.seconds + (rolled.seconds if rolled else 0.0)) / 60 if on_robot(config) else 0.0,
            refused=refused,
            retrained=retrained,
            retrained_success=check.challenger.success_rate if check else None,
            retrain_refused=retrain_refused,
            accepted_wins_losses=verdict.wins_losses if verdict else None,
            retrained_wins_losses=check.wins_losses if check else None,
            accepted_on_pace=verdict is not None and verdict.on_pace,
            accepted_steps=(verdict.pace.steps_before, verdict.pace.steps_after) if verdict is not None and verdict.pace.both else None,
            retrained_on_pace=check is not None and check.on_pace,
            merged_episodes=ZarrEpisodeStore.open(merged).num_episodes,
            policy=str(next_policy),
        )
        if ddp.is_main:
            (round_dir / "report.json").write_text(json.dumps(to_dict(report), indent=2))
            journal.clear()
        rounds.append(report)
        policy_path = str(next_policy)

    final = run.policy_dir
    if ddp.is_main:
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(policy_dir(policy_path), final)
    ddp.barrier()  # the other ranks return once the policy is on disk
    out = OfflineReport(run=str(run.path), policy=str(final), rounds=tuple(rounds), minutes=(time.perf_counter() - started) / 60, warning=warning)
    run.write_report(out)
    run.close()
    return out


def offline_stages(config: OfflineConfig, run: RunDir, m: int, reference: DiffusionPolicy, ckpt, merged: Path, device: torch.device, show_progress: bool,
                   ddp: Distributed, warning: str | None) -> tuple[DiffusionPolicy, list[GateDecision], str | None]:
    """Steps 1-3 of round ``m``: features, critics and dynamics, PPO gated by AM-Q. Returns the last accepted
    policy (the reference when none was), the gate's decisions and the horizon warning. Critics already on disk
    (a rerun after a kill) are loaded, not fitted again; ``round-M/accepted`` then ``ppo.json`` mark the end."""
    round_dir, normalizer = run.path / f"round-{m}", ckpt.normalizer
    # 1. frozen features of every dataset step
    store = ZarrEpisodeStore.open(merged)
    data = encode_store(store, reference, normalizer, gamma=config.critic.gamma, device=device, drop_nonfinite=config.drop_nonfinite)
    store.close()
    ta = reference.config.n_action_steps
    warning = horizon_warning(data.steps_to_go, data.success, config.gate.horizon, ta) or warning
    if warning and m == 0 and ddp.is_main:  # one voice under torchrun
        print(f"warning: {warning}")

    # 2. critics and latent dynamics (a held-out episode split and fixed probe rows watch the critics)
    seed_everything(config.seed + 7919 * (m + 1))  # the networks' initial weights: the same whether or not a kill came before
    probe = make_critic_probe(data, reference, config.probe, n_action_steps=ta)
    this_round = Round(config, run, m, data, probe, device, show_progress, ddp)
    if ddp.broadcast((round_dir / "critics" / "checkpoint.json").is_file()):  # fitted before a kill (rank 0's view holds for every rank)
        critics = load_critics(round_dir / "critics").to(device).requires_grad_(False)
    else:
        critics = fit_critics(this_round)
        if ddp.is_main:
            save_critics(round_dir / "critics", critics)
    # every rank fits the same ensemble from the same seed (not split: it is a small part of a round)
    seed_everything(config.seed + 7919 * (m + 1) + 1)
    dynamics = DynamicsEnsemble(data.features.shape[1], data.actions.shape[1], config.dynamics).to(device)
    fit = dynamics.fit(data.features, data.actions, data.next_features, data.returns, seed=config.seed + m)
    run.metrics.log({f"dynamics/{k}": float(v) for k, v in _numbers(fit).items()}, m)

    # 3. PPO on the denoising chain, gated by AM-Q
    def save_candidate(update: int, policy: DiffusionPolicy) -> None:
        save_policy(round_dir / "candidates" / f"update-{update:05d}", policy, normalizer, extra={**ckpt.extra, "stage": "offline", "round": m, "update": update})

    accepted_policy, decisions = ppo_round(this_round, reference, critics, dynamics,
                                           on_accept=save_candidate if config.save_candidates and ddp.is_main else None)  # fmt: skip
    paced = config.pace.enabled and pace_applies(reference.action_features[ACTION])
    if config.pace.enabled and not paced and m == 0 and ddp.is_main:
        print(f"round {m}: no pace step: this policy's actions ({reference.action_features[ACTION].describe()}) are not end-effector deltas")
    if paced:  # 3b. the critic's choice of pace, from the policy PPO hands on
        accepted_policy, decision = pace_round(this_round, accepted_policy, critics, dynamics, normalizer)
        decisions.append(decision)
        if decision.accepted and config.save_candidates and ddp.is_main:
            save_candidate(decision.update, accepted_policy)
    if ddp.is_main:
        save_policy(round_dir / "accepted", accepted_policy, normalizer, extra={**ckpt.extra, "stage": "offline", "round": m})
        save_gate_record(run.path, m, decisions)  # before the marker: a stage redone after a kill replaces the round's lines
        save_ppo_outcome(round_dir, decisions, warning)
    ddp.barrier()
    return accepted_policy, decisions, warning


@dataclass(frozen=True)
class Round:
    """What every step of one offline round shares: the settings, the run, which round, its data and probe."""

    config: OfflineConfig
    run: RunDir
    m: int
    """The round's index."""
    data: LatentTransitions
    """Frozen features of every step of the merged store (demonstrations and the rounds' rollouts)."""
    probe: CriticProbe | None
    """Held-out episodes and fixed rows that watch the critics and the PPO step (diagnostics), or None."""
    device: torch.device
    show_progress: bool
    ddp: Distributed


def fit_critics(r: Round) -> IqlCritics:
    """IQL on the frozen features: expectile V, twin Q toward r + gamma^n V(s').

    With a ``probe`` the critics train on its training episodes only and the diagnostics
    (``critic/*`` metrics, snapshots in round-M/critic-checkpoints) watch them. Under
    torchrun every rank draws the same batch and trains on its rows of it.
    """
    data, config, run, m, device, show_progress, probe, ddp = r.data, r.config, r.run, r.m, r.device, r.show_progress, r.probe, r.ddp
    critics = IqlCritics(data.features.shape[1], data.actions.shape[1], config=config.critic, device=device)
    optimizer = critics.make_optimizer()
    gen = torch.Generator(device="cpu").manual_seed(config.seed + 100 * m)
    bar = progress(config.critic_steps, 0, f"critics r{m}", show_progress)
    rows = probe.train_pool if probe is not None else torch.arange(len(data), device=device)
    for step in range(config.critic_steps):
        idx = rows[torch.randint(0, len(rows), (min(256, len(rows)),), generator=gen).to(device)]
        idx, scale = ddp.rows(idx)  # this rank's rows of the global batch
        batch = {
            "features": data.features[idx],
            "actions": data.actions[idx],
            "rewards": data.returns[idx],
            "discounts": data.discounts[idx],
            "terminals": data.terminals[idx],
            "next_features": data.next_features[idx],
        }
        losses = critics.update(batch, optimizer, loss_scale=scale, sync=ddp.average_gradients)
        for name, value in losses.items():
            if name.startswith("losses/"):
                check_finite_loss(value, f"offline round {m} critics ({name})", step)
        last = step == config.critic_steps - 1
        if probe is not None and ddp.is_main and (step % config.probe.every == 0 or last):
            losses.update(critic_metrics(critics, data, probe, config.probe))
        if probe is not None and ddp.is_main and (step % config.probe.checkpoint_every == 0 or last):
            save_critic_snapshot(run.path / f"round-{m}" / "critic-checkpoints" / f"step-{step:07d}", critics)
        if step % 50 == 0 or last or step % config.probe.every == 0:
            losses = {k: ddp.mean(v) if k.startswith(("losses/", "values/")) else v for k, v in losses.items()}  # over the whole batch
            run.metrics.log(losses, step, round=m)
        bar.update(1)
    bar.close()
    return critics.eval().requires_grad_(False)


def ppo_round(
    r: Round,
    reference: DiffusionPolicy,
    critics: IqlCritics,
    dynamics: DynamicsEnsemble,
    on_accept: Callable[[int, DiffusionPolicy], None] | None = None,
) -> tuple[DiffusionPolicy, list[GateDecision]]:
    """PPO updates of a candidate copy; the gate decides which weights become the reference.
    ``on_accept(update, policy)`` sees each accepted candidate.
    Under torchrun each rank takes its rows of every batch and rank 0's gate decision holds for all."""
    data, config, run, m, device, show_progress, probe, ddp = r.data, r.config, r.run, r.m, r.device, r.show_progress, r.probe, r.ddp
    sampler = reference.chain_sampler(config.min_std, config.log_prob_reduction)  # the chains PPO samples and scores
    anchor = reference  # the round's start: accepting a candidate rebinds ``reference``, never changes this one
    candidate = copy.deepcopy(reference).requires_grad_(False)
    params = denoiser_parameters(candidate)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.actor_lr)
    gen = torch.Generator(device="cpu").manual_seed(config.seed + 1000 * (m + 1))
    starts = gate_starts(r)
    ta = reference.config.n_action_steps
    decisions: list[GateDecision] = []
    if probe is not None and ddp.is_main:  # where the round starts: what the gate-time probes are read against
        run.metrics.log(policy_gap_metrics(reference, critics, data, probe, config.probe, n_action_steps=ta), 0, round=m)
    bar = progress(config.ppo_updates, 0, f"ppo r{m}", show_progress)
    for update in range(1, config.ppo_updates + 1):
        idx = torch.randint(0, len(data), (min(config.ppo_batch, len(data)),), generator=gen).to(device)
        idx = idx.repeat_interleave(config.chains_per_state)  # (B * n,): each state's chains side by side
        cond = data.features[idx]
        rows, scale = ddp.rows(torch.arange(len(idx)))  # every rank draws the whole batch; each samples and trains on its rows
        chain = reference.sample_chain(cond, generator=gen, sampler=sampler, rows=rows)  # (rows,): this rank's chains
        with torch.no_grad():
            executed = chain.actions[:, :ta].flatten(1)
            raw_advantages = ddp.interleave(critics.advantage(cond[rows], executed))  # (B * n,): every rank's, in batch order
            advantages = normalize_advantages(per_state_centred(raw_advantages, config.chains_per_state))
            if config.flip_advantages:
                advantages = -advantages
        with torch.no_grad():
            anchor_means = anchor.chain_moments(cond[rows], chain)[0] if config.anchor_coef > 0 else None
        loss, stats = chain_ppo_loss(candidate, cond[rows], chain, advantages[rows], config.clip_eps, anchor_means, config.anchor_coef, config.step_schedule)
        optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()
        ddp.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        metrics = {"losses/ppo": ddp.mean(loss.item()), "charts/clip_fraction": ddp.mean(stats.clip_fraction), "charts/approx_kl": ddp.mean(stats.approx_kl)}
        check_finite_loss(metrics["losses/ppo"], f"offline round {m} PPO", update)
        if stats.anchor_kl is not None:
            metrics["ppo/anchor_kl"] = ddp.mean(stats.anchor_kl)
        if probe is not None:
            metrics.update(advantage_metrics(raw_advantages, config.probe, chains_per_state=config.chains_per_state))
        if update % config.gate_every == 0 or update == config.ppo_updates:
            decision = ddp.broadcast(gate(candidate, reference, critics, dynamics, starts, config.gate, n_action_steps=ta, update=update, seed=config.seed + m))
            decisions.append(decision)
            metrics.update({"ope/amq_reference": decision.j_reference, "ope/amq_candidate": decision.j_candidate, "ope/accepted": float(decision.accepted),
                            "ope/disagreement_reference": decision.u_reference, "ope/disagreement_candidate": decision.u_candidate})  # fmt: skip
            if probe is not None and ddp.is_main:
                metrics.update(policy_gap_metrics(candidate, critics, data, probe, config.probe, n_action_steps=ta))
            if decision.accepted:  # the candidate becomes the reference chains are sampled from
                reference = copy.deepcopy(candidate).requires_grad_(False)
                if on_accept is not None:
                    on_accept(update, reference)
            else:  # never keep a rejected update: restart from the reference
                candidate.load_state_dict(reference.state_dict())
                optimizer = torch.optim.Adam(params, lr=config.actor_lr)
        run.metrics.log(metrics, update, round=m)
        bar.update(1)
    bar.close()
    return reference.eval(), decisions


def gate_start_rows(r: Round) -> torch.Tensor:
    """Rows of the dataset states every AM-Q estimate of round ``r`` starts from (the same for each candidate)."""
    ope_gen = np.random.default_rng(r.config.seed + r.m)
    return torch.as_tensor(ope_gen.choice(len(r.data), size=min(r.config.gate.start_states, len(r.data)), replace=False))


def gate_starts(r: Round) -> torch.Tensor:
    """The features of :func:`gate_start_rows`."""
    return r.data.features[gate_start_rows(r)]


def pace_round(r: Round, policy: DiffusionPolicy, critics: IqlCritics, dynamics: DynamicsEnsemble, normalizer: Normalizer) -> tuple[DiffusionPolicy, GateDecision]:
    """Step 3b: the denoiser of a copy of ``policy`` regresses onto its own chunks at the speed the critics prefer at each
    dataset state (``workflow.pace``); the AM-Q gate decides between the copy and ``policy``. Every rank chooses the
    same targets; each trains on its rows of every batch."""
    config, data, m, ddp = r.config, r.data, r.m, r.ddp
    seed = config.seed + 7919 * (m + 1) + 2
    seed_everything(seed)
    targets = pace_targets(policy, critics, data.features, normalizer, config.pace, seed=seed)
    candidate, loss = regress_onto(policy, data.features, targets.actions, config.pace, seed=seed, ddp=ddp)
    update, rows = config.ppo_updates + 1, gate_start_rows(r)  # after the round's PPO updates, in the gate record's order
    decision = replace(ddp.broadcast(gate(candidate, policy, critics, dynamics, data.features[rows], config.gate, n_action_steps=policy.config.n_action_steps,
                                          update=update, seed=config.seed + m)), source="pace")  # fmt: skip
    rows = rows.to(data.features.device)  # speeds on the gate's start states, a sample of the data's
    speeds = {"pace/speed_before": policy_speed(policy, data.features[rows], normalizer, seed=seed), "pace/speed_target": chunk_speed(policy, targets.actions[rows], normalizer),
              "pace/speed_after": policy_speed(candidate, data.features[rows], normalizer, seed=seed)}  # fmt: skip
    r.run.metrics.log({**targets.summary(), **speeds, "pace/loss": loss, "ope/amq_reference": decision.j_reference, "ope/amq_candidate": decision.j_candidate,
                       "ope/accepted": float(decision.accepted)}, update, round=m)  # fmt: skip
    if ddp.is_main:
        summary = targets.summary()
        print(f"round {m}: pace: the critics chose another speed at {summary['pace/changed']:.0%} of {len(data)} states (mean x{summary['pace/mean_scale']:.2f}); "
              f"regressed, its speed at the gate's {len(rows)} start states {speeds['pace/speed_before']:.4g} -> {speeds['pace/speed_after']:.4g} (targets {speeds['pace/speed_target']:.4g}); "
              f"AM-Q {decision.j_reference:.4g} -> {decision.j_candidate:.4g} (needs +{decision.threshold:.3g}): {'accepted' if decision.accepted else 'rejected'}")  # fmt: skip
    return (candidate if decision.accepted else policy), decision


def rollout_into(store_path: Path, policy_path: Path, config: OfflineConfig, m: int, ddp: Distributed | None = None, journal: RoundJournal | None = None) -> EvalReport:
    """Run the accepted policy and append its episodes to the merged store (in sim under torchrun each rank runs
    its share of the episodes; rank 0 appends them all; on ``config.robot``, through deploy's control stack). Each
    episode is committed to ``journal`` as it ends (under torchrun by the rank that ran it; rank 0 then stores every
    rank's from there), and a rerun runs only the seeds a kill left."""
    ddp = ddp or Distributed()
    controller = DiffusionController.load(policy_path, device=config.device, seed=config.seed + m, deterministic=config.rollout_std is None, min_std=config.rollout_std)
    store = ZarrEpisodeStore.open(store_path, mode="a" if ddp.is_main else "r")
    features = {k: f for k, f in store.features.items() if k.startswith("observation.")}
    if not ddp.is_main:
        store.close()
        store = None
    seed = config.seed + 10_000 * (m + 1)
    journal = journal or RoundJournal(Path(config.out) / f"round-{m}")
    try:
        if on_robot(config):
            return robot_episodes(controller, config, episodes=config.rollout_episodes, seed=seed, journal=journal, kind="rollout", store=store)
        task_name = policy_task(policy_path, config.task, meta=controller.meta, warn=False)
        robot, task = make_sim_for(task_name, features)
        lanes = sim_lanes(task_name, features, config.lanes)
        meta = EpisodeMeta(task=task.name, robot=robot.name, fps=task.fps, success=False, source="offline-rollout")
        with robot, lanes or contextlib.nullcontext():
            if ddp.enabled:  # each rank commits its episodes to the journal as they end; rank 0 then stores them all, in seed order
                done = journal.done("rollout")
                commit = RolloutCommit(journal, "rollout", store, meta) if ddp.is_main else None
                ddp.barrier()  # every rank has read what a killed run committed before any rank commits more
                report = evaluate(robot, task, controller, episodes=config.rollout_episodes, seed=seed, ddp=ddp, done=done,
                                  commit=lambda result: journal.save("rollout", result, keep_frames=True), lanes=lanes)  # fmt: skip
                ddp.barrier()  # every rank's episodes are in the journal
                if commit is not None:
                    commit.restore(journal.done("rollout"))  # each seed once: those a killed run stored are skipped
                return report
            done, commit = rollout_commit(journal, store, meta)
            return evaluate(robot, task, controller, episodes=config.rollout_episodes, seed=seed, done=done, commit=commit, lanes=lanes)
    finally:
        if store is not None:
            store.close()
        ddp.barrier()  # the merged store is complete before anyone reads it


def rollout_commit(journal: RoundJournal, store: ZarrEpisodeStore, meta: EpisodeMeta) -> tuple[dict, RolloutCommit]:
    """The round's committed rollouts (those a kill kept out of the store appended now) and the commit of the next."""
    done = journal.done("rollout")
    commit = RolloutCommit(journal, "rollout", store, meta)
    commit.restore(done)
    return done, commit


def on_robot(config: OfflineConfig) -> bool:
    """Whether the rounds' episodes run through deploy's control stack (a robot spec or an operator given)."""
    return config.robot is not None or config.operator.device is not None


def robot_episodes(controller: DiffusionController, config: OfflineConfig, *, episodes: int, seed: int, journal: RoundJournal, kind: str,
                   store: ZarrEpisodeStore | None = None) -> EvalReport:
    """``episodes`` episodes of ``controller`` on ``config.robot`` with its operator (one process: one arm). Each is
    committed to ``journal`` as ``kind`` as it ends (with ``store``, then appended to it as ``offline-rollout``); the
    seeds a killed run committed are not run again."""
    spec = config.robot or f"sim:{config.task}"
    robot, task, control, device = open_control(spec, controller, config.operator, hz=config.hz, max_steps=config.max_steps, seed=config.seed)
    if store is not None:
        fps = control.loop.hz or float(controller.meta.get("fps") or 0.0) or (task.fps if task is not None else 0.0) or 10.0
        meta = EpisodeMeta(task=task.name if task is not None else config.task or robot.name, robot=robot.name, fps=fps, success=False, source="offline-rollout")
        done, commit = rollout_commit(journal, store, meta)
    else:  # verification episodes judge; they are not stored
        done, commit = journal.done(kind), lambda result: journal.save(kind, result, keep_frames=False)
    with robot:
        try:
            if device is not None:
                device.connect()
                print(device.controls, file=sys.stderr)
            report = evaluate(robot, control.task, controller, episodes=episodes, seed=seed, control=control, done=done, commit=commit)
        except OperatorStop as e:
            again = "clear the e-stop and run the same command again" if robot.is_estopped else "run the same command again"
            raise OperatorStop(f"{kind} episodes stopped: {e}; {again} to resume the round") from None
        finally:
            control.close()
            if device is not None:
                device.close()
    return report


VERIFY_SEED_OFFSET = 5_000
"""A round's verification seeds start this far past its rollout seeds."""


def verify_seed(config: OfflineConfig, m: int) -> int:
    """First sim seed of round ``m``'s verification episodes (its rollouts start at ``seed + 10 000 (m + 1)``)."""
    return config.seed + 10_000 * (m + 1) + VERIFY_SEED_OFFSET


def run_verification(policy_path: str | Path, config: OfflineConfig, m: int, journal: RoundJournal | None = None, name: str = "policy", *,
                     first: int | None = None, episodes: int | None = None) -> EvalReport:
    """``policy_path`` with the deterministic sampler it deploys with on ``episodes`` (``verify_episodes``) of round ``m``'s
    verification seeds from ``first`` (the first of them) (not stored; under torchrun each rank runs its share; on a robot each committed to ``journal`` as
    ``verify-<name>``, so a rerun runs only the seeds a kill left)."""
    from workflow.evaluate import evaluate_policy

    first = verify_seed(config, m) if first is None else first
    episodes = config.verify_episodes if episodes is None else episodes
    if on_robot(config):
        controller = DiffusionController.load(policy_path, device=config.device, seed=config.seed)
        journal = journal or RoundJournal(Path(config.out) / f"round-{m}")
        return robot_episodes(controller, config, episodes=episodes, seed=first, journal=journal, kind=f"verify-{name}")
    return evaluate_policy(policy_path, config.task, episodes=episodes, seed=first, device=config.device, show_progress=False, lanes=config.lanes)


def _numbers(obj: object) -> dict[str, float]:
    items = obj.items() if isinstance(obj, dict) else vars(obj).items()
    return {k: v for k, v in items if isinstance(v, (int, float))}
