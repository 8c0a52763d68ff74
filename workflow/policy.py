"""A trained diffusion policy as a closed-loop controller (the ``robot.protocols.Policy`` contract).

:class:`DiffusionController` owns the network, the normaliser that came with it and
two queues: the last ``To`` observations and the actions still to execute from the
current chunk (receding horizon: ``Ta`` actions per chunk, then re-plan). It is
what ``eval`` and ``deploy`` run, and it loads only from a kit checkpoint, so the
normaliser and features always travel with the weights.
"""

from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from policies.consistency import COPY, ConsistencyHead, StudentConfig
from policies.diffusion import MEAN_ETA, Chain, ChainSampler, DiffusionPolicy, DiffusionPolicyConfig
from robot.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_module_state, save_checkpoint
from robot.config import from_dict as config_from_dict, to_dict as config_to_dict
from robot.normalize import Normalizer
from robot.protocols import PolicyStep
from robot.types import ACTION, Feature, check_features
from workflow.planner import ChunkPlan

KIND = "diffusion-policy"
SAMPLERS = (*MEAN_ETA, "ddpm", "consistency")


@dataclass(frozen=True)
class ChainDecision:
    """One chunk decision as online RL learns from it: the frozen encoder's features and the chain sampled there."""

    cond: torch.Tensor
    """(1, Dc) features of the observation history the chunk was planned from."""
    chain: Chain
    """The stochastic denoising chain (batch 1) with each step's log-prob."""


