"""Camera frames to and from mp4 with PyAV (FFmpeg), the way LeRobot v3 lays them out.

LeRobot v3 packs many episodes into one mp4 per camera: episode ``e`` occupies
``[from_timestamp, to_timestamp)`` of the file and its frame ``i`` sits at
``from_timestamp + i / fps``. :class:`VideoFileWriter` appends episodes to one
file with continuous timestamps; :class:`VideoFileReader` returns the frames at
given times, decoding forward and seeking only when asked to go back.

PyAV is an optional dependency (the ``interop`` extra); without it, reading or
writing video is a ConvertError that says how to install it.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from workflow.convert.mapping import ConvertError

PIX_FMT = "yuv420p"  # what LeRobot writes and every AV1/H.264 decoder reads
DEFAULT_VCODEC = "libsvtav1"  # LeRobot's default encoder (AV1)


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise ConvertError(
            "reading or writing camera video needs PyAV, which is not installed; "
            "pip install 'robot-workflow-kit[interop]' (or pip install av)"
        ) from None
    return av


def codec_name(vcodec: str) -> str:
    """The stream codec an encoder writes (``libsvtav1`` -> ``av1``), as LeRobot's info.json names it."""
    av = _av()
    try:
        return av.Codec(vcodec, "w").canonical_name
    except Exception:
        raise ConvertError(f"video encoder {vcodec!r} is not in this FFmpeg build; use --vcodec libsvtav1 (AV1) or libx264 (H.264)") from None


class VideoFileWriter:
    """One mp4 file of RGB frames at a fixed rate; frame ``k`` of the file has timestamp ``k / fps``."""

    def __init__(self, path: Path, *, fps: int, height: int, width: int, vcodec: str = DEFAULT_VCODEC, crf: int = 30, gop: int = 2):
        av = _av()
        if height % 2 or width % 2:
            raise ConvertError(f"{path}: frames of {height}x{width}; {PIX_FMT} video needs an even height and width; crop or resize the camera images")
        codec_name(vcodec)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at info level otherwise
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0  # frames written so far
        self.bytes = 0  # encoded bytes so far (the file on disk lags behind: the muxer buffers)
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream(vcodec, rate=Fraction(fps), options={"crf": str(crf), "g": str(gop)})
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, PIX_FMT
        self._av = av

    def append(self, images: np.ndarray) -> None:
        """Append frames ``(T, H, W, 3)`` uint8."""
        for image in images:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            for packet in self._stream.encode(frame):
                self.bytes += packet.size
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():  # flush the encoder
            self._container.mux(packet)
        self._container.close()
        self._container = None


class VideoFileReader:
    """Frames of one mp4 at requested timestamps (seconds), read forward with a seek when going back."""

    def __init__(self, path: Path):
        av = self._av = _av()
        self.path = path
        if not path.is_file():
            raise ConvertError(f"{path}: video file missing; the dataset is incomplete (re-download its videos/ folder)")
        try:
            self._container = av.open(str(path))
        except av.error.FFmpegError as e:
            raise ConvertError(f"{path}: not a readable video ({e}); the file is damaged or truncated; re-download it") from None
        if not self._container.streams.video:
            raise ConvertError(f"{path}: holds no video stream; re-download it")
        self._stream = self._container.streams.video[0]
        ctx = self._stream.codec_context
        self.codec = ctx.name if ctx is not None else "unknown"
        if ctx is None:
            raise ConvertError(f"{path}: no decoder for its video codec in this FFmpeg build; re-encode it to H.264 (ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT)")
        self._stream.thread_type = "AUTO"
        self._frames: Iterator[Any] | None = None
        self._pending: Any = None  # a decoded frame not yet handed out
        self._position = float("-inf")  # time of the last frame handed out or skipped

    def frames_at(self, times: np.ndarray, tolerance: float) -> np.ndarray:
        """RGB frames ``(N, H, W, 3)`` uint8 whose timestamps are within ``tolerance`` s of ascending ``times``."""
        times = np.asarray(times, dtype=np.float64)
        if len(times) and times[0] <= self._position + tolerance:
            self._seek(times[0])
        out = []
        for t in times:
            frame = self._next_frame()
            while frame is not None and frame.time is not None and frame.time < t - tolerance:
                self._position = frame.time
                frame = self._next_frame()
            if frame is None or frame.time is None or abs(frame.time - t) > tolerance:
                found = "the end of the file" if frame is None else f"a frame at {frame.time} s"
                if frame is not None:
                    self._pending = frame
                raise ConvertError(
                    f"{self.path}: no frame at {t:.4f} s (found {found}); the video is truncated or its timestamps "
                    "do not match meta/episodes (from_timestamp); re-download or re-encode the dataset"
                )
            self._position = frame.time
            out.append(frame.to_ndarray(format="rgb24"))
        return np.stack(out) if out else np.zeros((0, self._stream.height, self._stream.width, 3), np.uint8)

    def _next_frame(self) -> Any:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._frames is None:
            self._frames = self._container.decode(self._stream)
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except self._av.error.FFmpegError as e:
            raise ConvertError(
                f"{self.path}: cannot decode its {self.codec} video ({e}); this FFmpeg build may lack a {self.codec} decoder "
                "(PyAV wheels ship dav1d for AV1), or the file is damaged; re-encode it to H.264 (ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT)"
            ) from None

    def _seek(self, t: float) -> None:
        self._container.seek(max(0, int(t / self._stream.time_base)), stream=self._stream, backward=True)
        self._frames, self._pending, self._position = None, None, float("-inf")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
