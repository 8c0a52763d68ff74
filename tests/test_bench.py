"""The benchmark entry point: suites are found, bad names are refused, a pipeline run's table is printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__ as bench
from robot.config import to_dict
from workflow.pipeline import PipelineConfig, StageResult


def test_pipeline_suite_prints_the_stage_table_of_a_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "pipeline.json").write_text(json.dumps(to_dict(PipelineConfig(out=str(tmp_path)))))
    for stage, success in (("imitation", 0.4), ("offline", 0.5)):
        (tmp_path / f"{stage}.result.json").write_text(json.dumps(to_dict(StageResult(stage, "p", success, 1.0, 10, 2.0))))
    bench.main(["--only", "pipeline", "--pipeline", str(tmp_path)])
    out = capsys.readouterr().out
    assert "imitation" in out and "40.0%" in out and "50.0%" in out


def test_missing_pipeline_run_says_how_to_make_one(tmp_path: Path, capsys) -> None:
    bench.main(["--only", "pipeline", "--pipeline", str(tmp_path / "none")])
    assert "run `robot pipeline --out" in capsys.readouterr().out


def test_unknown_suite_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "gpu"])
    assert "unknown suite(s) gpu" in capsys.readouterr().err


def test_every_suite_module_has_a_main_taking_argv() -> None:
    import importlib
    import inspect

    for module, _ in bench.SUITES.values():
        assert "argv" in inspect.signature(importlib.import_module(module).main).parameters


# ---------------------------------------------------------------- bench.recipe


def test_recipe_suite_is_listed_and_bad_settings_are_refused(capsys) -> None:
    from bench.recipe import SUITE, Setting, main

    main(["--list"])
    out = capsys.readouterr().out
    assert len({s.name for s in SUITE}) == len(SUITE) >= 4
    assert all(s.name in out for s in SUITE) and "hesitant" in out and "biased" in out and "online iterations" in out
    assert next(s for s in SUITE if s.name == "lift-biased").pipeline_config("").spend.online_iterations == 120
    long_mixed = next(s for s in SUITE if s.name == "push-mixed-long").pipeline_config("")
    assert (long_mixed.spend.online_iterations, long_mixed.online_select_every, long_mixed.demo_style) == (120, 10, "mixed")
    with pytest.raises(ValueError, match="names a directory"):
        Setting("push/hesitant", "push", demos=5)
    with pytest.raises(ValueError, match="unknown task 'pusher'"):
        Setting("p", "pusher", demos=5)
    with pytest.raises(ValueError, match="unknown expert style 'lazy'"):
        Setting("p", "push", demos=5, demo_style="lazy")
    with pytest.raises(ValueError, match="unknown budget"):
        Setting("p", "push", demos=5, budget="huge")


def test_recipe_refuses_unknown_settings_and_seeds_the_pipeline_trains_on(tmp_path: Path, capsys) -> None:
    from bench.recipe import main

    with pytest.raises(SystemExit):
        main(["--setting", "nope", "--out", str(tmp_path)])
    assert "unknown setting(s) nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # seeds 0-199: the demonstrations'
        main(["--setting", "push-hesitant", "--first-seed", "0", "--out", str(tmp_path)])
    assert "overlap the pipeline's demonstrations (0-99)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "refused before anything ran"


def test_every_setting_trains_apart_from_the_default_evaluation_seeds_at_its_own_budget(tmp_path: Path) -> None:
    """lift-biased's 120 online iterations of 32 episodes once drew rollouts on seeds 0-3839, the benchmark's 2000-2199
    among them: the default command refused its own setting."""
    from bench.recipe import SUITE, check_seeds_apart, pipeline_seeds

    for setting in SUITE:
        config = setting.pipeline_config(tmp_path / setting.name)
        check_seeds_apart(config, range(2000, 2200))
        assert len(pipeline_seeds(config)["online rollouts"]) == config.spend.online_iterations * config.spend.online_episodes


def test_recipe_rows_pair_each_stage_with_the_one_it_started_from() -> None:
    from bench.recipe import StageEpisodes, stage_rows

    seeds = tuple(range(2000, 2010))
    outcomes = {"imitation": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], "offline": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "online": [0, 1, 1, 1, 1, 1, 1, 1, 1, 1], "one-step": [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]}  # fmt: skip
    episodes = {stage: StageEpisodes(stage, "p", "d", None, seeds, tuple(map(bool, s)), tuple(20 + i if ok else 100 for i, ok in enumerate(s)),
                                     (0.0,) * 10, 0.5) for stage, s in outcomes.items()}  # fmt: skip
    results = [StageResult(stage, "p", 0.0, 0.0, 1, 2.0, 50.0 if stage != "imitation" else None, 5.0 if stage != "imitation" else None) for stage in outcomes]
    rows = {r["stage"]: r for r in stage_rows(results, episodes, {"imitation": 300, "offline": 40, "online": 900, "one-step": 0})}
    assert rows["imitation"]["compared_with"] is None and rows["imitation"]["p"] is None
    assert rows["imitation"]["ci95"] == pytest.approx((0.0179, 0.4042), abs=1e-4)  # Wilson, 1 of 10
    assert (rows["offline"]["wins"], rows["offline"]["losses"], rows["offline"]["p"]) == (0, 0, 1.0)
    assert (rows["online"]["wins"], rows["online"]["losses"]) == (9, 1) and rows["online"]["p"] == pytest.approx(0.02148, abs=1e-5)
    assert rows["one-step"]["compared_with"] == "online" and (rows["one-step"]["wins"], rows["one-step"]["losses"]) == (1, 2)
    assert rows["online"]["mean_steps_to_success"] == pytest.approx(25.0)  # episodes 1-9 succeed at 21..29
    assert rows["imitation"]["mean_steps_to_success"] == 20.0 and rows["online"]["env_steps"] == 900
    assert (rows["online"]["ms_per_chunk"], rows["one-step"]["ms_per_chunk"], rows["offline"]["ms_per_chunk"]) == (50.0, 5.0, None)
    shifted = {**episodes, "offline": StageEpisodes("offline", "p", "d", None, seeds[1:] + (3000,), (False,) * 10, (100,) * 10, (0.0,) * 10, 0.0)}
    with pytest.raises(ValueError, match="offline and imitation were evaluated on different seeds"):
        stage_rows(results[:2], shifted, {"imitation": 300, "offline": 40})


@pytest.mark.slow
def test_recipe_runs_the_pipeline_and_pairs_every_stage_on_the_same_seeds(tmp_path: Path, capsys) -> None:
    """The smoke budget end to end on one push setting (about 2 minutes on a busy 2-core machine), then a rerun from the caches."""
    from bench.recipe import StageEpisodes, main
    from robot.store import ZarrEpisodeStore
    from workflow.evaluate import evaluate_policy

    argv = ["--setting", "push-hesitant", "--budget", "smoke", "--episodes", "4", "--out", str(tmp_path)]
    main(argv)
    first = capsys.readouterr()
    run = tmp_path / "push-hesitant"
    recipe = first.out[first.out.index("recipe push-hesitant:"):]  # after what the stages print themselves
    table = recipe.strip().splitlines()
    assert table[0].startswith("recipe push-hesitant: task push, budget smoke, 100 demonstrations (hesitant operator), sampler ddpm-mean, "
                               "4 paired episodes (seeds 2000-2003)")  # fmt: skip
    assert table[1].split()[:4] == ["stage", "success", "95%", "CI"]
    assert [line.split()[0] for line in table[3:7]] == ["imitation", "offline", "online", "one-step"]
    assert [line.split()[3] for line in table[4:7]] == ["imitation", "offline", "online"]  # each row's `vs`
    summary = json.loads((run / "recipe.json").read_text())
    rows = {r["stage"]: r for r in summary["stages"]}
    with ZarrEpisodeStore.open(run / "demos.zarr") as demos:
        assert rows["imitation"]["env_steps"] == demos.num_steps > 0 and demos.num_episodes == 100
    with ZarrEpisodeStore.open(run / "online" / "rollouts.zarr") as rollouts:
        assert rows["online"]["env_steps"] == rollouts.num_steps > 0
    assert rows["offline"]["env_steps"] > 0 and rows["one-step"]["env_steps"] == 0
    assert rows["one-step"]["ms_per_chunk"] is not None and rows["online"]["ms_per_chunk"] is not None
    for stage in ("imitation", "offline", "online", "one-step"):
        episodes = StageEpisodes.read(run / f"{stage}.paired.json")
        assert episodes.seeds == (2000, 2001, 2002, 2003) and len(episodes.successes) == len(episodes.lengths) == len(episodes.returns) == 4
        assert all(1 <= n <= 100 for n in episodes.lengths) and episodes.sampler == ("consistency" if stage == "one-step" else None)
        assert rows[stage]["successes"] == sum(episodes.successes) and f"{rows[stage]['success']:.1%}" in table[3 + list(rows).index(stage)]
    one = evaluate_policy(rows["online"]["policy"], "push", episodes=1, seed=2001, show_progress=False)  # the cache holds what evaluation gives
    assert one.lengths[0] == StageEpisodes.read(run / "online.paired.json").lengths[1]
    main(argv)  # a rerun: every stage and every evaluation read back
    again = capsys.readouterr()
    assert again.out.endswith(recipe) and again.err.count("episodes read back") == 4 and "running" not in again.err


def test_store_bench_times_commits_at_each_size(tmp_path: Path, capsys) -> None:
    from bench.store import main

    main(["--commit-at", "3", "12", "--path", str(tmp_path / "s.zarr")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "Episode store: the cost of one commit as the store grows"
    rows = [line.split() for line in lines[3:]]
    assert [r[0] for r in rows] == ["3", "12"] and all(float(r[1]) > 0 for r in rows)
    assert rows[0][2] == rows[1][2] or abs(int(rows[0][2].replace(",", "")) - int(rows[1][2].replace(",", ""))) < 16
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------- bench.robot_round


TINY_ROUND = ["--rollouts", "2", "--critic-steps", "5", "--ppo-updates", "2", "--gate-every", "1", "--ppo-batch", "8", "--chains-per-state", "2",
              "--verify-episodes", "2", "--dynamics-epochs", "2", "--episodes", "3", "--max-steps", "25", "--takeover-rate", "1.0",
              "--drift-after", "5", "--takeover-steps", "5"]  # fmt: skip


def test_robot_round_runs_a_round_on_a_stand_in_evaluates_it_on_sim_seeds_and_pairs_it_with_sim(tmp_path: Path, capsys) -> None:
    from bench.robot_round import main
    from tests.test_imitation import tiny_push_policy

    policy = tiny_push_policy(tmp_path)
    common = ["--policy", str(policy), "--data", str(tmp_path / "push.zarr"), "--task", "push", *TINY_ROUND]
    main([*common, "--robot", "xarm:standin:push", "--out", str(tmp_path / "arm")])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "arm" / "robot_round.json").read_text())
    assert "xarm:standin:push" in out and "result on sim seeds" in out and summary["table"] == out.strip()
    assert summary["round"]["robot"] == "xarm:standin:push" and summary["round"]["operator"]["takeover_rate"] == 1.0
    assert summary["rollouts_taken_over"] >= 1 and summary["operator_steps"] >= 5 and summary["robot_minutes"] > 0  # the operator drove
    paired = json.loads((tmp_path / "arm" / "offline.paired.json").read_text())
    assert paired["seeds"] == [2000, 2001, 2002] and len(paired["successes"]) == len(paired["lengths"]) == 3  # bench.recipe's format
    assert json.loads((tmp_path / "arm" / "start.paired.json").read_text())["seeds"] == paired["seeds"]

    main([*common, "--robot", "sim:push", "--out", str(tmp_path / "sim"), "--against", str(tmp_path / "arm" / "offline.paired.json")])
    out = capsys.readouterr().out
    assert "sim:push against" in out and " won, " in out and "p = " in out
    assert json.loads((tmp_path / "sim" / "robot_round.json").read_text())["against"]["policy"] == paired["policy"]


def test_robot_round_refuses_evaluation_seeds_the_round_or_the_demonstrations_use(tmp_path: Path, capsys) -> None:
    from bench.robot_round import main
    from tests.test_imitation import tiny_push_policy

    policy = tiny_push_policy(tmp_path, steps=2)
    common = ["--policy", str(policy), "--data", str(tmp_path / "push.zarr"), "--task", "push", "--robot", "sim:push", "--out", str(tmp_path / "o")]
    for first, clash in (("0", "demonstrations (seeds 0, 1, 2, 3)"), ("10010", "rollouts (10000-10029)"), ("15000", "verification (15000-15199)")):
        with pytest.raises(SystemExit):
            main([*common, "--first-seed", first])
        assert clash in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "refused before anything ran"


def test_verification_power_keeps_real_gains_more_often_than_ties_and_losses(capsys) -> None:
    import numpy as np

    from bench.verification_power import main, trial

    rng = np.random.default_rng(0)
    kept = {name: np.mean([trial(rng, win, loss, 50, 200, 0.1)[0] for _ in range(300)]) for name, (win, loss) in
            {"gain": (0.22, 0.105), "tie": (0.16, 0.16), "loss": (0.13, 0.18)}.items()}  # fmt: skip
    assert kept["gain"] > 0.7 and kept["tie"] < 0.25 and kept["loss"] < 0.08, kept
    faster = {margin: np.mean([trial(rng, 0.16, 0.16, 50, 200, 0.1, 0.75, margin)[0] for _ in range(300)]) for margin in (None, 0.01)}
    slower_loss = np.mean([trial(rng, 0.10, 0.20, 50, 200, 0.1, 0.75, 0.01)[0] for _ in range(300)])
    assert faster[0.01] > faster[None] + 0.2 and slower_loss < 0.05, (faster, slower_loss)  # a faster tie kept; a faster 10-point loss not
    main(["--trials", "20"])
    out = capsys.readouterr().out
    assert "the same, or faster and at most 1 point behind (default)" in out and "20 simulated verifications per row" in out


def test_lanes_bench_runs_the_same_seeds_at_each_lane_count(capsys) -> None:
    from bench.lanes import main

    main(["--episodes", "3", "--lanes", "1,3", "--task", "push"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "3"] and rows[0][1:4] == rows[1][1:4], out  # episodes, env steps and success agree
    assert rows[0][-1] == "1.0x"


# ---------------------------------------------------------------- bench.latency, bench.training
def test_latency_and_training_benches_time_both_head_students(capsys) -> None:
    """Both one-step heads (the denoiser's copy and the MLP) are timed against DDIM, and the distillation rows
    split the teacher's labelling from each student's regression step."""
    from bench.latency import main as latency
    from bench.training import main as training

    latency(["--repeats", "2"])
    out = capsys.readouterr().out
    assert "encode + 1 step (copy)" in out and "encode + 1 step (mlp)" in out and out.count("chunk ") == 3
    training(["--seconds", "0.01"])
    out = capsys.readouterr().out
    assert all(row in out for row in ("distillation: teacher's targets", "distillation: mlp student", "distillation: copy student"))
