"""One task's scripted expert through the kit's safety layer, for the expert benchmarks (``bench.metaworld``,
``bench.robosuite_experts``)."""

from __future__ import annotations

import contextlib
import io


def run_expert(task: str, seeds: int, noise: float = 0.0) -> tuple[int, int, dict[str, int]]:
    """(successes, steps, guard counts) of ``task``'s expert (any name ``robot tasks`` lists) with ``noise`` on seeds
    0..seeds-1, through ``hardware.registry.make_sim`` (the task's own safety config) and the episode engine."""
    from hardware.registry import make_sim
    from workflow.episode import Act, Episode

    robot, sim_task = make_sim(task)
    expert = sim_task.scene.expert(noise=noise, seed=0)

    class Actor:
        def begin(self, seed, observation):
            expert.reset()

        def act(self, t, observation):
            return Act(expert.act(observation))

    wins = steps = 0
    with contextlib.redirect_stderr(io.StringIO()), robot:  # the guard warnings: the table counts them
        for seed in range(seeds):
            episode = Episode(robot, sim_task, Actor(), seed=seed, keep_frames=False).run()
            wins, steps = wins + int(episode.success), steps + episode.length
    robot.close()
    return wins, steps, {k: v for k, v in robot.counters.as_dict().items() if v}
