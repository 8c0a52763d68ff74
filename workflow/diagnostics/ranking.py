"""Do the offline critics rank a state's actions the way the task does? Checked in sim.

Offline PPO climbs ``min Q - V`` between chunks sampled at the *same* state, so what it
needs from the critics is their order within a state, not their overall fit. This check
measures that order against Monte Carlo truth:

1. run a deterministic episode of the policy and cut it at a random chunk decision;
2. draw ``chunks`` candidate chunks there from the policy's stochastic chain (with the
   std floor RL samples with) and score each by the critics' min target Q;
3. for each candidate, replay the episode to that decision (same seed, same commanded
   actions: the sim is deterministic, and the replayed observation is checked against
   the recorded one), execute the candidate, let the deterministic policy finish, and
   sum the discounted reward from the decision on: the chunk's Monte Carlo return.

Per state, :func:`workflow.diagnostics.fqe.rank_agreement` gives the Spearman correlation
of Q with the returns and the regret of Q's top pick. Over states, ``captured`` is the
share of the attainable gain (best return minus the candidates' mean) that picking by Q
gets: 1 picks the best every time, 0 is no better than a random candidate, below 0 worse.
A state whose candidates all reach the same return has nothing to rank and is counted apart.
For contrast, ``state_spearman`` ranks the states themselves (mean Q against mean return):
critics can know which states are good and still not which action is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from robot.protocols import Robot, Task
from workflow.diagnostics.diagnose import json_safe
from workflow.diagnostics.fqe import rank_agreement
from workflow.envs import make_sim_for
from workflow.episode import Episode, PolicyActor
from workflow.policy import DiffusionController, policy_task

RANKING_SEED = 700_000  # first sim seed of the checked episodes (apart from evaluation, rollout and selection seeds)
TIED = 1e-6  # returns closer than this are the same outcome


@dataclass(frozen=True)
class RankingConfig:
    policy: str
    """Run directory or policy checkpoint: it proposes the candidates and finishes every branch (deterministically)."""
    critics: str
    """Critics of an offline round (``runs/x/round-M/critics``) over this policy's features."""
    task: str | None = None
    """Simulated task (its sim must replay deterministically); None: the checkpoint's task."""
    states: int = 20
    """Decisions (one per episode) at which candidates are compared."""
    chunks: int = 6
    """Candidate chunks per state."""
    min_std: float = 0.1
    """Std floor of the chain the candidates come from (``OfflineConfig.min_std``: what offline PPO samples)."""
    seed: int = 0
    """Seeds the episodes, the decisions chosen and the candidates' noise."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if self.states < 1 or self.chunks < 2:
            raise ValueError(f"need states >= 1 and chunks >= 2 to rank anything, got {self.states} and {self.chunks}")
        if self.min_std < 0:
            raise ValueError(f"min_std must be >= 0, got {self.min_std}")


@dataclass(frozen=True)
class StateRanking:
    seed: int
    """Sim seed of the episode the state comes from."""
    decision: int
    """Chunk decision of that episode at which the candidates branch off."""
    q: list[float]
    """Critics' min target Q of each candidate's executed chunk."""
    returns: list[float]
    """Discounted return from the decision on, candidate executed, then the deterministic policy."""
    successes: list[bool]
    spearman: float
    """Rank correlation of ``q`` with ``returns`` (NaN when either is constant)."""
    regret: float
    """Best return minus the return of Q's top pick."""

    @property
    def tied(self) -> bool:
        return float(np.ptp(self.returns)) <= TIED


@dataclass(frozen=True)
class RankingReport:
    task: str
    states: list[StateRanking]

    @property
    def ranked(self) -> list[StateRanking]:
        """States whose candidates reach different returns."""
        return [s for s in self.states if not s.tied]

    def summary(self) -> dict[str, float]:
        ranked = self.ranked
        rho = [s.spearman for s in ranked if np.isfinite(s.spearman)]
        gain_q = sum(s.returns[int(np.argmax(s.q))] - float(np.mean(s.returns)) for s in ranked)
        gain_best = sum(max(s.returns) - float(np.mean(s.returns)) for s in ranked)
        split = [s for s in ranked if 0 < sum(s.successes) < len(s.successes)]
        mean_q, mean_return = [float(np.mean(s.q)) for s in self.states], [float(np.mean(s.returns)) for s in self.states]
        return {
            "states": len(self.states),
            "ranked_states": len(ranked),
            "spearman_mean": float(np.mean(rho)) if rho else float("nan"),
            "spearman_positive": float(np.mean([r > 0 for r in rho])) if rho else float("nan"),
            "captured": gain_q / gain_best if gain_best > 0 else float("nan"),
            "regret_mean": float(np.mean([s.regret for s in ranked])) if ranked else float("nan"),
            "return_spread": float(np.mean([np.std(s.returns) for s in ranked])) if ranked else 0.0,
            "q_spread": float(np.mean([np.std(s.q) for s in ranked])) if ranked else 0.0,
            "state_spearman": rank_agreement(mean_q, mean_return)["spearman"],
            "success_split_states": len(split),
            "q_picks_success": float(np.mean([s.successes[int(np.argmax(s.q))] for s in split])) if split else float("nan"),
            "candidate_success": float(np.mean([np.mean(s.successes) for s in split])) if split else float("nan"),
        }

    def table(self) -> str:
        from robot.report import format_table

        s = self.summary()
        rows = [
            ["states (ranked: candidates differ)", f"{s['states']} ({s['ranked_states']})"],
            ["Spearman(Q, return), mean over ranked states", _num(s["spearman_mean"])],
            ["states with positive Spearman", _pct(s["spearman_positive"])],
            ["attainable gain captured by Q's pick", _pct(s["captured"])],
            ["regret of Q's pick (return)", _num(s["regret_mean"])],
            ["spread within a state (std): return / Q", f"{_num(s['return_spread'])} / {_num(s['q_spread'])}"],
            ["Spearman across states (mean Q, mean return)", _num(s["state_spearman"])],
            ["states where some candidates succeed, some fail", s["success_split_states"]],
            ["  there, Q's pick succeeds / a random candidate", f"{_pct(s['q_picks_success'])} / {_pct(s['candidate_success'])}"],
        ]
        return format_table(["critic ranking in sim", ""], rows, title=f"task {self.task}: candidates per state ranked by min Q vs their Monte Carlo return")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"task": self.task, "summary": self.summary(), "states": [asdict(s) for s in self.states]}
        path.write_text(json.dumps(json_safe(body), indent=1) + "\n")
        return path


