"""The episode engine: one loop for every stage that runs a robot.

Evaluation, offline rounds' rollouts, online RL's collection and ``robot deploy`` all run
:class:`Episode`. Whoever drives (a policy, a policy an operator can take over from, the deployment's
planner) is an :class:`Actor`; each control tick the engine

1. asks the actor for this tick's :class:`Act` (or an :class:`Ending`: an operator's label, an e-stop);
2. sends the action through the robot's safety layer (no action: the robot holds);
3. waits for the next tick (``pace``: a fixed-rate loop on a real arm; nothing in sim);
4. observes, and lets the task score the step;

and yields a :class:`Step`: the observation the action was chosen from, the applied action, the task's
reward terms and success, whether the operator drove, and the policy's :class:`PolicyStep`. The episode
ends on success, at the step limit, or on the actor's :class:`Ending`; its frames (what the store keeps)
and summary are on the :class:`Episode` afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from robot.protocols import EpisodeSeeded, Observation, Policy, PolicyStep, Robot, StepOutcome, Task
from robot.types import ACTION, DONE, INTERVENTION, REWARD, SUCCESS

NO_TASK = StepOutcome(terms={}, success=False)
"""A robot without a task (a real arm): no reward terms, success only from the operator's label."""
LABEL_REWARD = 1.0
"""Reward of an episode the operator labels a success, at its last step (no task scores it: a real arm)."""


@dataclass(frozen=True)
class Act:
    """One tick's decision by whoever drives."""

    action: np.ndarray | None
    """The action to send; None holds the robot where it is (``Robot.hold``)."""
    intervention: bool = False
    """The operator (or the safety layer, for a non-finite action) decided this step, not the policy."""
    policy: PolicyStep | None = None
    """The policy's step when the policy acted."""
    idle: bool = False
    """Nothing to do this tick (an operator touching no key while recording): nothing is sent, no step is
    taken, the loop only waits for the next tick; ``action`` is ignored."""


IDLE = Act(None, idle=True)


@dataclass(frozen=True)
class Ending:
    """Why an episode ended before success or its step limit, and how it is labelled."""

    label: str
    """task, max-steps, operator, e-stop, quit, non-finite actions, ..."""
    success: bool | None
    """None: as the task scored the last step."""
    stop: str | None = None
    """estop or quit when the whole session stops after this episode."""


@dataclass(frozen=True)
class Step:
    """One control step, scored."""

    t: int
    observation: Observation
    """What the action was chosen from."""
    action: np.ndarray
    """The action the robot applied (after the safety layer)."""
    outcome: StepOutcome
    """The task's reward terms and success after the action."""
    done: bool
    """The last step of the episode as far as the engine knows now (success or the step limit)."""
    intervention: bool
    policy: PolicyStep | None
    next_observation: Observation

    @property
    def reward(self) -> float:
        return self.outcome.reward

    @property
    def success(self) -> bool:
        return self.outcome.success


class Actor(Protocol):
    """Whoever drives an episode."""

    def begin(self, seed: int, observation: Observation) -> Ending | None:
        """A new episode from ``observation`` (the robot has reset): forget the last one; an Ending to stop before it starts."""
        ...

    def act(self, t: int, observation: Observation) -> Act | Ending:
        """Tick ``t``'s decision from ``observation``."""
        ...


class PolicyActor:
    """A policy driving alone: reset per episode, its noise seeded by the episode's seed when it supports that."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def begin(self, seed: int, observation: Observation) -> None:
        self.policy.reset()
        if isinstance(self.policy, EpisodeSeeded):  # its noise depends on this episode's seed only
            self.policy.seed_episode(seed)
        return None

    def act(self, t: int, observation: Observation) -> Act:
        step = PolicyStep.of(self.policy.select_action(observation))
        return Act(step.action, policy=step)


class EpisodeFrames:
    """One episode's per-step frames in the layout the store keeps."""

    def __init__(self, observation_keys: list[str]):
        self.keys = list(observation_keys)
        self.rows: dict[str, list] = {k: [] for k in [*self.keys, ACTION, REWARD, DONE, SUCCESS, INTERVENTION]}

    def add(self, step: Step) -> None:
        for k in self.keys:
            self.rows[k].append(step.observation[k])
        self.rows[ACTION].append(step.action)
        self.rows[REWARD].append(step.reward)
        self.rows[SUCCESS].append(step.success)
        self.rows[DONE].append(step.done)
        self.rows[INTERVENTION].append(step.intervention)

    def finish(self, success: bool, reward: float = 0.0) -> None:
        """The episode ended: its last frame is done, with the episode's success (an operator's label included) and
        ``reward`` added (a labelled success's, so that critics reading the store's rewards see it)."""
        if self.rows[ACTION]:
            self.rows[DONE][-1] = True
            self.rows[SUCCESS][-1] = success
            self.rows[REWARD][-1] += reward

    def __len__(self) -> int:
        return len(self.rows[ACTION])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.rows.items()}


