"""Stage 3: online RL. PPO over denoising chains on live rollouts, with the one-step head tracking it.

Each iteration reads top to bottom (``train_online``):

1. roll out the stochastic policy through deploy's control stack (:mod:`workflow.control`, on ``sim:TASK``
   or any arm, with an operator when one is given) and read its chunk decisions
   (:mod:`workflow.online_collect`): the frozen-encoder features, the sampled denoising chain and its
   per-step log-probs, then the chunk's ``Ta`` actions and their discounted reward (steps the operator
   drove stay out); every episode is kept as it ends and appended to the run's store as ``online-rollout``;
2. GAE over chunk decisions (discount gamma^n for an n-step chunk, lambda 0.95),
   bootstrapping time-limit ends from V and not success ends (:mod:`workflow.online_update`);
3. a few epochs of the clipped objective over the denoising steps (one normalised
   advantage per decision shared by its K steps) and of the value regression;
4. a few consistency-distillation steps on this iteration's states.

Steps 2-4 are ``OnlineLearner.step`` (:mod:`workflow.online_update`), here or in a ``robot learn`` process
(:mod:`workflow.learner_link`). After each update the learner's whole state is checkpointed, so a rerun
of the same command resumes where a crash, an e-stop or a quit stopped it (:mod:`workflow.online_resume`).
At the end the stage hands on the start or a snapshot, whichever the paired selection episodes
say (``hand_on``), and distils its one-step head.

Under ``torchrun`` every rank rolls out its share of each iteration's episodes in its
own sim (parallel rollout workers), the decisions are gathered on every rank, and the
PPO and value minibatches are split over the ranks with their gradients averaged; the
selection episodes are split the same way. Each episode's noise comes from its own seed,
so N ranks collect the episodes one process would and take the same steps (up to float
summation order). Rank 0 writes the run directory and distils the one-step head.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from policies.consistency import ConsistencyHead, StudentConfig
from policies.critics import CriticConfig
from policies.diffusion import LOG_PROB_REDUCTIONS
from robot.checkpoint import load_checkpoint
from robot.store import ZarrEpisodeStore
from robot.types import INTERVENTION, EpisodeMeta
from workflow.distill import DISTILL_BATCH, head_schedule, make_head_optimizer
from workflow.distill_onpolicy import ONPOLICY_SEED, distill_visiting
from workflow.distributed import Distributed, init_distributed
from workflow.envs import sim_lanes
from workflow.lanes import DEFAULT_LANES, SimLanes
from workflow.latent import encode_store
from workflow.control import ControlStack, open_control
from workflow.online_collect import Collected, Decisions, collect_episodes
from workflow.online_resume import EpisodeLog, Progress, finished_iterations, load_state, save_state
from workflow.online_update import OnlineLearner
from workflow.paired import best_challenger, pick_beyond_noise, wins_losses
from workflow.policy import KIND, DiffusionController, build_from_checkpoint, policy_dir, policy_task, save_policy
from workflow.ppo import StepSchedule, fine_tuned_steps
from workflow.rollout import episode_features, evaluate
from workflow.run import RunDir, progress, resolve_device, seed_everything, state_dir
from workflow.takeover import OperatorConfig, OperatorStop

SELECTION_SEED = 500_000  # first sim seed of the selection episodes (apart from rollout and evaluation seeds)
ROLLOUT_SEED = 10_000_000
"""First sim seed of online RL's training rollouts (run seed s: from ROLLOUT_SEED + s * 1 000 003), apart from the
demonstrations', the offline rounds', the selection's and the evaluations' (which users and ``bench.recipe`` start at
small seeds): rollouts from 0 reached the benchmark's 2000-2199 after 62 iterations of 32 episodes, so a longer run was
scored on initial states it had trained on. A run begun before keeps the first seed it saved."""


def rollout_seed(run_seed: int) -> int:
    """Sim seed of a run's first training rollout (``ROLLOUT_SEED``)."""
    return ROLLOUT_SEED + run_seed * 1_000_003


