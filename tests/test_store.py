"""The episode store: round trip, crash safety under kill -9, concurrent readers, bad input."""

from __future__ import annotations

import gc
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from robot.store import StoreError, ZarrEpisodeStore
from robot.types import EpisodeMeta, Feature
from tests.store_fixtures import FEATURES, check_episode, make_episode, make_meta

ROOT = Path(__file__).resolve().parents[1]


def _writer(path: Path, n: int, kill_at: int | str | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.store_fixtures", str(path), str(n)]
    if kill_at is not None:
        args.append(str(kill_at))
    return subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fill(path: Path, n: int) -> ZarrEpisodeStore:
    store = ZarrEpisodeStore.create(path, FEATURES)
    for i in range(n):
        store.append_episode(make_episode(i), make_meta(i))
    return store


def test_round_trip_images_and_states(tmp_path):
    _fill(tmp_path / "s.zarr", 4).close()
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 4
    assert store.num_steps == sum(len(make_episode(i)["reward"]) for i in range(4))
    assert store.features == FEATURES
    for i in range(4):
        check_episode(store.episode(i), i)
    assert store.success_rate() == pytest.approx(np.mean([make_meta(i).success for i in range(4)]))
    loaded = store.load(["action"])
    assert loaded["action"].shape == (store.num_steps, 2)
    assert store.episode(-1).index == 3


def test_append_resumes_after_close(tmp_path):
    _fill(tmp_path / "s.zarr", 2).close()
    with ZarrEpisodeStore.open(tmp_path / "s.zarr", mode="a") as store:
        store.append_episode(make_episode(2), make_meta(2))
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 3
    check_episode(store.episode(2), 2)


def test_bad_episodes_are_refused_without_damage(tmp_path):
    store = _fill(tmp_path / "s.zarr", 1)
    bad = make_episode(1)
    bad["action"][3, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.append_episode(bad, make_meta(1))
    short = make_episode(1)
    short["reward"] = short["reward"][:-1]
    with pytest.raises(StoreError, match="same number"):
        store.append_episode(short, make_meta(1))
    missing = make_episode(1)
    del missing["done"]
    with pytest.raises(StoreError, match="missing \\['done'\\]"):
        store.append_episode(missing, make_meta(1))
    assert store.num_episodes == 1
    store.append_episode(make_episode(1), make_meta(1))
    check_episode(ZarrEpisodeStore.open(tmp_path / "s.zarr").episode(1), 1)


def test_not_a_store_and_newer_version_are_one_line_errors(tmp_path):
    with pytest.raises(StoreError, match="no such episode store"):
        ZarrEpisodeStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=r"plain: not an episode store"):
        ZarrEpisodeStore.open(tmp_path / "plain")
    (tmp_path / "plain" / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        ZarrEpisodeStore.open(tmp_path / "plain")
    _fill(tmp_path / "s.zarr", 1).close()
    meta_path = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="version 99 is newer") as err:
        ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert str(tmp_path / "s.zarr") in str(err.value) and "\n" not in str(err.value)


def test_one_writer_at_a_time(tmp_path):
    store = _fill(tmp_path / "s.zarr", 1)
    with pytest.raises(StoreError, match="another process is writing"):
        ZarrEpisodeStore.open(tmp_path / "s.zarr", mode="a")
    store.close()
    ZarrEpisodeStore.open(tmp_path / "s.zarr", mode="a").close()


def test_open_or_create_refuses_other_features(tmp_path):
    _fill(tmp_path / "s.zarr", 1).close()
    other = dict(FEATURES, action=Feature((7,)))
    with pytest.raises(StoreError, match="action is float32 \\(2,\\) in the store"):
        ZarrEpisodeStore.open_or_create(tmp_path / "s.zarr", other)


# ---------------------------------------------------------------- kill -9
APPEND_CALLS = 2 * len(FEATURES) + 4  # per append: resize + write per key, resize + write ends, metadata block, commit


@pytest.mark.parametrize("kill_at", range(1, APPEND_CALLS + 1))
def test_kill_at_every_point_of_an_append_loses_nothing_earlier(tmp_path, kill_at):
    path = tmp_path / "s.zarr"
    _fill(path, 2).close()
    # the writer commits episode 2 and is killed at call `kill_at` inside the append of episode 3
    proc = _writer(path, 5, kill_at=APPEND_CALLS + kill_at)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -9, out
    assert [int(x) for x in out.split()[1::2]] == [2]
    store = ZarrEpisodeStore.open(path)
    assert store.num_episodes == 3  # episode 3 was killed before its commit: invisible, not half there
    for i in range(store.num_episodes):
        check_episode(store.episode(i), i)
    # the next writer discards the torn tail and appends cleanly
    with ZarrEpisodeStore.open(path, mode="a") as writer:
        n = writer.num_episodes
        writer.append_episode(make_episode(n), make_meta(n))
    store = ZarrEpisodeStore.open(path)
    for i in range(store.num_episodes):
        check_episode(store.episode(i), i)
    assert not list(path.rglob("*.partial"))


def test_a_commit_rewrites_a_bounded_record_however_many_episodes_the_store_holds(tmp_path):
    from robot.store import META_BLOCK

    path = tmp_path / "s.zarr"
    small = {"observation.state": Feature((2,)), "action": Feature((1,)), "reward": Feature(()), "done": Feature((), "bool")}
    episode = {"observation.state": np.zeros((2, 2), np.float32), "action": np.zeros((2, 1), np.float32), "reward": np.zeros(2, np.float32),
               "done": np.array([False, True])}  # fmt: skip
    reader_early = None
    with ZarrEpisodeStore.create(path, small) as store:
        sizes = []
        for i in range(META_BLOCK + 44):
            store.append_episode(episode, EpisodeMeta(task="t", robot="r", fps=10.0, success=i % 2 == 0, seed=i))
            sizes.append((path / "zarr.json").stat().st_size)
            if i == 10:
                reader_early = ZarrEpisodeStore.open(path)
    assert max(sizes) - min(sizes) < 16  # the commit record does not grow with the episodes (format 1's held them all)
    assert [len(json.loads(f.read_text())) for f in sorted((path / "episodes").iterdir())] == [META_BLOCK, 44]
    reader = ZarrEpisodeStore.open(path)
    assert [m.seed for m in reader.metas] == list(range(META_BLOCK + 44)) and reader.metas[3].success is False
    assert reader_early.num_episodes == 11
    reader_early.refresh()
    assert reader_early.metas == reader.metas


def test_a_format_1_store_is_read_as_it_is_and_moved_to_blocks_when_appended_to(tmp_path):
    path = tmp_path / "s.zarr"
    _fill(path, 3).close()
    root = json.loads((path / "zarr.json").read_text())  # rewrite it as format 1 wrote it
    metas = [json.loads(f.read_text()) for f in sorted((path / "episodes").iterdir())][0]
    attrs = root["attributes"]
    attrs.update(format_version=1, episodes=metas)
    del attrs["num_episodes"]
    (path / "zarr.json").write_text(json.dumps(root))
    import shutil

    shutil.rmtree(path / "episodes")
    store = ZarrEpisodeStore.open(path)
    assert store.num_episodes == 3
    for i in range(3):
        check_episode(store.episode(i), i)
    with ZarrEpisodeStore.open(path, mode="a") as writer:
        writer.append_episode(make_episode(3), make_meta(3))
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert attrs["format_version"] == 2 and attrs["num_episodes"] == 4 and "episodes" not in attrs
    store = ZarrEpisodeStore.open(path)
    for i in range(4):
        check_episode(store.episode(i), i)


def test_a_missing_metadata_block_is_one_line(tmp_path):
    path = tmp_path / "s.zarr"
    _fill(path, 2).close()
    (path / "episodes" / "000000.json").unlink()
    with pytest.raises(StoreError, match=r"episodes/000000.json is missing; the metadata of episodes 0-1 is lost"):
        ZarrEpisodeStore.open(path)


CREATE_WRITES = 15  # 14 here: group and array metadata files, the commit record, the rename into place; the 15th finishes


@pytest.mark.parametrize("kill_at", range(1, CREATE_WRITES + 1))
def test_a_creation_killed_at_any_write_leaves_no_store_or_a_whole_one_and_resume_starts_it(tmp_path, kill_at):
    path = tmp_path / "s.zarr"
    proc = _writer(path, 2, kill_at=f"create:{kill_at}")
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # fewer writes than kill_at: it finished
        assert ZarrEpisodeStore.open(path).num_episodes == 2
        return
    assert proc.returncode == -9, err
    if path.exists():
        assert ZarrEpisodeStore.open(path).num_episodes == 0  # whole and empty, never half made
    proc = _writer(path, 2)  # what `robot record --resume` does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    store = ZarrEpisodeStore.open(path)
    assert store.num_episodes == 2
    for i in range(2):
        check_episode(store.episode(i), i)
    assert not list(tmp_path.glob(".s.zarr.creating-*"))  # the killed creation's leftovers are gone


def test_a_half_created_store_from_before_atomic_creation_is_named_and_resumed(tmp_path):
    """A killed creation by an older kit: arrays written, no commit record; it holds no episode."""
    import zarr

    path = tmp_path / "old.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("data/action", shape=(0, 2), chunks=(16, 2), dtype="float32")
    with pytest.raises(StoreError, match="creation was interrupted \\(it holds no episode\\); delete it, or record with --resume"):
        ZarrEpisodeStore.open(path)
    with pytest.raises(StoreError, match="creation was interrupted"):
        ZarrEpisodeStore.create(path, FEATURES)
    with ZarrEpisodeStore.open_or_create(path, FEATURES) as store:
        store.append_episode(make_episode(0), make_meta(0))
    check_episode(ZarrEpisodeStore.open(path).episode(0), 0)


def test_a_failed_open_releases_the_write_lock_exactly_once(tmp_path):
    _fill(tmp_path / "s.zarr", 1).close()
    meta_path = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["features"]
    meta_path.write_text(json.dumps(meta))
    for _ in range(3):
        with pytest.raises(StoreError, match="commit record in zarr.json is damaged \\(no 'features'\\)"):
            ZarrEpisodeStore.open(tmp_path / "s.zarr", mode="a")
        keep = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)  # takes the lock's freed descriptor number
        try:
            gc.collect()  # a half-built store closing the lock again would close this file
            os.fstat(keep)
        finally:
            os.close(keep)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_kill_at_random_moments(tmp_path, delay):
    path = tmp_path / "s.zarr"
    proc = _writer(path, 10_000)
    committed = []
    deadline = time.monotonic() + 60
    while not committed and time.monotonic() < deadline:  # wait for the first commit, then a bit more
        line = proc.stdout.readline()
        if line.startswith("committed"):
            committed.append(int(line.split()[1]))
    time.sleep(delay)
    proc.kill()
    rest, _ = proc.communicate(timeout=30)
    committed += [int(x) for x in rest.split()[1::2]]
    store = ZarrEpisodeStore.open(path)
    assert store.num_episodes >= len(committed) >= 1
    for i in range(store.num_episodes):
        check_episode(store.episode(i), i)