class Episode:
    """One episode of ``actor`` on ``robot``: iterate it for its steps; afterwards ``ending``, ``frames``,
    ``ret``, ``terms`` and ``length`` describe it.

    ``task`` scores each step (None for a real arm without one: only an operator's label ends it well).
    ``pace`` runs between sending an action and observing its effect (a fixed-rate loop's sleep).
    ``end_on_success=False`` leaves the ending to the actor (an operator recording a demonstration
    decides when it is over).
    """

    def __init__(
        self,
        robot: Robot,
        task: Task | None,
        actor: Actor,
        *,
        seed: int,
        max_steps: int | None = None,
        pace: Callable[[], None] | None = None,
        keep_frames: bool = True,
        end_on_success: bool = True,
    ):
        if max_steps is None and task is None:
            raise ValueError("an episode without a task needs max_steps")
        self.robot, self.task, self.actor, self.seed = robot, task, actor, seed
        self.max_steps = max_steps or task.max_steps
        self.pace = pace
        self.end_on_success = end_on_success
        self.frames = EpisodeFrames(list(robot.observation_features)) if keep_frames else None
        self.ending: Ending | None = None
        self.ret, self.length = 0.0, 0
        self.terms: dict[str, float] = {}
        self.last: Step | None = None

    @property
    def success(self) -> bool:
        return bool(self.ending is not None and self.ending.success)

    def __iter__(self) -> Iterator[Step]:
        robot, task = self.robot, self.task
        obs = robot.reset(self.seed)
        self.ending = self.actor.begin(self.seed, obs)
        t = 0
        while self.ending is None and t < self.max_steps:
            act = self.actor.act(t, obs)
            if isinstance(act, Ending):
                self.ending = act
                break
            if act.idle:
                if self.pace is not None:
                    self.pace()
                continue
            applied = robot.send_action(act.action) if act.action is not None else robot.hold()
            if self.pace is not None:
                self.pace()
            next_obs = robot.get_observation()
            outcome = task.evaluate(next_obs, applied) if task is not None else NO_TASK
            ends = outcome.success and self.end_on_success
            step = Step(t, obs, np.asarray(applied, dtype=np.float32), outcome, ends or t == self.max_steps - 1, act.intervention, act.policy, next_obs)
            self._account(step)
            yield step
            obs, t = next_obs, t + 1
            if ends:
                self.ending = Ending("task", True)
        if self.ending is None:  # the step limit: success as the task scored the last step (it can hold, with end_on_success off)
            self.ending = Ending("max-steps", None)
        if self.ending.success is None:
            self.ending = Ending(self.ending.label, bool(self.last is not None and self.last.success), self.ending.stop)
        label_reward = LABEL_REWARD if self.task is None and self.ending.success else 0.0
        self.ret += label_reward
        if self.frames is not None:
            self.frames.finish(self.ending.success, label_reward)
        end_episode = getattr(robot, "end_episode", None)  # the safety layer warns about a guard that fired on most steps
        if callable(end_episode):
            end_episode()

    def run(self) -> "Episode":
        """Run to the end without looking at the steps."""
        for _ in self:
            pass
        return self

    def _account(self, step: Step) -> None:
        self.ret += step.reward
        self.length += 1
        for name, value in step.outcome.terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value
        if self.frames is not None:
            self.frames.add(step)
        self.last = step
