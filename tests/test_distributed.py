"""Scale-out: imitation under torchrun with DDP (gloo, 2 CPU processes) takes the steps one process takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from robot.metrics import read_metrics, series
from workflow.distributed import Distributed

from tests.test_imitation import record_demos

ROOT = Path(__file__).resolve().parents[1]
# lr 1e-2 (warmup included): weights move by ~1e-2 per step, so unsynchronised ranks would differ far beyond the tolerance
TRAIN = ["-m", "robot.cli", "train", "imitation", "--steps", "12", "--batch-size", "16", "--lr", "0.3"]


def _run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    demos = str(record_demos(tmp_path / "push.zarr", 4))
    _run([*TRAIN, "--data", demos, "--out", str(tmp_path / "single")])
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *TRAIN, "--data", demos, "--out", str(tmp_path / "ddp")])
    single = load_file(tmp_path / "single" / "policy" / "tensors.safetensors")
    ddp = load_file(tmp_path / "ddp" / "policy" / "tensors.safetensors")
    assert single.keys() == ddp.keys()
    worst = max(float(np.max(np.abs(single[k] - ddp[k]))) for k in single)
    assert worst < 1e-3, f"weights differ by up to {worst}"  # float summation order, amplified by Adam
    _, loss_single = series(read_metrics(tmp_path / "single" / "metrics.jsonl"), "losses/denoise")
    _, loss_ddp = series(read_metrics(tmp_path / "ddp" / "metrics.jsonl"), "losses/denoise")
    assert len(loss_ddp) == 12 and np.allclose(loss_single, loss_ddp, rtol=1e-4, atol=1e-6)

    # the one-step head distilled from that policy, on one process and on two
    distill = ["-m", "robot.cli", "train", "distill", "--policy", str(tmp_path / "single"), "--data", demos, "--steps", "5"]
    _run([*distill, "--out", str(tmp_path / "d1")])
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *distill, "--out", str(tmp_path / "d2")])
    one = load_file(tmp_path / "d1" / "policy" / "tensors.safetensors")
    two = load_file(tmp_path / "d2" / "policy" / "tensors.safetensors")
    heads = [k for k in one if k.startswith("consistency")]
    assert heads and max(float(np.max(np.abs(one[k] - two[k]))) for k in heads) < 1e-5


def test_local_slices_cover_the_global_batch_once() -> None:
    slices = [Distributed(rank=r, world_size=4).local_slice(16) for r in range(4)]
    assert [np.arange(16)[s].tolist() for s in slices] == [list(range(4 * r, 4 * r + 4)) for r in range(4)]
    with pytest.raises(ValueError, match="multiple of 3"):
        Distributed(rank=0, world_size=3).local_slice(16)
    assert not Distributed().enabled and Distributed().is_main


def test_stages_that_are_not_data_parallel_refuse_torchrun(monkeypatch) -> None:
    from workflow.online import OnlineConfig, train_online

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="online RL stage does not run under torchrun"):
        train_online(OnlineConfig(policy="nowhere", out="nowhere"))
