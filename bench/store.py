"""Episode store throughput: write, random-window reads from disk, and load-to-RAM sampling.

    python -m bench.store [--episodes 100] [--steps 200] [--size 84] [--path /tmp/bench_store.zarr]
    python -m bench.store --commit-at 10 1000 10000

The second form measures what one commit costs as the store grows: short state-only
episodes are appended until the store holds each size, and the next 20 commits are timed
there (their mean and the bytes of the commit record, which every commit rewrites).

Episodes carry two uint8 cameras, a 9-D state, a 7-D action, reward and done, like a
real arm recording. Frames are smooth random images (compress like camera frames,
not like noise).
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np

from robot.report import format_table
from robot.sampler import WindowConfig, WindowSampler
from robot.store import ZarrEpisodeStore
from robot.types import EpisodeMeta, Feature


def _features(size: int) -> dict[str, Feature]:
    return {
        "observation.images.front": Feature((size, size, 3), "uint8"),
        "observation.images.wrist": Feature((size, size, 3), "uint8"),
        "observation.state": Feature((9,)),
        "action": Feature((7,)),
        "reward": Feature(()),
        "done": Feature((), "bool"),
    }


def _episode(rng: np.random.Generator, steps: int, size: int) -> dict[str, np.ndarray]:
    base = rng.integers(0, 256, size=(size // 4, size // 4, 3)).astype(np.uint8)
    frames = np.repeat(np.repeat(base, 4, axis=0), 4, axis=1)  # blocky scene
    drift = (np.arange(steps) % 32).astype(np.uint8)[:, None, None, None]
    images = frames[None] + drift  # (T, H, W, 3) slowly changing
    return {
        "observation.images.front": images,
        "observation.images.wrist": images[:, ::-1],
        "observation.state": rng.normal(size=(steps, 9)).astype(np.float32),
        "action": rng.normal(size=(steps, 7)).astype(np.float32),
        "reward": np.zeros(steps, np.float32),
        "done": np.arange(steps) == steps - 1,
    }


def run(episodes: int, steps: int, size: int, path: str, batch: int = 64, horizon: int = 16) -> list[list]:
    rng = np.random.default_rng(0)
    shutil.rmtree(path, ignore_errors=True)
    feats = _features(size)
    raw_bytes = 0
    store = ZarrEpisodeStore.create(path, feats)
    t0 = time.perf_counter()
    for i in range(episodes):
        ep = _episode(rng, steps, size)
        raw_bytes += sum(v.nbytes for v in ep.values())
        store.append_episode(ep, EpisodeMeta(task="bench", robot="none", fps=10, success=True, seed=i))
    write_s = time.perf_counter() - t0
    disk = store.size_on_disk()
    store.close()

    reader = ZarrEpisodeStore.open(path)
    ends = reader.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    arrays = {k: reader._array(k) for k in feats}  # direct zarr arrays: one slice per key per window
    n_batches = 5
    t0 = time.perf_counter()
    for _ in range(n_batches):
        eps = rng.integers(0, len(ends), size=batch)
        for ep in eps:
            s = int(rng.integers(starts[ep], ends[ep] - horizon))
            for arr in arrays.values():
                np.asarray(arr[s : s + horizon])
    disk_batch_ms = (time.perf_counter() - t0) / n_batches * 1e3

    t0 = time.perf_counter()
    data = reader.load()
    load_s = time.perf_counter() - t0
    sampler = WindowSampler(data, ends, WindowConfig(n_obs_steps=2, horizon=horizon))
    t0 = time.perf_counter()
    for _ in range(50):
        sampler.sample(batch, rng)
    ram_batch_ms = (time.perf_counter() - t0) / 50 * 1e3
    mb = raw_bytes / 2**20
    return [
        ["write", f"{episodes} x {steps} steps", f"{mb / write_s:.0f} MB/s raw", f"{episodes / write_s:.1f} episodes/s", f"{mb:.0f} MB raw -> {disk / 2**20:.0f} MB on disk"],
        ["random windows from disk", f"{batch} x {horizon} steps", f"{disk_batch_ms:.0f} ms/batch", f"{batch / disk_batch_ms * 1e3:.0f} windows/s", "one zarr slice per key per window"],
        ["load all into RAM", f"{reader.num_steps} steps", f"{mb / load_s:.0f} MB/s", f"{load_s:.2f} s", ""],
        ["random windows from RAM", f"{batch} x {horizon} steps", f"{ram_batch_ms:.1f} ms/batch", f"{batch / ram_batch_ms * 1e3:.0f} windows/s", "WindowSampler over loaded arrays"],
    ]


def commit_cost(sizes: list[int], path: str, timed: int = 20) -> list[list]:
    """Mean time of ``timed`` commits once the store holds each of ``sizes`` episodes (5-step state-only episodes)."""
    shutil.rmtree(path, ignore_errors=True)
    feats = {"observation.state": Feature((9,)), "action": Feature((7,)), "reward": Feature(()), "done": Feature((), "bool")}
    rng = np.random.default_rng(0)
    episode = {"observation.state": rng.normal(size=(5, 9)).astype(np.float32), "action": rng.normal(size=(5, 7)).astype(np.float32),
               "reward": np.zeros(5, np.float32), "done": np.arange(5) == 4}  # fmt: skip
    rows = []
    with ZarrEpisodeStore.create(path, feats) as store:
        for size in sorted(sizes):
            while store.num_episodes < size:
                store.append_episode(episode, EpisodeMeta(task="bench", robot="none", fps=10, success=True, seed=store.num_episodes))
            t0 = time.perf_counter()
            for _ in range(timed):
                store.append_episode(episode, EpisodeMeta(task="bench", robot="none", fps=10, success=True, seed=store.num_episodes))
            ms = (time.perf_counter() - t0) / timed * 1e3
            record = (store.path / "zarr.json").stat().st_size
            rows.append([f"{size:,}", f"{ms:.1f}", f"{record:,}"])
    shutil.rmtree(path, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--path", default="/tmp/bench_store.zarr")
    p.add_argument("--commit-at", type=int, nargs="+", default=None, metavar="N", help="time commits into a store of N episodes instead")
    a = p.parse_args(argv)
    if a.commit_at:
        rows = commit_cost(a.commit_at, a.path)
        print(format_table(["episodes in the store", "ms per commit (mean of 20)", "commit record bytes"], rows, title="Episode store: the cost of one commit as the store grows"))
        return
    rows = run(a.episodes, a.steps, a.size, a.path)
    print(format_table(["operation", "unit", "throughput", "rate", "note"], rows, title=f"Episode store: {a.episodes} episodes x {a.steps} steps, two {a.size}x{a.size} cameras"))
    shutil.rmtree(a.path, ignore_errors=True)


if __name__ == "__main__":
    main()
