"""The whole recipe end to end in sim: the kit's main job (`robot pipeline`).

record (scripted teleop) -> imitation -> offline rounds with AM-Q gates ->
online RL with the one-step head distilled alongside -> evaluation of every stage.

Each stage writes its own run directory under ``out``; a stage whose report exists
is skipped, so a killed pipeline resumes where it stopped (and one rerun with more online
iterations goes on from its last), and a stage's CPU minutes count every process that
worked on it (``workflow.stage_clock``). Every stage is evaluated on the
same seeds, and the run ends with one table (``workflow.stage_report``): per stage its
success with a 95% interval, the seeds it won and lost against the stage it started
from with the sign test's p, mean steps to success, episodes used, CPU minutes and what
it kept; then the latency of one chunk, K-step DDIM against the one-step head, and the
diagnostics verdict of every training stage (``workflow.diagnostics``; plots in
OUT/diagnostics).

Under ``torchrun --nproc_per_node N`` every stage runs data-parallel (rank 0 records
the demonstrations and writes everything), and the sim episodes of the RL stages and
of every evaluation are split over the N processes' sims.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from policies.critics import CriticConfig
from policies.diffusion import MEAN_ETA
from policies.dynamics import DynamicsConfig
from robot.config import to_dict
from robot.store import ZarrEpisodeStore
from sim.registry import check_task
from sim.scene import check_expert_style
from workflow.diagnostics.diagnose import DiagnoseConfig, diagnose_run
from workflow.distributed import Distributed, init_distributed
from workflow.evaluate import evaluate_policy
from workflow.imitation import ImitationConfig, train_imitation
from workflow.offline import OfflineConfig, train_offline
from workflow.online import OnlineConfig, train_online
from workflow.pace import PaceConfig
from workflow.lanes import DEFAULT_LANES
from workflow.ope import GateConfig
from workflow.policy import DiffusionController
from workflow.presets import policy_preset
from workflow.run import resolve_device
from workflow.stage_clock import StageClock
from workflow.stage_report import StageResult, pipeline_table


@dataclass(frozen=True)
class Budget:
    """How much of everything one pipeline run spends."""

    demos: int
    demo_noise: float
    imitation_steps: int
    offline_rounds: int
    critic_steps: int
    ppo_updates: int
    ppo_batch: int
    rollout_episodes: int
    retrain_steps: int
    online_iterations: int
    online_episodes: int
    eval_episodes: int
    imitation_batch: int = 64
    """Windows per imitation step (every rank's together under torchrun, which splits them)."""
    select_episodes: int = 16
    """Deterministic episodes scoring online RL's start and its last snapshot (``OnlineConfig.select_episodes``)."""
    confirm_episodes: int = 0
    """More seeds for the same two, read with the selection's by one sign test (``OnlineConfig.confirm_episodes``)."""
    distill_steps: int = 0
    """One-step-head distillation steps per online iteration, which give every snapshot a head. 0 by default: the
    handed-on policy's head gets the whole ``distill_final_steps`` on the demonstrations' and rollouts' states anyway,
    so in-loop steps only cost time (1.7 of the quick budget's CPU minutes, session 22)."""
    distill_final_steps: int = 1200
    """Distillation steps the handed-on policy's head gets in all, on the demonstrations' and the online rollouts' states."""
    distill_onpolicy_rounds: int = 0
    """On-policy (DAgger) rounds of 32 sim episodes in that final distillation (``OnlineConfig.distill_onpolicy_rounds``)."""
    distill_reuse: int = 4
    """Regression steps per batch of the teacher's targets in the head's distillation (``OnlineConfig.distill_reuse``)."""
    distill_pool: int | None = 16
    """Target batches labelled at a time in that distillation; None: all, up front (``OnlineConfig.distill_pool``)."""
    online_minibatch: int = 64
    """Online RL's PPO minibatch (chunk transitions)."""
    online_ft_steps: int | None = None
    """Online RL fine-tunes only the last this many denoising steps (``OnlineConfig.ft_steps``); None: every step."""
    offline_ft_steps: int | None = None
    """Offline PPO fine-tunes only the last this many denoising steps (``OfflineConfig.ft_steps``); None: every step.
    Set, it must equal ``online_ft_steps`` (the offline policy's frozen steps are online RL's)."""
    rollout_std: float | None = None
    """Offline rounds' rollouts: the stochastic chain with each step's std floored here (None: deterministic)."""
    chains_per_state: int = 1
    """Offline PPO chains per dataset state (``OfflineConfig.chains_per_state``)."""
    verify_episodes: int = 50
    """Deterministic episodes per look an offline round runs for each policy it verifies (``OfflineConfig.verify_episodes``)."""
    verify_max_episodes: int = 200
    """Most verification episodes per policy and judgement (``OfflineConfig.verify_max_episodes``)."""
    pace_scales: tuple[float, ...] = ()
    """Speeds the offline round's critics may choose for each chunk (``OfflineConfig.pace``; a task whose actions are not
    end-effector deltas skips the step); empty: no pace step."""
    pace_steps: int = 1000
    """Regression steps of the pace step (``PaceConfig.steps``)."""

    def __post_init__(self) -> None:
        if None not in (self.offline_ft_steps, self.online_ft_steps) and self.offline_ft_steps != self.online_ft_steps:
            raise ValueError(f"offline_ft_steps and online_ft_steps must be equal (the offline policy's frozen steps are online RL's), "
                             f"got {self.offline_ft_steps} and {self.online_ft_steps}")


BUDGETS = {
    # The README's main job: push-rim from 30 hesitant demonstrations, every stage raising success over 200 paired
    # seeds: 57.5 -> 65.0% offline (36 won, 21 lost) -> 72.5% online (41 won, 26 lost), the head 79.5%, in 31.8 CPU
    # minutes (session 26; with the 600-step head, on a fresh checkout: 53.0 -> 64.5 -> 72.0%, the head 69.5%, on the
    # pipeline's own seeds, 27.6 CPU minutes). In two torchrun processes on a fresh checkout (session 27): 59.0 ->
    # 69.5% (34 won, 13 lost) -> 75.5% (29 won, 17 lost), the head 69.5%, in 21:18 wall on 2 cores. One offline
    # round of 100 PPO updates: at 50 its candidate won only 29 to 20 over 200 verification episodes and was
    # refused; online RL needs about 40 iterations of 32 episodes, and 8 kept their start (57.0% at every stage,
    # session 25). Imitation sees 512,000 windows: at half that (4,000 steps of 64, sessions
    # 13-21) its success had not converged, and the RL stages' gains there were mostly what longer imitation gives
    # (push-rim-hesitant: 54.0% at 4,000 steps, 93.5% at 8,000, against 80.0% for the whole 4,000-step recipe;
    # docs/RESULTS.md, session 22). The denoising loss does not show it: validation 0.115 at 4,000 steps, 0.112 at
    # 8,000. They come as 4,000 steps of 128, which torchrun's two processes split into 64 each: 59.5% against 8,000
    # steps of 64's 57.5% on the main job's demonstrations (30 won, 26 lost), in 6.7 wall minutes against 8.4
    # (2,000 steps of 256: 47.0%, session 27). The head got 600
    # distillation steps without on-policy rounds: five heads of that online policy (600 or 1,200 steps, batch 128
    # or 256) scored 68.5-79.5% against its 72.5%, none beyond noise, 600 steps at 256 75.5% in 2.7 CPU minutes
    # against 1,200's 5.4 (session 26). Offline PPO fine-tunes only the last 5 denoising steps, as online RL does
    # (DPPO's ft_denoising_steps): on the same imitation policy and seeds its round gave 70.0% (38 won, 16 lost)
    # against every step's 69.5% (34 won, 13 lost), and the README's pipeline took 17:50 against 21:18 (session 28).
    # The head's 900 steps reuse each batch of the teacher's targets 16 times: about the CPU of 600 at 4 (rank 0's
    # 600 took 1.5 CPU minutes, 0.6 of them the teacher's chains). Over 600 paired seeds heads of the main job's
    # teacher were 4-7 points under it at 600 steps and 2-3 at 2,400-4,800 (session 29). The offline round ends with
    # the critic's choice of pace (speeds 1.25, 1.5, 2; workflow.pace): 59.0 -> 81.5% (60 won, 15 lost) -> 86.5%, the
    # head 83.0%, steps to success 52.1 -> 45.6 -> 39.8, in 19:19 with setup on a fresh clone (session 34).
    "quick": Budget(demos=100, demo_noise=0.0, imitation_steps=4000, imitation_batch=128, offline_rounds=1, critic_steps=2000, ppo_updates=100, ppo_batch=128,
                    rollout_episodes=50, rollout_std=0.1, chains_per_state=4, verify_episodes=50, retrain_steps=0,
                    online_iterations=40, online_episodes=32, online_minibatch=128, online_ft_steps=5, offline_ft_steps=5, select_episodes=32,
                    confirm_episodes=100, distill_final_steps=900, distill_reuse=16, eval_episodes=200, pace_scales=(1.25, 1.5, 2.0)),
    # The slow test suite's: imitation stopped at 4,000 steps, short of convergence (push-biased 72.5% there, 93.0% at
    # 8,000), which leaves the offline round a gain to find and verify (90.5% at update 100 when measured): the tests
    # check that the machinery finds it. Online RL cut to two small iterations (checks its hand-over and guarantees,
    # too small to measure a gain), so the whole run fits beside the other slow tests.
    "ci": Budget(demos=100, demo_noise=0.0, imitation_steps=4000, offline_rounds=1, critic_steps=2000, ppo_updates=100, ppo_batch=128,
                 rollout_episodes=50, rollout_std=0.1, chains_per_state=4, verify_episodes=50, retrain_steps=0,
                 online_iterations=2, online_episodes=8, select_episodes=8, distill_steps=20, distill_final_steps=300, eval_episodes=30,
                 pace_scales=(1.25, 1.5, 2.0), pace_steps=500),  # half the pace regression: the suite checks the step runs, not its size
    # Online RL from a converged policy needs about 40 iterations of 32 episodes: on push-rim from 30 hesitant
    # demonstrations the offline policy's 68.0% rose to 77.5% after 40 fine-tuning only the last 5 denoising steps
    # (33 won, 14 lost, 200 paired seeds; every step: 76.5%, and 69.5% -> 77.0% over 400 seeds, p = 0.006), but
    # not beyond noise after 10 (71.0%; docs/RESULTS.md, session 23). Fine-tuning 5 of the 10 steps halves the
    # update's CPU. One offline round of 100 PPO updates: at 50 the main job's candidate won only 32 to 23 over
    # 200 verification episodes (p = 0.14) and was refused (session 25). End to end on that setting at 100:
    # 56.5 -> 68.5 -> 79.0%, both RL stages beyond noise, the head 77.0%, in 66 CPU minutes (session 24); at 50,
    # with sim episodes in lanes: 57.0 -> 57.0 -> 69.5%, the head 69.5%, in 53.8 (session 25). Its head's distillation
    # was then the largest piece (17.3 CPU minutes): each batch of the teacher's targets now serves 16 steps, not 4
    # (2,400 steps: 7.1 CPU minutes against 10.6, held-out error 0.0016 against 0.0014, session 28), and offline PPO
    # fine-tunes the last 5 denoising steps as the quick budget's does (1.5 s an update against 2.35). So: 57.5 ->
    # 66.5% (p = 0.039) -> 78.5% (p = 0.002), the head 76.5% (14 won, 18 lost), in 30.2 CPU minutes (session 29).
    "full": Budget(demos=200, demo_noise=0.0, imitation_steps=8000, offline_rounds=1, critic_steps=3000, ppo_updates=100, ppo_batch=128,
                   rollout_episodes=50, rollout_std=0.1, chains_per_state=4, verify_episodes=50, retrain_steps=0, online_iterations=40,
                   online_episodes=32, online_minibatch=128, online_ft_steps=5, offline_ft_steps=5, eval_episodes=200, distill_final_steps=2500,
                   distill_reuse=16, select_episodes=32, confirm_episodes=100, distill_onpolicy_rounds=4, pace_scales=(1.25, 1.5, 2.0)),  # lift: the head 86.0% against its teacher's 85.0%; from stored states alone 82.0%
    # every stage, gate and hand-over in about a minute: checks an installation or a cluster launch, learns nothing
    "smoke": Budget(demos=4, demo_noise=0.0, imitation_steps=20, offline_rounds=1, critic_steps=20, ppo_updates=4, ppo_batch=16,
                    rollout_episodes=2, retrain_steps=4, verify_episodes=2, verify_max_episodes=2, online_iterations=2, online_episodes=2, eval_episodes=4,
                    select_episodes=2, distill_steps=5, distill_final_steps=10, online_minibatch=16, online_ft_steps=5, pace_scales=(1.5, 2.0), pace_steps=5),
}  # fmt: skip


@dataclass(frozen=True)
class PipelineConfig:
    task: str = "push"
    """Simulated task: any name `robot tasks` lists (push, push-rim, lift, lift-ur5e, can, registered and installed ones), or
    pkg.module:factory."""
    out: str = "runs/pipeline"
    """Pipeline directory: one run directory per stage (a rerun resumes finished stages)."""
    budget: str = "quick"
    """quick (the main job), ci (the slow tests': imitation short of convergence and a token online stage), full, or
    smoke (every stage in about a minute; learns nothing)."""
    policy: str = "chunk"
    """Policy preset: chunk (U-Net over 8 actions, 4 executed) or single."""
    sampler: str = "ddpm-mean"
    """The policy's deterministic K-step sampler (ddim or ddpm-mean): what every stage is evaluated with and the head distils."""
    cameras: tuple[str, ...] = ()
    """Sim cameras the policy sees; none = state only."""
    demos: int | None = None
    """Scripted demonstrations to record instead of the budget's (a task that needs RL to improve: a few of them)."""
    demo_noise: float | None = None
    """Action noise of the scripted teleop instead of the budget's (imperfect demonstrations, like a human's)."""
    demo_style: str = "iid"
    """Operator style of the scripted teleop (``sim.scene.EXPERT_STYLES``): iid (noise only), hesitant, biased or
    mixed, systematic flaws that leave RL a better action to find; ``demo_noise`` adds on top."""
    offline_rounds: int | None = None
    """Offline rounds instead of the budget's: each round rolls out the last one's policy and adds the rollouts to
    the data its critics learn from (RL-100's flywheel). On the main job's setting a second round took the full
    budget's offline policy from 67.8% to 72.3% (p = 0.028, 600 paired seeds) for 7.6 CPU minutes, and a third was
    refused by its verification (docs/RESULTS.md, session 31)."""
    online_iterations: int | None = None
    """Online RL iterations instead of the budget's: online RL keeps climbing past the full budget's 40 on lift
    from 5 biased demonstrations (88.0% at 40, 94.0% at 120 on seeds no rollout visited; docs/RESULTS.md, sessions
    30-31). A finished pipeline rerun with more goes on from its last online iteration (the online stage selects
    again, the head is evaluated again); with fewer it is refused."""
    online_select_every: int | None = None
    """Score every this-many-th online snapshot (and the last) against the start on ``SNAPSHOT_SCREEN`` selection
    episodes, and confirm the best on as many fresh ones, instead of the last snapshot alone. A long online stage's
    last iterate is a noisy draw: over the main job's last 40 of 120 iterations the snapshots scored 87.5-95.5%
    (200 seeds), and two runs' last snapshots 90.0% and 94.5% over 600; screening every 10th picked 94.0% and 94.5%
    (docs/RESULTS.md, session 36). None: the budget's selection (the last snapshot)."""
    head_steps: int | None = None
    """Distillation steps of the handed-on policy's one-step head instead of the budget's (``Budget.distill_final_steps``).
    On push-mixed after 120 online iterations (600 seeds, docs/RESULTS.md sessions 37-38) the quick budget's 900
    steps left the head 6.9 points under its teacher, and the full budget's 2,500 with 4 on-policy rounds 2.5 and 6.2
    under on two distillation seeds (8 rounds: 9.0 under): the head's gap there is mostly the distillation's own
    spread, not its length."""
    head_onpolicy_rounds: int | None = None
    """On-policy (DAgger) rounds of that distillation instead of the budget's (``Budget.distill_onpolicy_rounds``): the
    head runs 32 sim episodes between phases and its teacher labels the states it reached."""
    seed: int = 0
    """Seed of the demonstrations, every stage's training and its evaluation episodes."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""
    lanes: int = DEFAULT_LANES
    """Sim episodes run side by side, their chunks planned in one batch (``workflow.lanes``; 1: one at a time)."""
    view: bool = False
    """Keep every stage's evaluation episodes and write OUT/pipeline.rrd: curves and episodes per stage."""

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; choose one of {', '.join(BUDGETS)}")
        if self.sampler not in MEAN_ETA:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(MEAN_ETA)}")
        if self.lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {self.lanes}")
        if (self.demos is not None and self.demos < 1) or (self.demo_noise is not None and self.demo_noise < 0):
            raise ValueError(f"demos must be >= 1 and demo_noise >= 0, got {self.demos} and {self.demo_noise}")
        if (self.online_iterations is not None and self.online_iterations < 1) or (self.offline_rounds is not None and self.offline_rounds < 1):
            raise ValueError(f"online_iterations and offline_rounds must be >= 1, got {self.online_iterations} and {self.offline_rounds}")
        if self.online_select_every is not None and self.online_select_every < 1:
            raise ValueError(f"online_select_every must be >= 1 (or None: the last snapshot alone), got {self.online_select_every}")
        if (self.head_steps is not None and self.head_steps < 1) or (self.head_onpolicy_rounds is not None and self.head_onpolicy_rounds < 0):
            raise ValueError(f"head_steps must be >= 1 and head_onpolicy_rounds >= 0, got {self.head_steps} and {self.head_onpolicy_rounds}")
        check_expert_style(self.demo_style)

    @property
    def budget_label(self) -> str:
        """The budget as tables name it: ``full``, or ``full with 2 offline rounds and 120 online iterations`` when overridden."""
        changed = [f"{n} {what}" for n, what in ((self.offline_rounds, "offline rounds"), (self.online_iterations, "online iterations")) if n is not None]
        if self.online_select_every is not None:
            changed.append(f"online snapshots screened every {self.online_select_every} iterations")
        if self.head_steps is not None or self.head_onpolicy_rounds is not None:
            b = self.spend
            changed.append(f"a head of {b.distill_final_steps} distillation steps" + (f" in {b.distill_onpolicy_rounds} on-policy rounds" if b.distill_onpolicy_rounds else ""))
        return self.budget + (" with " + (", ".join(changed[:-1]) + " and " if len(changed) > 1 else "") + changed[-1] if changed else "")

    @property
    def spend(self) -> Budget:
        """The budget preset with this run's demonstration settings, offline rounds, online iterations and head."""
        b = BUDGETS[self.budget]

        def pick(mine, budgets):
            return budgets if mine is None else mine

        return replace(b, demos=pick(self.demos, b.demos), demo_noise=pick(self.demo_noise, b.demo_noise), online_iterations=pick(self.online_iterations, b.online_iterations),
                       offline_rounds=pick(self.offline_rounds, b.offline_rounds), distill_final_steps=pick(self.head_steps, b.distill_final_steps),
                       distill_onpolicy_rounds=pick(self.head_onpolicy_rounds, b.distill_onpolicy_rounds))  # fmt: skip


