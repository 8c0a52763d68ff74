"""Deterministic episodes for store tests, and a writer process that can be killed mid-append.

Run as a script: ``python -m tests.store_fixtures STORE N [KILL_AT]`` appends N
episodes, printing ``committed <i>`` after each commit; with KILL_AT it SIGKILLs
itself on the KILL_AT-th write call (array write, resize, attribute write or metadata block),
which lands the kill at an exact point inside the append protocol. ``create:K``
instead kills it at the K-th file write or rename while the store is created.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from robot.types import EpisodeMeta, Feature

FEATURES = {
    "observation.state": Feature((4,), names=("a", "b", "c", "d")),
    "observation.images.front": Feature((24, 32, 3), "uint8"),
    "observation.images.wrist": Feature((24, 32, 3), "uint8"),
    "action": Feature((2,)),
    "reward": Feature(()),
    "done": Feature((), "bool"),
}


def episode_length(i: int) -> int:
    return 15 + (i * 7) % 11


def make_episode(i: int) -> dict[str, np.ndarray]:
    """Frames whose every value encodes (episode, step), so any mix-up is detectable."""
    t = episode_length(i)
    steps = np.arange(t)
    return {
        "observation.state": (i * 1000 + steps[:, None] + np.arange(4)[None] / 10).astype(np.float32),
        "observation.images.front": np.broadcast_to(((i * 13 + steps) % 256).astype(np.uint8)[:, None, None, None], (t, 24, 32, 3)).copy(),
        "observation.images.wrist": np.broadcast_to(((i * 29 + steps) % 256).astype(np.uint8)[:, None, None, None], (t, 24, 32, 3)).copy(),
        "action": np.stack([np.full(t, float(i)), steps.astype(np.float32)], axis=1),
        "reward": (steps == t - 1).astype(np.float32),
        "done": steps == t - 1,
    }


def make_meta(i: int) -> EpisodeMeta:
    return EpisodeMeta(task="push", robot="pusher", fps=10.0, success=i % 3 != 0, seed=i, operator="test")


def check_episode(ep, i: int) -> None:
    want = make_episode(i)
    for key, value in want.items():
        np.testing.assert_array_equal(ep.data[key], value, err_msg=f"episode {i} key {key}")
    assert ep.meta == make_meta(i)


def _arm_kill(kill_at: int) -> None:
    import zarr
    from zarr.core.attributes import Attributes

    import robot.store as store_module

    calls = {"n": 0}

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapper

    zarr.Array.__setitem__ = counted(zarr.Array.__setitem__)
    zarr.Array.resize = counted(zarr.Array.resize)
    Attributes.__setitem__ = counted(Attributes.__setitem__)
    store_module._write_json = counted(store_module._write_json)  # the episode's metadata block


def _arm_create_kill(kill_at: int) -> None:
    """SIGKILL this process at the ``kill_at``-th file write (zarr's LocalStore.set) or rename of a store's creation."""
    from zarr.storage import LocalStore

    calls = {"n": 0}

    def count() -> None:
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    real_set, real_rename = LocalStore.set, os.rename

    async def set_(self, key, value):
        count()
        return await real_set(self, key, value)

    def rename(*args, **kwargs):
        count()
        return real_rename(*args, **kwargs)

    LocalStore.set, os.rename = set_, rename


def main(argv: list[str]) -> None:
    from robot.store import ZarrEpisodeStore

    path, n = argv[0], int(argv[1])
    paced = len(argv) > 2 and argv[2] == "paced"  # each append waits for a line on stdin
    if paced:
        argv = argv[:2]
    if len(argv) > 2 and argv[2].startswith("create:"):  # killed while the store is being created
        _arm_create_kill(int(argv[2].split(":")[1]))
        argv = argv[:2]
    store = ZarrEpisodeStore.open_or_create(path, FEATURES)
    if len(argv) > 2:
        _arm_kill(int(argv[2]))
    first = store.num_episodes
    for i in range(first, first + n):
        if paced and not sys.stdin.readline():
            return
        store.append_episode(make_episode(i), make_meta(i))
        print(f"committed {i}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
