"""A stage's CPU minutes survive a kill: a resumed stage reports what the whole stage cost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from workflow.stage_clock import StageClock


def _burn(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        sum(range(1000))


def test_a_killed_process_leaves_its_cpu_for_the_resumed_one(tmp_path):
    path = tmp_path / "imitation.cpu.json"
    killed = (
        "import os, time, sys\n"
        "from workflow.stage_clock import StageClock\n"
        f"clock = StageClock({str(path)!r}, every=0.05).__enter__()\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.6: sum(range(1000))\n"
        "time.sleep(0.2)\n"
        "os._exit(9)  # no exit handlers: what a kill leaves\n"
    )
    assert subprocess.run([sys.executable, "-c", killed], cwd=str(Path(__file__).parents[1])).returncode == 9
    with StageClock(path, every=0.05) as clock:
        assert clock.before * 60 >= 0.55  # the killed process's 0.6 s, less at most one tick
        _burn(0.3)
    assert clock.minutes * 60 >= clock.before * 60 + 0.3
    assert json.loads(path.read_text())["cpu_minutes"] == pytest.approx(clock.minutes)
    frozen = clock.minutes
    _burn(0.05)
    assert clock.minutes == frozen  # the count stops with the block


@pytest.mark.parametrize("text", ["{not json", '{"cpu_minutes": "NaN"}', '{"cpu_minutes": -1}', "[]", '{"minutes": 1}'])
def test_a_damaged_count_is_said_once_and_counted_from_zero(tmp_path, text):
    path = tmp_path / "online.cpu.json"
    path.write_text(text)
    said = []
    with StageClock(path, log=said.append) as clock:
        pass
    assert clock.before == 0.0
    assert len(said) == 1 and said[0].startswith(f"warning: {path} does not hold a stage's CPU minutes")
    assert json.loads(path.read_text())["cpu_minutes"] >= 0  # rewritten whole


def test_only_the_writing_rank_keeps_the_file(tmp_path):
    path = tmp_path / "offline.cpu.json"
    path.write_text(json.dumps({"cpu_minutes": 2.0}))
    with StageClock(path, write=False) as clock:
        pass
    assert clock.before == 0.0 and json.loads(path.read_text()) == {"cpu_minutes": 2.0}


def test_a_pipeline_stage_resumed_after_a_kill_reports_both_processes_cpu(tmp_path, monkeypatch):
    """The imitation stage dies once part way (a kill), and its rerun finishes: the result's CPU minutes hold both."""
    import workflow.pipeline as pipeline
    from workflow.pipeline import PipelineConfig, run_pipeline

    class Killed(Exception):
        pass

    calls = []

    def imitation(config, show_progress):
        calls.append(config)
        _burn(0.4)
        if len(calls) == 1:
            raise Killed
        return SimpleNamespace(policy=str(tmp_path / "imitation" / "policy"))

    def offline(config, show_progress):
        raise Killed  # stop the run once imitation's result is written

    report = SimpleNamespace(success_rate=0.5, mean_return=0.0, successes=[True, False], lengths=[10, 20])
    monkeypatch.setattr(pipeline, "record_demos", lambda config, path: None)
    monkeypatch.setattr(pipeline, "train_imitation", imitation)
    monkeypatch.setattr(pipeline, "train_offline", offline)
    monkeypatch.setattr(pipeline, "evaluate_policy", lambda *a, **k: report)
    config = PipelineConfig(task="push", out=str(tmp_path), budget="smoke")
    lines: list[str] = []
    for _ in range(2):
        with pytest.raises(Killed):
            run_pipeline(config, show_progress=False, log=lines.append)
    result = json.loads((tmp_path / "imitation.result.json").read_text())
    assert len(calls) == 2 and result["cpu_minutes"] * 60 >= 0.8
    assert any(line.startswith("[imitation] running (resumed; ") for line in lines)
