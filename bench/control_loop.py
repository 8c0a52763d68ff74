"""Control-loop rate and jitter of the record loop on the push task (scripted expert, real store, safety layer).

    python -m bench.control_loop [--rates 10 30 100 0] [--episodes 3] [--max-steps 50] [--noise 0.5]

Rate 0 is the unthrottled loop (what ``robot record --device scripted`` runs by
default): its rate is the loop's headroom. Jitter is |measured period - requested
period| per tick (unthrottled: distance from the mean period). A noisy expert
keeps episodes long, so each rate gets about episodes x max-steps ticks.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from robot.report import format_table
from workflow.record import RecordConfig, record


def run(rates: list[float], episodes: int, max_steps: int, noise: float) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hz in rates:
            out = Path(tmp) / f"loop-{hz:g}.zarr"
            config = RecordConfig(device="scripted", episodes=episodes, fps=hz, max_steps=max_steps, noise=noise, out=out)
            start = time.perf_counter()
            report = record(config, stream=io.StringIO())
            wall = time.perf_counter() - start
            r = report.rate
            rows.append([f"{hz:g}" if hz else "unthrottled", r.mean_hz, r.jitter_p50_ms, r.jitter_p99_ms, r.overruns, r.ticks, wall])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 30.0, 100.0, 0.0], help="loop rates in Hz (0 = unthrottled)")
    parser.add_argument("--episodes", type=int, default=3, help="episodes per rate")
    parser.add_argument("--max-steps", type=int, default=50, help="step limit per episode")
    parser.add_argument("--noise", type=float, default=0.5, help="scripted expert noise (longer episodes)")
    args = parser.parse_args(argv)
    rows = run(args.rates, args.episodes, args.max_steps, args.noise)
    headers = ["requested Hz", "held Hz", "jitter p50 ms", "jitter p99 ms", "overruns", "ticks", "wall s"]
    print(format_table(headers, rows, title="record loop on push (scripted expert, safety layer, zarr store)"))


if __name__ == "__main__":
    main()