@dataclass(frozen=True)
class OnlineConfig:
    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = ("learner", "device", "iterations", "robot_minutes")
    """Fields a rerun may change and still resume the run: where the updates run, and how long the run goes on. An
    iteration computes the same whatever the total, so a finished run rerun with more iterations (or more robot time)
    goes on from its last one and ends where one run of that length would; it cannot be shortened."""

    policy: str
    """Run directory or policy checkpoint to fine-tune (usually the offline stage's)."""
    out: str
    """Run directory: policy snapshots, metrics, rollouts.zarr."""
    task: str | None = None
    """Simulated task the episodes run on; None: the checkpoint's task."""
    robot: str | None = None
    """Robot the episodes run on, any spec `robot deploy` takes (sim:TASK, ur5e:HOST, franka:standin:lift,
    remote:HOST:PORT...), through deploy's fixed-rate loop, chunk queue and safety layer; None: sim:<task>."""
    hz: float | None = None
    """Control rate; None: unthrottled in sim (one tick is one control period of sim time), the policy's data
    rate on an arm (stand-ins included)."""
    max_steps: int | None = None
    """Ticks per episode; None: the task's limit (real arms: 600)."""
    lanes: int = DEFAULT_LANES
    """Sim episodes run side by side, their chunks planned in one batch (``workflow.lanes``; 1: one at a time).
    An arm, an operator's device or a policy that reads cameras runs one at a time."""
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    """Who watches the episodes (a person or the scripted operator: start, labels, takeovers) and what scores them."""
    robot_minutes: float | None = None
    """Budget of robot time (the episodes' wall time, resets and the operator's starts included): no iteration
    starts once it is spent, and the stage hands on what it has; None: ``iterations`` alone decides."""
    learner: str | None = None
    """HOST:PORT of a `robot learn` process (another process, or a GPU machine) that runs each iteration's update,
    authenticated with ROBOT_TOKEN; None: the updates run in this process."""
    iterations: int = 10
    """Collect-then-update iterations. Rerun with more, a finished run goes on from its last one."""
    episodes_per_iteration: int = 8
    """Episodes collected with the stochastic chain per iteration."""
    epochs: int = 4
    """Passes over each iteration's decisions."""
    minibatch: int = 64
    """Chunk decisions per PPO minibatch."""
    actor_lr: float = 1e-5
    """Denoiser learning rate (small: the policy starts good)."""
    value_lr: float = 1e-3
    """Learning rate of the value function."""
    clip_eps: float = 0.2
    """The PPO clip range (of the last denoising step when ``clip_first`` is set)."""
    clip_first: float | None = None
    """Clip range of the first denoising step, rising exponentially to ``clip_eps`` at the last (DPPO: 0.001 to
    0.01); None: every step clips at ``clip_eps`` (``workflow.ppo.StepSchedule``)."""
    denoising_gamma: float = 1.0
    """Discount of the advantage over the denoising chain, towards its first step (DPPO: 0.99; 1: none)."""
    grad_clip: float = 0.5
    """Gradient-norm clip of the denoiser and the value function."""
    gamma: float = 0.99
    """Per environment step; a chunk of n steps discounts by gamma^n."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    target_kl: float = 0.05
    """Approximate KL to the sampling policy an iteration aims for. With ``adaptive_lr`` the actor's learning
    rate follows it (RL-100's code, rsl_rl): divided by 1.5 after an iteration whose mean minibatch KL exceeded
    twice this, multiplied by 1.5 after one under half of it. Either way an iteration stops at the first minibatch
    over ``kl_stop`` times this (Stable-Baselines3's early stop; a lift run without it went on to KL 9.8)."""
    kl_stop: float = 1.5
    """Multiple of ``target_kl`` at which an iteration's updates stop."""
    adaptive_lr: bool = False
    """Adapt the actor's learning rate to ``target_kl`` (within 0.1x..10x ``actor_lr``) instead of relying on the
    stop alone: with a fixed rate one Adam step can spend most of the KL budget, and an iteration then stops after
    a few minibatches (issue 25's review of the stages)."""
    value_warmup_epochs: int = 20
    """Value-only regression epochs on the first iteration (V must be sensible before it shapes advantages)."""
    value_from: str | None = None
    """Checkpoint of offline critics (``round-M/critics``) whose V warm-starts the value function."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    ft_steps: int | None = None
    """Fine-tune only the last this many denoising steps; the earlier ones run a frozen copy of the starting
    denoiser, which keeps the action's coarse shape where imitation put it (DPPO: 10 of 20); None: every step."""
    min_std: float = 0.1
    """Floor on each denoising step's std while fine-tuning (``DiffusionPolicy.chain_sampler``)."""
    log_prob_reduction: Literal["sum", "mean"] = "sum"
    """Chain log-probs over chunk and action dims while fine-tuning: ``sum`` (exact) or ``mean`` (DPPO's, a far less sharp ratio)."""
    chunk_corr: float = 0.0
    """Correlation of the exploring chain's noise between the actions of a window (``ChainSampler.chunk_corr``; 0:
    white noise). White noise averages out over a chunk's actions, so a chunk rarely explores moving faster or
    slower as a whole; correlated noise does, with exact log-probs."""
    distill_steps: int = 50
    """Consistency-distillation steps per iteration, so every snapshot carries a head that tracks it (0: snapshots
    carry none, and only the handed-on policy's head is distilled, with ``distill_final_steps``)."""
    head: StudentConfig = field(default_factory=StudentConfig)
    """The one-step head's network (``policies.consistency``): the MLP wants many more, cheaper steps."""
    distill_lr: float = 3e-4
    """Peak learning rate of the one-step head's distillation (the MLP student was measured at 1e-3, ``StudentConfig.lr``)."""
    distill_final_steps: int | None = None
    """Distillation budget of the handed-on policy's head; None: ``distill_steps x iterations``. Its in-loop
    steps count toward it, except with ``distill_data``, whose states it then gets all of it on. Too few steps leave
    the head well short of its teacher (docs/RESULTS.md, session 6)."""
    distill_reuse: int = 4
    """Regression steps per batch of teacher targets (``workflow.distill.distill``)."""
    distill_pool: int | None = 16
    """Teacher target batches labelled at a time in the final distillation; None: all it needs, up front."""
    distill_data: str | None = None
    """Episode store (e.g. the demonstrations) whose states, with every state of this run's rollouts, the
    handed-on policy's one-step head is finally distilled on, for the whole budget; None: the last iteration's
    states, for what its snapshot has not had. The demonstrations' states and the rollouts' together cover what the
    policy meets; either alone left the head short of its teacher (docs/RESULTS.md: the quick pipeline with gated RL
    stages, and session 12)."""
    distill_onpolicy_rounds: int = 0
    """DAgger rounds of the handed-on head's final distillation (``workflow.distill_onpolicy``): between phases the
    head runs ``distill_onpolicy_episodes`` sim episodes of the task and the teacher labels the states it planned
    at. Sim only (on an arm they would spend robot time on a head that is not deployed yet); 0: none."""
    distill_onpolicy_episodes: int = 32
    """Sim episodes of the head per on-policy round."""
    select_episodes: int = 16
    """Deterministic episodes scoring the starting policy and its challengers (``challengers``) at the end, on
    the same seeds; a challenger replaces the start only if it wins beyond the evaluation's noise
    (``select_max_p``), so the stage never hands on a policy that is not measurably better than the one it got.
    0 hands on the last iteration's policy unscored."""
    challengers: Literal["last", "snapshots"] = "last"
    """Which snapshots challenge the start. ``last``: the last iteration's alone, scored with the start on
    ``select_episodes`` + ``confirm_episodes`` seeds and read by one sign test: with one challenger there is
    nothing to screen, so every episode is evidence. ``snapshots``: every ``select_every``-th, screened on
    ``select_episodes`` seeds, the best confirmed on ``confirm_episodes`` fresh ones. Screening picks the
    luckiest of several on a few episodes (docs/RESULTS.md, session 19: on 16 it picked iteration 1, 88.0% on 200
    paired seeds, over iteration 7's 91.5%); on 200 it picked well where a long stage's last snapshot had drifted
    (session 36: the main job at 120 iterations, iteration 79's 94.0% over the last one's 90.0%, 600 seeds)."""
    select_max_p: float = 0.25
    """One-sided sign-test p-value (the best snapshot's wins vs losses against the start, episode by episode) at
    or under which it replaces the start: 2 wins and no loss, 4 to 1 or 5 to 2 pass; equal success never does."""
    select_every: int = 2
    """Iterations between scored snapshots with ``challengers`` ``snapshots`` (the last iteration is always scored)."""
    confirm_episodes: int = 0
    """With ``challengers`` ``last``: more seeds (right after the selection's) on which the start and the last
    snapshot both run, read together with the selection's. With ``snapshots``: 0, the selection episodes decide;
    otherwise they only screen: when the best-scoring snapshot won more of them than it lost against the start,
    both run again on this many fresh seeds and the sign test reads those alone, so neither the screen's luck
    nor a small sample decides: 32 selection episodes alone have kept a start over a snapshot that 200 paired
    episodes found better (docs/RESULTS.md, session 14)."""
    seed: int = 0
    """Seed of the rollouts, the chains and every update."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""

    @property
    def screen_episodes(self) -> int:
        """Episodes every candidate of the selection runs first: with one challenger (``last``) the selection's and
        the confirmation's seeds together, with several (``snapshots``) the selection's alone."""
        return self.select_episodes + (self.confirm_episodes if self.challengers == "last" else 0)

    @property
    def step_schedule(self) -> StepSchedule:
        """PPO's treatment of the denoising steps (validated when the config is made)."""
        return StepSchedule(clip_first=self.clip_first, denoising_gamma=self.denoising_gamma)

    def __post_init__(self) -> None:
        self.step_schedule  # noqa: B018 (refuses a bad clip_first or denoising_gamma)
        if self.iterations < 1 or self.episodes_per_iteration < 1 or self.epochs < 1 or self.minibatch < 1 or self.select_every < 1 or self.distill_reuse < 1 or self.lanes < 1:
            raise ValueError(f"iterations, episodes_per_iteration, epochs, minibatch, select_every, distill_reuse and lanes must be >= 1, got {self}")
        if self.distill_steps < 0 or (self.distill_final_steps is not None and self.distill_final_steps < 0):
            raise ValueError(f"distill_steps and distill_final_steps must be >= 0, got {self.distill_steps}, {self.distill_final_steps}")
        if (self.distill_pool is not None and self.distill_pool < 1) or not 0 < self.distill_lr < 1:
            raise ValueError(f"distill_pool must be >= 1 and distill_lr in (0, 1), got {self.distill_pool}, {self.distill_lr}")
        if self.log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction must be one of {LOG_PROB_REDUCTIONS}, got {self.log_prob_reduction!r}")
        if self.target_kl <= 0 or self.kl_stop <= 1:
            raise ValueError(f"target_kl must be > 0 and kl_stop > 1, got {self.target_kl}, {self.kl_stop}")
        if not 0 < self.select_max_p <= 1:
            raise ValueError(f"select_max_p must be in (0, 1], got {self.select_max_p}")
        if self.select_episodes < 0 or self.confirm_episodes < 0 or self.select_episodes + self.confirm_episodes > 1000:
            raise ValueError(f"select_episodes and confirm_episodes must be >= 0 and together at most 1000 (a run seed's selection seeds), "
                             f"got {self.select_episodes} and {self.confirm_episodes}")
        if self.distill_onpolicy_rounds < 0 or self.distill_onpolicy_episodes < 1:
            raise ValueError(f"distill_onpolicy_rounds must be >= 0 and distill_onpolicy_episodes >= 1, got {self.distill_onpolicy_rounds}, "
                             f"{self.distill_onpolicy_episodes}")
        if self.distill_onpolicy_rounds and self.robot is not None and not self.robot.startswith("sim:"):
            raise ValueError(f"on-policy distillation rolls the one-step head out in sim; robot {self.robot} is an arm: pass --distill-onpolicy-rounds 0")
        if self.robot_minutes is not None and not self.robot_minutes > 0:
            raise ValueError(f"robot_minutes must be > 0 (or None: no time budget), got {self.robot_minutes}")
        if self.ft_steps is not None and self.ft_steps < 1:
            raise ValueError(f"ft_steps must be >= 1 (or None: every denoising step), got {self.ft_steps}")
        if not 0.0 <= self.chunk_corr < 1.0:
            raise ValueError(f"chunk_corr must be in [0, 1), got {self.chunk_corr}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")


@dataclass(frozen=True)
class OnlineReport:
    run: str
    policy: str
    iterations: int
    episodes: int
    success_first: float
    success_last: float
    minutes: float
    selected: str = "last"  # "start" or "iteration N": the policy this stage hands on
    selection: tuple[tuple[str, float, float], ...] = ()  # (candidate, deterministic success, return) on the selection seeds
    selection_episodes: int = 0  # deterministic episodes the selection ran, every candidate's together
    robot_minutes: float = 0.0  # wall time the robot spent on the iterations' episodes (resumed runs: all sessions)


def train_online(config: OnlineConfig, *, show_progress: bool = True) -> OnlineReport:
    started = time.perf_counter()
    ddp, device = init_distributed(resolve_device(config.device))  # torchrun: one rollout worker and learner per rank
    config = replace(config, task=policy_task(config.policy, config.task, warn=ddp.is_main))  # the run's config.json names it
    finished = finished_iterations(state_dir(config.out))
    if finished > config.iterations:  # before an arm moves or RunDir records the shorter run's config
        raise ValueError(f"{config.out} holds a run of {finished} finished iterations, more than --iterations {config.iterations}: "
                         f"rerun with at least {finished} to go on, or choose a new --out")  # fmt: skip
    seed_everything(config.seed)
    ckpt = load_checkpoint(policy_dir(config.policy), kind=KIND)
    model, head = build_from_checkpoint(ckpt, device=str(device))
    model = fine_tuned_steps(model, config.ft_steps)
    head = head if head is not None else (ConsistencyHead.from_policy(model, config.head) if distils_head(config) else None)
    learner = OnlineLearner(model, config, ddp, device, head if config.distill_steps else None)  # in-loop distillation
    controller = DiffusionController(model, ckpt.normalizer, deterministic=False, learning=True, chain_sampler=learner.sampler, seed=config.seed, device=str(device))

    robot, task, control, operator = open_session(config, controller, ddp)  # every check before anything is written
    lanes = sim_lanes(config.task, controller.input_features, config.lanes) if robot.name.startswith("sim:") else None
    if config.learner is not None:
        learner = _remote_learner(config, learner, ddp)
    run = RunDir(config.out, config, write=ddp.is_main)
    store = ZarrEpisodeStore.open_or_create(run.path / "rollouts.zarr", episode_features(robot)) if ddp.is_main else None
    fps = control.loop.hz or float(controller.meta.get("fps") or (task.fps if task is not None else 0.0))
    stored = {m.seed for m in store.metas if m.source == "online-rollout"} if store is not None else set()
    log = EpisodeLog(run.path / "checkpoints" / "episodes", learner.sampler)

    def commit(it: int, episode: Collected) -> None:  # each episode is kept as soon as it ends (rank 0)
        log.save(it, episode)
        if store is not None and episode.frames and episode.seed not in stored:
            store.append_episode(episode.frames, EpisodeMeta(task=config.task if task is None else task.name, robot=robot.name, fps=fps,
                                                             success=episode.success, source="online-rollout", seed=episode.seed))  # fmt: skip
            stored.add(episode.seed)

    done = load_state(run.state_dir, learner)  # a rerun resumes after the last finished update
    if done is None:
        done = Progress(0, ddp.broadcast(rollout_seed(config.seed) + len(stored)), [], None)
        if ddp.is_main:
            save_state(run.state_dir, done, learner)
    first_seed, successes = done.first_seed, done.successes
    bar = progress(config.iterations, done.iteration, "online", show_progress)
    with robot, _session_closed(store, control, operator, learner), lanes or contextlib.nullcontext():  # the lanes' sims serve every iteration
        for it in range(done.iteration, config.iterations):
            if config.robot_minutes is not None and done.robot_seconds >= 60 * config.robot_minutes:
                print(f"online: the robot-time budget ({config.robot_minutes:g} min) is spent after {it} iterations", file=sys.stderr)
                break
            # 1. collect: each rank its share of the episodes, then everyone has all decisions in episode order
            model.eval()
            seeds = [first_seed + it * config.episodes_per_iteration + i for i in range(config.episodes_per_iteration)]
            kept = log.load(it)  # this iteration's episodes an interrupted run finished
            for episode in kept.values() if ddp.is_main else ():
                commit(it, episode)  # in the store if a kill came between the two writes
            todo = [s for s in seeds if s not in kept]
            cpu = time.process_time()
            fresh = collect_episodes(control, [todo[i] for i in ddp.shard(len(todo))], config.gamma, ddp, commit=lambda e, it=it: commit(it, e) if ddp.is_main else None,
                                     lanes=lanes)
            episodes = sorted([*kept.values(), *fresh], key=lambda e: e.seed)
            stop = next((e.stop for e in episodes if e.stop is not None), None)
            if stop is not None:
                raise OperatorStop(f"the operator stopped the session ({stop}) during iteration {it}; its {len(episodes)} finished episodes are kept "
                                   f"(in {run.path / 'rollouts.zarr'}): run the same command again to resume")  # fmt: skip
            successes.append(float(np.mean([e.success for e in episodes])))
            decisions = Decisions.concat([e.decisions for e in episodes])
            if not decisions.cond:
                raise ValueError(f"iteration {it}: the operator drove every step of every episode, so the policy made no decision to learn from")
            batch = decisions.batch(device)
            collected = time.process_time() - cpu  # where an iteration's CPU goes: this, the update and the head's distillation

            # 2. advantages, 3. PPO and value epochs, 4. the one-step head follows the updated policy
            stats = learner.step(batch, it)
            stats["cpu/collect_s"] = collected
            interventions = sum(e.interventions for e in episodes)
            robot_minutes = (done.robot_seconds + sum(e.seconds for e in episodes)) / 60
            run.metrics.log({**stats, "charts/success": successes[-1], "charts/interventions": interventions, "charts/robot_minutes": robot_minutes}, it)
            done = Progress(it + 1, first_seed, successes, batch.cond, done.robot_seconds + sum(e.seconds for e in episodes))
            if ddp.is_main:
                save_policy(run.snapshot_dir(it), model, ckpt.normalizer, consistency=learner.head, extra={**ckpt.extra, "stage": "online", "iteration": it})
                save_state(run.state_dir, done, learner)
                log.clear_before(it + 1)
            bar.update(1)
            bar.set_postfix(success=f"{successes[-1]:.2f}")
        bar.close()
        if store is not None:
            store.close()
        ddp.barrier()  # every snapshot is on disk before the selection loads them

        # 5. hand on the best of the start and the scored snapshots (deterministic, as deployed), its head distilled
        ran = replace(config, iterations=done.iteration)  # fewer than asked when the robot-time budget ran out
        stack = control if config.robot is not None or config.operator.device is not None else None  # an arm: selection through its stack
        final, head, selected, selection = hand_on(model, head, ckpt, done.last_cond, robot, task, ran, run, learner.distill_gen, ddp, device, stack, lanes)
    if ddp.is_main:
        save_policy(run.policy_dir, final, ckpt.normalizer, consistency=head, extra={**ckpt.extra, "stage": "online", "selected": selected})
    ddp.barrier()  # the other ranks return once the policy is on disk
    report = OnlineReport(
        run=str(run.path),
        policy=str(run.policy_dir),
        iterations=done.iteration,
        episodes=done.iteration * config.episodes_per_iteration,
        success_first=successes[0],
        success_last=successes[-1],
        minutes=(time.perf_counter() - started) / 60,
        selected=selected,
        selection=selection,
        selection_episodes=selection_episodes(config, selection),
        robot_minutes=done.robot_seconds / 60,
    )
    run.write_report(report)
    run.close()
    return report


def distils_head(config: OnlineConfig) -> bool:
    """Whether the stage hands on a one-step head: distilled along the iterations, at the end, or both."""
    return bool(config.distill_steps or config.distill_final_steps)


def open_session(config: OnlineConfig, controller: DiffusionController, ddp: Distributed):
    """The robot the config names, its task (None on a real arm), the control stack the episodes run on (deploy's
    loop, chunk queue and safety layer) and the operator's device (not yet connected)."""
    spec = config.robot or f"sim:{config.task}"
    if ddp.enabled and not spec.startswith("sim:"):
        raise ValueError(f"torchrun runs one simulated rollout worker per rank; robot {spec} is one arm: run it in one process")
    robot, task, control, operator = open_control(spec, controller, config.operator, hz=config.hz, max_steps=config.max_steps, seed=config.seed)
    return robot, task, control, operator


def _remote_learner(config: OnlineConfig, local: OnlineLearner, ddp: Distributed):
    """The learner at ``config.learner`` (``robot learn``), in step with ``local``'s state."""
    from hardware.remote.serve import read_token
    from workflow.learner_link import RemoteLearner

    if ddp.enabled:
        raise ValueError("a remote learner serves one robot computer: run without torchrun, or drop --learner")
    token, _ = read_token(None)
    return RemoteLearner(config.learner, token, local, policy_dir(config.policy), config)


@contextlib.contextmanager
def _session_closed(store, control: ControlStack, operator, learner):
    """Connect the operator's device; close it, the planner and the store however the session ends (committed
    episodes stay readable after an e-stop or a crash)."""
    try:
        if operator is not None:
            operator.connect()
            print(operator.controls, file=sys.stderr)
        yield
    finally:
        control.close()
        if hasattr(learner, "close"):
            learner.close()
        if operator is not None:
            operator.close()
        if store is not None:
            store.close()


def hand_on(model, head, ckpt, last_states, robot, task, config: OnlineConfig, run: RunDir, gen: torch.Generator, ddp: Distributed, device,
            control: ControlStack | None = None, lanes: SimLanes | None = None):
    """The policy this stage hands on (the last iteration's, or the selection's pick: the start or a snapshot)
    and its one-step head with the whole distillation budget: ``(policy, head, selected, selection)``."""
    selected, selection = "last", ()
    final = model
    done = config.distill_steps * config.iterations  # distillation steps the handed-on head has had
    if config.select_episodes:
        cpu = time.process_time()
        selected, selection, path = select_policy(robot, task, config, run, ddp, control, lanes)
        run.metrics.log({"cpu/select_s": time.process_time() - cpu}, config.iterations)
        if selected == "start":
            final = build_from_checkpoint(ckpt, device=str(device))[0]
            head, done = (ConsistencyHead.from_policy(final, config.head), 0) if head is not None else (None, 0)
        else:
            final, head = build_from_checkpoint(load_checkpoint(path, kind=KIND), device=str(device))
            head = head if head is not None or not distils_head(config) else ConsistencyHead.from_policy(final, config.head)
            done = (int(selected.split()[1]) + 1) * config.distill_steps
        decisive = next(rate for name, rate, _ in reversed(selection) if name in (selected, f"{selected} confirming"))
        run.metrics.log({"charts/selected_success": decisive}, config.iterations)
    if head is not None:  # every rank: each regresses its rows of every batch (DDP), as ``train_distill``
        total = config.distill_final_steps if config.distill_final_steps is not None else config.distill_steps * config.iterations
        states, steps = last_states, max(total - done, 0)  # the last update's batch: the same on every rank
        if config.distill_data:  # all of it again, on the store's states and every state this run's rollouts visited
            states = torch.cat([_features(path, final, ckpt.normalizer, device) for path in (config.distill_data, run.path / "rollouts.zarr")])
            steps = total
        if steps:
            def visited(r: int, states_now: int, success: float, step: int) -> None:
                run.metrics.log({"charts/onpolicy_success": success, "charts/onpolicy_states": states_now, "charts/onpolicy_round": r}, config.iterations)

            cpu = time.process_time()
            batch = ddp.even_batch(DISTILL_BATCH, len(states))
            gen.set_state(ddp.broadcast(gen.get_state()))  # rank 0's: in-loop distillation drew from it there alone
            optimizer = make_head_optimizer(head, config.distill_lr)
            loss = distill_visiting(final, head, ckpt.normalizer, optimizer, states, steps, gen, reuse=config.distill_reuse, pool_batches=config.distill_pool, schedule=head_schedule(optimizer, steps),
                                    rounds=config.distill_onpolicy_rounds, episodes=config.distill_onpolicy_episodes, task=config.task,
                                    seed=ONPOLICY_SEED + 1000 * config.seed, device=str(device), on_round=visited,
                                    batch_size=batch, local=ddp.local_slice(batch), trainable=ddp.wrap(head))  # fmt: skip
            loss = ddp.mean(loss)
            run.metrics.log({"losses/distill_final": loss, "charts/distill_final_steps": steps, "charts/distill_final_states": len(states),
                             "cpu/distill_final_s": time.process_time() - cpu}, config.iterations)
    return final, head, selected, selection


def select_policy(robot, task, config: OnlineConfig, run: RunDir, ddp: Distributed | None = None,
                  control: ControlStack | None = None, lanes: SimLanes | None = None) -> tuple[str, tuple[tuple[str, float, float], ...], Path]:
    """Score the starting policy and its challengers (``config.challengers``: the last snapshot, or every
    ``select_every``-th) on the same seeds; a challenger replaces the start only when its paired wins are beyond
    noise (``workflow.paired.pick_beyond_noise``), with several challengers on fresh seeds when
    ``confirm_episodes`` is set. Under torchrun the seeds are split over the ranks; every rank reaches the same
    choice. With ``control`` (an arm) the episodes run through its stack and operator (:func:`scored_on_robot`); in sim
    ``lanes`` runs them side by side."""
    last = config.iterations - 1
    scored_its = [last] if config.challengers == "last" else [it for it in range(config.iterations) if (it + 1) % config.select_every == 0 or it == last]
    candidates = [("start", policy_dir(config.policy))] + [(f"iteration {it}", run.snapshot_dir(it)) for it in scored_its]
    def score(path: Path, episodes: int, seed: int):
        controller = DiffusionController.load(path, device=config.device, seed=config.seed)
        if control is not None:
            return scored_on_robot(control, controller, episodes=episodes, seed=seed)
        return evaluate(robot, task, controller, episodes=episodes, seed=seed, ddp=ddp, lanes=lanes)

    first = SELECTION_SEED + 1000 * config.seed
    scored, outcomes = [], []
    for name, path in candidates:
        r = score(path, config.screen_episodes, first)
        scored.append((name, r.success_rate, r.mean_return))
        outcomes.append(r.successes)
    if not config.confirm_episodes or config.challengers == "last":
        best = pick_beyond_noise(outcomes, config.select_max_p)
        return scored[best][0], tuple(scored), candidates[best][1]
    top = best_challenger(outcomes)
    wins, losses = wins_losses(outcomes[0], outcomes[top])
    if wins <= losses:  # the screen already says no
        return "start", tuple(scored), candidates[0][1]
    confirm = []
    for i in (0, top):
        r = score(candidates[i][1], config.confirm_episodes, first + config.select_episodes)
        scored.append((f"{candidates[i][0]} confirming", r.success_rate, r.mean_return))
        confirm.append(r.successes)
    best = top if pick_beyond_noise(confirm, config.select_max_p) == 1 else 0
    return candidates[best][0], tuple(scored), candidates[best][1]


def selection_episodes(config: OnlineConfig, selection: tuple[tuple[str, float, float], ...]) -> int:
    """Deterministic episodes :func:`select_policy` ran to score ``selection``, every candidate's together."""
    return sum(config.confirm_episodes if name.endswith(" confirming") else config.screen_episodes for name, _, _ in selection)


def scored_on_robot(control: ControlStack, controller: DiffusionController, *, episodes: int, seed: int):
    """``controller``'s deterministic episodes through ``control``'s robot, rate and operator: success is the
    operator's label where no task scores them (a real arm), and an episode the operator took over (any step
    flagged ``intervention``) counts as a failure, since the policy did not finish it alone. An e-stop ends the
    selection, as does a quit (:class:`OperatorStop`): the finished iterations are kept, and a rerun runs the
    selection again."""
    stack = ControlStack(control.robot, control.task, controller, hz=control.loop.hz, operator=control.operator, max_steps=control.max_steps)
    helped: set[int] = set()

    def judged(episode) -> None:
        if np.any(episode.frames.get(INTERVENTION, False)):
            helped.add(episode.seed)

    try:
        r = evaluate(control.robot, control.task, controller, episodes=episodes, seed=seed, control=stack, commit=judged)
    except OperatorStop as e:
        again = "clear the e-stop and run the same command again" if control.robot.is_estopped else "run the same command again"
        raise OperatorStop(f"selection episodes stopped: {e}; {again} (the finished iterations are kept; the selection runs again)") from None
    finally:
        stack.close()
    successes = tuple(s and seed not in helped for seed, s in zip(r.seeds, r.successes))
    return replace(r, successes=successes, success_rate=float(np.mean(successes)))


def _features(path: str | Path, model, normalizer, device) -> torch.Tensor:
    """Frozen-encoder features (N, Dc) of every step in the store at ``path``."""
    with ZarrEpisodeStore.open(path) as store:
        return encode_store(store, model, normalizer, gamma=1.0, device=device).features
