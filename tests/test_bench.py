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
