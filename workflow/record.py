"""``robot record``: teleoperate, label, and write demonstrations to the episode store.

One episode on the episode engine (:mod:`workflow.episode`): the robot resets (sim: from
the episode's seed), the device waits in the reset phase for START, then a fixed-rate loop
polls the device, sends its action through the safety layer, observes, and asks the task for reward and
success, until the operator stops (keep, keep as success / failure, discard and
redo), the episode reaches ``max_steps`` (kept, labelled by the task) or the
operator quits. Each kept episode is committed atomically, so a crash or a kill
loses at most the episode in progress.

Per step the store gets every observation key of the robot, ``action`` (the
action the safety layer really applied), ``reward`` (sum of the task's scaled
terms), ``done`` (last step), ``success`` (the task's check) and ``intervention``
(False: every demo step is the operator's; see :mod:`workflow.takeover` for
rollouts). Labels: the scripted device keeps an episode as success when the task
succeeds; a human's y / n keys label it, and a plain stop takes the task's check.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

import numpy as np

from hardware.teleop import DEVICES, TeleopDevice, TeleopEvent, make_device
from robot.protocols import Observation, Robot, StepOutcome, Task
from robot.report import format_table
from robot.store import ZarrEpisodeStore
from robot.types import INTERVENTION, SUCCESS, EpisodeMeta, Feature
from sim.scene import check_expert_style
from workflow.episode import IDLE, Act, Ending, Episode, EpisodeFrames
from workflow.rate import RateLoop, RateStats
from workflow.takeover import wait_for_start
from workflow.rollout import episode_features

IDLE_HZ = 20.0  # device polling rate in the reset phase of an unthrottled recording
STATUS_EVERY_S = 0.25
HUMAN_DEVICES = ("keyboard", "spacemouse", "gamepad")


@dataclass(frozen=True)
class RecordConfig:
    """One recording session (the ``robot record`` options)."""

    task: str = "push"
    """Simulated task (any name `robot tasks` lists, or pkg.module:factory): reward terms, success check, scripted expert."""
    robot: str | None = None
    """Robot spec for ``hardware.registry``; None means ``sim:<task>``."""
    device: str = "keyboard"
    """keyboard (terminal, works over SSH), spacemouse (HID), gamepad, or scripted (the task's expert, headless)."""
    episodes: int = 20
    """Episodes to keep in this session (discarded ones are redone and do not count)."""
    out: Path | None = None
    """Episode store directory; None means ``data/<task>.zarr``."""
    fps: float | None = None
    """Loop rate in Hz; None means the task's control rate for human devices and 0 (as fast as the
    sim steps) for scripted. The stored ``fps`` is always the task's control rate: a sim step is one
    control period of sim time however fast the loop runs."""
    noise: float = 0.0
    """Scripted expert imperfection in [0, 1] (scripted device only)."""
    style: str = "iid"
    """Scripted expert's operator style (scripted device only): iid (noise only), hesitant (pauses, slow
    approach), biased (a systematic offset), mixed (a better and a worse strategy, drawn per episode);
    see ``sim.scene.EXPERT_STYLES``. ``noise`` adds i.i.d. noise on top of any style."""
    operator: str = ""
    """Who recorded the episodes (stored in each episode's metadata)."""
    seed: int = 0
    """Episode i of the store resets the sim from seed + i (a redo reuses its seed); also seeds the expert."""
    resume: bool = False
    """Append to an existing store (its features must match); without it an existing store is an error."""
    view: bool = False
    """Stream each step to a live Rerun viewer."""
    max_steps: int | None = None
    """Steps after which an episode stops and is kept with the task's label; None means the task's limit."""
    cameras: tuple[str, ...] = ()
    """Sim cameras to record as observation.images.<cam> (e.g. ("top",) on push); none by default."""
    image_size: int = 84
    """Side of the square camera images, pixels."""
    pointcloud: bool = False
    """Record observation.pointcloud from the scene's depth camera."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.fps is not None and not self.fps >= 0:
            raise ValueError(f"fps must be >= 0 (0 = unthrottled), got {self.fps}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if self.noise > 0 and self.device != "scripted":
            raise ValueError(f"noise={self.noise} only applies to the scripted device, not {self.device}")
        check_expert_style(self.style)
        if self.style != "iid" and self.device != "scripted":
            raise ValueError(f"style={self.style} only applies to the scripted device, not {self.device}; use --device scripted")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    @property
    def robot_spec(self) -> str:
        return self.robot or f"sim:{self.task}"

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out is not None else Path("data") / f"{self.task}.zarr"

    def loop_hz(self, task_fps: float) -> float:
        if self.fps is not None:
            return float(self.fps)
        return float(task_fps) if self.device in HUMAN_DEVICES else 0.0


@dataclass(frozen=True)
class RecordReport:
    """What a session did: episodes kept / discarded this session, the loop rate held, safety interventions."""

    out: Path
    kept: int
    successes: int
    discarded: int
    steps: int
    store_episodes: int  # episodes in the store after the session (resumed ones included)
    quit: bool  # stopped by the operator before reaching the requested episodes
    rate: RateStats
    safety: Mapping[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        safety = ", ".join(f"{k} {v}" for k, v in self.safety.items() if v) or "none"
        row = [self.kept, self.successes, self.discarded, self.steps, self.store_episodes, self.rate.mean_hz, self.rate.requested_hz or "max", self.rate.jitter_p99_ms]
        table = format_table(["kept", "success", "discarded", "steps", "in store", "held Hz", "asked Hz", "jitter p99 ms"], [row], title=f"recorded into {self.out}")
        return f"{table}\nsafety interventions: {safety}" + ("\nstopped by the operator" if self.quit else "")


def record(config: RecordConfig, device: TeleopDevice | None = None, robot: Robot | None = None, task: Task | None = None, *, stream: TextIO | None = None) -> RecordReport:
    """Run a recording session; ``device``/``robot``/``task`` default to what ``config`` names.

    Returns when ``config.episodes`` are kept or the operator quits (Ctrl-C counts
    as quit); every kept episode is already in the store either way.
    """
    owns_robot = robot is None
    robot, task = _robot_and_task(config, robot, task)
    status = _Status(stream if stream is not None else sys.stderr)
    loop_hz, max_steps, out = config.loop_hz(task.fps), config.max_steps or task.max_steps, config.out_path
    rate, idle = RateLoop(loop_hz), RateLoop(loop_hz or IDLE_HZ)
    kept = successes = discarded = steps = 0
    quit_ = False
    safety: Counter[str] = Counter()
    with contextlib.ExitStack() as cleanup:
        if owns_robot:
            cleanup.callback(getattr(robot, "close", robot.disconnect))
        if device is None:
            device = make_device(
                config.device, action_features=robot.action_features, task=task, noise=config.noise, seed=config.seed, style=config.style
            )
        device.connect()  # before the store: a missing device must not leave an empty store behind
        cleanup.callback(device.close)
        features = episode_features(robot)
        store = ZarrEpisodeStore.open_or_create(out, features) if config.resume else ZarrEpisodeStore.create(out, features)
        cleanup.callback(store.close)
        view = LiveView.open(f"record-{task.name}", features, float(task.fps)) if config.view else None
        if not robot.is_connected:
            robot.connect()
        status.line(f"recording {task.name} on {robot.name} with {device.name}: {config.episodes} episodes -> {out} ({store.num_episodes} already there)")
        status.line(device.controls)
        try:
            while kept < config.episodes:
                seed = config.seed + store.num_episodes
                waiting = f"episode {kept + 1}/{config.episodes} (seed {seed}): reset done, waiting for start"
                operator = _Operator(device, rate, idle, status, lambda: status.line(waiting), robot.counters, max_steps, f"{kept + 1}/{config.episodes}")
                take = _record_episode(robot, task, operator, seed, rate, max_steps, view)
                safety.update(take.safety)
                if take.end == "quit":
                    quit_ = True
                    break
                if take.end == "discard" or len(take.frames) == 0:
                    discarded += 1
                    status.line(f"episode {kept + 1}/{config.episodes} discarded ({len(take.frames)} steps); redo")
                    continue
                label = take.success
                held = take.rate.mean_hz
                extra = {"end": take.end, "loop_hz": loop_hz, "held_hz": round(held, 2), "safety": dict(take.safety)}
                if config.noise:  # scripted teleop made imperfect on purpose: the store says how much
                    extra["noise"] = config.noise
                if config.style != "iid":  # ... and in which operator style, with what it drew for this episode
                    extra["style"] = config.style
                    extra["style_episode"] = dict(getattr(device, "episode_style", {}))
                meta = EpisodeMeta(task.name, robot.name, float(task.fps), label, "demo", config.operator, seed, device.name, extra)
                store.append_episode(take.frames.arrays(), meta)
                kept, successes, steps = kept + 1, successes + int(label), steps + len(take.frames)
                status.line(
                    f"episode {kept}/{config.episodes} kept as {'success' if label else 'failure'} ({take.end}): "
                    f"{len(take.frames)} steps, {held:.1f} Hz held, safety {sum(take.safety.values())}"
                )
        except KeyboardInterrupt:
            quit_ = True
            status.line("interrupted: the episode in progress is dropped, kept episodes are in the store")
        store_episodes = store.num_episodes
    return RecordReport(out, kept, successes, discarded, steps, store_episodes, quit_, rate.stats(), dict(safety))


# ------------------------------------------------------------------------------ internals


def _robot_and_task(config: RecordConfig, robot: Robot | None, task: Task | None) -> tuple[Robot, Task]:
    if robot is not None and task is not None:
        return robot, task
    if robot is not None or task is not None:
        raise ValueError("pass robot and task together (the task must observe that robot), or neither")
    kind, sep, target = config.robot_spec.partition(":")
    if sep and kind != "sim":
        raise ValueError(
            f"robot {config.robot_spec}: recording needs a task that scores this robot's episodes; "
            "the registry builds tasks for simulated robots only, so pass task= to workflow.record.record"
        )
    if (target if sep else kind) != config.task:
        raise ValueError(f"robot {config.robot_spec} simulates another task than --task {config.task}; use --robot sim:{config.task}")
    from hardware.registry import make_sim

    return make_sim(config.task, cameras=config.cameras or None, image_size=config.image_size, pointcloud=config.pointcloud)


def _end_of_episode(events: frozenset[TeleopEvent]) -> str | None:
    """The strongest episode-ending event in one poll: quit > discard > failure > success > keep."""
    E = TeleopEvent
    for event, end in ((E.QUIT, "quit"), (E.DISCARD, "discard"), (E.FAILURE, "failure"), (E.SUCCESS, "success"), (E.KEEP, "keep"), (E.START, "keep")):
        if event in events:
            return end
    return None


@dataclass
class _Take:
    frames: EpisodeFrames
    end: str  # keep | success | failure | discard | quit | limit
    success: bool  # the operator's label, else the task's check of the last step
    rate: RateStats
    safety: Counter[str]


class _Operator:
    """The operator driving a recording, through the teleop device (``workflow.episode.Actor``): waits for
    start, ends the episode on keep, success, failure, discard or quit, sends the device's action when it
    has one and otherwise lets the tick pass (no key pressed: nothing is sent, nothing recorded)."""

    def __init__(self, device: TeleopDevice, rate: RateLoop, idle: RateLoop, status: "_Status", announce: Callable[[], None], counters, max_steps: int, progress: str):
        self.device, self.rate, self.idle, self.status, self.announce = device, rate, idle, status, announce
        self.counters, self.max_steps, self.progress = counters, max_steps, progress
        self.before: Counter[str] = Counter()
        self.started = 0.0

    def begin(self, seed: int, observation: Observation) -> Ending | None:
        self.device.reset()
        if not wait_for_start(self.device, observation, self.idle, self.announce):
            return Ending("quit", False, "quit")
        self.before, self.started = Counter(self.counters.as_dict()), time.monotonic()
        self.rate.restart()
        return None

    def act(self, t: int, observation: Observation) -> Act | Ending:
        if self.status.due():
            interventions = sum((Counter(self.counters.as_dict()) - self.before).values())
            self.status.update(f"episode {self.progress}  {time.monotonic() - self.started:5.1f} s  step {t}/{self.max_steps}  {_rate_text(self.rate)}  safety {interventions}")
        command = self.device.poll(observation)
        end = _end_of_episode(command.events)
        if end is not None:
            return Ending(end, {"success": True, "failure": False}.get(end), "quit" if end == "quit" else None)
        return IDLE if command.action is None else Act(np.asarray(command.action))


def _record_episode(robot: Robot, task: Task, operator: _Operator, seed: int, rate: RateLoop, max_steps: int, view: "LiveView | None") -> _Take:
    """One episode on the episode engine at the recording's fixed rate: poll, send, sleep to the period, observe, score."""
    ticks_before = rate.ticks
    episode = Episode(robot, task, operator, seed=seed, max_steps=max_steps, pace=rate.sleep, end_on_success=False)
    for step in episode:
        if step.t == 0 and view is not None:
            view.episode_start(operator.progress)
        if view is not None:
            view.log(step.observation, step.action, step.outcome)
    end = {"max-steps": "limit"}.get(episode.ending.label, episode.ending.label)
    after = Counter(robot.counters.as_dict())
    return _Take(episode.frames, end, episode.success, rate.stats(last=rate.ticks - ticks_before), after - operator.before)


def _rate_text(rate: RateLoop) -> str:
    held = rate.stats(last=50).mean_hz
    return f"{held:.1f}/{rate.hz:g} Hz" if rate.hz else f"{held:.0f} Hz (unthrottled)"


class _Status:
    """A status line rewritten in place on a terminal (at most every STATUS_EVERY_S), plus permanent lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._last = 0.0

    def due(self) -> bool:
        """Whether :meth:`update` would print now (callers skip building the text otherwise)."""
        return self.tty and time.monotonic() - self._last >= STATUS_EVERY_S

    def update(self, text: str) -> None:
        self._last = time.monotonic()
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()

    def line(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()


class LiveView:
    """Each recorded step streamed to a Rerun recording through :class:`robot.viewer.LiveLogger`.

    Steps count on across episodes on the ``step`` timeline; each episode start is a
    line in the ``events`` log. The layout is ``robot view``'s, so a live session and
    the stored episodes look alike.
    """

    def __init__(self, recording: Any, features: Mapping[str, Feature] | None = None, fps: float | None = None):
        from robot.viewer import LiveLogger

        self.recording = recording
        self.logger = LiveLogger(recording, features, fps=fps)
        self._step = 0

    @classmethod
    def open(cls, application: str, features: Mapping[str, Feature] | None = None, fps: float | None = None) -> "LiveView":
        """Spawn a viewer, or with no display serve gRPC and say how to connect (e.g. over SSH)."""
        from robot.viewer import episode_blueprint, open_recording

        blueprint = episode_blueprint(features) if features else None
        return cls(open_recording(application, spawn=True, blueprint=blueprint), features, fps)

    def episode_start(self, label: str) -> None:
        self.logger.log_event(self._step, f"episode {label} starts")

    def log(self, observation: Observation, applied: np.ndarray, outcome: StepOutcome) -> None:
        flags = {SUCCESS: outcome.success, INTERVENTION: False}
        self.logger.log_step(self._step, observation, applied, dict(outcome.terms), flags)
        self._step += 1