def run_pipeline(config: PipelineConfig, *, show_progress: bool = True, log: Callable[[str], None] = print) -> list[StageResult]:
    ddp, _ = init_distributed(resolve_device(config.device))
    if not ddp.is_main:  # one voice: rank 0 logs and draws progress bars
        log, show_progress = (lambda _: None), False
    if config.view and ddp.enabled:
        raise ValueError("--view keeps one process's evaluation episodes; run the pipeline without torchrun to view it")
    out = Path(config.out)
    refusal = None
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)
        try:
            for stage_name in check_same_settings(config, out / "pipeline.json"):  # a longer online stage: it and what follows run again
                if (out / f"{stage_name}.result.json").is_file():
                    log(f"[{stage_name}] runs again: more online iterations than the finished run's")
                (out / f"{stage_name}.result.json").unlink(missing_ok=True)
                shutil.rmtree(out / f"{stage_name}.eval.zarr", ignore_errors=True)  # a --view run's episodes of the stale policy
        except ValueError as e:
            refusal = str(e)
    refusal = ddp.broadcast(refusal)  # every rank stops on it: a rank left running dies on its next collective, with a traceback
    if refusal is not None:
        raise ValueError(refusal)
    if ddp.is_main:  # written after the stale results went: a kill in between leaves a rerun that finds the growth again
        (out / "pipeline.json").write_text(json.dumps(to_dict(config), indent=2))
    b = config.spend
    results: list[StageResult] = []

    def stage(name: str, fn: Callable[[], tuple[str, int, str]], *, latency: bool = False) -> str:
        """Run ``fn`` (returns policy path, episodes used, what it kept) unless its result is on disk, then evaluate."""
        path = out / f"{name}.result.json"
        if ddp.broadcast(path.is_file()):  # every rank takes rank 0's view of what is done
            result = StageResult(**json.loads(path.read_text()))
            log(f"[{name}] done before: success {result.success:.1%} ({result.policy})")
        else:
            with StageClock(out / f"{name}.cpu.json", write=ddp.is_main, log=log) as clock:
                log(f"[{name}] running" + (f" (resumed; {clock.before:.1f} CPU minutes spent on it before)" if clock.before else ""))
                policy, episodes, decision = fn()
                report = evaluate_policy(policy, config.task, episodes=b.eval_episodes, seed=100_000 + config.seed, device=config.device, lanes=config.lanes,
                                         show_progress=show_progress, save=out / f"{name}.eval.zarr" if config.view else None)  # fmt: skip
                ddim_ms, one_ms = ddp.broadcast(measure_latency(policy, config.device) if latency and ddp.is_main else (None, None))
            result = StageResult(name, str(policy), report.success_rate, report.mean_return, episodes, clock.minutes, ddim_ms, one_ms, decision,
                                 report.successes, report.lengths)  # fmt: skip
            if ddp.is_main:
                path.write_text(json.dumps(to_dict(result), indent=2))
            ddp.barrier()
            log(f"[{name}] success {result.success:.1%} over {b.eval_episodes} episodes")
        results.append(result)
        return result.policy

    demos = out / "demos.zarr"
    if ddp.is_main:
        record_demos(config, demos)
    ddp.barrier()
    imitation_cfg = ImitationConfig(
        data=str(demos), out=str(out / "imitation"), policy=policy_preset(config.policy, deterministic_sampler=config.sampler), steps=b.imitation_steps, batch_size=b.imitation_batch, seed=config.seed,
        device=config.device,
    )
    imitation = stage("imitation", lambda: (train_imitation(imitation_cfg, show_progress=show_progress).policy, b.demos, ""))
    offline_cfg = OfflineConfig(
        policy=imitation, data=str(demos), out=str(out / "offline"), task=config.task, rounds=b.offline_rounds,
        critic=CriticConfig.for_horizon(imitation_cfg.policy.n_action_steps), critic_steps=b.critic_steps,
        dynamics=DynamicsConfig(hidden_dims=(200, 200, 200), max_epochs=50), ppo_updates=b.ppo_updates, ppo_batch=b.ppo_batch,
        gate_every=max(10, b.ppo_updates // 3), gate=GateConfig(horizon=5), rollout_episodes=b.rollout_episodes, rollout_std=b.rollout_std,
        chains_per_state=b.chains_per_state, verify_episodes=b.verify_episodes, verify_max_episodes=b.verify_max_episodes, retrain_steps=b.retrain_steps,
        ft_steps=b.offline_ft_steps, actor_lr=1e-5, seed=config.seed, device=config.device, lanes=config.lanes,
        pace=PaceConfig(scales=b.pace_scales, steps=b.pace_steps, optional=True),
    )  # fmt: skip
    def offline_stage() -> tuple[str, int, str]:
        report = train_offline(offline_cfg, show_progress=show_progress)
        accepted, checks = sum(r.accepted for r in report.rounds), sum(r.gate_checks for r in report.rounds)
        rollouts = sum((b.rollout_episodes if r.rollouts_success is not None else 0) + r.verify_episodes for r in report.rounds)
        kept = f"AM-Q gate accepted {accepted}/{checks}"
        paced = [r.pace_accepted for r in report.rounds if r.pace_accepted is not None]
        if paced:
            kept += " (the pace step's: " + ", ".join("accepted" if a else "rejected" for a in paced) + ")"
        verified = [r for r in report.rounds if r.rollout_success is not None]
        if verified:
            kept += "; verified " + ", ".join(f"{r.rollout_success:.0%} vs reference {r.reference_success:.0%}" + _won_lost(r.accepted_wins_losses)
                                             + (": refused" if r.refused else _kept(r.accepted_on_pace, r.accepted_steps)) for r in verified)  # fmt: skip
        if any(r.retrained for r in report.rounds):
            verdicts = ", ".join(("refused" if r.retrain_refused else "kept for its pace" if r.retrained_on_pace else "kept") + _won_lost(r.retrained_wins_losses) for r in report.rounds if r.retrained)
            return report.policy, rollouts, kept + f"; retrained on the successful of {report.rounds[-1].merged_episodes} merged episodes: {verdicts}"
        return report.policy, rollouts, kept + ("" if any(r.accepted and not r.refused for r in report.rounds) else ": policy unchanged")

    offline = stage("offline", offline_stage)
    critics = out / "offline" / f"round-{b.offline_rounds - 1}" / "critics"
    online_cfg = OnlineConfig(
        policy=offline, out=str(out / "online"), task=config.task, iterations=b.online_iterations, episodes_per_iteration=b.online_episodes, minibatch=b.online_minibatch,
        value_from=str(critics) if critics.is_dir() else None, critic=offline_cfg.critic, distill_data=str(demos), distill_steps=b.distill_steps, distill_final_steps=b.distill_final_steps,
        distill_onpolicy_rounds=b.distill_onpolicy_rounds, distill_reuse=b.distill_reuse, distill_pool=b.distill_pool, ft_steps=b.online_ft_steps,
        select_episodes=b.select_episodes, confirm_episodes=b.confirm_episodes, seed=config.seed, device=config.device, lanes=config.lanes,
    )  # fmt: skip
    if config.online_select_every is not None:  # screen the snapshots on episodes enough to tell 90% from 95%, confirm on fresh ones
        online_cfg = replace(online_cfg, challengers="snapshots", select_every=config.online_select_every,
                             select_episodes=max(b.select_episodes, SNAPSHOT_SCREEN), confirm_episodes=max(b.confirm_episodes, SNAPSHOT_SCREEN))  # fmt: skip
    def online_stage() -> tuple[str, int, str]:
        report = train_online(online_cfg, show_progress=show_progress)
        scores = ", ".join(f"{name} {success:.0%}" for name, success, _ in report.selection)
        used = report.episodes + report.selection_episodes
        return report.policy, used, f"kept {report.selected} ({scores})"

    stage("online", online_stage, latency=True)
    one_step = stage_one_step(config, out, results[-1], b, show_progress, log, ddp)
    results.append(one_step)
    if ddp.is_main:
        diagnosis = diagnose_run(DiagnoseConfig(run=str(out)))  # regime and checkpoint per stage; plots in OUT/diagnostics
        log(pipeline_table(results, config, ddp.world_size) + "\n\n" + diagnosis.table())
    ddp.barrier()
    if config.view:
        log(f"Rerun view of every stage written to {write_view(out, [r.stage for r in results[:-1]])}")
    return results


BEFORE_IT_EXISTED = {"sampler": "ddim"}
"""What a setting meant in a pipeline.json written before it existed, where that is not today's default."""

SNAPSHOT_SCREEN = 200
"""Selection episodes per snapshot, and confirmation episodes, with ``online_select_every``: 200 seeds put a 95%
policy's interval at about +-3 points, where 32 could not tell 90% from 95%."""
RERUN_MAY_CHANGE = ("out", "device", "lanes", "view")
"""Settings a rerun may change: the rest decide what the finished stages it reads back mean."""
AFTER_ONLINE = ("online", "one-step")
"""The stages a rerun with more online iterations runs again: online RL goes on from its last finished iteration
(``OnlineConfig.RESUME_MAY_CHANGE``) and selects again, and the head is evaluated for what it hands on."""


def _kept(on_pace: bool, steps) -> str:
    """How verification kept a change: on success, or for its pace (with the steps that showed it)."""
    if not on_pace:
        return ": kept"
    return ": kept for its pace" + ("" if steps is None else f" ({steps[1]:.1f} vs {steps[0]:.1f} steps on the seeds both solved)")


def _won_lost(wins_losses) -> str:
    return "" if wins_losses is None else f" (won {wins_losses[0]}, lost {wins_losses[1]})"


def check_same_settings(config: PipelineConfig, path: Path) -> tuple[str, ...]:
    """Refuse to resume a pipeline directory written with other settings: its finished stages would be
    read back under the new ones (a table titled with a sampler or demonstrations they never had).

    One change is a continuation rather than another run: more online iterations than the directory's. It returns
    the stages that must run again for it (``AFTER_ONLINE``; none otherwise). Fewer are refused, as online RL
    cannot give back iterations it has taken."""
    if not path.is_file():
        return ()
    before = {**_as_json(PipelineConfig()), **BEFORE_IT_EXISTED, **json.loads(path.read_text())}  # a file from before a setting existed
    now = _as_json(config)
    changed = [f"{k} {before[k]} (now {now[k]})" for k in now if k not in (*RERUN_MAY_CHANGE, "online_iterations") and before.get(k) != now[k]]
    if changed:
        raise ValueError(f"{path.parent} was run with {', '.join(changed)}: rerun it with those settings, or choose another --out")
    ran = BUDGETS[config.budget].online_iterations if before.get("online_iterations") is None else int(before["online_iterations"])
    asked = config.spend.online_iterations
    if asked < ran:
        raise ValueError(f"{path.parent} was run with {ran} online iterations, more than --online-iterations {asked}: rerun with at least {ran} "
                         f"(more go on from the last), or choose another --out")  # fmt: skip
    return AFTER_ONLINE if asked > ran else ()


def _as_json(config: PipelineConfig) -> dict:
    """The config as pipeline.json holds it (tuples as lists)."""
    return json.loads(json.dumps(to_dict(config)))


def write_view(out: Path, stages: list[str], episodes_per_stage: int = 3) -> Path:
    """OUT/pipeline.rrd: each stage's training curves and its first evaluation episodes, one recording each."""
    from robot.metrics import read_metrics
    from robot.viewer import RecordingSet, episode_blueprint, log_episode, log_metrics, metric_keys, metrics_blueprint

    path = out / "pipeline.rrd"
    with RecordingSet(save=path) as recordings:
        for stage in stages:
            metrics = out / stage / "metrics.jsonl"
            if metrics.is_file():
                rows = read_metrics(metrics)
                rec = recordings.new("robot-pipeline", recording_id=f"{stage}/curves", name=f"{stage} curves", blueprint=metrics_blueprint(metric_keys(rows)))
                log_metrics(rec, rows)
            evals = out / f"{stage}.eval.zarr"
            if evals.is_dir():
                store = ZarrEpisodeStore.open(evals)
                for i in range(min(episodes_per_stage, store.num_episodes)):
                    rec = recordings.new("robot-pipeline", recording_id=f"{stage}/episode-{i}", name=f"{stage} eval {i}", blueprint=episode_blueprint(store.features))
                    log_episode(rec, store.episode(i), store.features)
    return path


def stage_one_step(
    config: PipelineConfig, out: Path, online: StageResult, b: Budget, show_progress: bool, log: Callable[[str], None], ddp: Distributed
) -> StageResult:
    """The online policy's one-step consistency head, evaluated on the same seeds."""
    path = out / "one-step.result.json"
    if ddp.broadcast(path.is_file()):
        return StageResult(**json.loads(path.read_text()))
    with StageClock(out / "one-step.cpu.json", write=ddp.is_main, log=log) as clock:
        report = evaluate_policy(online.policy, config.task, episodes=b.eval_episodes, seed=100_000 + config.seed, sampler="consistency", device=config.device,
                                 show_progress=show_progress, lanes=config.lanes)  # fmt: skip
    result = StageResult("one-step", online.policy, report.success_rate, report.mean_return, 0, clock.minutes, online.ddim_ms,
                         online.one_step_ms, successes=report.successes, lengths=report.lengths)  # fmt: skip
    if ddp.is_main:
        path.write_text(json.dumps(to_dict(result), indent=2))
    ddp.barrier()
    log(f"[one-step] success {result.success:.1%}")
    return result


def record_demos(config: PipelineConfig, path: Path) -> None:
    """Scripted teleoperation (``demo_noise`` > 0 and ``demo_style`` make it imperfect, like a human's).

    The presets record clean demonstrations: on push, demonstrations with noise 0.2
    or 0.5 taught the imitation policy the operator's wrong moves (7% and 3% success,
    docs/RESULTS.md), too little for the RL stages to start from in a quick budget.
    """
    from workflow.record import RecordConfig, record

    b = config.spend
    if path.exists():

        if ZarrEpisodeStore.open(path).num_episodes >= b.demos:
            return
    record(
        RecordConfig(task=config.task, device="scripted", episodes=b.demos, out=path, noise=b.demo_noise, style=config.demo_style,
                     seed=config.seed, resume=path.exists(), cameras=config.cameras),  # fmt: skip
        stream=io.StringIO(),
    )


def measure_latency(policy: str | Path, device: str, repeats: int = 30) -> tuple[float, float | None]:
    """Median ms for one action chunk: K-step DDIM vs the one-step head (batch 1)."""
    times = {}
    for sampler in ("ddim", "consistency"):
        try:
            controller = DiffusionController.load(policy, sampler=sampler, device=device)
        except ValueError:
            times[sampler] = None
            continue
        controller.push_observation({k: np.zeros(f.shape, dtype=f.dtype) for k, f in controller.input_features.items()})
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            controller.predict_chunk()
            samples.append((time.perf_counter() - start) * 1e3)
        times[sampler] = float(np.median(samples))
    return times["ddim"], times["consistency"]