def test_reader_sees_a_consistent_prefix_while_a_writer_appends(tmp_path):
    """The writer appends one episode per "go"; the reader reads while each append is under way,
    so it watches every count without depending on how the scheduler interleaves the two."""
    path = tmp_path / "s.zarr"
    _fill(path, 1).close()
    proc = _writer(path, 40, "paced")
    committed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [committed.put(line) for line in proc.stdout], daemon=True).start()
    reader = ZarrEpisodeStore.open(path)
    seen = []
    try:
        for i in range(1, 41):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            while True:
                reader.refresh()
                n = reader.num_episodes
                seen.append(n)
                for j in range(max(0, n - 2), n):  # the newest episodes are the ones at risk
                    check_episode(reader.episode(j), j)
                try:
                    assert committed.get(timeout=0.01).strip() == f"committed {i}"
                    break
                except queue.Empty:
                    assert proc.poll() is None, proc.stderr.read()
            reader.refresh()
            assert reader.num_episodes == i + 1
            seen.append(i + 1)
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    assert seen == sorted(seen) and set(seen) == set(range(1, 42))


def test_meta_validation():
    with pytest.raises(ValueError, match="source"):
        EpisodeMeta(task="t", robot="r", fps=10, success=True, source="youtube")
    meta = EpisodeMeta(task="t", robot="r", fps=10, success=True, seed=3, extra={"noise": 0.5})
    assert EpisodeMeta.from_dict(meta.to_dict()) == meta


