"""Policy inference latency: one action (chunk) for one observation, K-step DDIM vs the one-step head
(the default student, a copy of the denoiser, and the MLP student).

    python -m bench.latency [--repeats 50] [--threads 1] [--device cpu]

Networks are the kit's presets (``workflow.presets``) with freshly initialised
weights: latency does not depend on what the weights learned. Inputs: proprio
state (9-D), RGB 84x84 + state, a 512-point cloud + state; two observation frames.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from policies.consistency import COPY, MLP, ConsistencyHead
from policies.diffusion import DiffusionPolicy
from robot.report import format_table
from robot.types import Feature
from workflow.presets import policy_preset

INPUTS = {
    "state": {"observation.state": Feature((9,))},
    "rgb 84x84": {"observation.images.front": Feature((84, 84, 3), "uint8"), "observation.state": Feature((9,))},
    "point cloud 512": {"observation.pointcloud": Feature((512, 3)), "observation.state": Feature((9,))},
}


def _batch(features: dict[str, Feature], n_obs: int, device: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, f in features.items():
        x = np.zeros((1, n_obs, *f.shape), dtype=f.dtype)
        out[key] = torch.as_tensor(x, device=device)
    return out


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


@torch.no_grad()
def run(repeats: int, device: str) -> list[list]:
    rows = []
    for preset in ("single", "chunk"):
        for name, features in INPUTS.items():
            config = policy_preset(preset)
            policy = DiffusionPolicy(config, features, {"action": Feature((7,))}, device=device).eval()
            head, mlp = (ConsistencyHead.from_policy(policy, student).eval() for student in (COPY, MLP))
            obs = _batch(features, config.n_obs_steps, device)
            encode = _median_ms(lambda: policy.encode(obs), repeats)
            ddim = _median_ms(lambda: policy.sample(policy.encode(obs), deterministic=True), repeats)
            one = _median_ms(lambda: head.sample(policy.encode(obs)), repeats)
            one_mlp = _median_ms(lambda: mlp.sample(policy.encode(obs)), repeats)
            params = sum(p.numel() for p in policy.parameters()) / 1e6
            rows.append([preset, name, f"{params:.2f}M", encode, ddim, one, ddim / one, one_mlp, ddim / one_mlp])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = run(a.repeats, a.device)
    title = f"Inference latency, batch 1, median of {a.repeats} (ms), device {a.device}, torch threads {a.threads}"
    print(format_table(["preset", "input", "params", "encode", f"encode + DDIM-{policy_preset('chunk').num_inference_steps}", "encode + 1 step (copy)", "speed-up",
                                                                                                                            "encode + 1 step (mlp)", "speed-up (mlp)"], rows, title=title))


if __name__ == "__main__":
    main()
