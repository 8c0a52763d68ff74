"""Test-wide settings, applied before anything imports mujoco or torch.

- Offscreen rendering through EGL.
- One intra-op thread per process: test networks are tiny, and with two OpenMP
  threads per process on a busy 2-core machine, spin-waiting made a training
  step 25x slower (1.7 s instead of 67 ms). Subprocesses inherit the variable.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The longest slow modules go first, one to each test process (``-n 2 --dist loadfile`` hands files
# out in collection order, two to a process at the start): with the quick pipeline last in the queue,
# one process ran it after its other files and the slow suite took 33 minutes instead of about 25.
LONGEST_FIRST = ("test_pipeline.py", "test_learning.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each module stays