def test_a_lost_or_damaged_chunk_is_one_line_naming_the_key_and_episodes_never_zeros(tmp_path):
    path = tmp_path / "s.zarr"
    _fill(path, 3).close()
    (path / "data" / "action" / "c" / "0").rename(tmp_path / "kept")  # the whole first chunk of actions: every episode here
    store = ZarrEpisodeStore.open(path)
    with pytest.raises(StoreError, match=r"data/action has lost 1 chunk file\(s\) \(frames 0-\d+, episodes 0-2\); restore"):
        store.load(["action"])
    with pytest.raises(StoreError, match="data/action has lost"):
        store.episode(1)
    assert store.episode(2, ["observation.state"]).data["observation.state"].shape[0] == len(make_episode(2)["reward"])
    (tmp_path / "kept").rename(path / "data" / "action" / "c" / "0")
    chunk = path / "data" / "observation.state" / "c" / "0" / "0"
    damaged = bytearray(chunk.read_bytes())
    damaged[20:40] = b"\xff" * 20
    chunk.write_bytes(bytes(damaged))
    with pytest.raises(StoreError, match=r"data/observation.state frames 0-\d+ \(episodes 0-2\) do not decode \(.*\); a chunk file is damaged"):
        ZarrEpisodeStore.open(path).load(["observation.state"])
