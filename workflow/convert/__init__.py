"""``robot convert``: LeRobot v3 and robomimic HDF5 into our episode store, and our store out to LeRobot v3.

One module per format: :mod:`~workflow.convert.lerobot_import`,
:mod:`~workflow.convert.lerobot_export` (layout in
:mod:`~workflow.convert.lerobot_layout`), :mod:`~workflow.convert.robomimic`;
:mod:`~workflow.convert.mapping` holds the error type and the one writer into
our store; :mod:`~workflow.convert.video` the mp4 encoding and decoding.

    convert(ConvertConfig(src="data/pusht_lerobot", dst="data/pusht.zarr"))   # format from the layout
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robot.types import SOURCES
from workflow.convert.mapping import ConvertError, ConvertReport, import_into_store

FORMATS = ("lerobot", "robomimic", "zarr")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class ConvertConfig:
    """One conversion (the ``robot convert`` options)."""

    src: Path
    """Dataset to read: a LeRobot v3 directory, a robomimic .hdf5 file, or one of our zarr stores."""
    dst: Path
    """Where to write: our zarr store (imports) or a new LeRobot dataset directory (exports)."""
    src_format: str = "auto"
    """lerobot | robomimic | zarr; auto tells them apart by their layout."""
    dst_format: str = "auto"
    """zarr | lerobot; auto = zarr for lerobot/robomimic sources, lerobot for a zarr source."""
    state_keys: tuple[str, ...] = ()
    """Source vector keys concatenated, in order, into observation.state (LeRobot feature names or robomimic
    obs keys); empty = the format's default (observation.state; robomimic's eef pos/quat, gripper, object)."""
    drop: tuple[str, ...] = ()
    """Source keys to leave out (a depth camera, a point cloud on export)."""
    fps: float | None = None
    """Rate in Hz; default the source's (info.json fps, robomimic control_freq, the store's episodes)."""
    task: str | None = None
    """Task name of every imported episode; default the source's task text / robomimic env_name."""
    robot: str | None = None
    """Robot name of every imported episode; default LeRobot robot_type / robomimic robots."""
    source: str = "demo"
    """EpisodeMeta.source of imported episodes (demo, offline-rollout, online-rollout, deployment)."""
    filter_key: str | None = None
    """robomimic: import only the demos listed under mask/<filter_key> (e.g. train, valid)."""
    success_reward: float = 1.0
    """robomimic: a step succeeds when its reward reaches this (robosuite's sparse success reward is 1)."""
    unlabelled_success: bool = True
    """LeRobot: episode label when the dataset has no success signal (demonstrations are usually successes)."""
    resume: bool = False
    """Imports: continue an interrupted import into an existing store; without it an existing dst is an error."""
    vcodec: str = "libsvtav1"
    """Export: video encoder (libsvtav1 = AV1 as LeRobot writes, libx264 = H.264)."""
    crf: int = 30
    """Export: encoder quality, lower is better and bigger (LeRobot uses 30)."""
    data_file_mb: float = 100.0
    """Export: start a new data parquet file past this size (LeRobot's default)."""
    video_file_mb: float = 200.0
    """Export: start a new mp4 file per camera past this size (LeRobot's default)."""
    progress: bool = True
    """Show a progress bar (stderr)."""

    def __post_init__(self) -> None:
        if self.src_format not in ("auto", *FORMATS):
            raise ValueError(f"--from {self.src_format!r}: choose auto, {', '.join(FORMATS)}")
        if self.dst_format not in ("auto", "zarr", "lerobot"):
            raise ValueError(f"--to {self.dst_format!r}: choose auto, zarr or lerobot")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"--fps must be positive, got {self.fps}")
        if self.source not in SOURCES:
            raise ValueError(f"--source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"--crf {self.crf}: must be in [0, 63]")
        if not (self.data_file_mb > 0 and self.video_file_mb > 0):
            raise ValueError(f"file size limits must be positive, got data {self.data_file_mb} MB, video {self.video_file_mb} MB")


def detect_format(path: Path) -> str:
    """lerobot (meta/info.json), zarr (our store's zarr.json) or robomimic (an HDF5 file), from the layout."""
    path = Path(path)
    if path.is_dir():
        if (path / "meta" / "info.json").is_file():
            return "lerobot"
        if (path / "zarr.json").is_file():
            return "zarr"
        raise ConvertError(f"{path}: a directory with neither meta/info.json (LeRobot v3) nor zarr.json (our store); pass --from to name its format")
    if path.is_file():
        with path.open("rb") as f:
            if f.read(8) == HDF5_SIGNATURE:
                return "robomimic"
        raise ConvertError(f"{path}: not an HDF5 file (robomimic); pass --from to name its format")
    raise ConvertError(f"{path}: no such file or directory")


def convert(config: ConvertConfig) -> ConvertReport:
    """Run one conversion; raises ConvertError (a ValueError) naming what cannot be converted and the fix."""
    src_format = detect_format(config.src) if config.src_format == "auto" else config.src_format
    dst_format = config.dst_format if config.dst_format != "auto" else ("lerobot" if src_format == "zarr" else "zarr")
    if (src_format, dst_format) == ("zarr", "lerobot"):
        from workflow.convert.lerobot_export import export_lerobot

        return export_lerobot(
            Path(config.src), Path(config.dst), drop=config.drop, fps=config.fps, vcodec=config.vcodec, crf=config.crf,
            data_file_mb=config.data_file_mb, video_file_mb=config.video_file_mb, progress=config.progress,
        )  # fmt: skip
    if dst_format != "zarr" or src_format == "zarr":
        raise ConvertError(f"{src_format} -> {dst_format} is not a conversion this kit does; it imports lerobot/robomimic into zarr and exports zarr to lerobot")
    source = _open_source(config, src_format)
    try:
        return import_into_store(source, Path(config.dst), resume=config.resume, progress=config.progress)
    finally:
        source.close()


def _open_source(config: ConvertConfig, fmt: str):
    common = dict(state_keys=config.state_keys, drop=config.drop, task=config.task, robot=config.robot, fps=config.fps, source=config.source)
    if fmt == "lerobot":
        from workflow.convert.lerobot_import import LeRobotSource

        return LeRobotSource(Path(config.src), unlabelled_success=config.unlabelled_success, **common)
    from workflow.convert.robomimic import RobomimicSource

    return RobomimicSource(Path(config.src), filter_key=config.filter_key, success_reward=config.success_reward, **common)


__all__ = ["ConvertConfig", "ConvertError", "ConvertReport", "convert", "detect_format"]
