"""Round trip of get_observation and send_action: in process vs through `robot serve` on loopback.

    python -m bench.remote [--steps 500] [--camera top] [--image-size 84]

For the push task with state observations and with one RGB camera, each call is
timed ``steps`` times (after a warm-up) on the local ``SafeRobot`` and on a
``remote:127.0.0.1:PORT`` robot whose server runs as a separate
``robot serve`` process (so client and server do not share a GIL). The
difference is what the wire costs: framing, HMAC, JSON, two socket hops.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hardware.registry import open_robot
from robot.report import format_table


def time_calls(fn: Callable[[], Any], steps: int, warmup: int = 20) -> np.ndarray:
    """Milliseconds per call, ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(steps)
    for i in range(steps):
        start = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def measure(robot: Any, steps: int) -> dict[str, np.ndarray]:
    """Times of get_observation and send_action (small moves back and forth) on a connected robot."""
    robot.reset(0)
    moves = [np.array([0.01, 0.0], np.float32), np.array([-0.01, 0.0], np.float32)]
    count = iter(range(10**9))
    return {
        "get_observation": time_calls(robot.get_observation, steps),
        "send_action": time_calls(lambda: robot.send_action(moves[next(count) % 2]), steps),
    }


def start_server(options: list[str], token_file: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "robot.cli", "serve", "--port", "0", "--token-file", str(token_file), *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("serving"):
            return proc, int(line.split("127.0.0.1:")[1].split()[0])
    raise RuntimeError(f"robot serve did not start: {proc.wait()}")


def run(steps: int, camera: str, image_size: int) -> list[list]:
    token = secrets.token_hex(16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        for label, scene, cli in (
            ("state (8 floats)", {}, []),
            (f"RGB {image_size}x{image_size} + state", {"cameras": (camera,), "image_size": image_size}, ["--cameras", camera, "--image-size", str(image_size)]),
        ):
            local, _ = open_robot("sim:push", **scene)
            with local:
                times = {"local": measure(local, steps)}
            local.close()
            proc, port = start_server(cli, token_file)
            try:
                remote, _ = open_robot(f"remote:127.0.0.1:{port}", token=token)
                with remote:
                    times["through server"] = measure(remote, steps)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            for call in ("get_observation", "send_action"):
                for where, t in times.items():
                    ms = t[call]
                    rows.append([label, call, where, ms.mean(), np.percentile(ms, 50), np.percentile(ms, 99)])
                overhead = times["through server"][call].mean() - times["local"][call].mean()
                rows.append([label, call, "wire overhead", overhead, None, None])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="timed calls per row")
    parser.add_argument("--camera", default="top", help="push camera for the RGB rows (top or front)")
    parser.add_argument("--image-size", type=int, default=84, help="camera image side, pixels")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = run(args.steps, args.camera, args.image_size)
    headers = ["observation", "call", "where", "mean ms", "p50 ms", "p99 ms"]
    print(format_table(headers, rows, title=f"push: round trip per call, {args.steps} calls each (loopback)"))


if __name__ == "__main__":
    main()
