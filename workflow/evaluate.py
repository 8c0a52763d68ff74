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
    view: bool = False,
    rrd: str | Path | None = None,
) -> EvalReport:
    """Evaluate in sim; ``view`` streams every step and the denoising chain of each executed
    chunk to a Rerun viewer, ``rrd`` writes the same to a file."""
    controller = DiffusionController.load(policy, sampler=sampler, device=device)
    robot, sim_task = make_sim_for(task, controller.input_features)
    controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    on_step = LiveEvalView(controller, robot, sim_task.fps, spawn=view, save=rrd) if view or rrd else None
    with robot:
        store = ZarrEpisodeStore.open_or_create(save, episode_features(robot)) if save else None
        try:
            return evaluate(robot, sim_task, controller, episodes=episodes, seed=seed, store=store, source="offline-rollout",
                            show_progress=show_progress, on_step=on_step)  # fmt: skip
        finally:
            if store is not None:
                store.close()
            if on_step is not None:
                on_step.close()


class LiveEvalView:
    """``on_step`` callback logging each step, chunk boundaries and the executed chunk's denoising chain."""

    def __init__(self, controller: DiffusionController, robot, fps: float, *, spawn: bool, save: str | Path | None):
        from robot.rerun_log import LiveLogger, episode_blueprint, open_recording

        features = episode_features(robot)
        self.recording = open_recording("robot-eval", spawn=spawn, save=Path(save) if save else None,
                                        blueprint=episode_blueprint(features, policy_internals=True))  # fmt: skip
        self.logger = LiveLogger(self.recording, features, fps=fps)
        self.controller = controller
        controller.keep_chain = True
        self.step = 0

    def __call__(self, t: int, observation, applied, reward: float) -> None:
        if t == 0:
            self.logger.log_event(self.step, "episode starts")
        chunk_start = self.controller.last_chunk_started
        chain = self.controller.last_chain if chunk_start and self.controller.sampler == "ddim" else None
        self.logger.log_policy_internals(self.step, chain, chunk_start=chunk_start)
        self.logger.log_step(self.step, observation, applied, reward)
        self.step += 1

    def close(self) -> None:
        self.recording.flush()
        self.recording.disconnect()
