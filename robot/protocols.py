"""The four contracts of the kit, one small Protocol each.

- :class:`Robot`: one contract for the MuJoCo backend and every real arm.
- :class:`Task`: what a robot is asked to do: reward terms and success.
- :class:`Policy`: observations in, a :class:`PolicyStep` out (the action and how it was made), with its own action queue.
- :class:`EpisodeStore`: where episodes live (``robot.store.ZarrEpisodeStore``).

Observations are ``dict[str, np.ndarray]`` keyed as in :mod:`robot.types`, plus
``"timestamp"``: seconds on a monotonic clock (``time.monotonic()``) when the
observation was taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np

from robot.types import EpisodeMeta, Feature, SafetyCounters

Observation = dict[str, np.ndarray]


@runtime_checkable
class Robot(Protocol):
    """An arm (simulated or real) behind the safety layer.

    ``observation_features`` and ``action_features`` are readable before
    :meth:`connect`. :meth:`send_action` returns the action really applied
    (after clamping by the safety layer), never the one asked for. The safety
    layer's controls are part of the contract: :meth:`hold`, the latched e-stop
    and the per-guard :attr:`counters` (``hardware.safety.SafeRobot`` provides
    them for every backend, ``hardware.remote.RemoteRobot`` over the network).
    """

    name: str

    @property
    def observation_features(self) -> Mapping[str, Feature]: ...

    @property
    def action_features(self) -> Mapping[str, Feature]: ...

    @property
    def is_connected(self) -> bool: ...

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def reset(self, seed: int | None = None) -> Observation:
        """Sim: a new initial state drawn from ``seed``. Real: move home, wait for the operator."""
        ...

    def get_observation(self) -> Observation: ...

    def send_action(self, action: np.ndarray) -> np.ndarray: ...

    def hold(self) -> np.ndarray:
        """Keep the current pose for one control period; returns the hold action (what a step records)."""
        ...

    def estop(self) -> None:
        """Latch the e-stop: hold now, and every later command holds until :meth:`clear_estop`."""
        ...

    def clear_estop(self) -> None: ...

    @property
    def is_estopped(self) -> bool: ...

    @property
    def counters(self) -> SafetyCounters:
        """How often each guard of the safety layer fired."""
        ...

    def __enter__(self) -> "Robot": ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class StepOutcome:
    """What a task says about the step that just happened.

    ``terms`` are the named reward terms *already multiplied by their scales*;
    ``reward`` is their sum.
    """

    terms: Mapping[str, float]
    success: bool

    @property
    def reward(self) -> float:
        return float(sum(self.terms.values()))


@runtime_checkable
class Task(Protocol):
    """What the robot is asked to do. Sim tasks read the physics; real tasks ask the operator."""

    name: str
    max_steps: int
    fps: float

    @property
    def reward_scales(self) -> Mapping[str, float]: ...

    def evaluate(self, observation: Observation, applied_action: np.ndarray) -> StepOutcome:
        """Reward terms and success after ``applied_action`` led to ``observation``."""
        ...


@dataclass(frozen=True)
class PolicyStep:
    """What a policy did at one control step: the action, and how it came about.

    A chunking policy plans at some steps and pops queued actions at the others; ``chunk_started``
    marks the steps that planned, and only those carry ``inference_s`` and a chain.
    """

    action: np.ndarray
    chunk_started: bool = False
    """This step's action is the first of a chunk planned at this step."""
    inference_s: float = 0.0
    """Seconds the plan took (chunk starts only)."""
    chain: np.ndarray | None = None
    """The denoising chain behind the chunk, normalised ``(K+1, horizon, Da)`` from noise to action, when the
    policy was asked to keep it (a viewer's request)."""
    decision: Any = None
    """What a learner needs of the chunk when the policy was asked for it (online RL: the condition and the
    stochastic chain with its log-probs, ``workflow.policy.ChainDecision``)."""

    @staticmethod
    def of(result: "PolicyStep | np.ndarray") -> "PolicyStep":
        """A policy's answer as a step: a policy that returns a bare action (a user's own) gets a plain step."""
        return result if isinstance(result, PolicyStep) else PolicyStep(np.asarray(result))


@runtime_checkable
class Policy(Protocol):
    """A closed-loop controller. Queues action chunks internally. ``select_action`` may also return a bare
    action array; the episode engine (``workflow.episode``) reads it as a plain :class:`PolicyStep`."""

    @property
    def input_features(self) -> Mapping[str, Feature]: ...

    @property
    def action_features(self) -> Mapping[str, Feature]: ...

    def reset(self) -> None: ...

    def select_action(self, observation: Observation) -> PolicyStep: ...


@runtime_checkable
class EpisodeSeeded(Protocol):
    """A policy whose sampling noise is seeded per episode (``run_episode`` calls it after ``reset``)."""

    def seed_episode(self, episode_seed: int) -> None: ...


@dataclass(frozen=True)
class Episode:
    """One stored episode: arrays with time as the first axis, and its metadata."""

    index: int
    data: Mapping[str, np.ndarray] = field(repr=False)
    meta: EpisodeMeta

    def __len__(self) -> int:
        return int(next(iter(self.data.values())).shape[0]) if self.data else 0


@runtime_checkable
class EpisodeStore(Protocol):
    """Episodes of equal keys, appended atomically."""

    @property
    def features(self) -> Mapping[str, Feature]: ...

    @property
    def num_episodes(self) -> int: ...

    @property
    def num_steps(self) -> int: ...

    def append_episode(self, frames: Mapping[str, np.ndarray], meta: EpisodeMeta) -> int: ...

    def episode(self, index: int, keys: tuple[str, ...] | None = None) -> Episode: ...

    def episodes(self) -> Iterator[Episode]: ...
