"""Evaluate a saved policy in sim: the job behind `robot eval`."""

from __future__ import annotations

from pathlib import Path

from robot.store import ZarrEpisodeStore
from workflow.envs import make_sim_for
from workflow.policy import DiffusionController
from workflow.rollout import EvalReport, episode_features, evaluate


def evaluate_policy(
    policy: str | Path,
    task: str,
    *,
    episodes: int,
    seed: int = 1000,
    sampler: str = "ddim",
    device: str = "cpu",
    save: str | Path | None = None,
    show_progress: bool = True,
) -> EvalReport:
    controller = DiffusionController.load(policy, sampler=sampler, device=device)
    robot, sim_task = make_sim_for(task, controller.input_features)
    controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    with robot:
        store = ZarrEpisodeStore.open_or_create(save, episode_features(robot)) if save else None
        try:
            return evaluate(robot, sim_task, controller, episodes=episodes, seed=seed, store=store, source="offline-rollout", show_progress=show_progress)
        finally:
            if store is not None:
                store.close()
