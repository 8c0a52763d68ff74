"""The episode store: a zarr (v3) directory of episodes, crash safe and readable while written.

Layout::

    STORE/zarr.json          root group; its attributes are the commit record:
                             format, format_version, kit_version, features and
                             num_episodes (the committed episodes)
    STORE/data/<key>         one array per key, time on axis 0, episodes concatenated
    STORE/meta/episode_ends  int64, end index (exclusive) of each episode
    STORE/episodes/NNNNNN.json  metadata of episodes 256 N ... 256 N + 255, one dict each
    STORE/write.lock         held (flock) by the one writer

Appending is a four-step protocol: (1) grow every data array and write the new
frames, (2) grow ``meta/episode_ends``, (3) rewrite the episode's metadata block,
(4) rewrite the root attributes with the new ``num_episodes``. Only step 4 makes the
episode visible, and every file is written through a temporary file and an atomic
rename, so a writer killed at any moment leaves the previous commit intact. Arrays
and the last block may then hold more than the commit says; readers never look
there and the next writer overwrites it. Each step writes a bounded amount, so a
commit costs the same into an empty store and into one of 10^5 episodes.

Format 1 kept every episode's metadata in the root attributes (a commit rewrote all
of them); such a store is read as it is and moved to format 2 when opened to append.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from robot import __version__
from robot.protocols import Episode
from robot.types import EpisodeMeta, Feature, Features, features_from_dict, features_to_dict

FORMAT = "robot-episode-store"
FORMAT_VERSION = 2
META_BLOCK = 256
"""Episodes per metadata file (``STORE/episodes/NNNNNN.json``): what one commit rewrites at most."""
CHUNK_BYTES = 1 << 20  # aim for ~1 MiB of raw data per chunk along time
MAX_CHUNK_FRAMES = 4096


class StoreError(Exception):
    """A store that cannot be opened or written; the message names the path and the fix."""


def _zarr():
    import zarr  # imported lazily: `robot --help` should not pay for zarr

    return zarr


def _compressors():
    zarr = _zarr()
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]


def _time_chunk(feature: Feature) -> int:
    frame_bytes = max(1, int(np.prod(feature.shape, dtype=np.int64)) * np.dtype(feature.dtype).itemsize)
    return int(np.clip(CHUNK_BYTES // frame_bytes, 1, MAX_CHUNK_FRAMES))


class ZarrEpisodeStore:
    """Episodes in a zarr directory. Open with :meth:`create`, :meth:`open` or :meth:`open_or_create`.

    A store opened for reading (``mode="r"``) sees the episodes committed when it
    was opened; :meth:`refresh` picks up episodes appended since. A store opened
    for appending (``mode="a"``) holds an exclusive lock: one writer at a time.
    """

    def __init__(self, path: Path, group: Any, mode: str, lock_fd: int | None):
        self.path = path
        self.mode = mode
        self._group = group
        self._lock_fd: int | None = None  # owned only once the commit record reads: a failed open closes it once
        self._arrays: dict[str, Any] = {}
        self._load_commit()
        self._lock_fd = lock_fd

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | os.PathLike, features: Features, *, overwrite: bool = False) -> "ZarrEpisodeStore":
        """Create an empty store for ``features`` (every per-step key, actions and rewards included).

        The store is built in a hidden sibling directory and renamed into place, so a creation killed at any
        moment leaves either no store or a whole one; the leftovers of a killed creation are removed here.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a directory; pick another path")
        if path.exists() and any(path.iterdir()) and not overwrite:
            if _interrupted_creation(path):
                raise StoreError(_interrupted_message(path))
            raise StoreError(f"{path}: already exists; open it with --resume / ZarrEpisodeStore.open(mode='a') or pick another path")
        if not features:
            raise StoreError(f"{path}: a store needs at least one feature")
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_creations(path)
        building = path.with_name(f".{path.name}.creating-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        zarr = _zarr()
        group = zarr.open_group(str(building), mode="w")
        for key, feat in features.items():
            group.create_array(
                f"data/{key}",
                shape=(0, *feat.shape),
                chunks=(_time_chunk(feat), *feat.shape),
                dtype=feat.dtype,
                compressors=_compressors(),
                fill_value=0,
            )
        group.create_array("meta/episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=0)
        group.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kit_version": __version__,
                "features": features_to_dict(features),
                "num_episodes": 0,
                "every_chunk_written": True,  # zarr skips all-fill chunks unless told: here a missing chunk is a lost one
            }
        )
        if path.exists():  # an empty directory, or a store to overwrite: rename(2) replaces only an empty one
            shutil.rmtree(path)
        os.rename(building, path)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "ZarrEpisodeStore":
        """Open an existing store: ``mode="r"`` to read, ``"a"`` to append (exclusive)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        _check_is_store(path)
        lock_fd = _acquire_write_lock(path) if mode == "a" else None
        zarr = _zarr()
        store = None
        try:
            group = zarr.open_group(str(path), mode="r+" if mode == "a" else "r")
            store = cls(path, group, mode, lock_fd)
            if mode == "a":
                store._discard_uncommitted()
                store._upgrade_format()
        except Exception:
            if store is not None:
                store.close()
            elif lock_fd is not None:
                os.close(lock_fd)
            raise
        return store

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, features: Features) -> "ZarrEpisodeStore":
        """Append to ``path`` if it is a store with the same features, else create it."""
        path = Path(path)
        if not path.exists() or not any(path.iterdir()):
            return cls.create(path, features)
        if _interrupted_creation(path):  # the leftover of a creation killed before this kit made it atomic: no episode lost
            return cls.create(path, features, overwrite=True)
        store = cls.open(path, mode="a")
        mismatch = _feature_mismatch(store.features, features)
        if mismatch:
            store.close()
            raise StoreError(f"{path}: holds other features than this recording ({mismatch}); use a new --out path")
        return store

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ZarrEpisodeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    @property
    def features(self) -> dict[str, Feature]:
        return self._features

    @property
    def num_episodes(self) -> int:
        return len(self._metas)

    @property
    def num_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 exclusive end index of each committed episode."""
        return self._ends.copy()

    @property
    def metas(self) -> list[EpisodeMeta]:
        return list(self._metas)

    def episode_bounds(self, index: int) -> tuple[int, int]:
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"{self.path}: episode {index} out of range (store has {self.num_episodes})")
        index %= self.num_episodes
        start = int(self._ends[index - 1]) if index > 0 else 0
        return start, int(self._ends[index])

    def episode(self, index: int, keys: Sequence[str] | None = None) -> Episode:
        start, end = self.episode_bounds(index)
        keys = self._check_keys(keys)
        data = {k: self._read(k, start, end) for k in keys}
        return Episode(index=index % self.num_episodes, data=data, meta=self._metas[index])

    def episodes(self, keys: Sequence[str] | None = None) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.episode(i, keys)

    def load(self, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every committed frame of ``keys`` in memory: ``{key: (T, ...)}`` (one read per key)."""
        keys = self._check_keys(keys)
        return {k: self._read(k, 0, self.num_steps) for k in keys}

    def refresh(self) -> None:
        """See episodes committed since this store was opened (readers)."""
        zarr = _zarr()
        self._group = zarr.open_group(str(self.path), mode="r+" if self.mode == "a" else "r")
        self._arrays.clear()
        self._load_commit()

    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def success_rate(self) -> float | None:
        return float(np.mean([m.success for m in self._metas])) if self._metas else None

    # ------------------------------------------------------------------ writing
    def append_episode(self, frames: Mapping[str, np.ndarray], meta: EpisodeMeta) -> int:
        """Append one episode atomically and return its index.

        ``frames`` holds every feature key with time on axis 0, all of one length >= 1.
        """
        if self.mode != "a":
            raise StoreError(f"{self.path}: opened read-only; open with mode='a' to append")
        arrays = self._validate_frames(frames)
        length = next(iter(arrays.values())).shape[0]
        start = self.num_steps
        end = start + length
        for key, values in arrays.items():  # step 1: frames (invisible until step 3)
            arr = self._array(key)
            arr.resize((end, *arr.shape[1:]))
            arr[start:end] = values
        ends = self._group["meta/episode_ends"]  # step 2
        n = self.num_episodes
        ends.resize((n + 1,))
        ends[n] = end
        first = n - n % META_BLOCK
        _write_json(self._block_path(n // META_BLOCK), [m.to_dict() for m in self._metas[first:]] + [meta.to_dict()])  # step 3
        self._group.attrs["num_episodes"] = n + 1  # step 4: the commit (one atomic file rename)
        self._metas.append(meta)
        self._ends = np.append(self._ends, np.int64(end))
        return n

    # --------------------------------------------------------------- internals
    def _load_commit(self) -> None:
        attrs = dict(self._group.attrs)
        self._every_chunk_written = attrs.get("every_chunk_written") is True  # older stores may leave all-zero chunks out
        try:
            self._features = features_from_dict(attrs["features"])
            if "num_episodes" in attrs:  # format 2 (an upgrade killed half way may hold both)
                self._metas = self._read_metas(int(attrs["num_episodes"]), getattr(self, "_metas", []))
            else:  # format 1: every episode's metadata in the commit record
                self._metas = [EpisodeMeta.from_dict(m) for m in attrs["episodes"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"no {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
            raise StoreError(f"{self.path}: the commit record in zarr.json is damaged ({what}); restore the store from a copy") from None
        n = len(self._metas)
        ends = np.asarray(self._group["meta/episode_ends"][:n], dtype=np.int64) if n else np.zeros(0, np.int64)
        if len(ends) != n or (n and (np.any(np.diff(ends) <= 0) or ends[0] <= 0)):
            raise StoreError(f"{self.path}: meta/episode_ends disagrees with the {n} committed episodes; the store is damaged")
        short = [k for k in self._features if n and self._group[f"data/{k}"].shape[0] < ends[-1]]
        if short:
            raise StoreError(f"{self.path}: data/{short[0]} holds {self._group[f'data/{short[0]}'].shape[0]} frames but the committed "
                             f"episodes end at frame {int(ends[-1])}; the store is damaged")  # fmt: skip
        self._ends = ends

    def _block_path(self, block: int) -> Path:
        return self.path / "episodes" / f"{block:06d}.json"

    def _read_metas(self, n: int, known: list[EpisodeMeta]) -> list[EpisodeMeta]:
        """The first ``n`` episodes' metadata; blocks wholly covered by ``known`` (read before) are not read again."""
        import json

        metas = list(known[: min(len(known), n) // META_BLOCK * META_BLOCK])
        while len(metas) < n:
            block = len(metas) // META_BLOCK
            try:
                rows = json.loads(self._block_path(block).read_text())
            except FileNotFoundError:
                raise StoreError(f"{self.path}: episodes/{block:06d}.json is missing; the metadata of episodes {len(metas)}-{n - 1} is lost") from None
            except ValueError:
                raise StoreError(f"{self.path}: episodes/{block:06d}.json is not valid JSON; the store is damaged") from None
            want = min(META_BLOCK, n - len(metas))
            if not isinstance(rows, list) or len(rows) < want:
                raise StoreError(f"{self.path}: episodes/{block:06d}.json holds {len(rows) if isinstance(rows, list) else 'no list of'} "
                                 f"episodes, the commit record needs {want}; the store is damaged")  # fmt: skip
            for i, row in enumerate(rows[:want], start=len(metas)):
                try:
                    metas.append(EpisodeMeta.from_dict(row))
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    what = f"no {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
                    raise StoreError(f"{self.path}: episodes/{block:06d}.json: the metadata of episode {i} is malformed ({what}); the store is damaged") from None
        return metas

    def _upgrade_format(self) -> None:
        """Move a format-1 store's metadata into blocks, so its commits stop rewriting every episode's."""
        attrs = dict(self._group.attrs)
        if "num_episodes" in attrs and "episodes" not in attrs:
            return
        for first in range(0, len(self._metas), META_BLOCK):
            _write_json(self._block_path(first // META_BLOCK), [m.to_dict() for m in self._metas[first : first + META_BLOCK]])
        self._group.attrs.update({"num_episodes": len(self._metas), "format_version": FORMAT_VERSION})  # format 2 from here
        del self._group.attrs["episodes"]

    def _array(self, key: str) -> Any:
        if key not in self._arrays:
            arr = self._group[f"data/{key}"]
            # every chunk on disk, all-zero ones too (zarr leaves those out by default): a missing chunk then means a lost one
            self._arrays[key] = arr.with_config({"write_empty_chunks": True}) if self.mode == "a" else arr
        return self._arrays[key]

    def check(self) -> list[str]:
        """Every problem a reader of the whole store would meet, one line each: lost or damaged chunk files (the
        first per key) and episodes holding NaN or inf. Empty for a sound store."""
        problems, data = [], {}
        for key in self._features:
            try:
                data[key] = self._read(key, 0, self.num_steps)
            except StoreError as e:
                problems.append(str(e))
        for episode, keys in nonfinite_episodes(data, self._ends).items():
            problems.append(f"{self.path}: episode {episode} holds NaN or inf in {', '.join(keys)}")
        return problems

    def _read(self, key: str, start: int, end: int) -> np.ndarray:
        """Frames ``start:end`` of ``key``, refusing what would read wrong: a chunk file that is gone (zarr would
        return zeros for it) or one that does not decode. The StoreError names the key, frames and episodes."""
        arr = self._array(key)
        if end <= start:
            return np.asarray(arr[start:end])
        length = arr.chunks[0]
        encoding = getattr(arr.metadata, "chunk_key_encoding", None)
        checkable = (self._every_chunk_written and getattr(encoding, "name", None) == "default"
                     and getattr(encoding, "separator", None) == "/")  # chunk i: data/KEY/c/i...  # fmt: skip
        gone = [i for i in range(start // length, (end - 1) // length + 1) if checkable and not (self.path / "data" / key / "c" / str(i)).exists()]
        if gone:
            first, last = gone[0] * length, min((gone[-1] + 1) * length, self.num_steps)
            raise StoreError(f"{self.path}: data/{key} has lost {len(gone)} chunk file(s) (frames {first}-{last - 1}, {self._episodes_in(first, last)}); "
                             "restore the store from a copy or leave those episodes out")  # fmt: skip
        try:
            return np.asarray(arr[start:end])
        except Exception as e:  # a damaged chunk: blosc, zstd or a short file, whatever the codec raises
            raise StoreError(f"{self.path}: data/{key} frames {start}-{end - 1} ({self._episodes_in(start, end)}) do not decode ({e}); "
                             "a chunk file is damaged: restore the store from a copy") from None  # fmt: skip

    def _episodes_in(self, start: int, end: int) -> str:
        first = int(np.searchsorted(self._ends, start, side="right"))
        last = min(int(np.searchsorted(self._ends, end - 1, side="right")), self.num_episodes - 1)
        return f"episode {first}" if first == last else f"episodes {first}-{last}"

    def _check_keys(self, keys: Sequence[str] | None) -> list[str]:
        if keys is None:
            return list(self._features)
        unknown = [k for k in keys if k not in self._features]
        if unknown:
            raise KeyError(f"{self.path}: no key {unknown[0]!r}; the store has {', '.join(self._features)}")
        return list(keys)

    def _validate_frames(self, frames: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [k for k in self._features if k not in frames]
        extra = [k for k in frames if k not in self._features]
        if missing or extra:
            raise StoreError(f"{self.path}: episode keys do not match the store (missing {missing}, unexpected {extra})")
        out: dict[str, np.ndarray] = {}
        lengths = set()
        for key, feat in self._features.items():
            values = np.asarray(frames[key])
            if values.shape[1:] != tuple(feat.shape):
                raise StoreError(f"{self.path}: {key} frames have shape {values.shape[1:]}, the store holds {feat.describe()}")
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                raise StoreError(f"{self.path}: {key} holds NaN or inf; refusing to store a corrupt episode")
            out[key] = values.astype(feat.dtype, copy=False)
            lengths.add(values.shape[0])
        if len(lengths) != 1 or 0 in lengths:
            raise StoreError(f"{self.path}: every key needs the same number (>= 1) of frames, got {sorted(lengths)}")
        return out

    def _discard_uncommitted(self) -> None:
        """Truncate frames a killed writer left past the last commit, and its temporary files."""
        for tmp in self.path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        steps = self.num_steps
        for key in self._features:
            arr = self._array(key)
            if arr.shape[0] != steps:
                arr.resize((steps, *arr.shape[1:]))
        ends = self._group["meta/episode_ends"]
        if ends.shape[0] != self.num_episodes:
            ends.resize((self.num_episodes,))


def nonfinite_episodes(data: Mapping[str, np.ndarray], episode_ends: np.ndarray) -> dict[int, list[str]]:
    """Episodes whose floating-point frames hold NaN or inf: ``{episode: [keys]}`` (``data`` as :meth:`ZarrEpisodeStore.load` returns it).

    The store refuses such frames when they are written; a store written by other tools, edited by hand or
    converted from elsewhere can still hold them, and one NaN frame trains a NaN policy."""
    bad: dict[int, list[str]] = {}
    for key, values in data.items():
        if values.dtype.kind != "f":
            continue
        rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if rows.any():
            for episode in np.unique(np.searchsorted(episode_ends, np.flatnonzero(rows), side="right")):
                if episode < len(episode_ends):  # frames past the last commit belong to no episode
                    bad.setdefault(int(episode), []).append(key)
    return dict(sorted(bad.items()))


def _write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON through a temporary file and an atomic rename."""
    import json

    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _interrupted_message(path: Path) -> str:
    return f"{path}: a store whose creation was interrupted (it holds no episode); delete it, or record with --resume to start it again"


def _interrupted_creation(path: Path) -> bool:
    """The start of a store whose creation was killed: arrays or a group file, no commit record, and no frame
    written anywhere (zarr's chunk files live under ``c/``), so nothing in it can be an episode."""
    import json

    if not path.is_dir() or any(f.is_file() for f in path.rglob("*") if "c" in f.relative_to(path).parts[:-1]):
        return False
    started = (path / "data").is_dir() or (path / "meta").is_dir()
    try:
        group = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return started  # arrays begun, the group file missing or half-written
    if not isinstance(group, dict) or group.get("node_type") != "group":
        return False
    return not group.get("attributes")  # the group written, its commit record not yet


def _remove_dead_creations(path: Path) -> None:
    """Hidden ``.NAME.creating-PID`` siblings of ``path`` that no other live process is building."""
    for leftover in path.parent.glob(f".{path.name}.creating-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _another_live_process(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _another_live_process(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_is_store(path: Path) -> None:
    import json

    root = path / "zarr.json"
    if not path.is_dir():
        raise StoreError(f"{path}: no such episode store (not a directory)")
    if _interrupted_creation(path):
        raise StoreError(_interrupted_message(path))
    try:
        attrs = json.loads(root.read_text()).get("attributes", {})
    except FileNotFoundError:
        raise StoreError(f"{path}: not an episode store (no zarr.json); record one with `robot record --out {path}`") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise StoreError(f"{path}: not an episode store (zarr.json is not valid JSON)") from None
    if attrs.get("format") != FORMAT:
        raise StoreError(f"{path}: a zarr group but not an episode store (format {attrs.get('format')!r}, expected {FORMAT!r})")
    version = attrs.get("format_version")
    if not isinstance(version, int):
        raise StoreError(f"{path}: the commit record in zarr.json has no valid format_version ({version!r}); the store is damaged")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format version {version} is newer than this kit reads ({FORMAT_VERSION}); upgrade the kit"
        )


def _acquire_write_lock(path: Path) -> int:
    fd = os.open(path / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path}: another process is writing to this store; wait for it or use another --out") from None
    return fd


def _feature_mismatch(have: Features, want: Features) -> str:
    if set(have) != set(want):
        return f"keys {sorted(set(have) ^ set(want))} differ"
    for key in have:
        if tuple(have[key].shape) != tuple(want[key].shape) or have[key].dtype != want[key].dtype:
            return f"{key} is {have[key].describe()} in the store, {want[key].describe()} here"
    return ""
