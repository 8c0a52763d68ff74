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
