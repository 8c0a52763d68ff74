"""What ``robot serve`` does: open the arm, serve it until Ctrl-C, disconnect it."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

from hardware.remote.protocol import check_token
from hardware.remote.server import RobotServer, ServerConfig, is_loopback


def read_token(token_file: Path | None) -> tuple[str, str]:
    """The token and where it came from: ``token_file`` if given, else ``ROBOT_TOKEN``; a clear error if neither."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read the token file {token_file}: {e}") from None
        source = str(token_file)
    else:
        token, source = os.environ.get("ROBOT_TOKEN", "").strip(), "ROBOT_TOKEN"
    check_token(token or None, who=f"robot serve (token from {source})")
    return token, source


def token_file_warning(token_file: Path | None) -> str | None:
    """A warning when other users can read the token file (like ssh's private-key check)."""
    if token_file is None or os.name != "posix":
        return None
    mode = token_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"token file {token_file} is readable by other users (mode {oct(mode & 0o777)}); chmod 600 it"
    return None


def exposure_warning(host: str, port: int) -> str | None:
    """The warning for binding anywhere but loopback."""
    if is_loopback(host):
        return None
    p = port or "PORT"
    return (
        f"WARNING: listening on {host} lets every machine that can reach the port try to drive the arm. "
        "Requests are authenticated with the token but NOT encrypted (observations cross the network in clear). "
        f"Prefer --host 127.0.0.1 and an SSH tunnel: ssh -L {p}:127.0.0.1:{p} <this machine>"
    )


def serve(
    spec: str,
    token: str,
    config: ServerConfig,
    *,
    robot_options: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Open ``spec``, serve it with ``config`` until Ctrl-C or SIGTERM, then disconnect and release the arm."""
    from hardware.registry import open_robot

    robot, _ = open_robot(spec, **(robot_options or {}))
    stamp = lambda line: echo(f"{time.strftime('%H:%M:%S')} {line}")  # noqa: E731
    server = RobotServer(robot, token, config, on_event=stamp)
    previous = _sigterm_as_interrupt()
    try:
        server.start()
        host, port = server.address
        echo(
            f"serving {robot.name} on {host}:{port} (watchdog {server.watchdog_timeout_s:g} s, "
            "one client at a time); Ctrl-C stops"
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        close = getattr(robot, "close", None)
        if callable(close):
            close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        echo(f"stopped; {robot.name} disconnected")


def _sigterm_as_interrupt() -> Any:
    """Let SIGTERM stop the server like Ctrl-C (main thread only); return the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
