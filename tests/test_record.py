"""`robot record` end to end in sim: keyboard keys through a pseudo-terminal, the scripted expert
in-process and through the CLI, a recorder killed mid-episode, and the rate loop."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from hardware.registry import make_sim
from hardware.teleop import ActionMapping, DeviceUnavailable
from hardware.teleop.keyboard import KeyboardDevice
from robot.store import StoreError, ZarrEpisodeStore
from robot.types import ACTION, DONE, INTERVENTION, REWARD, STATE, SUCCESS
from tests.store_fixtures import FEATURES
from workflow.rate import RateLoop
from workflow.record import LiveView, RecordConfig, record


# ------------------------------------------------------------------------------ rate loop


class FakeClock:
    """A clock that only moves when the loop sleeps (plus ``overshoot``) or the test does work."""

    def __init__(self, overshoot: float = 0.0):
        self.now, self.overshoot, self.sleeps = 100.0, overshoot, 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.sleeps += 1
        self.now += dt + self.overshoot


def test_rate_loop_sleeps_to_absolute_deadlines():
    clock = FakeClock(overshoot=0.002)
    loop = RateLoop(10, clock=clock, sleeper=clock.sleep)
    for _ in range(50):
        clock.now += 0.03  # work
        loop.sleep()
    stats = loop.stats()
    assert stats.ticks == 50 and stats.overruns == 0
    assert stats.mean_hz == pytest.approx(10, rel=0.001)  # overshoot does not accumulate
    assert stats.jitter_p50_ms == pytest.approx(0.0, abs=1e-6) and 0 < stats.jitter_p99_ms <= 2.0 + 1e-6  # only the first period is late


def test_rate_loop_counts_overruns_and_reanchors():
    clock = FakeClock()
    loop = RateLoop(10, clock=clock, sleeper=clock.sleep)
    for work in (0.05, 0.25, 0.05, 0.05):
        clock.now += work
        loop.sleep()
    stats = loop.stats()
    assert stats.overruns == 1 and stats.ticks == 4
    assert np.allclose(np.array(loop._periods), [0.1, 0.25, 0.1, 0.1])  # no burst after the overrun
    clock.now += 60.0  # a pause (reset phase), then a restart: the gap is not a period
    loop.restart()
    clock.now += 0.01
    loop.sleep()
    assert loop.ticks == 5 and loop.stats(last=1).mean_hz == pytest.approx(10) and loop.stats(last=1).overruns == 0


def test_rate_loop_unthrottled_only_measures():
    clock = FakeClock()
    loop = RateLoop(0, clock=clock, sleeper=clock.sleep)
    for _ in range(10):
        clock.now += 0.001
        loop.sleep()
    assert clock.sleeps == 0 and loop.stats().mean_hz == pytest.approx(1000)
    with pytest.raises(ValueError, match=">= 0"):
        RateLoop(-1)


def test_rate_loop_holds_a_real_rate():
    loop = RateLoop(100)
    for _ in range(30):
        loop.sleep()
    stats = loop.stats()
    print(stats.describe())
    assert stats.ticks == 30 and 20 < stats.mean_hz < 200  # sanity only: the bench measures the real numbers


# ------------------------------------------------------------------------------ keyboard through a pty


class TypedKeyboard(KeyboardDevice):
    """The real keyboard device on a pty; before each poll the test 'types' the next chunk into the pty."""

    def __init__(self, mapping: ActionMapping, master: int, slave: int, script: list[bytes | None]):
        super().__init__(mapping, fd=slave)
        self.master, self.slave, self.script = master, slave, list(script)

    def poll(self, observation):
        assert self.script, "the recorder polled past the end of the typed script"
        chunk = self.script.pop(0)
        if chunk:
            os.write(self.master, chunk)
            select.select([self.slave], [], [], 2.0)  # pty delivery is asynchronous
        return super().poll(observation)


def test_keyboard_session_keeps_discards_and_labels(tmp_path):
    robot, task = make_sim("push")
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    script = [
        b"\r", b"w", b"w", b"w", b"x",  # start, three steps, discard
        b"\r", b"d", b"d", b"d", b"d", b"n",  # redo: four steps, keep as failure
        b"\r", b"a", b"a", b"a", b"y",  # three steps, keep as success (the operator's call)
        b"\r", b"s", b"s", b"\r",  # two steps, stop: the task's label (block not at target)
        b"\r", *[None] * 6,  # no keys: six zero-motion steps hit max_steps, kept with the task's label
        b"\r", b"w", b"q",  # quit mid-episode: that episode is dropped
    ]  # fmt: skip
    device = TypedKeyboard(_planar(robot), master, slave, script)
    status = io.StringIO()
    config = RecordConfig(task="push", device="keyboard", episodes=10, out=tmp_path / "kb.zarr", fps=0, operator="ada", seed=100, max_steps=6)
    try:
        report = record(config, device=device, robot=robot, task=task, stream=status)
    finally:
        robot.close()
    assert termios.tcgetattr(slave) == before and not device.script
    os.close(master)
    os.close(slave)
    print(status.getvalue())
    assert (report.kept, report.discarded, report.successes, report.quit) == (4, 1, 1, True)
    store = ZarrEpisodeStore.open(tmp_path / "kb.zarr")
    assert store.num_episodes == 4
    assert [m.success for m in store.metas] == [False, True, False, False]
    assert [m.seed for m in store.metas] == [100, 101, 102, 103]  # the redo reused seed 100
    assert [m.extra["end"] for m in store.metas] == ["failure", "success", "keep", "limit"]
    assert {(m.device, m.operator, m.source, m.task, m.fps) for m in store.metas} == {("keyboard", "ada", "demo", "push", 10.0)}
    episodes = list(store.episodes())
    assert [len(e) for e in episodes] == [4, 3, 2, 6]
    m = device.mapping.scale[0]  # the max step, rounded toward zero in float32
    first, second = episodes[0].data[ACTION], episodes[1].data[ACTION]
    assert np.array_equal(first[0], [0, -m]) and np.all(first[:, 0] == 0) and np.all(first[:, 1] <= 0)
    assert np.array_equal(second[0], [0, m]) and np.all(second[:, 0] == 0)
    assert np.all(episodes[3].data[ACTION] == 0)
    for e in episodes:
        assert e.data[DONE].tolist() == [False] * (len(e) - 1) + [True]
        assert not e.data[INTERVENTION].any() and e.data[SUCCESS].dtype == bool and e.data[REWARD].shape == (len(e),)
        assert e.data[STATE].shape == (len(e), 8)
    # observations line up with actions: the pusher moved by the applied action between steps
    moved = np.diff(episodes[0].data[STATE][:, :2], axis=0)
    assert np.allclose(moved, first[:-1], atol=0.004)


def _planar(robot):
    return ActionMapping.from_feature(robot.action_features[ACTION])


# ------------------------------------------------------------------------------ scripted, resume, errors


def test_scripted_recording_resumes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "push.zarr"
    report = record(RecordConfig(device="scripted", episodes=3, out=out, seed=7), stream=io.StringIO())
    assert (report.kept, report.successes, report.store_episodes, report.quit) == (3, 3, 3, False)
    assert report.rate.requested_hz == 0 and report.rate.ticks == report.steps
    print(report.summary())
    with pytest.raises(StoreError, match="--resume"):
        record(RecordConfig(device="scripted", episodes=1, out=out), stream=io.StringIO())
    report = record(RecordConfig(device="scripted", episodes=2, out=out, seed=7, resume=True, noise=0.2), stream=io.StringIO())
    store = ZarrEpisodeStore.open(out)
    assert store.num_episodes == 5 == report.store_episodes
    assert [m.seed for m in store.metas] == [7, 8, 9, 10, 11]
    assert all(m.success for m in store.metas[:3]) and all(m.device == "scripted" for m in store.metas)
    for e in store.episodes():
        assert e.data[SUCCESS][-1] == e.meta.success  # scripted labels come from the task


def test_resume_into_a_store_of_other_features_is_refused(tmp_path):
    ZarrEpisodeStore.create(tmp_path / "other.zarr", FEATURES).close()
    with pytest.raises(StoreError, match="other features"):
        record(RecordConfig(device="scripted", episodes=1, out=tmp_path / "other.zarr", resume=True), stream=io.StringIO())


def test_missing_device_is_a_clear_error_and_leaves_no_store(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "hid", None)
    with pytest.raises(DeviceUnavailable, match=r"robot-workflow-kit\[spacemouse\]"):
        record(RecordConfig(device="spacemouse", out=tmp_path / "sm.zarr"), stream=io.StringIO())
    assert not (tmp_path / "sm.zarr").exists()


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="scripted device only|only applies to the scripted"):
        RecordConfig(device="keyboard", noise=0.3)
    with pytest.raises(ValueError, match="unknown device 'mouse'"):
        RecordConfig(device="mouse")
    with pytest.raises(ValueError, match="--robot sim:push"):
        record(RecordConfig(task="push", robot="sim:lift", device="scripted"))
    assert RecordConfig(task="lift").out_path.as_posix() == "data/lift.zarr"
    assert RecordConfig(device="scripted").loop_hz(10) == 0 and RecordConfig().loop_hz(10) == 10
    with pytest.raises(ValueError, match="unknown expert style 'sloppy'; choose one of iid, hesitant, biased, mixed"):
        RecordConfig(device="scripted", style="sloppy")
    with pytest.raises(ValueError, match="style=hesitant only applies to the scripted device, not keyboard"):
        RecordConfig(device="keyboard", style="hesitant")
    assert RecordConfig().style == "iid"


def test_scripted_styles_reach_the_expert_and_the_episode_metadata(tmp_path):
    """A mixed operator records both ways round the block over episodes; the store says which style and draw."""
    report = record(RecordConfig(device="scripted", episodes=6, out=tmp_path / "mixed.zarr", style="mixed", noise=0.1, seed=3), stream=io.StringIO())
    assert report.kept == 6
    metas = ZarrEpisodeStore.open(tmp_path / "mixed.zarr").metas
    assert all(m.extra["style"] == "mixed" and m.extra["noise"] == 0.1 for m in metas)
    assert {m.extra["style_episode"]["strategy"] for m in metas} == {"short", "long"}
    record(RecordConfig(device="scripted", episodes=1, out=tmp_path / "iid.zarr"), stream=io.StringIO())
    assert "style" not in ZarrEpisodeStore.open(tmp_path / "iid.zarr").metas[0].extra  # as noise 0 is not written
    # a hesitant operator's episodes are longer than the clean one's, seed for seed
    record(RecordConfig(device="scripted", episodes=3, out=tmp_path / "clean.zarr"), stream=io.StringIO())
    record(RecordConfig(device="scripted", episodes=3, out=tmp_path / "hesitant.zarr", style="hesitant"), stream=io.StringIO())
    lengths = {name: sum(len(e) for e in ZarrEpisodeStore.open(tmp_path / f"{name}.zarr").episodes()) for name in ("clean", "hesitant")}
    assert lengths["hesitant"] > 1.5 * lengths["clean"], lengths


# ------------------------------------------------------------------------------ the command line


def _robot(*args: str, **kw):
    return subprocess.run([sys.executable, "-m", "robot.cli", *args], capture_output=True, text=True, timeout=180, **kw)


def test_cli_records_twenty_scripted_episodes_that_info_reads(tmp_path):
    out = tmp_path / "push.zarr"
    run = _robot("record", "--task", "push", "--device", "scripted", "--episodes", "20", "--out", str(out), "--operator", "ci")
    assert run.returncode == 0, run.stderr
    assert "episode 20/20 kept" in run.stderr and "recorded into" in run.stdout
    info = _robot("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "episodes   20" in info.stdout and "success    100.0% (20/20)" in info.stdout and "demo (20)" in info.stdout
    again = _robot("record", "--device", "scripted", "--episodes", "1", "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr and again.stderr.count("\n") == 1
    # the training stage accepts what the recorder wrote
    train = _robot("train", "imitation", "--data", str(out), "--out", str(tmp_path / "il"), "--steps", "3", "--batch-size", "8", "--horizon", "4", "--n-action-steps", "2")
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "il" / "policy" / "checkpoint.json").is_file()


def test_cli_records_in_an_operator_style_and_refuses_unknown_ones(tmp_path):
    out = tmp_path / "hesitant.zarr"
    run = _robot("record", "--device", "scripted", "--style", "hesitant", "--noise", "0.1", "--episodes", "2", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "style hesitant" in run.stderr  # the device's controls line
    assert [(m.extra["style"], m.extra["noise"]) for m in ZarrEpisodeStore.open(out).metas] == [("hesitant", 0.1)] * 2
    bad = _robot("record", "--device", "scripted", "--style", "lazy", "--out", str(tmp_path / "bad.zarr"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "choose one of iid, hesitant, biased, mixed" in bad.stderr
    human = _robot("record", "--device", "keyboard", "--style", "biased", "--out", str(tmp_path / "human.zarr"))
    assert human.returncode == 2 and "only applies to the scripted device" in human.stderr and not (tmp_path / "human.zarr").exists()


def test_recorder_killed_mid_episode_keeps_every_committed_episode(tmp_path):
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "robot.cli", "record", "--device", "scripted", "--episodes", "100", "--fps", "100", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = 0
    try:
        for line in proc.stderr:
            if " kept as " in line:
                seen += 1
                if seen == 2:
                    break
        time.sleep(0.05)  # a few steps into episode 3
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert seen == 2 and proc.returncode == -signal.SIGKILL
    store = ZarrEpisodeStore.open(out, mode="a")  # a writer recovers the store (drops the half episode)
    assert store.num_episodes >= 2
    for episode in store.episodes():
        assert len(episode) == episode.data[ACTION].shape[0] and episode.data[DONE][-1] and episode.meta.success
    kept = store.num_episodes
    store.close()
    report = record(RecordConfig(device="scripted", episodes=1, out=out, resume=True), stream=io.StringIO())
    assert report.store_episodes == kept + 1


# ------------------------------------------------------------------------------ the live view


def test_live_view_logs_steps_to_a_rerun_recording():
    import rerun as rr

    from robot.protocols import StepOutcome

    recording = rr.RecordingStream("test-record")
    recording.memory_recording()
    view = LiveView(recording)
    for t in range(3):
        obs = {STATE: np.zeros(8, np.float32), "observation.images.top": np.zeros((8, 8, 3), np.uint8), "timestamp": np.float64(t)}
        view.log(obs, np.zeros(2, np.float32), StepOutcome({"step": -0.01}, False))
    assert view._step == 3