class DiffusionController:
    """``select_action(observation) -> PolicyStep`` for one robot, one step at a time.

    ``sampler="ddim"`` runs the K-step deterministic DDIM chain; ``"ddpm-mean"`` the K-step chain through
    the eta-1 steps' means, also deterministic; ``"ddpm"`` the K-step stochastic chain itself, each step's
    std clipped to the policy's ``[sigma_min, sigma_max]`` (its noise keeps a pusher moving where a
    deterministic chain can stand still); ``"consistency"`` the one-step head (when the checkpoint has one);
    None, the policy's own deterministic sampler (``DiffusionPolicyConfig.deterministic_sampler``).
    ``deterministic=False`` samples the stochastic chain (``chain_sampler``, the policy's own by default) with
    any K-step sampler (data collection with exploration); ``learning=True`` with it hands each chunk's chain
    and log-probs to the caller (``PolicyStep.decision``, for online RL). Which sampler deploys a policy best
    differs from policy to policy (docs/RESULTS.md): compare them on the same seeds with
    ``robot eval --sampler ddim,ddpm-mean,ddpm``.
    """

    def __init__(
        self,
        model: DiffusionPolicy,
        normalizer: Normalizer,
        *,
        consistency: ConsistencyHead | None = None,
        sampler: str | None = None,
        deterministic: bool = True,
        seed: int = 0,
        device: str = "cpu",
        meta: Mapping[str, Any] | None = None,
        learning: bool = False,
        chain_sampler: ChainSampler | None = None,
    ):
        sampler = model.config.deterministic_sampler if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "consistency" and consistency is None:
            raise ValueError("this policy has no one-step consistency head; distil one first (`robot train distill`) or use --sampler ddim")
        self.model = model.to(device).eval()
        self.consistency = consistency.to(device).eval() if consistency is not None else None
        self.normalizer = normalizer
        self.sampler = sampler
        self.deterministic = deterministic and sampler != "ddpm"
        self.device = torch.device(device)
        self.meta = dict(meta or {})
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        cfg = model.config
        self.n_obs_steps, self.n_action_steps = cfg.n_obs_steps, cfg.n_action_steps
        self._obs: collections.deque[dict[str, np.ndarray]] = collections.deque(maxlen=cfg.n_obs_steps)
        self._actions: collections.deque[np.ndarray] = collections.deque()
        self.keep_chain = False
        """Set to have chunk starts' steps carry their denoising chain (x_K .. x_0, normalised; DDIM-family samplers)."""
        self.learning = learning and not self.deterministic
        """Stochastic chains with log-probs, handed out as each chunk start's ``PolicyStep.decision`` (online RL)."""
        self.chain_sampler = chain_sampler or model.chain_sampler()
        """How the stochastic chain is drawn (RL floors its std, ``DiffusionPolicy.chain_sampler``)."""
        self.lane: Any = None
        """Set by :meth:`for_lane`: what plans this copy's chunks together with its sibling lanes'."""

    # ------------------------------------------------------------- contract
    @property
    def input_features(self) -> dict[str, Feature]:
        return {k: f for k, f in self.model.input_features.items() if k.startswith("observation.")}

    @property
    def action_features(self) -> dict[str, Feature]:
        return dict(self.model.action_features)

    def reset(self) -> None:
        self._obs.clear()
        self._actions.clear()

    def seed_episode(self, episode_seed: int) -> None:
        """Draw this episode's sampling noise from (controller seed, episode seed) alone, so an
        episode's actions do not depend on which episodes ran before it or in which process."""
        self.generator.manual_seed(episode_noise_seed(self.seed, episode_seed))

    def select_action(self, observation: Mapping[str, np.ndarray]) -> PolicyStep:
        """This step's action: the next one queued, or the first of a chunk planned now from the history."""
        self.push_observation(observation)
        if self._actions:
            return PolicyStep(self._actions.popleft())
        start = time.perf_counter()
        planned = self.plan(self.history())
        inference_s = time.perf_counter() - start
        self._actions.extend(planned.actions[: self.n_action_steps])
        return PolicyStep(self._actions.popleft(), chunk_started=True, inference_s=inference_s, chain=planned.chain, decision=planned.decision)

    # -------------------------------------------------------------- helpers
    def push_observation(self, observation: Mapping[str, np.ndarray]) -> None:
        """Add one frame to the history (the first frame of an episode fills all ``To`` slots)."""
        frame = {k: np.asarray(observation[k]) for k in self.input_features}
        if not self._obs:
            self._obs.extend([frame] * self.n_obs_steps)
        else:
            self._obs.append(frame)

    def history(self) -> list[dict[str, np.ndarray]]:
        """A copy of the last ``To`` frames (what a plan made now would see)."""
        return list(self._obs)

    def observation_batch(self, frames: list[dict[str, np.ndarray]] | None = None) -> dict[str, torch.Tensor]:
        """The observation history (or ``frames``) as a normalised batch of one ``{key: (1, To, ...)}``."""
        frames = list(self._obs) if frames is None else frames
        return self.normalizer.normalize_batch({key: torch.as_tensor(np.stack([f[key] for f in frames]))[None].to(self.device) for key in self.input_features})

    @torch.no_grad()
    def condition(self, frames: list[dict[str, np.ndarray]] | None = None) -> torch.Tensor:
        """Frozen-encoder features ``(1, Dc)`` of the current history (or of ``frames``)."""
        return self.model.encode(self.observation_batch(frames))

    @torch.no_grad()
    def peek_condition(self, observation: Mapping[str, np.ndarray]) -> torch.Tensor:
        """Features ``(1, Dc)`` the history would have with ``observation`` added, without adding it."""
        saved = collections.deque(self._obs, maxlen=self._obs.maxlen)
        self.push_observation(observation)
        cond = self.condition()
        self._obs = saved
        return cond

    def unnormalize_actions(self, normalized: torch.Tensor) -> np.ndarray:
        """``(T, Da)`` normalised actions -> robot actions (float32 numpy)."""
        return self.normalizer.unnormalize(ACTION, normalized).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def predict_chunk(self) -> np.ndarray:
        """Unnormalised actions ``(horizon, Da)`` for the current observation history."""
        return self.plan(self.history()).actions

    @torch.no_grad()
    def plan(self, frames: list[dict[str, np.ndarray]]) -> ChunkPlan:
        """Actions ``(horizon, Da)`` for the history ``frames``; the denoising chain ``(K+1, horizon, Da)``
        (normalised) when ``keep_chain`` is set and the sampler is DDIM; while ``learning``, the stochastic
        chain with each denoising step's log-prob (``ChunkPlan.decision``, for online RL). A lane's copy
        (:meth:`for_lane`) plans in one batch with its sibling lanes.

        Touches no queue, so a deployment's inference thread can call it while the loop runs.
        """
        if self.lane is not None:
            return self.lane.plan(self, frames)
        return plan_together([self], [frames])[0]

    def for_lane(self, lane: Any) -> "DiffusionController":
        """A copy for one of several sim episodes run side by side (``workflow.lanes``): the same networks,
        normaliser and samplers; its own history, action queue and noise generator; its plans go to ``lane``."""
        twin = DiffusionController(self.model, self.normalizer, consistency=self.consistency, sampler=self.sampler, deterministic=self.deterministic,
                                   seed=self.seed, device=str(self.device), meta=self.meta, learning=self.learning, chain_sampler=self.chain_sampler)  # fmt: skip
        twin.lane = lane
        return twin

    def check_robot(self, robot_name: str, observation_features: Mapping[str, Feature], action_features: Mapping[str, Feature]) -> None:
        """Raise a ValueError naming every key this policy needs that the robot lacks."""
        check_features(self.input_features, observation_features, who_needs="this policy", who_provides=f"robot {robot_name}")
        check_features(self.action_features, action_features, who_needs="this policy's actions", who_provides=f"robot {robot_name}")

    # ---------------------------------------------------------- persistence
    @staticmethod
    def load(path: str | Path, *, sampler: str | None = None, device: str = "cpu", deterministic: bool = True, seed: int = 0,
             min_std: float | None = None) -> "DiffusionController":
        """The policy at ``path``; ``min_std`` floors its stochastic chain's std (exploring rollouts)."""
        ckpt = load_checkpoint(policy_dir(path), kind=KIND)
        model, head = build_from_checkpoint(ckpt, device=device)
        if ckpt.normalizer is None:
            raise CheckpointError(f"{path}: the checkpoint has no normaliser statistics")
        return DiffusionController(model, ckpt.normalizer, consistency=head, sampler=sampler, deterministic=deterministic, seed=seed, device=device, meta=ckpt.extra,
                                   chain_sampler=model.chain_sampler(min_std) if min_std is not None else None)  # fmt: skip