def check_critic_ranking(config: RankingConfig, *, log: Callable[[str], None] = lambda s: None) -> RankingReport:
    from workflow.critic_checkpoint import load_critics

    controller = DiffusionController.load(config.policy, device=config.device, seed=config.seed)
    model, ta = controller.model, controller.n_action_steps
    critics = load_critics(config.critics).to(config.device)
    if (critics.feature_dim, critics.action_size) != (model.cond_dim, ta * model.action_dim):
        raise ValueError(
            f"{config.critics} scores features of width {critics.feature_dim} and executed chunks of {critics.action_size} numbers; "
            f"{config.policy} has features of width {model.cond_dim} and executes {ta} x {model.action_dim}: "
            "use the critics of the offline round this policy comes from"
        )
    sampler = model.chain_sampler(config.min_std)  # candidates: the chain offline PPO samples
    gamma = critics.config.gamma
    task_name = policy_task(config.policy, config.task, meta=controller.meta)
    robot, task = make_sim_for(task_name, controller.input_features)
    controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    states = []
    with robot:
        for i in range(config.states):
            seed = RANKING_SEED + 1000 * config.seed + i
            actions, observations = _deterministic_episode(robot, task, controller, seed)
            decision = int(rng.integers(0, (len(actions) + ta - 1) // ta))
            cond = _replay(robot, task, controller, seed, actions[: decision * ta], observations[decision * ta])
            conds = cond.repeat(config.chunks, 1)
            candidates = model.sample_chain(conds, generator=gen, sampler=sampler).actions  # (M, H, Da) normalised
            with torch.no_grad():
                q = critics.target_q.min_q(conds, candidates[:, :ta].flatten(1))
            returns, successes = [], []
            for chunk in candidates:
                _replay(robot, task, controller, seed, actions[: decision * ta], observations[decision * ta])
                ret, ok = _finish(robot, task, controller, controller.unnormalize_actions(chunk[:ta]), decision * ta, gamma, seed)
                returns.append(ret)
                successes.append(ok)
            agreement = rank_agreement(q.tolist(), returns)
            states.append(StateRanking(seed, decision, q.tolist(), returns, successes, agreement["spearman"], agreement["regret_at_1"]))
            log(f"state {i + 1}/{config.states}: seed {seed}, decision {decision}, returns {np.round(returns, 3).tolist()}, spearman {agreement['spearman']:.2f}")
    return RankingReport(task_name, states)


def _deterministic_episode(robot: Robot, task: Task, controller: DiffusionController, seed: int) -> tuple[list[np.ndarray], list[dict]]:
    """The commanded actions and the observations before each of them, until success or the step limit.
    Replays send the commands, not what the safety layer made of them: the layer acts again on the replay."""
    actions, observations = [], []
    for step in Episode(robot, task, PolicyActor(controller), seed=seed, keep_frames=False):
        observations.append(step.observation)
        actions.append(step.policy.action)
    return actions, observations


def _replay(robot: Robot, task: Task, controller: DiffusionController, seed: int, actions: list[np.ndarray], expected: dict) -> torch.Tensor:
    """Reset to ``seed`` and send the commands ``actions`` with the controller's history following; returns the features
    at the state reached, after checking its observation is the one recorded there."""
    controller.reset()
    obs = robot.reset(seed)
    for action in actions:
        controller.push_observation(obs)
        applied = robot.send_action(action)
        obs = robot.get_observation()
        task.evaluate(obs, applied)  # the task sees every step, as in an episode
    for key, value in expected.items():
        if key in controller.input_features and not np.allclose(obs[key], value, atol=1e-5):
            raise RuntimeError(
                f"replaying seed {seed} for {len(actions)} steps did not reach the recorded state ({key} differs by "
                f"{np.max(np.abs(np.asarray(obs[key], float) - value)):.3g}): this check needs a deterministic sim"
            )
    controller.push_observation(obs)
    return controller.condition()


def _finish(robot: Robot, task: Task, controller: DiffusionController, chunk: np.ndarray, step: int, gamma: float, seed: int) -> tuple[float, bool]:
    """Execute ``chunk`` from the replayed state, then the deterministic policy; discounted return from here."""
    controller.seed_episode(seed)  # the continuation's noise: the same for every candidate
    ret, k, success = 0.0, 0, False
    queued = list(chunk)
    obs = robot.get_observation()  # where the replay left the robot
    while step < task.max_steps and not success:
        action = queued.pop(0) if queued else controller.select_action(obs).action
        applied = robot.send_action(action)
        obs = robot.get_observation()
        outcome = task.evaluate(obs, applied)
        success, step = outcome.success, step + 1
        ret += gamma**k * outcome.reward
        k += 1
        if queued:  # frames inside the chunk enter the history like in closed-loop control
            controller.push_observation(obs)
    return ret, success


def _num(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3g}"


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.0%}"
