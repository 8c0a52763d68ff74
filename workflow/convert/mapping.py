"""What every import shares: the error type, a source read episode by episode, and the one writer into our store.

An importer (LeRobot, robomimic) is an :class:`EpisodeSource`: it decides up front
which of its keys become which of ours (``features`` and ``mappings``), then
reads and validates one whole episode at a time. :func:`import_into_store` is
the only code that writes: it appends each episode with
``ZarrEpisodeStore.append_episode`` (atomic), so an import that fails or is
killed halfway leaves every earlier episode readable and no half episode, and
``resume=True`` continues after the last committed one.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from robot.report import bar_interval, format_table
from robot.store import StoreError, ZarrEpisodeStore
from robot.types import EpisodeMeta, Feature

IMPORTED_FROM = "imported_from"  # EpisodeMeta.extra key: {"format", "path", "episode"} of the source episode


class ConvertError(ValueError):
    """Input that cannot be converted; the message names the file or key, the value, and the fix."""


@dataclass(frozen=True)
class KeyMapping:
    """One line of the conversion summary: which source key(s) became which key of the destination."""

    source: str
    target: str  # "-" when the source key is left out
    note: str = ""


class EpisodeSource(Protocol):
    """A dataset in another format, read one validated episode at a time."""

    path: Path
    format: str

    @property
    def features(self) -> dict[str, Feature]:
        """Every per-step key of our store this source fills."""
        ...

    @property
    def mappings(self) -> list[KeyMapping]: ...

    def __len__(self) -> int: ...

    def source_id(self, index: int) -> str:
        """A stable name of episode ``index`` in the source (``episode 3``, ``demo_12``); resume checks it."""
        ...

    def read(self, index: int) -> tuple[dict[str, np.ndarray], EpisodeMeta]:
        """Frames ``{key: (T, ...)}`` and metadata of one episode; raises ConvertError on bad data."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConvertReport:
    """What one conversion did, printed as a table by ``robot convert``."""

    src: Path
    dst: Path
    src_format: str
    dst_format: str
    episodes: int  # converted by this run
    resumed: int  # already in the destination before this run (skipped)
    steps: int  # converted by this run
    seconds: float
    features: Mapping[str, Feature] = field(default_factory=dict)  # of the destination, our key names
    mappings: Sequence[KeyMapping] = ()
    notes: Sequence[str] = ()

    def summary(self) -> str:
        rate = self.steps / self.seconds if self.seconds > 0 else None
        head = format_table(
            ["from", "to", "episodes", "resumed", "steps", "seconds", "steps/s"],
            [[f"{self.src_format} {self.src}", f"{self.dst_format} {self.dst}", self.episodes, self.resumed, self.steps, round(self.seconds, 2), rate]],
            title="converted",
        )
        keys = format_table(["source key", "destination key", "note"], [[m.source, m.target, m.note] for m in self.mappings])
        parts = [head, "", keys]
        if self.notes:
            parts += ["", *(f"note: {n}" for n in self.notes)]
        return "\n".join(parts)


# ------------------------------------------------------------------------------ writing our store