def episode_noise_seed(seed: int, episode_seed: int) -> int:
    """One generator seed per (run seed, episode seed) pair."""
    return (seed * 1_000_003 + episode_seed) % (2**63)


@torch.no_grad()
def plan_together(controllers: Sequence[DiffusionController], histories: Sequence[list[dict[str, np.ndarray]]]) -> list[ChunkPlan]:
    """Each controller's plan from its history, in one batched pass of the networks they share (copies made by
    :meth:`DiffusionController.for_lane`). Each row's noise comes from its own controller's generator, drawn as it
    would be planned alone, so a row differs from its lone plan by float rounding only."""
    lead, rows = controllers[0], range(len(controllers))
    batches = [c.observation_batch(f) for c, f in zip(controllers, histories)]
    cond = lead.model.encode({k: torch.cat([b[k] for b in batches]) for k in batches[0]})
    generator = lead.generator if len(controllers) == 1 else [c.generator for c in controllers]
    if lead.learning:
        chains = lead.model.sample_chain(cond, generator=generator, sampler=lead.chain_sampler)
        return [ChunkPlan(lead.unnormalize_actions(chains.actions[i]), decision=ChainDecision(cond[i : i + 1].clone(), _own_row(chains, i))) for i in rows]
    trajectory: list[torch.Tensor] | None = None
    if lead.sampler == "consistency":
        normalized = lead.consistency.sample(cond, generator=generator)
    else:
        trajectory = [] if lead.keep_chain else None
        normalized = lead.model.sample(cond, deterministic=lead.deterministic, generator=generator, trajectory=trajectory,
                                       mean_eta=MEAN_ETA.get(lead.sampler), sampler=lead.chain_sampler)  # fmt: skip
    chains = torch.stack(trajectory, dim=1).cpu().numpy() if trajectory else None  # (B, K+1, T, Da)
    return [ChunkPlan(lead.unnormalize_actions(normalized[i]), None if chains is None else chains[i]) for i in rows]


