"""A stage's CPU time that survives the process: what a resumed stage reports is what the stage cost.

A pipeline stage killed part way resumes from its last checkpoint in a new process, and that process's
``time.process_time()`` knows nothing of the first one. :class:`StageClock` keeps the stage's CPU minutes in a small
JSON file beside the stage's result (``OUT/<stage>.cpu.json``), rewritten atomically every ``every`` seconds by a
daemon thread and once more when the stage ends, so a kill loses at most ``every`` seconds of the count. A
resumed stage adds its own CPU to what the file holds. The total is what was spent, so it includes the work a
kill threw away after the last checkpoint (redone by the resumed process).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable


class StageClock:
    """``with StageClock(path) as clock: ...; clock.minutes``: this process's CPU in the block plus the file's."""

    def __init__(self, path: str | Path, *, every: float = 30.0, write: bool = True, log: Callable[[str], None] = print):
        if not every > 0:
            raise ValueError(f"StageClock.every must be > 0 seconds, got {every}")
        self.path = Path(path)
        self.every = every
        self.write = write  # False on every rank but 0 of a torchrun: one process keeps the count
        self.before = self._read(log) if write else 0.0
        """CPU minutes earlier processes spent on this stage (0 for a stage starting fresh)."""
        self._start = 0.0
        self._end: float | None = None  # process time when the block ended: the count stops there
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def minutes(self) -> float:
        end = time.process_time() if self._end is None else self._end
        return self.before + (end - self._start) / 60

    def __enter__(self) -> "StageClock":
        self._start = time.process_time()
        if self.write:
            self._thread = threading.Thread(target=self._tick, name=f"stage-clock:{self.path.name}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = time.process_time()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._save()  # a stage that raised has spent its CPU too: a rerun adds to it

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._save()

    def _save(self) -> None:
        if not self.write:
            return
        with self._lock:
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"cpu_minutes": self.minutes}))
            os.replace(tmp, self.path)

    def _read(self, log: Callable[[str], None]) -> float:
        if not self.path.is_file():
            return 0.0
        try:
            minutes = float(json.loads(self.path.read_text())["cpu_minutes"])
            if not (math.isfinite(minutes) and minutes >= 0):
                raise ValueError(minutes)
            return minutes
        except (ValueError, KeyError, TypeError) as e:
            log(f"warning: {self.path} does not hold a stage's CPU minutes ({e!r}); counting this stage's CPU from 0")
            return 0.0
