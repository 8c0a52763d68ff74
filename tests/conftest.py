"""Test-wide settings, applied before anything imports mujoco or torch.

- Offscreen rendering through EGL.
- One intra-op thread per process: test networks are tiny, and with two OpenMP
  threads per process on a busy 2-core machine, spin-waiting made a training
  step 25x slower (1.7 s instead of 67 ms). Subprocesses inherit the variable.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The slow suite runs as ``-n 2 --dist loadfile``: each module on one test process. pytest-xdist hands
# modules out in its own order (most tests first) and gives a process a further module whenever two or
# fewer of its tests are left, so in session 14 one process got the quick pipeline (about 22 minutes)
# plus the learning tests (about 10) while the other sat idle, and the suite took 35 minutes. Here the
# two longest modules go first, one to each process, in collection order (xdist's reordering is off).
LONGEST_FIRST = ("test_pipeline.py", "test_learning.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist >= 3.6
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each module stays


@pytest.fixture(autouse=True)
def _safety_warnings_afresh():
    """The safety layer warns about a guard once per process (``hardware.safety._WARNED``); each test starts unwarned,
    so a test that checks a warning does not depend on which tests ran before it in its process."""
    from hardware import safety

    safety._WARNED.clear()