def _own_row(chains: Chain, i: int) -> Chain:
    """Row ``i`` with storage of its own (a saved decision must not carry its batch's other rows)."""
    return Chain(chains.samples[i : i + 1].clone(), chains.log_probs[i : i + 1].clone(), chains.timesteps, chains.sampler)


def build_from_checkpoint(ckpt: Checkpoint, device: str = "cpu") -> tuple[DiffusionPolicy, ConsistencyHead | None]:
    """Rebuild the networks a policy checkpoint describes and load their weights (a CheckpointError naming the
    checkpoint when its config, features or weights do not describe a policy)."""
    where = ckpt.source or "checkpoint"
    try:
        saved = ckpt.config["policy"]
        if not isinstance(saved, Mapping):
            raise ValueError(f"policy: expected a JSON object, got {type(saved).__name__}")
        config = DiffusionPolicyConfig.from_dict({"deterministic_sampler": "ddim", **saved})  # saved before the option: DDIM, its sampler then
        model = DiffusionPolicy(config, ckpt.features["input"], ckpt.features["action"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}: its config and features do not describe a policy ({f'no {e.args[0]!r} entry' if isinstance(e, KeyError) else e})") from None
    load_module_state(model, ckpt.modules.get("policy", {}), what=f"{where}: policy")
    head = None
    if "consistency" in ckpt.modules:
        try:  # heads saved before the student was a choice are copies of the denoiser
            student = config_from_dict(StudentConfig, ckpt.config["consistency"], path="consistency") if "consistency" in ckpt.config else COPY
        except ValueError as e:
            raise CheckpointError(f"{where}: its consistency head's config is not a head's ({e})") from None
        head = ConsistencyHead(model.config, model.action_dim, model.cond_dim, student)
        load_module_state(head, head.upgrade_state(ckpt.modules["consistency"]), what=f"{where}: consistency head")
    return model.to(device), head


def save_policy(
    path: str | Path,
    model: DiffusionPolicy,
    normalizer: Normalizer,
    *,
    consistency: ConsistencyHead | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-contained policy checkpoint (weights, normaliser, config, features)."""
    modules, config = {"policy": model.state_dict()}, {"policy": model.config.to_dict()}
    if consistency is not None:
        modules["consistency"], config["consistency"] = consistency.state_dict(), config_to_dict(consistency.student)
    return save_checkpoint(
        path,
        Checkpoint(
            kind=KIND,
            config=config,
            modules=modules,
            normalizer=normalizer,
            features={"input": model.input_features, "action": model.action_features},
            extra=dict(extra or {}),
        ),
    )


def policy_dir(path: str | Path) -> Path:
    """Accept a run directory (``runs/x``: its ``policy/``) or a checkpoint directory."""
    path = Path(path)
    if (path / "policy" / "checkpoint.json").is_file():
        return path / "policy"
    return path


def policy_task(policy: str | Path, task: str | None = None, *, meta: Mapping[str, Any] | None = None, warn: bool = True) -> str:
    """The simulated task a command runs ``policy`` on: ``task`` (``--task``) when given, else the one its checkpoint
    names. ``meta`` is the checkpoint's ``extra`` when already loaded. A given task that differs from the
    checkpoint's is kept, with one warning line on stderr (unless ``warn`` is off)."""
    from sim.registry import check_task

    if meta is None:
        meta = load_checkpoint(policy_dir(policy), kind=KIND).extra
    trained = meta.get("task")
    trained = trained if isinstance(trained, str) and trained else None
    if task is not None:
        if warn and trained is not None and trained != task:
            print(f"warning: {policy} was trained on task {trained}; running it on {task} as --task says", file=sys.stderr)
        return task
    if trained is None:
        raise ValueError(f"{policy}: the checkpoint names no task; pass --task")
    try:
        return check_task(trained)
    except ValueError as e:
        raise ValueError(f"{policy} was trained on task {trained!r}, which does not resolve here ({e}); install or register it, or pass --task") from None
