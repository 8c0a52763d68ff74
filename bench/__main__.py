"""Every benchmark, one command: ``python -m bench [--only store,sim,...] [--quick] [--pipeline RUN]``.

Suites, in order: store write/read, sim steps/s, training samples/s per stage,
inference latency (DDIM K-step vs one step; state, RGB, point cloud), sim episodes
per CPU minute one at a time and in lanes, record
loop rate and jitter, deploy loop rate and jitter (DDIM vs one step), and the
pipeline's success per stage. The pipeline suite does not train (that is
``robot pipeline``, about 17 minutes on the quick budget): it prints the table
of the run directory given with ``--pipeline`` (default ``runs/pipeline``).
``--quick`` shrinks every suite to a smoke run of a minute or two; the
numbers in docs/RESULTS.md come from the full default of each suite.

``recipe`` (``python -m bench.recipe``: the whole pipeline on a suite of
settings, every stage paired on 200 seeds) trains for hours, so it runs only
when named: ``--only recipe`` (``--quick``: one push setting on the smoke budget).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
from pathlib import Path

import torch

# suite -> (module, arguments for --quick)
SUITES: dict[str, tuple[str, list[str]]] = {
    "store": ("bench.store", ["--episodes", "10", "--steps", "50", "--path", "/tmp/bench_store_quick.zarr"]),
    "sim": ("bench.sim", ["--tasks", "push", "--steps", "100", "--expert-seeds", "5"]),
    "training": ("bench.training", ["--seconds", "1"]),
    "latency": ("bench.latency", ["--repeats", "5"]),
    "lanes": ("bench.lanes", ["--episodes", "4", "--lanes", "1,4"]),
    "control": ("bench.control_loop", ["--rates", "30", "100", "--episodes", "1", "--max-steps", "30"]),
    "deploy": ("bench.deploy", ["--episodes", "1", "--max-steps", "40"]),
    "recipe": ("bench.recipe", ["--setting", "push-hesitant", "--budget", "smoke", "--episodes", "4", "--out", "/tmp/bench_recipe_quick"]),
}
BY_NAME_ONLY = ("recipe",)
"""Suites left out of the default ``--only``: they train for hours."""


def pipeline_table(run: Path) -> str:
    """The per-stage table of a finished (or partly finished) ``robot pipeline`` run."""
    from workflow.pipeline import PipelineConfig, StageResult, pipeline_table as table

    results = [StageResult(**json.loads((run / f"{s}.result.json").read_text()))
               for s in ("imitation", "offline", "online", "one-step") if (run / f"{s}.result.json").is_file()]  # fmt: skip
    if not results:
        return f"pipeline: no stage results in {run}; run `robot pipeline --out {run}` first"
    config = json.loads((run / "pipeline.json").read_text()) if (run / "pipeline.json").is_file() else {}
    return table(results, PipelineConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = [s for s in SUITES if s not in BY_NAME_ONLY] + ["pipeline"]
    p.add_argument("--only", default=",".join(default), help=f"comma-separated suites (default {','.join(default)}): " + ", ".join([*SUITES, "pipeline"]))
    p.add_argument("--quick", action="store_true", help="smoke-sized runs of every suite")
    p.add_argument("--pipeline", type=Path, default=Path("runs/pipeline"), help="pipeline run directory to report")
    a = p.parse_args(argv)
    chosen = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SUITES and s != "pipeline"]
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join([*SUITES, 'pipeline'])}")
    print(f"machine: {platform.machine()}, {platform.processor() or platform.system()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads\n")  # fmt: skip
    for suite in chosen:
        print(f"== {suite}")
        if suite == "pipeline":
            print(pipeline_table(a.pipeline))
        else:
            module, quick = SUITES[suite]
            importlib.import_module(module).main(quick if a.quick else [])
        print()


if __name__ == "__main__":
    main()