def import_into_store(source: EpisodeSource, dst: Path, *, resume: bool, dst_format: str = "zarr", progress: bool = True, notes: Sequence[str] = ()) -> ConvertReport:
    """Append every episode of ``source`` to the store at ``dst``, one atomic append per episode.

    An existing ``dst`` is an error unless ``resume``; then its features must be
    the ones this import produces and its episodes must be the first episodes
    of ``source`` (checked by source id), and the import continues after them.
    A store this call created is removed again if not a single episode made it.
    """
    features = source.features
    dst = Path(dst)
    created = not (dst.exists() and any(dst.iterdir()))
    if created:
        store = ZarrEpisodeStore.create(dst, features)
    elif not resume:
        raise ConvertError(f"{dst}: already exists; pass --resume to continue an interrupted import into it, or choose another destination")
    else:
        store = ZarrEpisodeStore.open(dst, mode="a")
        _check_resumable(store, source)
    started, first, steps = time.perf_counter(), store.num_episodes, 0
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(source), initial=first, desc=f"import {source.format}", unit="ep", disable=not progress, dynamic_ncols=True, mininterval=bar_interval(0.5))
        with bar:
            for i in range(first, len(source)):
                frames, meta = source.read(i)  # the whole episode, validated, before anything is written
                try:
                    store.append_episode(frames, meta)
                except StoreError as e:
                    raise ConvertError(f"{source.path}: {source.source_id(i)}: {e}") from None
                steps += len(next(iter(frames.values())))
                bar.update(1)
    except BaseException:
        if created and store.num_episodes == 0:
            store.close()
            shutil.rmtree(dst, ignore_errors=True)
        raise
    finally:
        store.close()
    return ConvertReport(
        src=source.path, dst=dst, src_format=source.format, dst_format=dst_format, episodes=len(source) - first, resumed=first,
        steps=steps, seconds=time.perf_counter() - started, features=features, mappings=source.mappings, notes=tuple(notes),
    )  # fmt: skip


def _check_resumable(store: ZarrEpisodeStore, source: EpisodeSource) -> None:
    have, want = store.features, source.features
    if set(have) != set(want) or any(have[k].shape != want[k].shape or have[k].dtype != want[k].dtype for k in have):
        diff = sorted(set(have) ^ set(want)) or [k for k in have if have[k] != want[k]]
        raise ConvertError(f"{store.path}: holds other features than this import produces (differs in {diff}); import into a new destination instead of --resume")
    if store.num_episodes > len(source):
        raise ConvertError(f"{store.path}: holds {store.num_episodes} episodes but {source.path} has only {len(source)}; it is not an import of this source")
    for i, meta in enumerate(store.metas):
        origin = meta.extra.get(IMPORTED_FROM) or {}
        if origin.get("episode") != source.source_id(i) or origin.get("format") != source.format:
            raise ConvertError(
                f"{store.path}: episode {i} came from {origin.get('format')} {origin.get('episode')!r}, not {source.format} "
                f"{source.source_id(i)!r}; --resume only continues an import of the same source with the same options"
            )


# ------------------------------------------------------------------------------ value checks shared by importers


def as_float_frames(values: np.ndarray, *, where: str, length: int) -> np.ndarray:
    """Numeric per-step values as float32 ``(T, D)`` (scalars per step become ``(T, 1)``); NaN/inf is an error."""
    values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise ConvertError(f"{where}: dtype {values.dtype} is not numeric; the store keeps numbers only; leave it out with --drop")
    if values.shape[:1] != (length,):
        raise ConvertError(f"{where}: {values.shape[0] if values.ndim else 0} steps, expected {length} (the episode length); the source is inconsistent")
    out = values.reshape(length, -1).astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        step = int(np.argwhere(bad)[0, 0])
        raise ConvertError(f"{where}: NaN or inf at step {step}; the store refuses corrupt values; fix or leave out this episode")
    return out


def check_rgb_frames(values: np.ndarray, *, where: str, length: int) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` camera frames, or a ConvertError saying what they are instead."""
    values = np.asarray(values)
    if values.dtype != np.uint8:
        raise ConvertError(f"{where}: camera frames of dtype {values.dtype}; the store keeps uint8 RGB (H, W, 3); convert them or leave the key out with --drop")
    if values.ndim != 4 or values.shape[-1] != 3:
        raise ConvertError(f"{where}: frames of shape {values.shape[1:]}, expected (H, W, 3) RGB; depth or grey images cannot be mapped; leave the key out with --drop")
    if values.shape[0] != length:
        raise ConvertError(f"{where}: {values.shape[0]} frames, expected {length} (the episode length); the source is inconsistent")
    return values


def last_step_done(length: int) -> np.ndarray:
    """Our ``done``: True on the last step of an episode only (what ``robot record`` stores)."""
    return np.arange(length) == length - 1
