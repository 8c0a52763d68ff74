"""The `robot` command line as a user runs it."""

import subprocess
import sys

from robot.store import ZarrEpisodeStore
from tests.store_fixtures import FEATURES, make_episode, make_meta


def _robot(*args):
    return subprocess.run([sys.executable, "-m", "robot.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    out = _robot("--help")
    assert out.returncode == 0
    listed = {line.strip("│ ").split()[0] for line in out.stdout.splitlines() if line.startswith("│ ") and not line.strip("│ ").startswith("-")}
    assert {"record", "view", "train", "pipeline", "diagnose", "critic-ranking", "eval", "deploy", "serve", "convert", "info", "tasks"} <= listed, listed
    train = _robot("train", "--help")
    assert {line.strip("│ ").split()[0] for line in train.stdout.splitlines() if line.startswith("│ ") and not line.strip("│ ").startswith("-")} \
        >= {"imitation", "offline", "online", "distill"}, train.stdout


def test_the_command_trains_on_one_torch_thread_unless_told_otherwise():
    """torch's default of one thread per core made imitation slower on twice the CPU (session 26); OMP_NUM_THREADS wins."""
    import os

    code = ("import os, robot.cli as cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import torch\nprint(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    told = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, check=True)
    assert unset.stdout.split()[-2:] == ["1", "1"] and told.stdout.split()[-2:] == ["2", "2"], (unset.stdout, told.stdout)


def test_info_summarises_a_store(tmp_path):
    store = ZarrEpisodeStore.create(tmp_path / "demo.zarr", FEATURES)
    for i in range(3):
        store.append_episode(make_episode(i), make_meta(i))
    store.close()
    out = _robot("info", str(tmp_path / "demo.zarr"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    steps = sum(len(make_episode(i)["reward"]) for i in range(3))
    assert "episodes   3" in text and f"steps      {steps} " in text
    assert "success    66.7% (2/3)" in text
    assert "observation.images.front  uint8    24x32x3" in text
    assert "push (3)" in text and "demo (3)" in text


def test_info_on_a_non_store_is_one_clear_line(tmp_path):
    out = _robot("info", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not an episode store" in out.stderr and str(tmp_path) in out.stderr


def test_a_bad_training_setting_is_one_clear_line_and_writes_nothing(tmp_path):
    cases = {
        "distill": (["train", "distill", "--policy", "p", "--data", "d", "--out", str(tmp_path / "d"), "--target-reuse", "0"], "target_reuse must be >= 1"),
        "online": (["train", "online", "--policy", "p", "--out", str(tmp_path / "o"), "--distill-final-steps", "-1"], "distill_final_steps must be >= 0"),
        "imitation": (["train", "imitation", "--data", "d", "--out", str(tmp_path / "i"), "--sampler", "ddpm"], "deterministic_sampler must be one of"),
        "preset": (["train", "imitation", "--data", "d", "--out", str(tmp_path / "i"), "--preset", "chonk"], "unknown policy preset 'chonk'"),
        "pipeline": (["pipeline", "--out", str(tmp_path / "p"), "--sampler", "ddpm"], "unknown sampler 'ddpm'"),
        "demos": (["pipeline", "--out", str(tmp_path / "p"), "--demos", "0"], "demos must be >= 1"),
        "demo style": (["pipeline", "--out", str(tmp_path / "p"), "--demo-style", "lazy"], "unknown expert style 'lazy'; choose one of iid"),
    }
    for name, (args, message) in cases.items():
        out = _robot(*args)
        assert out.returncode == 2, (name, out.stderr)
        assert out.stderr.strip().count("\n") == 0 and message in out.stderr, (name, out.stderr)
    assert not any(tmp_path.iterdir())
