"""Where recordings go: an .rrd file, a spawned viewer, or (headless) one gRPC server per process whose connect command is printed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from robot.viewer.layout import rerun_sdk

_server: dict[str, Any] = {}  # headless live view: {"recording": the one hosting this process's gRPC server (kept alive), "url": ...}

if TYPE_CHECKING:
    from rerun import RecordingStream
    from rerun.blueprint import Blueprint


def has_display() -> bool:
    """Whether a native viewer window can open here."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def served_url() -> str | None:
    """The gRPC URL this process serves its live recordings on (headless), if any."""
    return _server.get("url")


def how_to_connect(url: str) -> str:
    port = url.rsplit(":", 1)[-1].split("/")[0]
    return (
        f"no display here: serving the Rerun stream at {url} (localhost only).\n"
        f"  watch it on this machine:  rerun --connect {url}\n"
        f"  or from your computer:     ssh -L {port}:127.0.0.1:{port} THIS_HOST, then rerun --connect {url}"
    )


def _free_port(preferred: int = 9876) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port for the Rerun gRPC server")


def open_recording(
    app_id: str,
    *,
    save: Path | None = None,
    spawn: bool = False,
    recording_id: str | None = None,
    name: str | None = None,
    blueprint: Blueprint | None = None,
) -> RecordingStream:
    """A ``rr.RecordingStream`` that writes ``save`` (an .rrd file, headless) and/or, with
    ``spawn``, streams to a viewer: a spawned window where there is a display, else a gRPC
    server on localhost (one per process, shared by later recordings) whose connect
    command is printed to stderr."""
    rr = rerun_sdk()
    if save is None and not spawn:
        raise ValueError(f"open_recording({app_id!r}) needs save=PATH.rrd, spawn=True, or both")
    rec = rr.RecordingStream(app_id, recording_id=recording_id)
    sinks: list[Any] = []
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        sinks.append(rr.FileSink(str(save)))
    if spawn and has_display():
        rr.spawn(connect=False)
        sinks.append(rr.GrpcSink())
    elif spawn and _server:
        sinks.append(rr.GrpcSink(_server["url"]))
    elif spawn:
        server = rr.GrpcServerSink(bind_ip="127.0.0.1", port=_free_port())
        _server.update(recording=rec, url=server.uri)
        sinks.append(server)
        print(how_to_connect(server.uri), file=sys.stderr)
    rec.set_sinks(*sinks, default_blueprint=blueprint)
    if name:
        rec.send_recording_name(name)
    return rec


def merge_rrd(parts: Iterable[Path], out: Path) -> Path:
    """Merge .rrd files into one that keeps every recording and blueprint (``rerun rrd merge``)."""
    parts = [str(p) for p in parts]
    cmd = [sys.executable, "-m", "rerun_cli", "rrd", "merge", *parts, "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"merging {len(parts)} recordings into {out} failed ({' '.join(cmd)}): {done.stderr.strip()[-500:]}")
    return out


class RecordingSet:
    """Several recordings (one per episode, one for curves) bound for one .rrd file or one viewer.

    With ``save``, each :meth:`new` recording is written to a part file and :meth:`close`
    joins the parts into ``save`` (a single part is just moved there). With ``spawn``,
    every recording streams to the same viewer (see :func:`open_recording`).
    """

    def __init__(self, *, save: Path | None = None, spawn: bool = False):
        if (save is None) == (not spawn):
            raise ValueError(f"a RecordingSet writes a file or feeds a viewer: pass save=PATH.rrd or spawn=True, not {'both' if spawn else 'neither'}")
        self.save, self.spawn = (Path(save) if save is not None else None), spawn
        self.recordings: list[RecordingStream] = []
        self._parts: list[Path] = []
        self._tmp: Path | None = None
        if self.save is not None:
            self.save.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=".rrd-parts-", dir=self.save.parent))

    def new(self, app_id: str, *, recording_id: str, name: str | None = None, blueprint: Blueprint | None = None) -> RecordingStream:
        part = self._tmp / f"{len(self._parts):04d}.rrd" if self._tmp is not None else None
        rec = open_recording(app_id, save=part, spawn=self.spawn, recording_id=recording_id, name=name, blueprint=blueprint)
        self.recordings.append(rec)
        if part is not None:
            self._parts.append(part)
        return rec

    def __enter__(self) -> "RecordingSet":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def close(self) -> None:
        """Flush every recording; with ``save``, write the one .rrd file."""
        for rec in self.recordings:
            rec.flush()
        if self.save is None or self._tmp is None:
            return
        for rec in self.recordings:
            rec.disconnect()  # closes the part file and writes its footer
        try:
            if len(self._parts) == 1:
                os.replace(self._parts[0], self.save)
            elif self._parts:
                merge_rrd(self._parts, self.save)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
