"""Test-wide settings: offscreen rendering through EGL, chosen before anything imports mujoco."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
